//! The batch loop: a router and `FEEDBACK_SINK_LANES` lanes.
//!
//! The router reads the consumer and hands each message to the lane of its
//! partition (`partition % lanes`). Each lane collects up to
//! `FEEDBACK_BATCH_SIZE` messages or waits `FEEDBACK_BATCH_LINGER_MS`, then
//! commits them in one MySQL transaction (`sink.rs`), queues the deltas for
//! Redis (`cache.rs`, applied in order by one task while the lane goes on)
//! and records the offsets for Kafka (advisory, committed at most once a
//! second: see [`AdvisoryCommits`]). Lanes run
//! concurrently; a partition always belongs to the same lane, so its
//! transactions commit in offset order, and lanes never share a course (the
//! topic is keyed by course).
//!
//! Flow control: while a lane holds 4 MiB, the router stops taking messages
//! (librdkafka's own bounded queue holds the rest). While MySQL is down, the
//! whole assignment is paused instead and the router keeps polling, so the
//! group keeps this member however long the outage lasts.
//!
//! A revocation travels down every lane's queue in order with the messages,
//! so a lane drops exactly what it buffered for the revoked partitions before
//! it sees anything of the next assignment (whose owner restarts from MySQL's
//! offsets).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use shared::event::FeedbackSubmitted;
use tokio::sync::{mpsc, watch};

use crate::cache::{CacheWriter, DeltaQueue};
use crate::consumer::{AggregatorConsumer, Rebalanced};
use crate::dlq::{DeadLetters, Poison};
use crate::sink::{self, Received, SinkError};
use crate::{Config, Health};

/// What the router and the lanes share.
pub(crate) struct Shared {
    pub config: Config,
    pub consumer: AggregatorConsumer,
    pub pool: mysql_async::Pool,
    pub cache: Arc<CacheWriter>,
    pub dead_letters: DeadLetters,
    pub health: Arc<Health>,
    pub advisory: AdvisoryCommits,
}

/// How often the advisory offsets go to Kafka at most.
const ADVISORY_EVERY: Duration = Duration::from_secs(1);

/// The offsets committed to Kafka, which are advisory: they let tools (lag
/// monitors, `kafka-consumer-groups`) see progress, while MySQL's offsets are
/// what a new owner resumes from. One commit per batch, hundreds a second,
/// cost the broker more CPU than serving the messages themselves, so the
/// lanes record their offsets here and one commit a second carries them.
#[derive(Default)]
pub(crate) struct AdvisoryCommits {
    pending: Mutex<Advisory>,
}

#[derive(Default)]
struct Advisory {
    /// The next offset per partition, not yet sent.
    next: BTreeMap<i32, i64>,
    last_sent: Option<Instant>,
}

impl AdvisoryCommits {
    /// Records a committed batch's offsets.
    fn record(&self, consumed: &BTreeMap<i32, i64>) {
        let mut pending = self.lock();
        for (partition, last) in consumed {
            let next = pending.next.entry(*partition).or_insert(last + 1);
            *next = (*next).max(last + 1);
        }
    }

    /// Sends what is pending if a second has passed since the last commit
    /// (after each batch, and on the router's tick so that the last batches
    /// before a quiet spell reach Kafka too).
    fn send_when_due(&self, shared: &Shared) {
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
        commit_to_kafka(shared, &due);
    }

    /// Forgets what is pending for partitions this consumer no longer owns.
    fn revoke(&self, partitions: &HashSet<i32>) {
        self.lock().next.retain(|p, _| !partitions.contains(p));
    }

