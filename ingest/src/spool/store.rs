//! The spool's store: one thread owns sled's database and makes every call
//! on it, so no sled call (which can block on the disk) runs on an async
//! worker, and each caller waits with a deadline: a disk that hangs costs a
//! request a 503, never a worker.
//!
//! Writes that must be durable before a request is answered are applied in
//! arrival order and answered after one flush covers them all (group
//! commit). Any sled error marks the store failed (`/readyz`, metrics) and
//! drops the database: after an I/O error sled refuses every later write, so
//! the only way back is to open it again. The thread tries that with backoff
//! and, when it cannot, raises [`Health::gave_up`] for the process to exit
//! and its supervisor to restart it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use shared::metrics::names;
use tokio::sync::{oneshot, watch, Notify};

use super::{Counters, SpoolError};

/// How long a caller waits for the store before it answers 503.
pub(super) const DEADLINE: Duration = Duration::from_secs(5);

/// How many calls one round runs before it flushes and answers.
const ROUND: usize = 1024;

/// How often the sled files' size is measured (a directory walk).
const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// The opened database and its trees; only the store thread holds one.
pub(super) struct Disk {
    pub(super) db: sled::Db,
    /// The records, under big-endian sequence numbers.
    pub(super) spool: sled::Tree,
    /// The idempotency entries.
    pub(super) idempotency: sled::Tree,
}

impl Disk {
    pub(super) fn open(dir: &Path) -> Result<Self, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            // sled caches 1 GiB by default; the spool is written and read
            // once, in order, so a small cache keeps ingest's memory flat.
            // It is this small because sled's own memory still grows with
            // the spool's depth: with a full spool, the two together must
            // stay within ingest's memory target.
            .cache_capacity(4 * 1024 * 1024)
            .flush_every_ms(Some(200))
            .open()?;
        let spool = db.open_tree("spool")?;
        let idempotency = db.open_tree("idempotency")?;
        Ok(Self {
            db,
            spool,
            idempotency,
        })
    }
}

/// A call on the database, with the error sled gave it, if any.
type Call = Box<dyn FnOnce(Result<&Disk, SpoolError>) -> Option<sled::Error> + Send>;

/// A durable write: applied at once, answered after the round's flush.
type Apply = Box<dyn FnOnce(&Disk) -> Result<(), SpoolError> + Send>;

enum Job {
    Now(Call),
    Durable {
        apply: Apply,
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
}

/// The way into the store thread; the thread ends when the last is dropped.
#[derive(Clone)]
pub(super) struct Store {
    jobs: mpsc::Sender<Job>,
    health: Arc<Health>,
}

impl Store {
    /// Starts the thread on `disk`, opened from `dir`.
    pub(super) fn start(
        dir: PathBuf,
        disk: Disk,
        counters: Arc<Counters>,
        spooled: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let health = Arc::new(Health::new());
        let thread = Thread {
            dir,
            disk: Some(disk),
            counters,
            health: health.clone(),
            spooled,
            measured: None,
        };
        std::thread::Builder::new()
            .name("spool-store".into())
            .spawn(move || thread.run(queue))?;
        Ok(Self { jobs, health })
    }

    pub(super) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Runs `call` on the database and returns what it returns.
    pub(super) async fn call<R: Send + 'static>(
        &self,
        call: impl FnOnce(&Disk) -> Result<R, sled::Error> + Send + 'static,
    ) -> Result<R, SpoolError> {
        let (done, answer) = oneshot::channel();
        let job = Job::Now(Box::new(move |disk| {
            // A caller past its deadline gets nothing more done for it.
            if done.is_closed() {
                return None;
            }
            let (result, failed) = match disk.map(call) {
                Ok(Ok(value)) => (Ok(value), None),
                Ok(Err(err)) => (Err(SpoolError::from(err.clone())), Some(err)),
                Err(unavailable) => (Err(unavailable), None),
            };
            let _ = done.send(result);
            failed
        }));
        self.send(job)?;
        self.wait(answer).await
    }

    /// Applies `apply` and returns once a flush made it durable.
    pub(super) async fn durable(
        &self,
        apply: impl FnOnce(&Disk) -> Result<(), SpoolError> + Send + 'static,
    ) -> Result<(), SpoolError> {
        let (done, answer) = oneshot::channel();
        self.send(Job::Durable {
            apply: Box::new(apply),
            done,
        })?;
        self.wait(answer).await
    }

    fn send(&self, job: Job) -> Result<(), SpoolError> {
        self.jobs.send(job).map_err(|_| SpoolError::Closed)
    }

