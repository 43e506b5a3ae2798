//! The spool's single writer: it applies every write queued while the last
//! flush ran, flushes once to make them all durable (group commit), then
//! answers each waiting request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use shared::metrics::names;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{Disk, SpoolError};
use crate::record::KafkaRecord;

/// A write that must be on disk before its request is answered.
pub(super) enum Write {
    Append(KafkaRecord),
    /// An idempotency entry: its key and its JSON.
    PutEntry {
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

struct Request {
    write: Write,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// The queue into the writer task.
#[derive(Clone)]
pub(super) struct Writer(mpsc::Sender<Request>);

impl Writer {
    /// Starts the writer task on `disk`; it ends once the last `Writer` is
    /// dropped, and `spooled` is woken after every group commit.
    pub(super) fn start(disk: Disk, spooled: Arc<Notify>) -> Self {
        let (writes, queue) = mpsc::channel(4096);
        tokio::spawn(run(disk, queue, spooled));
        Self(writes)
    }

    /// Queues `write`; returns once it is on disk.
    pub(super) async fn write(&self, write: Write) -> Result<(), SpoolError> {
        let (done, answer) = oneshot::channel();
        self.0
            .send(Request { write, done })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::WriterStopped)?
    }
}

/// Applies everything queued, flushes once, answers all.
async fn run(disk: Disk, mut queue: mpsc::Receiver<Request>, spooled: Arc<Notify>) {
    let mut batch = Vec::with_capacity(256);
    while queue.recv_many(&mut batch, 1024).await > 0 {
        let applied: Vec<_> = batch
            .drain(..)
            .map(|request| (request.done, apply(&disk, request.write)))
            .collect();
        let flushed = disk
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(SpoolError::from);
        disk.counters.flushes.fetch_add(1, Ordering::AcqRel);
        metrics::histogram!(names::INGEST_SPOOL_GROUP_COMMIT_SIZE).record(applied.len() as f64);
        for (done, result) in applied {
            // A write applied but not flushed is not durable: it failed too.
            let _ = done.send(result.and_then(|()| flushed.clone()));
        }
        disk.publish();
        spooled.notify_one();
    }
}

fn apply(disk: &Disk, write: Write) -> Result<(), SpoolError> {
    match write {
        Write::Append(record) => disk.append(record),
        Write::PutEntry { key, value } => {
            disk.idempotency.insert(key, value)?;
            Ok(())
        }
    }
}
