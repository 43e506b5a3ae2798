//! Committing a lane's batch to MySQL, whatever MySQL answers.
//!
//! Passing errors are retried: a conflict (deadlock, lock wait timeout)
//! after a pause of a millisecond or a few, an unreachable MySQL with
//! backoff until it answers, the lane reported failing meanwhile (which
//! pauses consumption: `router.rs`). Nothing is skipped.
//!
//! A refusal (`sink/refusal.rs`: a value MySQL will never store) is not
//! retried as it is: the batch is committed in two halves instead, each in a
//! transaction of its own with the offsets it covers, and a half that is
//! refused is halved again, until each refused event stands alone. That one
//! goes to `quarantined_events` in the transaction that moves its offset
//! past it (`sink/quarantine.rs`); everything else is counted as usual. One
//! refused event in a batch of 100 costs about 14 transactions, and neither
//! this lane's other partitions nor the other lanes wait for an operator.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff};
use rdkafka::message::{Message, OwnedMessage};
use shared::metrics::names;
use shared::shutdown::Stop;

use super::Worker;
use crate::sink::{self, Committed, Quarantined, Received, Refusal, SinkError};

/// How committing a batch ended.
pub(super) enum Outcome {
    /// All of it is committed (or set aside).
    Done(Committed),
    /// Shutdown came first; what was committed before it is here, the rest
    /// is read again by whoever owns the partitions next.
    Stopped(Committed),
}

/// A run of a batch's events, in order, with the last offset it covers per
/// partition (poison messages among them included).
#[derive(Debug)]
struct Part<'a> {
    events: &'a [Received],
    consumed: BTreeMap<i32, i64>,
}

/// Commits `events` (decoded from `batch`) and the offsets `consumed`.
pub(super) async fn commit(
    worker: &Worker,
    lane: usize,
    batch: &[OwnedMessage],
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
    memo: &sink::Memo,
    stop: &Stop,
) -> Outcome {
    let topic = &worker.config.topic;
    let mut done = Committed::default();
    // The parts left, the next one last.
    let mut parts = vec![Part {
        events,
        consumed: consumed.clone(),
    }];
    while let Some(part) = parts.pop() {
        let attempt = retrying(worker, lane, stop, || async {
            let result =
                sink::commit_batch(&worker.pool, topic, part.events, &part.consumed, memo).await;
            // Only offsets to move (poison): nothing to set aside, so wait.
            result.map_err(|err| match part.events {
                [] => err.retried(),
                _ => err,
            })
        })
        .await;
        match attempt {
            None => return Outcome::Stopped(done),
            Some(Ok(committed)) => done.absorb(committed),
            Some(Err(refusal)) => {
                if let [event] = part.events {
                    let Some(set_aside) =
                        set_aside(worker, lane, batch, event, &part.consumed, &refusal, stop).await
                    else {
                        return Outcome::Stopped(done);
                    };
                    done.absorb(set_aside);
                } else {
                    tracing::debug!(lane, events = part.events.len(), %refusal, "MySQL refused a value of these events: committing them in halves");
                    let (first, second) = split(&part);
                    parts.push(second);
                    parts.push(first);
                }
            }
        }
    }
    Outcome::Done(done)
}

/// `part` in two halves of its events, in order. Of a partition with events
/// in the second half, the first covers the offsets before the second's
/// first event (poison included) and the second the rest; a partition
/// without events in the second half goes with the first whole.
fn split<'a>(part: &Part<'a>) -> (Part<'a>, Part<'a>) {
    let (first, second) = part.events.split_at(part.events.len() / 2);
    let mut second_starts: BTreeMap<i32, i64> = BTreeMap::new();
    for r in second {
        let start = second_starts.entry(r.partition).or_insert(r.offset);
        *start = (*start).min(r.offset);
    }
    let in_first: HashSet<i32> = first.iter().map(|r| r.partition).collect();
    let (mut first_consumed, mut second_consumed) = (BTreeMap::new(), BTreeMap::new());
    for (&partition, &last) in &part.consumed {
        match second_starts.get(&partition) {
            Some(&start) => {
                second_consumed.insert(partition, last);
                if in_first.contains(&partition) {
                    first_consumed.insert(partition, start - 1);
                }
            }
            None => {
                first_consumed.insert(partition, last);
            }
        }
    }
    (
        Part {
            events: first,
            consumed: first_consumed,
        },
        Part {
            events: second,
            consumed: second_consumed,
        },
    )
}

