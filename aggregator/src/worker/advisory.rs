//! The offsets committed to Kafka, which are advisory: they let tools (lag
//! monitors, `kafka-consumer-groups`) see progress, while MySQL's offsets are
//! what a new owner resumes from. A commit per batch would cost the broker
//! more CPU than serving the messages themselves, so the lanes record their
//! offsets here and one commit a second carries them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::Worker;

/// How often the advisory offsets go to Kafka at most.
const ADVISORY_EVERY: Duration = Duration::from_secs(1);

/// The lanes' committed offsets on their way to Kafka.
#[derive(Default)]
pub(crate) struct AdvisoryCommits {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// The next offset per partition, not yet sent.
    next: BTreeMap<i32, i64>,
    /// When the last commit went, to keep to one a second.
    last_sent: Option<Instant>,
}

impl AdvisoryCommits {
    /// Records a committed batch's offsets.
    pub(super) fn record(&self, consumed: &BTreeMap<i32, i64>) {
        let mut pending = self.lock();
        for (partition, last) in consumed {
            let next = pending.next.entry(*partition).or_insert(last + 1);
            *next = (*next).max(last + 1);
        }
    }

    /// Sends what is pending if a second has passed since the last commit
    /// (after each batch, and on the router's tick so that the last batches
    /// before a quiet spell reach Kafka too).
    pub(super) fn send_when_due(&self, worker: &Worker) {
        let due = {
            let mut pending = self.lock();
            let recent = pending
                .last_sent
                .is_some_and(|at| at.elapsed() < ADVISORY_EVERY);
            if pending.next.is_empty() || recent {
                return;
            }
            pending.last_sent = Some(Instant::now());
            std::mem::take(&mut pending.next)
        };
        commit_to_kafka(worker, &due);
    }

    /// Forgets what is pending for partitions this consumer no longer owns.
    pub(super) fn revoke(&self, partitions: &HashSet<i32>) {
        self.lock().next.retain(|p, _| !partitions.contains(p));
    }

    /// Sends whatever is pending (at shutdown; closing the consumer then
    /// waits for it).
    pub(super) fn flush(&self, worker: &Worker) {
        let next = std::mem::take(&mut self.lock().next);
        if !next.is_empty() {
            commit_to_kafka(worker, &next);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Commits `next` (the next offset per partition) to Kafka, asynchronously.
fn commit_to_kafka(worker: &Worker, next: &BTreeMap<i32, i64>) {
    let mut offsets = TopicPartitionList::new();
    for (partition, next) in next {
        let _ =
            offsets.add_partition_offset(&worker.config.topic, *partition, Offset::Offset(*next));
    }
    if let Err(err) = worker.consumer.commit(&offsets, CommitMode::Async) {
        tracing::debug!(%err, "advisory Kafka commit failed");
    }
}
