//! The sled disk spool: the Kafka records waiting for the broker, in the
//! order they were accepted, and (in the same database, so one sync covers
//! both) the idempotency entries, typed in `spool/idempotency_entries.rs`.
//!
//! Writes that must be durable before a request is answered go through one
//! writer task (`spool/writer.rs`) that applies every queued write and then
//! flushes once: group commit, so concurrent requests share one `fsync`.
//! The spool is bounded in bytes; a full spool refuses, it never drops.

mod files;
mod idempotency_entries;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::metrics::names;
use tokio::sync::Notify;

pub use files::SpoolFiles;
pub use idempotency_entries::{IdempotencyEntries, Snapshot};
use writer::{Write, Writer};

use crate::record::KafkaRecord;

/// Where the records whose bytes do not decode are moved aside, in the
/// spool's database; nothing but the `ingest spool` tools reads it.
const UNREADABLE_TREE: &str = "spool-unreadable";

/// Why a write was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full")]
    Full,
    /// Shared, as one failed sync fails every write it was to make durable.
    #[error("the spool failed: {0}")]
    Disk(#[source] Arc<sled::Error>),
    /// The writer task is gone, so nothing more can be made durable.
    #[error("the spool failed: the store is closed")]
    Closed,
    /// The writer task ended before it answered.
    #[error("the spool failed: the store writer stopped")]
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
    /// Read directly: the drainer and `/readyz` need not queue behind writes.
    disk: Disk,
    /// The way in for durable writes; the writer stops when the last is dropped.
    writer: Writer,
    /// Woken when the spool gets a record, so the drainer need not poll.
    pub spooled: Arc<Notify>,
}

/// What the writer task holds: everything but the write queue's sender, so
/// the task ends (and releases sled's lock) when the last `Spool` is dropped.
#[derive(Clone)]
struct Disk {
    /// Flushed once per group commit; also holds the unreadable records moved aside.
    db: sled::Db,
    /// The records, under big-endian sequence numbers.
    spool: sled::Tree,
    /// The idempotency entries, reached through [`IdempotencyEntries`].
    idempotency: sled::Tree,
    /// Shared by every handle and the writer task.
    counters: Arc<Counters>,
}

struct Counters {
    /// The next spool sequence number: keys are big-endian, so sled's order is FIFO.
    next_seq: AtomicU64,
    /// Records in the spool, for `/readyz` and the gauges without a scan.
    depth: AtomicU64,
    /// Their encoded size, checked against `max_bytes` on every append.
    bytes: AtomicU64,
    /// The bound: past it an append is refused, never a record dropped.
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

