//! A lane: collects a batch of its partitions' messages, decodes it (poison
//! to the DLQ), commits it to MySQL, retrying until MySQL takes it, and then
//! passes it on: its deltas to Redis, its offsets to Kafka.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff};
use rdkafka::message::{Message, OwnedMessage};
use shared::event::FeedbackSubmitted;
use shared::metrics::names;
use shared::shutdown::Stop;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Worker;
use crate::config::Config;
use crate::dlq::{DeadLetters, Poison};
use crate::redis_view::DeltaQueue;
use crate::sink::{self, Committed, Received, SinkError};

/// What the router hands a lane, in order.
pub(super) enum LaneInput {
    Message(OwnedMessage),
    /// Partitions this consumer no longer owns: drop what is buffered for them.
    Revoked(HashSet<i32>),
}

/// The router's end of a lane.
pub(super) struct Lane {
    pub(super) tx: mpsc::UnboundedSender<LaneInput>,
    /// Bytes of the messages handed to the lane and not yet committed or dropped.
    pub(super) queued: Arc<AtomicUsize>,
    /// Awaited at shutdown, so the batch in hand is finished (or its panic kept).
    pub(super) task: JoinHandle<()>,
}

/// A message's weight for flow control.
pub(super) fn weight(message: &OwnedMessage) -> usize {
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len) + 64
}

/// Starts lane `index`.
pub(super) fn spawn(worker: Arc<Worker>, index: usize, deltas: DeltaQueue, stop: Stop) -> Lane {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(run(worker, index, rx, queued.clone(), deltas, stop));
    Lane { tx, queued, task }
}

/// One lane: batches, commits, Redis, Kafka, in a loop.
async fn run(
    worker: Arc<Worker>,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<LaneInput>,
    queued: Arc<AtomicUsize>,
    deltas: DeltaQueue,
    stop: Stop,
) {
    let config = &worker.config;
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(config.batch_size);
    loop {
        if !first_message(&mut rx, &mut batch, &stop).await {
            return;
        }
        fill(&mut rx, &mut batch, config, &queued, &stop).await;
        if batch.is_empty() {
            continue;
        }
        let chunk = decode(&worker.dead_letters, &batch).await;
        if !commit_and_pass_on(&worker, index, &chunk, &deltas, &stop).await {
            tracing::info!(
                lane = index,
                messages = batch.len(),
                "shutdown while MySQL was down: batch abandoned, it is redelivered later"
            );
            return;
        }
        queued.fetch_sub(batch.iter().map(weight).sum(), Ordering::Relaxed);
        batch.clear();
        if stop.is_triggered() {
            return;
        }
    }
}

/// Waits for the first message of a batch into the empty `batch`; false on
/// shutdown. Nothing is buffered yet, so a revocation drops nothing.
async fn first_message(
    rx: &mut mpsc::UnboundedReceiver<LaneInput>,
    batch: &mut Vec<OwnedMessage>,
    stop: &Stop,
) -> bool {
    while batch.is_empty() {
        tokio::select! {
            biased;
            () = stop.wait() => return false,
            input = rx.recv() => match input {
                None => return false,
                Some(LaneInput::Message(message)) => batch.push(message),
                Some(LaneInput::Revoked(_)) => {}
            },
        }
    }
    true
}