    /// Sends whatever is pending (at shutdown; closing the consumer then
    /// waits for it, as it did for every batch's commit before).
    fn flush(&self, shared: &Shared) {
        let next = std::mem::take(&mut self.lock().next);
        if !next.is_empty() {
            commit_to_kafka(shared, &next);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Advisory> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum LaneInput {
    Message(OwnedMessage),
    /// Partitions this consumer no longer owns: drop what is buffered for them.
    Revoked(HashSet<i32>),
}

struct Lane {
    tx: mpsc::UnboundedSender<LaneInput>,
    /// Bytes of the messages handed to the lane and not yet committed or dropped.
    queued: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a lane may hold before the router waits for it.
const LANE_BYTES: usize = 4 << 20;

/// A message's weight for flow control.
fn size(message: &OwnedMessage) -> usize {
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len) + 64
}

/// The lane of a partition.
fn lane_of(partition: i32, lanes: usize) -> usize {
    partition.rem_euclid(lanes as i32) as usize
}

/// Runs the router and the lanes until `stop` turns true; each lane finishes
/// the batch in hand (or abandons it while MySQL is down), then this returns.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rebalances: mpsc::UnboundedReceiver<Rebalanced>,
    mut stop: watch::Receiver<bool>,
) {
    let count = shared.config.lanes;
    let (deltas, redis_task) = shared.cache.spawn_queue();
    let lanes: Vec<Lane> = (0..count)
        .map(|index| {
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            let task = tokio::spawn(lane(
                shared.clone(),
                index,
                rx,
                queued.clone(),
                deltas.clone(),
                stop.clone(),
            ));
            Lane { tx, queued, task }
        })
        .collect();
    // The router waits while a lane has this much in hand (about 50 batches of
    // typical events; comments can be up to a few KiB each).
    let high = LANE_BYTES;
    let mut paused = false;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let failing = !shared.health.sink_up();
        let behind = lanes
            .iter()
            .any(|lane| lane.queued.load(Ordering::Relaxed) >= high);
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            message = shared.consumer.recv(), if failing || !behind => match message {
                Ok(message) => {
                    let message = message.detach();
                    // librdkafka reports rebalances from inside recv(): take
                    // them in before this message, which is of the new assignment.
                    if apply_rebalances(&shared, &mut rebalances, &lanes) {
                        paused = false;
                    }
                    let lane = &lanes[lane_of(message.partition(), count)];
                    lane.queued.fetch_add(size(&message), Ordering::Relaxed);
                    if lane.tx.send(LaneInput::Message(message)).is_err() {
                        break; // the lane ended: shutting down, or it panicked (resumed below)
                    }
                }
                Err(err) => tracing::warn!(%err, "consumer error"),
            },
            _ = tick.tick() => {
                if apply_rebalances(&shared, &mut rebalances, &lanes) {
                    paused = false;
                }
                shared.advisory.send_when_due(&shared);
            }
        }
        if failing != paused {
            paused = failing;
            set_paused(&shared, paused);
        }
    }
    // The first panic of a lane or of the Redis task, kept until all are done.
    let mut panicked = None;
    let mut keep_panic = |ended: Result<(), tokio::task::JoinError>| {
        if let Err(err) = ended {
            if err.is_panic() && panicked.is_none() {
                panicked = Some(err.into_panic());
            }
        }
    };
    for lane in lanes {
        drop(lane.tx);
        keep_panic(lane.task.await);
    }
    // The lanes' clones are gone with them: the task applies what they queued, then ends.
    drop(deltas);
    keep_panic(redis_task.await);
    shared.advisory.flush(&shared);
    // A task that panicked (a bug) ends the process once the others are done:
    // its partitions would otherwise stay assigned to a member that no longer
    // consumes them. MySQL's offsets make the restart safe.
    if let Some(panic) = panicked {
        std::panic::resume_unwind(panic);
    }
}