/// Puts `event`, which MySQL refused alone, in the quarantine with the
/// offsets `consumed`; `None` at shutdown (nothing written).
async fn set_aside(
    worker: &Worker,
    lane: usize,
    batch: &[OwnedMessage],
    event: &Received,
    consumed: &BTreeMap<i32, i64>,
    refusal: &Refusal,
    stop: &Stop,
) -> Option<Committed> {
    let message = batch
        .iter()
        .find(|m| m.partition() == event.partition && m.offset() == event.offset);
    let payload = match message.and_then(Message::payload) {
        Some(payload) => Cow::Borrowed(payload),
        None => Cow::Owned(event.event.to_json()),
    };
    let entry = Quarantined {
        received: event,
        payload: &payload,
        refusal,
    };
    let topic = &worker.config.topic;
    let written = loop {
        let attempt = retrying(worker, lane, stop, || {
            sink::quarantine(&worker.pool, topic, &entry, consumed)
        });
        match attempt.await? {
            Ok(written) => break written,
            // Not returned: the quarantine retries a refusal of its own write.
            Err(_) => continue,
        }
    };
    if written {
        metrics::counter!(names::AGGREGATOR_QUARANTINED_TOTAL, "reason" => refusal.reason)
            .increment(1);
        tracing::warn!(
            lane,
            partition = event.partition,
            offset = event.offset,
            feedback_id = %event.event.feedback_id,
            course_id = %event.event.course_id,
            reason = refusal.reason,
            code = refusal.code(),
            error = %refusal.message(),
            request_id = entry.received.trace.request_id.as_deref(),
            traceparent = entry.received.trace.traceparent.as_deref(),
            "MySQL refused an event for good: quarantined, not counted"
        );
    }
    Some(Committed {
        quarantined: usize::from(written),
        duplicates: usize::from(!written),
        ..Committed::default()
    })
}

/// The longest pause before retrying a transaction that hit a deadlock.
const CONFLICT_MAX: Duration = Duration::from_millis(50);

/// Runs `attempt` until it succeeds (`Ok`) or MySQL refuses a value (`Err`):
/// conflicts again after a short pause, an unreachable MySQL with backoff
/// until it answers (the lane reported failing meanwhile); `None` at
/// shutdown while MySQL is unreachable.
async fn retrying<T, F, Fut>(
    worker: &Worker,
    lane: usize,
    stop: &Stop,
    mut attempt: F,
) -> Option<Result<T, Refusal>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SinkError>>,
{
    let mut backoff = outage_backoff();
    let mut conflicts = conflict_backoff();
    let mut failing = false;
    let result = loop {
        match attempt().await {
            Ok(value) => break Ok(value),
            Err(SinkError::Refused(refusal)) => break Err(refusal),
            Err(SinkError::Conflict(err)) => {
                tracing::debug!(%err, lane, "transaction conflict; retrying");
                metrics::counter!(names::AGGREGATOR_SINK_CONFLICTS_TOTAL).increment(1);
                // A short random pause, so that lanes that deadlocked do not
                // take the same locks again in step and deadlock anew.
                tokio::time::sleep(conflicts.next().unwrap_or(CONFLICT_MAX)).await;
            }
            Err(SinkError::Unavailable(err)) => {
                if !failing {
                    failing = true;
                    worker.health.lane_failing();
                    tracing::warn!(%err, lane, "MySQL unavailable: lane paused, retrying");
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
        tracing::info!(lane, "MySQL reachable again: lane resumed");
    }
    Some(result)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An event read from `partition` at `offset`.
    fn received(partition: i32, offset: i64) -> Received {
        let event = shared::event::FeedbackSubmitted::new(
            shared::domain::CourseId::parse(format!("C{partition}")).unwrap(),
            shared::domain::StudentKey::derive(b"k", "s"),
            shared::domain::Rating::parse(3).unwrap(),
            None,
        );
        Received {
            partition,
            offset,
            event,
            trace: Default::default(),
        }
    }

    /// Where `part`'s events were read.
    fn positions(part: &Part<'_>) -> Vec<(i32, i64)> {
        part.events
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect()
    }

    #[test]
    fn halves_cover_their_own_offsets_and_the_poison_before_them() {
        // Partition 0: events at 10, 11, (poison 12), 13; partition 1: events
        // at 5, 7 (poison 6 and 8); partition 2: poison only, up to 40.
        let events = [
            received(0, 10),
            received(1, 5),
            received(0, 11),
            received(0, 13),
            received(1, 7),
        ];
        let part = Part {
            events: &events,
            consumed: BTreeMap::from([(0, 13), (1, 8), (2, 40)]),
        };
        let (first, second) = split(&part);
        assert_eq!(positions(&first), [(0, 10), (1, 5)]);
        assert_eq!(positions(&second), [(0, 11), (0, 13), (1, 7)]);
        assert_eq!(first.consumed, BTreeMap::from([(0, 10), (1, 6), (2, 40)]));
        assert_eq!(second.consumed, BTreeMap::from([(0, 13), (1, 8)]));

        // Down to single events, every offset is covered once, in order.
        let (a, b) = split(&first);
        assert_eq!(a.consumed, BTreeMap::from([(0, 10), (2, 40)]));
        assert_eq!(b.consumed, BTreeMap::from([(1, 6)]));
        let (c, d) = split(&second);
        assert_eq!(positions(&c), [(0, 11)]);
        assert_eq!(
            c.consumed,
            BTreeMap::from([(0, 12)]),
            "the poison after it too"
        );
        assert_eq!(d.consumed, BTreeMap::from([(0, 13), (1, 8)]));
        let (e, f) = split(&d);
        assert_eq!(e.consumed, BTreeMap::from([(0, 13)]));
        assert_eq!(f.consumed, BTreeMap::from([(1, 8)]));
    }
}