    /// Opens (or creates) the spool in `dir` and starts its writer.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        let disk = Disk::open(dir, max_bytes)?;
        disk.publish();
        let depth = disk.counters.depth.load(Ordering::Acquire);
        if depth > 0 {
            let bytes = disk.counters.bytes.load(Ordering::Acquire);
            tracing::info!(
                depth,
                bytes,
                "spool holds records from an earlier run: draining them first"
            );
        }
        let spooled = Arc::new(Notify::new());
        let writer = Writer::start(disk.clone(), spooled.clone());
        Ok(Self {
            disk,
            writer,
            spooled,
        })
    }

    /// Appends `record` to the spool; returns once it is on disk.
    pub async fn append(&self, record: KafkaRecord) -> Result<(), SpoolError> {
        self.writer.write(Write::Append(record)).await
    }

    /// The idempotency entries, which share this spool's disk and writer.
    pub fn idempotency_entries(&self) -> IdempotencyEntries {
        IdempotencyEntries::new(self.disk.idempotency.clone(), self.writer.clone())
    }

    /// The oldest `limit` spooled records, in order, with their sequence numbers.
    pub fn oldest(&self, limit: usize) -> Result<Vec<(u64, KafkaRecord)>, sled::Error> {
        let mut out = Vec::with_capacity(limit);
        for entry in self.disk.spool.iter().take(limit) {
            let (key, value) = entry?;
            match KafkaRecord::from_spool_bytes(&value) {
                Some(record) => out.push((seq_of(&key), record)),
                None => self.move_aside(&key, value)?,
            }
        }
        Ok(out)
    }

    /// Written by this code, so an unreadable record means disk corruption:
    /// keep it out of the way.
    fn move_aside(&self, key: &[u8], value: sled::IVec) -> Result<(), sled::Error> {
        tracing::error!(seq = seq_of(key), "unreadable spool record moved aside");
        metrics::counter!(names::INGEST_SPOOL_UNREADABLE_TOTAL).increment(1);
        self.disk
            .db
            .open_tree(UNREADABLE_TREE)?
            .insert(key, value)?;
        self.forget(&[seq_of(key)])
    }

    /// Removes delivered records from the spool.
    pub fn forget(&self, seqs: &[u64]) -> Result<(), sled::Error> {
        let counters = &self.disk.counters;
        for seq in seqs {
            if let Some(old) = self.disk.spool.remove(seq.to_be_bytes())? {
                counters.depth.fetch_sub(1, Ordering::AcqRel);
                counters.bytes.fetch_sub(old.len() as u64, Ordering::AcqRel);
                counters.full.store(false, Ordering::Release);
            }
        }
        self.disk.publish();
        Ok(())
    }

    pub fn depth(&self) -> u64 {
        self.disk.counters.depth.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> u64 {
        self.disk.counters.bytes.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> u64 {
        self.disk.counters.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// Whether the spool can take more: false once an append was refused for
    /// want of room, until records drain. Read by `/readyz` without waiting.
    pub fn has_capacity(&self) -> bool {
        !self.disk.counters.full.load(Ordering::Acquire)
            && self.bytes() < self.disk.counters.max_bytes
    }

    /// Flushes everything to disk (shutdown).
    pub async fn flush(&self) -> Result<(), sled::Error> {
        self.disk.db.flush_async().await?;
        Ok(())
    }
}

impl Disk {
    fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir)
            // sled caches 1 GiB by default; the spool is written and read
            // once, in order, so a small cache keeps ingest's memory flat.
            // It is this small because sled's own memory still grows with
            // the spool's depth: with a full spool, the two together must
            // stay within ingest's memory target.
            .cache_capacity(4 * 1024 * 1024)
            .flush_every_ms(Some(200))
            .open()
            .with_context(|| {
                format!(
                    "opening the spool in {} (is another ingest using it?)",
                    dir.display()
                )
            })?;
        let spool = db.open_tree("spool")?;
        let idempotency = db.open_tree("idempotency")?;
        let counters = Arc::new(Counters::of(&spool, max_bytes)?);
        Ok(Self {
            db,
            spool,
            idempotency,
            counters,
        })
    }

    /// Adds `record` at the spool's tail, unless that would pass `max_bytes`.
    fn append(&self, record: KafkaRecord) -> Result<(), SpoolError> {
        let value = record.spool_bytes();
        let len = value.len() as u64;
        if self.counters.bytes.load(Ordering::Acquire) + len > self.counters.max_bytes {
            self.counters.full.store(true, Ordering::Release);
            metrics::counter!(names::INGEST_SPOOL_FULL_TOTAL).increment(1);
            return Err(SpoolError::Full);
        }
        let seq = self.counters.next_seq.fetch_add(1, Ordering::AcqRel);
        self.spool.insert(seq.to_be_bytes(), value)?;
        self.counters.depth.fetch_add(1, Ordering::AcqRel);
        self.counters.bytes.fetch_add(len, Ordering::AcqRel);
        Ok(())
    }

    fn publish(&self) {
        metrics::gauge!(names::INGEST_SPOOL_DEPTH)
            .set(self.counters.depth.load(Ordering::Acquire) as f64);
        metrics::gauge!(names::INGEST_SPOOL_BYTES)
            .set(self.counters.bytes.load(Ordering::Acquire) as f64);
        metrics::gauge!(names::INGEST_SPOOL_MAX_BYTES).set(self.counters.max_bytes as f64);
    }
}

impl Counters {
    /// The counters of a spool as found on disk (records of an earlier run included).
    fn of(spool: &sled::Tree, max_bytes: u64) -> Result<Self, sled::Error> {
        let (mut depth, mut bytes) = (0, 0);
        for entry in spool.iter() {
            let (_, value) = entry?;
            depth += 1;
            bytes += value.len() as u64;
        }
        let next_seq = match spool.last()? {
            Some((key, _)) => seq_of(&key) + 1,
            None => 0,
        };
        Ok(Self {
            next_seq: AtomicU64::new(next_seq),
            depth: AtomicU64::new(depth),
            bytes: AtomicU64::new(bytes),
            max_bytes,
            full: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        })
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
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            spool.forget(&first).unwrap();
            assert_eq!(spool.depth(), 40);
        }
        let spool = reopen(&dir).await;
        assert_eq!(spool.depth(), 40);
        let rest = spool.oldest(100).unwrap();
        let payloads: Vec<_> = rest.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(payloads, (10..50).map(record).collect::<Vec<_>>());
        spool.append(record(50)).await.unwrap();
        let (last_seq, last) = spool.oldest(100).unwrap().pop().unwrap();
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
        let spool = Spool::open(&dir, one * 3).unwrap();
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
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        spool.forget(&seqs).unwrap();
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
            .disk
            .spool
            .insert(0u64.to_be_bytes(), &[0, 9, b'x'][..])
            .unwrap();
        let left = spool.oldest(10).unwrap();
        assert_eq!(left, vec![(1, record(1))]);
        assert_eq!(spool.depth(), 1);
        let aside = spool.disk.db.open_tree("spool-unreadable").unwrap();
        assert_eq!(aside.len(), 1);
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
        assert_eq!(spool.oldest(1000).unwrap().len(), 200);
        let flushes = spool.disk.counters.flushes.load(Ordering::Acquire);
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