/// Passes revocations down every lane's queue and keeps `/readyz`'s count.
/// True when partitions were assigned (a new assignment starts unpaused).
fn apply_rebalances(
    shared: &Shared,
    rebalances: &mut mpsc::UnboundedReceiver<Rebalanced>,
    lanes: &[Lane],
) -> bool {
    let mut assigned = false;
    while let Ok(event) = rebalances.try_recv() {
        match event {
            Rebalanced::Revoked(partitions) => {
                let partitions: HashSet<i32> = partitions.into_iter().collect();
                shared.advisory.revoke(&partitions);
                for lane in lanes.iter() {
                    let _ = lane.tx.send(LaneInput::Revoked(partitions.clone()));
                }
                shared.health.assigned.store(0, Ordering::Relaxed);
            }
            Rebalanced::Assigned(partitions) => {
                shared
                    .health
                    .assigned
                    .store(partitions.len(), Ordering::Relaxed);
                assigned = true;
            }
        }
    }
    assigned
}

/// Pauses or resumes fetching for the whole assignment (MySQL down or back).
fn set_paused(shared: &Shared, paused: bool) {
    let Ok(assignment) = shared.consumer.assignment() else {
        return;
    };
    let result = if paused {
        shared.consumer.pause(&assignment)
    } else {
        shared.consumer.resume(&assignment)
    };
    match result {
        Ok(()) if paused => tracing::info!("MySQL unavailable: consumption paused"),
        Ok(()) => tracing::info!("MySQL reachable again: consumption resumed"),
        Err(err) => tracing::warn!(%err, paused, "changing the pause state failed"),
    }
}

/// One lane: batches, commits, Redis, Kafka, in a loop.
async fn lane(
    shared: Arc<Shared>,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<LaneInput>,
    queued: Arc<AtomicUsize>,
    deltas: DeltaQueue,
    mut stop: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(config.batch_size);
    loop {
        // The first message; nothing is buffered yet, so a revocation drops nothing.
        while batch.is_empty() {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                input = rx.recv() => match input {
                    None => return,
                    Some(LaneInput::Message(message)) => batch.push(message),
                    Some(LaneInput::Revoked(_)) => {}
                },
            }
        }
        // Fill up to the batch size or until the linger runs out; on
        // shutdown, commit what is in hand.
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.batch_size && !*stop.borrow() {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep_until(deadline) => break,
                input = rx.recv() => match input {
                    None => break,
                    Some(LaneInput::Message(message)) => batch.push(message),
                    Some(LaneInput::Revoked(partitions)) => {
                        batch.retain(|m| {
                            let keep = !partitions.contains(&m.partition());
                            if !keep {
                                queued.fetch_sub(size(m), Ordering::Relaxed);
                            }
                            keep
                        });
                    }
                },
            }
        }
        if batch.is_empty() {
            continue;
        }
        let chunk = decode(&shared.dead_letters, &batch).await;
        if !commit(&shared, index, &chunk, &deltas, &mut stop).await {
            tracing::info!(
                lane = index,
                messages = batch.len(),
                "shutdown while MySQL was down: batch abandoned, it is redelivered later"
            );
            return;
        }
        queued.fetch_sub(batch.iter().map(size).sum(), Ordering::Relaxed);
        batch.clear();
        if *stop.borrow() {
            return;
        }
    }
}

/// One transaction's worth of messages, decoded.
struct Chunk {
    /// Messages read, poison included.
    messages: usize,
    events: Vec<Received>,
    /// The last offset read per partition (poison included, so it is not read again).
    consumed: BTreeMap<i32, i64>,
}

/// Decodes a batch; poison goes to the DLQ, all of the batch's at once (one
/// at a time, a batch of poison during a broker restart held its lane for
/// minutes).
async fn decode(dead_letters: &DeadLetters, batch: &[OwnedMessage]) -> Chunk {
    let mut chunk = Chunk {
        messages: batch.len(),
        events: Vec::with_capacity(batch.len()),
        consumed: BTreeMap::new(),
    };
    let mut poison = Vec::new();
    for message in batch {
        let last = chunk
            .consumed
            .entry(message.partition())
            .or_insert(message.offset());
        *last = (*last).max(message.offset());
        let payload = message.payload().unwrap_or_default();
        match FeedbackSubmitted::decode(payload) {
            Ok(event) => chunk.events.push(Received {
                partition: message.partition(),
                offset: message.offset(),
                event,
            }),
            Err(err) => poison.push(Poison {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: payload.to_vec(),
                reason: crate::dlq::reason(&err),
            }),
        }
    }
    futures::future::join_all(poison.iter().map(|p| dead_letters.send(p))).await;
    chunk
}

