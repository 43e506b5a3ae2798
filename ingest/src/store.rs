//! The local disk store (sled), behind a narrow interface: the spool of
//! records waiting for Kafka, and the idempotency records.
//!
//! Writes that must be durable before a request is answered go through one
//! writer task that applies every queued write and then flushes once: group
//! commit, so concurrent requests share one `fsync`.
//! The spool is bounded in bytes; a full spool refuses, it never drops.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

/// A Kafka record waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpooledRecord {
    /// The Kafka key: the course id.
    pub key: String,
    /// The event JSON.
    pub payload: Vec<u8>,
    /// The request id that accepted it, carried into the Kafka header.
    pub request_id: String,
}

impl SpooledRecord {
    /// On disk: key length (u16 BE), key, request id length (u16 BE), request id, payload.
    pub fn encode(&self) -> Vec<u8> {
        let key = &self.key.as_bytes()[..self.key.len().min(u16::MAX as usize)];
        let id = &self.request_id.as_bytes()[..self.request_id.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(4 + key.len() + id.len() + self.payload.len());
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let take = |at: usize| -> Option<(String, usize)> {
            let len = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
            let text = std::str::from_utf8(bytes.get(at + 2..at + 2 + len)?).ok()?;
            Some((text.to_owned(), at + 2 + len))
        };
        let (key, at) = take(0)?;
        let (request_id, at) = take(at)?;
        Some(Self {
            key,
            request_id,
            payload: bytes[at..].to_vec(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the spool is full")]
    Full,
    #[error("disk store: {0}")]
    Disk(String),
}

enum Write {
    Append(SpooledRecord),
    Put { key: Vec<u8>, value: Vec<u8> },
}

struct Request {
    write: Write,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The spool and the idempotency records on disk.
#[derive(Clone)]
pub struct Store {
    disk: Disk,
    writes: mpsc::Sender<Request>,
    /// Woken when the spool gets a record, so the drainer need not poll.
    pub spooled: Arc<Notify>,
}

/// What the writer task holds: everything but the write queue's sender, so
/// the task ends (and releases sled's lock) when the last `Store` is dropped.
#[derive(Clone)]
struct Disk {
    db: sled::Db,
    spool: sled::Tree,
    idempotency: sled::Tree,
    counters: Arc<Counters>,
}

struct Counters {
    /// The next spool sequence number: keys are big-endian, so sled's order is FIFO.
    next_seq: AtomicU64,
    depth: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    /// Set when an append was refused for want of room; cleared when records leave.
    full: AtomicBool,
    /// Group commits so far (one `fsync` each).
    flushes: AtomicU64,
}

impl Store {
    /// Opens the store as [`Store::open`] does, waiting up to `wait` for the
    /// spool's lock: an ingest that is still stopping (a quick restart) holds
    /// it for a moment. Any other failure is returned at once.
    pub async fn open_waiting(dir: &Path, max_bytes: u64, wait: Duration) -> anyhow::Result<Self> {
        const POLL: Duration = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            match Self::open(dir, max_bytes) {
                Err(err)
                    if format!("{err:#}").contains("could not acquire lock")
                        && started.elapsed() < wait =>
                {
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

    /// Opens (or creates) the store in `dir` and starts its writer.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir)
            // sled caches 1 GiB by default; the spool is written and read
            // once, in order, so a small cache keeps ingest's memory flat.
            // sled's memory still grows with the spool's depth: with a full
            // spool (256 MiB, 790k submissions) peak RSS was 60 MiB at a
            // 4 MiB cache and 65-66 MiB at 8 MiB, against the 64 MiB target.
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
        let counters = Arc::new(Counters {
            next_seq: AtomicU64::new(next_seq),
            depth: AtomicU64::new(depth),
            bytes: AtomicU64::new(bytes),
            max_bytes,
            full: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        });
        let (writes, queue) = mpsc::channel(4096);
        let disk = Disk {
            db,
            spool,
            idempotency,
            counters,
        };
        let spooled = Arc::new(Notify::new());
        disk.publish();
        if depth > 0 {
            tracing::info!(
                depth,
                bytes,
                "spool holds records from an earlier run: draining them first"
            );
        }
        tokio::spawn(disk.clone().writer(queue, spooled.clone()));
        Ok(Self {
            disk,
            writes,
            spooled,
        })
    }

    /// Appends `record` to the spool; returns once it is on disk.
    pub async fn append(&self, record: SpooledRecord) -> Result<(), StoreError> {
        self.submit(Write::Append(record)).await
    }

    /// Stores an idempotency record; returns once it is on disk.
    pub async fn remember(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.submit(Write::Put { key, value }).await
    }

    async fn submit(&self, write: Write) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.writes
            .send(Request { write, done })
            .await
            .map_err(|_| StoreError::Disk("the store is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Disk("the store writer stopped".into()))?
    }

    /// The oldest `limit` spooled records, in order, with their sequence numbers.
    pub fn oldest(&self, limit: usize) -> anyhow::Result<Vec<(u64, SpooledRecord)>> {
        let mut out = Vec::with_capacity(limit);
        for entry in self.disk.spool.iter().take(limit) {
            let (key, value) = entry?;
            match SpooledRecord::decode(&value) {
                Some(record) => out.push((seq_of(&key), record)),
                None => {
                    // Written by this code, so this means disk corruption: keep it out of the way.
                    tracing::error!(seq = seq_of(&key), "unreadable spool record moved aside");
                    metrics::counter!("ingest_spool_unreadable_total").increment(1);
                    self.disk
                        .db
                        .open_tree("spool-unreadable")?
                        .insert(&key, value.clone())?;
                    self.forget(&[seq_of(&key)])?;
                }
            }
        }
        Ok(out)
    }

    /// Removes delivered records from the spool.
    pub fn forget(&self, seqs: &[u64]) -> anyhow::Result<()> {
        for seq in seqs {
            if let Some(old) = self.disk.spool.remove(seq.to_be_bytes())? {
                self.disk.counters.depth.fetch_sub(1, Ordering::AcqRel);
                self.disk
                    .counters
                    .bytes
                    .fetch_sub(old.len() as u64, Ordering::AcqRel);
                self.disk.counters.full.store(false, Ordering::Release);
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

    /// The idempotency tree, for [`crate::idempotency`].
    pub fn idempotency_tree(&self) -> &sled::Tree {
        &self.disk.idempotency
    }

    /// Flushes everything to disk (shutdown).
    pub async fn flush(&self) -> anyhow::Result<()> {
        self.disk.db.flush_async().await?;
        Ok(())
    }
}

impl Disk {
    /// The single writer: applies everything queued, flushes once, answers all.
    async fn writer(self, mut queue: mpsc::Receiver<Request>, spooled: Arc<Notify>) {
        let mut batch = Vec::with_capacity(256);
        while queue.recv_many(&mut batch, 1024).await > 0 {
            let mut applied = Vec::with_capacity(batch.len());
            for request in batch.drain(..) {
                let result = self.apply(request.write);
                applied.push((request.done, result));
            }
            let flushed = self
                .db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Disk(e.to_string()));
            self.counters.flushes.fetch_add(1, Ordering::AcqRel);
            metrics::histogram!("ingest_spool_group_commit_size").record(applied.len() as f64);
            for (done, result) in applied {
                let result = match (result, &flushed) {
                    (Ok(()), Err(e)) => Err(StoreError::Disk(e.to_string())),
                    (result, _) => result,
                };
                let _ = done.send(result);
            }
            self.publish();
            spooled.notify_one();
        }
    }

    fn apply(&self, write: Write) -> Result<(), StoreError> {
        match write {
            Write::Append(record) => {
                let value = record.encode();
                let len = value.len() as u64;
                if self.counters.bytes.load(Ordering::Acquire) + len > self.counters.max_bytes {
                    self.counters.full.store(true, Ordering::Release);
                    metrics::counter!("ingest_spool_full_total").increment(1);
                    return Err(StoreError::Full);
                }
                let seq = self.counters.next_seq.fetch_add(1, Ordering::AcqRel);
                self.spool
                    .insert(seq.to_be_bytes(), value)
                    .map_err(|e| StoreError::Disk(e.to_string()))?;
                self.counters.depth.fetch_add(1, Ordering::AcqRel);
                self.counters.bytes.fetch_add(len, Ordering::AcqRel);
                Ok(())
            }
            Write::Put { key, value } => self
                .idempotency
                .insert(key, value)
                .map(|_| ())
                .map_err(|e| StoreError::Disk(e.to_string())),
        }
    }

    fn publish(&self) {
        metrics::gauge!("ingest_spool_depth")
            .set(self.counters.depth.load(Ordering::Acquire) as f64);
        metrics::gauge!("ingest_spool_bytes")
            .set(self.counters.bytes.load(Ordering::Acquire) as f64);
        metrics::gauge!("ingest_spool_max_bytes").set(self.counters.max_bytes as f64);
    }
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

    fn record(i: usize) -> SpooledRecord {
        SpooledRecord {
            key: format!("C{}", i % 3),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
            request_id: format!("r{i}"),
        }
    }

    #[tokio::test]
    async fn an_open_waits_for_an_ingest_still_releasing_the_spool() {
        let dir = tempdir();
        let first = Store::open(&dir, 1 << 20).unwrap();
        first.append(record(1)).await.unwrap();
        assert!(Store::open(&dir, 1 << 20).is_err(), "the spool is locked");
        let started = std::time::Instant::now();
        // The writer task of `first` lets go of the database once its queue
        // closes; the second open waits for that instead of failing. (On a
        // current-thread runtime too: the wait must not block the thread.)
        let release = async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(first);
        };
        let (second, ()) = tokio::join!(
            Store::open_waiting(&dir, 1 << 20, Duration::from_secs(10)),
            release
        );
        let second = second.expect("the spool once the first ingest let go");
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert_eq!(second.depth(), 1);

        // Another failure is returned at once.
        let file = dir.join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let started = std::time::Instant::now();
        assert!(Store::open_waiting(&file, 1 << 20, Duration::from_secs(10))
            .await
            .is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn records_come_back_in_append_order_and_survive_a_reopen() {
        let dir = tempdir();
        {
            let store = Store::open(&dir, 1 << 20).unwrap();
            for i in 0..50 {
                store.append(record(i)).await.unwrap();
            }
            assert_eq!(store.depth(), 50);
            let first: Vec<_> = store
                .oldest(10)
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            store.forget(&first).unwrap();
            assert_eq!(store.depth(), 40);
        }
        let store = reopen(&dir).await;
        assert_eq!(store.depth(), 40);
        let rest = store.oldest(100).unwrap();
        let payloads: Vec<_> = rest.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(payloads, (10..50).map(record).collect::<Vec<_>>());
        store.append(record(50)).await.unwrap();
        let (last_seq, last) = store.oldest(100).unwrap().pop().unwrap();
        assert_eq!(last, record(50));
        assert!(
            last_seq > rest.last().unwrap().0,
            "sequence numbers keep growing after a reopen"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_instead_of_dropping() {
        let dir = tempdir();
        let one = record(0).encode().len() as u64;
        let store = Store::open(&dir, one * 3).unwrap();
        for i in 0..3 {
            store.append(record(i)).await.unwrap();
        }
        assert!(!store.has_capacity());
        assert!(matches!(
            store.append(record(3)).await,
            Err(StoreError::Full)
        ));
        assert_eq!(store.depth(), 3);
        let seqs: Vec<_> = store
            .oldest(1)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        store.forget(&seqs).unwrap();
        assert!(store.has_capacity());
        store.append(record(4)).await.unwrap();
    }

    #[test]
    fn records_encode_compactly_and_decode_back() {
        let r = SpooledRecord {
            key: "课程-1".into(),
            payload: b"{\"a\":1}".to_vec(),
            request_id: "rid".into(),
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), 2 + "课程-1".len() + 2 + 3 + 7);
        assert_eq!(SpooledRecord::decode(&bytes), Some(r));
        assert_eq!(SpooledRecord::decode(&[0, 9, b'x']), None);
    }

    #[tokio::test]
    async fn concurrent_appends_share_flushes_and_all_land() {
        let dir = tempdir();
        let store = Store::open(&dir, 1 << 24).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.append(record(i)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.depth(), 200);
        assert_eq!(store.oldest(1000).unwrap().len(), 200);
        let flushes = store.disk.counters.flushes.load(Ordering::Acquire);
        assert!(
            (1..=20).contains(&flushes),
            "200 appends in {flushes} group commits"
        );
    }

    /// Opens again once the previous writer task has let go of sled's lock.
    async fn reopen(dir: &std::path::Path) -> Store {
        for _ in 0..100 {
            if let Ok(store) = Store::open(dir, 1 << 20) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the store was not released")
    }

    pub(crate) fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ingest-store-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