    async fn wait<R>(
        &self,
        answer: oneshot::Receiver<Result<R, SpoolError>>,
    ) -> Result<R, SpoolError> {
        match tokio::time::timeout(DEADLINE, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SpoolError::WriterStopped),
            Err(_) => {
                metrics::counter!(names::INGEST_SPOOL_STORE_TIMEOUTS_TOTAL).increment(1);
                Err(SpoolError::Stalled)
            }
        }
    }
}

/// The store's state, read by `/readyz` and the gauges without the thread.
pub struct Health {
    up: AtomicBool,
    /// When the thread began its current round, in ms since `epoch`; 0 when idle.
    busy_since_ms: AtomicU64,
    epoch: Instant,
    reopens: AtomicU64,
    /// The last failure: what sled said, and when.
    failure: Mutex<Option<(String, time::OffsetDateTime)>>,
    /// Set (with the reason) once the store could not be opened again.
    gave_up: watch::Sender<Option<String>>,
}

impl Health {
    fn new() -> Self {
        Self {
            up: AtomicBool::new(true),
            busy_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            reopens: AtomicU64::new(0),
            failure: Mutex::new(None),
            gave_up: watch::Sender::new(None),
        }
    }

    /// Whether the store takes calls: opened, and not stuck in one round past the deadline.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire) && !self.is_stalled()
    }

    /// A round has run longer than a caller waits: the disk hangs.
    pub fn is_stalled(&self) -> bool {
        let since = self.busy_since_ms.load(Ordering::Acquire);
        since != 0 && self.now_ms().saturating_sub(since) > DEADLINE.as_millis() as u64
    }

    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Acquire)
    }

    /// The last failure's message and time, if the store ever failed.
    pub fn last_failure(&self) -> Option<(String, time::OffsetDateTime)> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves with the reason once the store could not be opened again.
    pub async fn gave_up(&self) -> String {
        let mut seen = self.gave_up.subscribe();
        loop {
            if let Some(reason) = seen.borrow_and_update().clone() {
                return reason;
            }
            if seen.changed().await.is_err() {
                // The sender lives as long as `self`.
                return std::future::pending().await;
            }
        }
    }

    fn now_ms(&self) -> u64 {
        // 1 more, so that a round starting at the epoch is not "idle".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn failed(&self, err: &sled::Error) {
        self.up.store(false, Ordering::Release);
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((err.to_string(), time::OffsetDateTime::now_utc()));
        metrics::counter!(names::INGEST_SPOOL_STORE_ERRORS_TOTAL).increment(1);
        metrics::gauge!(names::INGEST_SPOOL_STORE_UP).set(0.0);
    }

    fn reopened(&self) {
        self.reopens.fetch_add(1, Ordering::AcqRel);
        self.up.store(true, Ordering::Release);
        metrics::counter!(names::INGEST_SPOOL_STORE_REOPENS_TOTAL).increment(1);
        metrics::gauge!(names::INGEST_SPOOL_STORE_UP).set(1.0);
    }
}

struct Thread {
    dir: PathBuf,
    /// `None` while failed: every call is refused until it opens again.
    disk: Option<Disk>,
    counters: Arc<Counters>,
    health: Arc<Health>,
    spooled: Arc<Notify>,
    /// When the files were last measured.
    measured: Option<Instant>,
}

impl Thread {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        metrics::gauge!(names::INGEST_SPOOL_STORE_UP).set(1.0);
        self.measure();
        let mut reopening: Option<Reopening> = None;
        let mut round = Vec::with_capacity(ROUND);
        loop {
            let first = match &reopening {
                None => queue
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(reopening) => queue.recv_timeout(reopening.wait()),
            };
            match first {
                Ok(job) => round.push(job),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(attempt) = reopening.take() {
                if attempt.due() {
                    match self.reopen() {
                        Ok(()) => {}
                        Err(err) => reopening = attempt.failed(&self.dir, &err, &self.health),
                    }
                } else {
                    reopening = Some(attempt);
                }
            }
            round.extend(queue.try_iter().take(ROUND - round.len()));
            if round.is_empty() {
                continue;
            }
            self.health
                .busy_since_ms
                .store(self.health.now_ms(), Ordering::Release);
            let failure = self.run_round(&mut round);
            self.health.busy_since_ms.store(0, Ordering::Release);
            if let Some(err) = failure {
                tracing::error!(%err, dir = %self.dir.display(), "the spool's store failed: reopening it");
                self.health.failed(&err);
                // Dropped (with its lock) before it is opened again.
                self.disk = None;
                reopening.get_or_insert_with(Reopening::new);
            }
        }
        // The last handle is gone: what is applied goes to disk with sled's
        // own flush when the database is dropped.
        if let Some(disk) = self.disk.take() {
            if let Err(err) = disk.db.flush() {
                tracing::error!(%err, "flushing the spool's store at its close failed");
            }
        }
    }