/// The longest pause before retrying a transaction that hit a deadlock.
const CONFLICT_MAX: Duration = Duration::from_millis(50);

/// Commits a chunk to MySQL, then queues its deltas for Redis and records
/// its offsets for Kafka. Conflicts (deadlock, lock wait timeout) retry after
/// a pause of a millisecond or a few; an unreachable MySQL retries with
/// backoff until it answers (nothing is skipped) or shutdown (false).
async fn commit(
    shared: &Shared,
    index: usize,
    chunk: &Chunk,
    deltas: &DeltaQueue,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let started = Instant::now();
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .build();
    let mut conflicts = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(CONFLICT_MAX)
        .with_jitter()
        .without_max_times()
        .build();
    let mut failing = false;
    let committed = loop {
        match sink::commit(
            &shared.pool,
            &shared.config.topic,
            &chunk.events,
            &chunk.consumed,
        )
        .await
        {
            Ok(committed) => break committed,
            Err(SinkError::Conflict(err)) => {
                tracing::debug!(%err, lane = index, "transaction conflict; retrying");
                metrics::counter!("aggregator_sink_conflicts_total").increment(1);
                // A short random pause, so that lanes that deadlocked do not
                // take the same locks again in step and deadlock anew.
                tokio::time::sleep(conflicts.next().unwrap_or(CONFLICT_MAX)).await;
            }
            Err(SinkError::Unavailable(err)) => {
                if !failing {
                    failing = true;
                    shared.health.failing_lanes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, lane = index, "MySQL unavailable: lane paused, retrying");
                }
                metrics::counter!("aggregator_sink_failures_total").increment(1);
                let delay = backoff.next().unwrap_or(Duration::from_secs(3));
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => {
                        shared.health.failing_lanes.fetch_sub(1, Ordering::Relaxed);
                        return false;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    if failing {
        shared.health.failing_lanes.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(lane = index, "MySQL reachable again: lane resumed");
    }
    deltas.push(committed.deltas).await;
    shared.advisory.record(&chunk.consumed);
    shared.advisory.send_when_due(shared);

    metrics::histogram!("aggregator_batch_size").record(chunk.messages as f64);
    metrics::histogram!("aggregator_batch_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("aggregator_events_applied_total").increment(committed.applied as u64);
    metrics::counter!("aggregator_duplicates_skipped_total").increment(committed.duplicates as u64);
    tracing::debug!(
        lane = index,
        messages = chunk.messages,
        applied = committed.applied,
        duplicates = committed.duplicates,
        "batch committed"
    );
    true
}

/// Commits `next` (the next offset per partition) to Kafka, asynchronously.
fn commit_to_kafka(shared: &Shared, next: &BTreeMap<i32, i64>) {
    let mut offsets = TopicPartitionList::new();
    for (partition, next) in next {
        let _ =
            offsets.add_partition_offset(&shared.config.topic, *partition, Offset::Offset(*next));
    }
    if let Err(err) = shared.consumer.commit(&offsets, CommitMode::Async) {
        tracing::debug!(%err, "advisory Kafka commit failed");
    }
}

#[cfg(test)]
mod tests {
    use super::lane_of;

    #[test]
    fn every_partition_has_one_lane_and_every_lane_gets_partitions() {
        let lanes: Vec<usize> = (0..6).map(|p| lane_of(p, 3)).collect();
        assert_eq!(lanes, [0, 1, 2, 0, 1, 2]);
        assert!((0..6).all(|p| lane_of(p, 1) == 0));
        assert_eq!(lane_of(5, 8), 5);
    }
}
