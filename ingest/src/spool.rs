//! The sled disk spool: the Kafka records waiting for the broker, in the
//! order they were accepted, and (in the same database, so one sync covers
//! both) the idempotency entries, typed in `spool/idempotency_entries.rs`,
//! and the last known course catalog (`spool/catalog_copy.rs`).
//!
//! Every call on sled goes through the store's own thread (`spool/store.rs`),
//! which shares one flush among concurrent durable writes (group commit),
//! gives each caller a deadline, and opens the database again after a disk
//! error. The spool is bounded in bytes on disk; a full spool refuses, it
//! never drops.

mod catalog_copy;
mod files;
mod idempotency_entries;
mod store;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::metrics::names;
use tokio::sync::Notify;

pub use catalog_copy::CatalogCopy;
pub use files::SpoolFiles;
pub use idempotency_entries::{IdempotencyEntries, Snapshot};
pub use store::Health;
use store::{Disk, Store};

use crate::record::KafkaRecord;

/// Where the records whose bytes do not decode are moved aside, in the
/// spool's database; nothing but the `ingest spool` tools reads it.
const UNREADABLE_TREE: &str = "spool-unreadable";

/// What sled writes to disk for each byte it holds, at most: its log keeps a
/// value's old versions until it cleans their segment, and a drained spool's
/// file keeps its size for reuse (docs/spool.md). The cap on disk is kept
/// by holding live bytes to this fraction of it.
const DISK_PER_LIVE_BYTE: u64 = 3;

/// Why a write was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full")]
    Full,
    /// Shared, as one failed sync fails every write it was to make durable.
    #[error("the spool failed: {0}")]
    Disk(#[source] Arc<sled::Error>),
    /// The store failed earlier and is not open again yet.
    #[error("the spool failed: its store is being reopened after a disk error")]
    Unavailable,
    /// The store did not answer within its deadline: the disk hangs.
    #[error("the spool failed: its store did not answer in time")]
    Stalled,
    /// The store's thread is gone, so nothing more can be made durable.
    #[error("the spool failed: the store is closed")]
    Closed,
    /// The store's thread ended before it answered.
    #[error("the spool failed: the store stopped")]
    WriterStopped,
}

impl From<sled::Error> for SpoolError {
    fn from(err: sled::Error) -> Self {
        Self::Disk(Arc::new(err))
    }
}

/// The spool and the idempotency entries on disk.
#[derive(Clone)]
pub struct Spool {
    store: Store,
    /// Read without the store: the pipeline, `/readyz` and the gauges.
    counters: Arc<Counters>,
    /// Woken when the spool gets a record, so the drainer need not poll.
    pub spooled: Arc<Notify>,
}

pub(crate) struct Counters {
    /// The next spool sequence number: keys are big-endian, so sled's order is FIFO.
    next_seq: AtomicU64,
    /// Records in the spool, for `/readyz` and the gauges without a scan.
    depth: AtomicU64,
    /// Their encoded size.
    bytes: AtomicU64,
    /// The idempotency entries' size, keys included.
    entry_bytes: AtomicU64,
    /// sled's files as last measured.
    disk_bytes: AtomicU64,
    /// The bound on disk: past it an append is refused, never a record dropped.
    max_bytes: u64,
    /// Set when an append was refused for want of room; cleared when records leave.
    full: AtomicBool,
    /// Group commits so far (one `fsync` each).
    flushes: AtomicU64,
}