/// Fills `batch` up to the batch size or until the linger runs out; on
/// shutdown, stops so that what is in hand is committed. A revocation drops
/// the revoked partitions' messages.
async fn fill(
    rx: &mut mpsc::UnboundedReceiver<LaneInput>,
    batch: &mut Vec<OwnedMessage>,
    config: &Config,
    queued: &AtomicUsize,
    stop: &Stop,
) {
    let deadline = tokio::time::Instant::now() + config.linger;
    while batch.len() < config.batch_size && !stop.is_triggered() {
        tokio::select! {
            biased;
            () = stop.wait() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            input = rx.recv() => match input {
                None => break,
                Some(LaneInput::Message(message)) => batch.push(message),
                Some(LaneInput::Revoked(partitions)) => {
                    batch.retain(|m| {
                        let keep = !partitions.contains(&m.partition());
                        if !keep {
                            queued.fetch_sub(weight(m), Ordering::Relaxed);
                        }
                        keep
                    });
                }
            },
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
/// at a time, each would wait out its own retries in turn, and a batch of
/// poison during a broker restart would hold its lane for all of them).
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

/// Commits a chunk to MySQL ([`commit_with_retries`]), then queues its
/// deltas for Redis and records its offsets for Kafka; false when shutdown
/// came while MySQL was down (nothing committed).
async fn commit_and_pass_on(
    worker: &Worker,
    index: usize,
    chunk: &Chunk,
    deltas: &DeltaQueue,
    stop: &Stop,
) -> bool {
    let started = Instant::now();
    let Some(committed) = commit_with_retries(worker, index, chunk, stop).await else {
        return false;
    };
    deltas.push(committed.deltas).await;
    worker.advisory.record(&chunk.consumed);
    worker.advisory.send_when_due(worker);

    metrics::histogram!(names::AGGREGATOR_BATCH_SIZE).record(chunk.messages as f64);
    metrics::histogram!(names::AGGREGATOR_BATCH_DURATION_SECONDS)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(names::AGGREGATOR_EVENTS_APPLIED_TOTAL).increment(committed.applied as u64);
    metrics::counter!(names::AGGREGATOR_DUPLICATES_SKIPPED_TOTAL)
        .increment(committed.duplicates as u64);
    tracing::debug!(
        lane = index,
        messages = chunk.messages,
        applied = committed.applied,
        duplicates = committed.duplicates,
        "batch committed"
    );
    true
}

/// The longest pause before retrying a transaction that hit a deadlock.
const CONFLICT_MAX: Duration = Duration::from_millis(50);

/// Commits a chunk to MySQL. Conflicts (deadlock, lock wait timeout) retry
/// after a pause of a millisecond or a few; an unreachable MySQL retries
/// with backoff until it answers (nothing is skipped) or shutdown (`None`).
async fn commit_with_retries(
    worker: &Worker,
    index: usize,
    chunk: &Chunk,
    stop: &Stop,
) -> Option<Committed> {
    let mut backoff = outage_backoff();
    let mut conflicts = conflict_backoff();
    let mut failing = false;
    let committed = loop {
        let topic = &worker.config.topic;
        match sink::commit_batch(&worker.pool, topic, &chunk.events, &chunk.consumed).await {
            Ok(committed) => break committed,
            Err(SinkError::Conflict(err)) => {
                tracing::debug!(%err, lane = index, "transaction conflict; retrying");
                metrics::counter!(names::AGGREGATOR_SINK_CONFLICTS_TOTAL).increment(1);
                // A short random pause, so that lanes that deadlocked do not
                // take the same locks again in step and deadlock anew.
                tokio::time::sleep(conflicts.next().unwrap_or(CONFLICT_MAX)).await;
            }
            Err(SinkError::Unavailable(err)) => {
                if !failing {
                    failing = true;
                    worker.health.lane_failing();
                    tracing::warn!(%err, lane = index, "MySQL unavailable: lane paused, retrying");
                }
                metrics::counter!(names::AGGREGATOR_SINK_FAILURES_TOTAL).increment(1);
                let delay = backoff.next().unwrap_or(Duration::from_secs(3));
                tokio::select! {
                    biased;
                    () = stop.wait() => {
                        worker.health.lane_stopped_failing();
                        return None;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    if failing {
        worker.health.lane_stopped_failing();
        tracing::info!(lane = index, "MySQL reachable again: lane resumed");
    }
    Some(committed)
}

/// Pauses between tries while MySQL is unreachable.
fn outage_backoff() -> ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Pauses between tries of a transaction that hit a deadlock or lock wait.
fn conflict_backoff() -> ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(CONFLICT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}