    /// Runs every call of the round, flushes once for its durable writes,
    /// answers them; the first sled error, if any.
    fn run_round(&mut self, round: &mut Vec<Job>) -> Option<sled::Error> {
        let mut failure = None;
        let mut waiting = Vec::new();
        for job in round.drain(..) {
            match job {
                Job::Now(call) => {
                    let disk = self.disk.as_ref().ok_or(SpoolError::Unavailable);
                    if let Some(err) = call(disk) {
                        failure.get_or_insert(err);
                    }
                }
                Job::Durable { apply, done } => {
                    // A caller past its deadline was told no: keep it so.
                    if done.is_closed() {
                        continue;
                    }
                    let Some(disk) = &self.disk else {
                        let _ = done.send(Err(SpoolError::Unavailable));
                        continue;
                    };
                    match apply(disk) {
                        Ok(()) => waiting.push(done),
                        Err(err) => {
                            if let SpoolError::Disk(sled) = &err {
                                failure.get_or_insert((**sled).clone());
                            }
                            let _ = done.send(Err(err));
                        }
                    }
                }
            }
        }
        if !waiting.is_empty() {
            let flushed = match (&failure, &self.disk) {
                // After a failure nothing this round applied is known to be on disk.
                (Some(err), _) => Err(err.clone()),
                (None, Some(disk)) => disk.db.flush().map(|_| ()),
                (None, None) => unreachable!("a write waits only on an open store"),
            };
            if let Err(err) = &flushed {
                failure.get_or_insert(err.clone());
            }
            self.counters.flushes.fetch_add(1, Ordering::AcqRel);
            metrics::histogram!(names::INGEST_SPOOL_GROUP_COMMIT_SIZE).record(waiting.len() as f64);
            let flushed = flushed.map_err(SpoolError::from);
            for done in waiting {
                let _ = done.send(flushed.clone());
            }
            self.spooled.notify_one();
        }
        if failure.is_none() {
            self.measure_now_and_then();
        }
        self.counters.publish();
        failure
    }

    /// Opens the database again, with the counters read from what it holds.
    fn reopen(&mut self) -> Result<(), sled::Error> {
        // Never creates a store: a directory without one (the volume gone
        // or not mounted) must not become an empty spool.
        if !self.dir.join("db").is_file() {
            return Err(sled::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no spool database in {}", self.dir.display()),
            )));
        }
        let disk = Disk::open(&self.dir)?;
        self.counters.reset(&disk)?;
        self.disk = Some(disk);
        self.health.reopened();
        self.measure();
        tracing::warn!(
            dir = %self.dir.display(),
            depth = self.counters.depth.load(Ordering::Acquire),
            "the spool's store is open again"
        );
        Ok(())
    }

    fn measure_now_and_then(&mut self) {
        if self.measured.is_none_or(|at| at.elapsed() >= MEASURE_EVERY) {
            self.measure();
        }
    }

    /// sled's files on disk: its log, snapshots and blobs, whatever they hold.
    fn measure(&mut self) {
        if let Some(disk) = &self.disk {
            if let Ok(size) = disk.db.size_on_disk() {
                self.counters.disk_bytes.store(size, Ordering::Release);
            }
        }
        self.measured = Some(Instant::now());
    }
}

/// The attempts to open a failed store again: 0.5 s apart at first,
/// doubling, 6 in all (about 30 s) before the process gives up.
struct Reopening {
    delays: backon::ExponentialBackoff,
    next: Instant,
}

impl Reopening {
    fn new() -> Self {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(16))
            .with_max_times(6)
            .build();
        let first = delays.next().unwrap_or_default();
        Self {
            delays,
            next: Instant::now() + first,
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    fn wait(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// The next attempt, or none: then the process is told to give up.
    fn failed(mut self, dir: &Path, err: &sled::Error, health: &Health) -> Option<Self> {
        match self.delays.next() {
            Some(delay) => {
                tracing::warn!(%err, dir = %dir.display(), retry_in = ?delay, "the spool's store could not be opened again");
                self.next = Instant::now() + delay;
                Some(self)
            }
            None => {
                let reason = format!(
                    "the spool's store in {} could not be opened again: {err}",
                    dir.display()
                );
                tracing::error!(%err, dir = %dir.display(), "the spool's store could not be opened again: giving up, for the supervisor to restart ingest");
                health.gave_up.send_replace(Some(reason));
                None
            }
        }
    }
}