impl Spool {
    /// Opens the spool as [`Spool::open`] does, waiting up to `wait` for its
    /// lock: an ingest that is still stopping (a quick restart) holds it for
    /// a moment. Any other failure is returned at once.
    pub async fn open_waiting(dir: &Path, max_bytes: u64, wait: Duration) -> anyhow::Result<Self> {
        const POLL: Duration = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            match Self::open(dir, max_bytes) {
                Err(err) if is_locked(&err) && started.elapsed() < wait => {
                    if !warned {
                        tracing::warn!(dir = %dir.display(), "the spool is locked; waiting up to {wait:?} for it");
                        warned = true;
                    }
                    tokio::time::sleep(POLL).await;
                }
                result => return result,
            }
        }
    }

    /// Opens (or creates) the spool in `dir` and starts its store's thread.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let disk = Disk::open(dir).with_context(|| {
            format!(
                "opening the spool in {} (is another ingest using it?)",
                dir.display()
            )
        })?;
        let counters = Arc::new(Counters::new(max_bytes));
        counters.reset(&disk)?;
        counters.publish();
        let depth = counters.depth.load(Ordering::Acquire);
        if depth > 0 {
            let bytes = counters.bytes.load(Ordering::Acquire);
            tracing::info!(
                depth,
                bytes,
                "spool holds records from an earlier run: draining them first"
            );
        }
        let spooled = Arc::new(Notify::new());
        let store = Store::start(dir.to_owned(), disk, counters.clone(), spooled.clone())
            .context("starting the spool's store thread")?;
        Ok(Self {
            store,
            counters,
            spooled,
        })
    }

    /// Appends `record` to the spool; returns once it is on disk.
    pub async fn append(&self, record: KafkaRecord) -> Result<(), SpoolError> {
        let counters = self.counters.clone();
        self.store
            .durable(move |disk| counters.append(disk, record))
            .await
    }

    /// The idempotency entries, which share this spool's disk and store.
    pub fn idempotency_entries(&self) -> IdempotencyEntries {
        IdempotencyEntries::new(self.store.clone(), self.counters.clone())
    }

    /// The last known course catalog's copy, which shares this spool's disk and store.
    pub fn catalog_copy(&self) -> CatalogCopy {
        CatalogCopy::new(self.store.clone())
    }

    /// The oldest `limit` spooled records, in order, with their sequence
    /// numbers. Written by this code, so a record that does not decode means
    /// disk corruption: it is moved out of the way.
    pub async fn oldest(&self, limit: usize) -> Result<Vec<(u64, KafkaRecord)>, SpoolError> {
        let counters = self.counters.clone();
        self.store
            .call(move |disk| {
                let mut out = Vec::with_capacity(limit);
                for entry in disk.spool.iter().take(limit) {
                    let (key, value) = entry?;
                    match KafkaRecord::from_spool_bytes(&value) {
                        Some(record) => out.push((seq_of(&key), record)),
                        None => {
                            tracing::error!(
                                seq = seq_of(&key),
                                "unreadable spool record moved aside"
                            );
                            metrics::counter!(names::INGEST_SPOOL_UNREADABLE_TOTAL).increment(1);
                            disk.db.open_tree(UNREADABLE_TREE)?.insert(&key, value)?;
                            counters.forget(disk, &[seq_of(&key)])?;
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Removes delivered records from the spool.
    pub async fn forget(&self, seqs: Vec<u64>) -> Result<(), SpoolError> {
        let counters = self.counters.clone();
        self.store
            .call(move |disk| counters.forget(disk, &seqs))
            .await
    }

    pub fn depth(&self) -> u64 {
        self.counters.depth.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> u64 {
        self.counters.bytes.load(Ordering::Acquire)
    }

    /// The idempotency entries' bytes, which count against the cap too.
    pub fn entry_bytes(&self) -> u64 {
        self.counters.entry_bytes.load(Ordering::Acquire)
    }

    /// sled's files on disk, as last measured.
    pub fn disk_bytes(&self) -> u64 {
        self.counters.disk_bytes.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> u64 {
        self.counters.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// The store's state: up, failed, stalled; reopens.
    pub fn health(&self) -> &Arc<Health> {
        self.store.health()
    }

    /// Whether the spool can take more: the store is up, and no append was
    /// refused for want of room since records last drained. Read by
    /// `/readyz` without waiting.
    pub fn has_capacity(&self) -> bool {
        self.health().is_up()
            && !self.counters.full.load(Ordering::Acquire)
            && self.counters.fits(1)
    }

    /// Flushes everything to disk (shutdown).
    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.store.call(|disk| disk.db.flush().map(|_| ())).await
    }
}

impl Counters {
    fn new(max_bytes: u64) -> Self {
        Self {
            next_seq: AtomicU64::new(0),
            depth: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            entry_bytes: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
            max_bytes,
            full: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        }
    }

    /// Sets the counters from what `disk` holds (records and entries of an
    /// earlier run, or of before a reopen, included).
    fn reset(&self, disk: &Disk) -> Result<(), sled::Error> {
        let (mut depth, mut bytes) = (0, 0);
        for entry in disk.spool.iter() {
            let (_, value) = entry?;
            depth += 1;
            bytes += value.len() as u64;
        }
        let mut entry_bytes = 0;
        for entry in disk.idempotency.iter() {
            let (key, value) = entry?;
            entry_bytes += (key.len() + value.len()) as u64;
        }
        let next_seq = match disk.spool.last()? {
            Some((key, _)) => seq_of(&key) + 1,
            None => 0,
        };
        // Never backwards: a reopen finds the records a failed round did not
        // make durable gone, and their numbers stay used.
        self.next_seq.fetch_max(next_seq, Ordering::AcqRel);
        self.depth.store(depth, Ordering::Release);
        self.bytes.store(bytes, Ordering::Release);
        self.entry_bytes.store(entry_bytes, Ordering::Release);
        self.full.store(false, Ordering::Release);
        Ok(())
    }

    /// Whether `more` bytes fit: everything held, times what sled needs on
    /// disk for it, within the cap.
    fn fits(&self, more: u64) -> bool {
        let live =
            self.bytes.load(Ordering::Acquire) + self.entry_bytes.load(Ordering::Acquire) + more;
        live.saturating_mul(DISK_PER_LIVE_BYTE) <= self.max_bytes
    }

    /// Adds `record` at the spool's tail, unless that would pass the cap.
    fn append(&self, disk: &Disk, record: KafkaRecord) -> Result<(), SpoolError> {
        let value = record.spool_bytes();
        let len = value.len() as u64;
        if !self.fits(len) {
            self.full.store(true, Ordering::Release);
            metrics::counter!(names::INGEST_SPOOL_FULL_TOTAL).increment(1);
            return Err(SpoolError::Full);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel);
        disk.spool.insert(seq.to_be_bytes(), value)?;
        self.depth.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(len, Ordering::AcqRel);
        Ok(())
    }

    fn forget(&self, disk: &Disk, seqs: &[u64]) -> Result<(), sled::Error> {
        for seq in seqs {
            if let Some(old) = disk.spool.remove(seq.to_be_bytes())? {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                self.bytes.fetch_sub(old.len() as u64, Ordering::AcqRel);
                self.full.store(false, Ordering::Release);
            }
        }
        Ok(())
    }

    /// An idempotency entry changed size by `new - old` bytes.
    fn entry_resized(&self, old: u64, new: u64) {
        if new >= old {
            self.entry_bytes.fetch_add(new - old, Ordering::AcqRel);
        } else {
            let _ = self
                .entry_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bytes| {
                    Some(bytes.saturating_sub(old - new))
                });
        }
    }

    fn publish(&self) {
        metrics::gauge!(names::INGEST_SPOOL_DEPTH).set(self.depth.load(Ordering::Acquire) as f64);
        metrics::gauge!(names::INGEST_SPOOL_BYTES).set(self.bytes.load(Ordering::Acquire) as f64);
        metrics::gauge!(names::INGEST_SPOOL_ENTRY_BYTES)
            .set(self.entry_bytes.load(Ordering::Acquire) as f64);
        metrics::gauge!(names::INGEST_SPOOL_DISK_BYTES)
            .set(self.disk_bytes.load(Ordering::Acquire) as f64);
        metrics::gauge!(names::INGEST_SPOOL_MAX_BYTES).set(self.max_bytes as f64);
    }
}

/// Whether opening failed on the lock another process holds: sled says so
/// only in the message of an I/O error.
fn is_locked(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sled::Error>(),
            Some(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock")
        )
    })
}

fn seq_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[8 - n..].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(i: usize) -> KafkaRecord {
        KafkaRecord {
            key: format!("C{}", i % 3),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
            request_id: format!("r{i}"),
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn an_open_waits_for_an_ingest_still_releasing_the_spool() {
        let dir = tempdir();
        let first = Spool::open(&dir, 1 << 20).unwrap();
        first.append(record(1)).await.unwrap();
        let locked = Spool::open(&dir, 1 << 20)
            .err()
            .expect("the spool is locked");
        assert!(is_locked(&locked), "{locked:#}");
        let started = std::time::Instant::now();
        // The writer task of `first` lets go of the database once its queue
        // closes; the second open waits for that instead of failing. (On a
        // current-thread runtime too: the wait must not block the thread.)
        let release = async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(first);
        };
        let (second, ()) = tokio::join!(
            Spool::open_waiting(&dir, 1 << 20, Duration::from_secs(10)),
            release
        );
        let second = second.expect("the spool once the first ingest let go");
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert_eq!(second.depth(), 1);

        // Another failure is returned at once.
        let file = dir.join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let started = std::time::Instant::now();
        assert!(Spool::open_waiting(&file, 1 << 20, Duration::from_secs(10))
            .await
            .is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn records_come_back_in_append_order_and_survive_a_reopen() {
        let dir = tempdir();
        {
            let spool = Spool::open(&dir, 1 << 20).unwrap();
            for i in 0..50 {
                spool.append(record(i)).await.unwrap();
            }
            assert_eq!(spool.depth(), 50);
            let first: Vec<_> = spool
                .oldest(10)
                .await
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            spool.forget(first).await.unwrap();
            assert_eq!(spool.depth(), 40);
        }
        let spool = reopen(&dir).await;
        assert_eq!(spool.depth(), 40);
        let rest = spool.oldest(100).await.unwrap();
        let payloads: Vec<_> = rest.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(payloads, (10..50).map(record).collect::<Vec<_>>());
        spool.append(record(50)).await.unwrap();
        let (last_seq, last) = spool.oldest(100).await.unwrap().pop().unwrap();
        assert_eq!(last, record(50));
        assert!(
            last_seq > rest.last().unwrap().0,
            "sequence numbers keep growing after a reopen"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_instead_of_dropping() {
        let dir = tempdir();
        let one = record(0).spool_bytes().len() as u64;
        let spool = Spool::open(&dir, one * 3 * DISK_PER_LIVE_BYTE).unwrap();
        for i in 0..3 {
            spool.append(record(i)).await.unwrap();
        }
        assert!(!spool.has_capacity());
        assert!(matches!(
            spool.append(record(3)).await,
            Err(SpoolError::Full)
        ));
        assert_eq!(spool.depth(), 3);
        let seqs: Vec<_> = spool
            .oldest(1)
            .await
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        spool.forget(seqs).await.unwrap();
        assert!(spool.has_capacity());
        spool.append(record(4)).await.unwrap();
    }

    #[tokio::test]
    async fn an_unreadable_record_is_moved_aside_and_the_rest_come_back() {
        let dir = tempdir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(record(0)).await.unwrap();
        spool.append(record(1)).await.unwrap();
        spool
            .store
            .call(|disk| disk.spool.insert(0u64.to_be_bytes(), &[0, 9, b'x'][..]))
            .await
            .unwrap();
        let left = spool.oldest(10).await.unwrap();
        assert_eq!(left, vec![(1, record(1))]);
        assert_eq!(spool.depth(), 1);
        let aside = spool
            .store
            .call(|disk| Ok(disk.db.open_tree(UNREADABLE_TREE)?.len()))
            .await
            .unwrap();
        assert_eq!(aside, 1);
    }

    #[tokio::test]
    async fn concurrent_appends_share_flushes_and_all_land() {
        let dir = tempdir();
        let spool = Spool::open(&dir, 1 << 24).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(record(i)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(spool.depth(), 200);
        assert_eq!(spool.oldest(1000).await.unwrap().len(), 200);
        let flushes = spool.counters.flushes.load(Ordering::Acquire);
        assert!(
            (1..=20).contains(&flushes),
            "200 appends in {flushes} group commits"
        );
    }

    /// Opens again once the previous writer task has let go of sled's lock.
    async fn reopen(dir: &std::path::Path) -> Spool {
        for _ in 0..100 {
            if let Ok(spool) = Spool::open(dir, 1 << 20) {
                return spool;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the spool was not released")
    }

    pub(crate) fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ingest-spool-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
