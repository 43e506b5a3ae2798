//! A lane: collects a batch of its partitions' messages, decodes it (poison
//! to the DLQ, waiting until the DLQ takes it), commits it to MySQL,
//! retrying until MySQL takes it or setting aside the events MySQL refuses
//! for good (`commit.rs`), and then passes it on: its deltas to Redis, its
//! offsets to Kafka.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{Message, OwnedMessage};
use shared::event::FeedbackSubmitted;
use shared::metrics::names;
use shared::shutdown::Stop;
use shared::trace::TraceContext;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::commit::{self, Outcome};
use super::Worker;
use crate::config::Config;
use crate::dlq::Poison;
use crate::redis_view::DeltaQueue;
use crate::sink::{Memo, Received};

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
    let mut memo = Memo::default();
    loop {
        if !first_message(&mut rx, &mut batch, &mut memo, &stop).await {
            return;
        }
        fill(&mut rx, &mut batch, config, &queued, &mut memo, &stop).await;
        if batch.is_empty() {
            continue;
        }
        let decoded = decode(&worker, &batch, &stop).await;
        let passed_on = match &decoded {
            Some(chunk) => {
                commit_and_pass_on(&worker, index, &batch, chunk, &mut memo, &deltas, &stop).await
            }
            None => false,
        };
        if !passed_on {
            tracing::info!(
                lane = index,
                messages = batch.len(),
                "shutdown while MySQL or the DLQ was down: batch abandoned, it is redelivered later"
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
/// shutdown. Nothing is buffered yet, so a revocation drops only the memo.
async fn first_message(
    rx: &mut mpsc::UnboundedReceiver<LaneInput>,
    batch: &mut Vec<OwnedMessage>,
    memo: &mut Memo,
    stop: &Stop,
) -> bool {
    while batch.is_empty() {
        tokio::select! {
            biased;
            () = stop.wait() => return false,
            input = rx.recv() => match input {
                None => return false,
                Some(LaneInput::Message(message)) => batch.push(message),
                Some(LaneInput::Revoked(_)) => memo.clear(),
            },
        }
    }
    true
}

/// Fills `batch` up to the batch size or until the linger runs out; on
/// shutdown, stops so that what is in hand is committed. A revocation drops
/// the revoked partitions' messages, and the memo (its versions would tell
/// it apart from a later owner's writes too; it only frees the memory).
async fn fill(
    rx: &mut mpsc::UnboundedReceiver<LaneInput>,
    batch: &mut Vec<OwnedMessage>,
    config: &Config,
    queued: &AtomicUsize,
    memo: &mut Memo,
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
                    memo.clear();
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
/// A dead letter is never skipped: the batch waits until each is written;
/// `None` when shutdown came first (the batch is read again later).
async fn decode(worker: &Worker, batch: &[OwnedMessage], stop: &Stop) -> Option<Chunk> {
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
            Ok(event) => {
                chunk.events.push(Received {
                    partition: message.partition(),
                    offset: message.offset(),
                    event,
                    trace: TraceContext::from_kafka(message.headers()),
                });
            }
            Err(err) => poison.push(Poison {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: payload.to_vec(),
                headers: message.headers().cloned(),
                reason: crate::dlq::reason(&err),
            }),
        }
    }
    let sends = poison
        .iter()
        .map(|p| worker.dead_letters.send(p, stop, &worker.health));
    let written = futures::future::join_all(sends).await;
    written.into_iter().all(|sent| sent).then_some(chunk)
}

/// Commits a chunk, decoded from `batch`, to MySQL (`commit.rs`), then
/// queues its deltas for Redis and records its offsets for Kafka; false when
/// shutdown came while MySQL was down (the part committed by then still
/// goes to Redis; the offsets for Kafka wait for the rest).
async fn commit_and_pass_on(
    worker: &Worker,
    index: usize,
    batch: &[OwnedMessage],
    chunk: &Chunk,
    memo: &mut Memo,
    deltas: &DeltaQueue,
    stop: &Stop,
) -> bool {
    let started = Instant::now();
    let spans = event_spans(index, chunk);
    let outcome = commit::commit(
        worker,
        index,
        batch,
        &chunk.events,
        &chunk.consumed,
        memo,
        stop,
    )
    .await;
    drop(spans);
    let committed = match outcome {
        Outcome::Done(committed) => {
            memo.learn(&committed.seen, &committed.rows);
            committed
        }
        Outcome::Stopped(partly) => {
            metrics::counter!(names::AGGREGATOR_EVENTS_APPLIED_TOTAL)
                .increment(partly.applied as u64);
            deltas.push(partly.deltas).await;
            return false;
        }
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
        quarantined = committed.quarantined,
        "batch committed"
    );
    log_events(index, chunk);
    true
}

/// The target of the per-event lines: `RUST_LOG=info,aggregator::events=debug`
/// turns them on alone.
const EVENTS: &str = "aggregator::events";

/// When spans are exported (`shared::telemetry`): one per event that came
/// with a `traceparent`, a child of the client's span, open while its batch
/// commits. An event without one gets none: a new trace per event would be
/// thousands a second that no one asked for.
fn event_spans(lane: usize, chunk: &Chunk) -> Vec<tracing::Span> {
    if !shared::telemetry::exporting() {
        return Vec::new();
    }
    chunk
        .events
        .iter()
        .filter_map(|received| {
            let trace = &received.trace;
            let traceparent = trace.traceparent.as_deref()?;
            let span = tracing::info_span!(
                target: EVENTS,
                "commit event",
                lane,
                feedback_id = %received.event.feedback_id,
                course_id = %received.event.course_id,
                partition = received.partition,
                offset = received.offset,
                request_id = trace.request_id.as_deref(),
            );
            shared::trace::continue_trace(&span, traceparent);
            Some(span)
        })
        .collect()
}

/// One DEBUG line per event of a committed batch, with the request id and
/// `traceparent` ingest put on its record: what ties a submission's access
/// line in ingest to the aggregator. DEBUG, not INFO: at thousands of events
/// a second a line each would be most of the log, and the counts are in the
/// metrics (`aggregator_events_applied_total`, the batch histograms). A
/// duplicate the sink skipped, or an event it quarantined (which has a WARN
/// line of its own), is logged too: it was in the batch committed.
fn log_events(lane: usize, chunk: &Chunk) {
    if !tracing::enabled!(target: EVENTS, tracing::Level::DEBUG) {
        return;
    }
    for received in &chunk.events {
        let trace = &received.trace;
        tracing::debug!(
            target: EVENTS,
            lane,
            feedback_id = %received.event.feedback_id,
            course_id = %received.event.course_id,
            partition = received.partition,
            offset = received.offset,
            request_id = trace.request_id.as_deref(),
            traceparent = trace.traceparent.as_deref(),
            "event committed"
        );
    }
}
