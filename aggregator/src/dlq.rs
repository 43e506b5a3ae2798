//! Poison messages (not JSON, not the schema, an unknown type or version) go
//! to `<topic>.dlq` with the reason in a header, so they never block their
//! partition; the original bytes, key, headers (the request id and
//! `traceparent` ingest set among them) and position travel with them.
//! A dead letter is never skipped: while the DLQ refuses one, its batch
//! waits (consumption paused) and tries again, so nothing past it commits.

use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBackoff};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use shared::metrics::names;
use shared::shutdown::Stop;

use crate::health::Health;

/// The most of a poison message's payload and key a dead letter carries.
/// A broker takes about 1 MiB per message by default (and librdkafka sends
/// at most 1,000,000 bytes): a poison message near that size, with the
/// headers added, would not fit, and hold its partition for ever. Longer
/// ones are cut, saying so and their full length in `x-dlq-truncated`; the
/// whole message stays in the topic at its partition and offset.
pub const MAX_DLQ_PAYLOAD: usize = 512 * 1024;
pub const MAX_DLQ_KEY: usize = 4 * 1024;
/// The most of a poison message's own headers (names and values) a dead
/// letter carries, for the same reason: the first ones are kept whole, and
/// `x-dlq-truncated` says how many bytes there were.
pub const MAX_DLQ_HEADERS: usize = 64 * 1024;

/// The headers a dead letter sets itself. A poison message's own header of
/// one of these names (a dead letter an operator put back on the topic) is
/// left out, so a reader finds each once, about this dead-lettering.
const DLQ_HEADERS: [&str; 4] = [
    "x-dlq-reason",
    "x-original-partition",
    "x-original-offset",
    "x-dlq-truncated",
];

/// The longest reason a dead letter (and its log line) carries.
pub const MAX_REASON: usize = 1024;

/// Why `err` made a message poison, cut to [`MAX_REASON`] bytes: decode
/// errors quote what they were given (an unknown field's name, a wrong
/// value), which a crafted message can make a megabyte long.
pub fn reason(err: &impl std::fmt::Display) -> String {
    let mut reason = err.to_string();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON - "…".len();
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

/// A message that could not be used.
pub struct Poison {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Its own headers, ingest's trace among them (`shared::trace`).
    pub headers: Option<OwnedHeaders>,
    pub reason: String,
}

impl DeadLetters {
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let producer = shared::kafka::client_config(brokers)
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "10000")
            .create()
            .context("creating the dead-letter producer")?;
        Ok(Self {
            producer,
            topic: shared::kafka::dlq_topic(topic),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `poison` to the dead-letter topic, trying again with backoff
    /// until the broker takes it (`health` says it waits meanwhile, and the
    /// router pauses consumption). False when `stop` came while it waited:
    /// then nothing of its batch may be committed, and the batch is read
    /// again later (a send in flight may still land: a dead letter is then
    /// written twice, never not at all).
    pub(crate) async fn send(&self, poison: &Poison, stop: &Stop, health: &Health) -> bool {
        let payload = &poison.payload[..poison.payload.len().min(MAX_DLQ_PAYLOAD)];
        let key = poison
            .key
            .as_ref()
            .map(|key| &key[..key.len().min(MAX_DLQ_KEY)]);
        let (carried, headers_cut) = carried_headers(poison.headers.as_ref());
        let truncated = (payload.len() < poison.payload.len()
            || key.map(<[u8]>::len) < poison.key.as_ref().map(Vec::len)
            || headers_cut.is_some())
        .then(|| {
            let mut said = format!(
                "payload {} bytes, key {} bytes",
                poison.payload.len(),
                poison.key.as_ref().map_or(0, Vec::len)
            );
            if let Some(all) = headers_cut {
                said.push_str(&format!(", headers {all} bytes"));
            }
            said
        });
        let trace = shared::trace::TraceContext::from_kafka(poison.headers.as_ref());
        let mut backoff = dlq_backoff();
        let mut waiting = false;
        let sent = loop {
            let mut record = FutureRecord::to(&self.topic)
                .payload(payload)
                .headers(headers(&carried, poison, truncated.as_deref()));
            if let Some(key) = key {
                record = record.key(key);
            }
            let sending = self
                .producer
                .send(record, Timeout::After(Duration::from_secs(1)));
            // Once it waits, shutdown need not wait out a send's timeout.
            let result = tokio::select! {
                biased;
                () = stop.wait(), if waiting => break false,
                result = sending => result,
            };
            match result {
                Ok(_) => {
                    tracing::warn!(
                        partition = poison.partition,
                        offset = poison.offset,
                        reason = %poison.reason,
                        request_id = trace.request_id.as_deref(),
                        traceparent = trace.traceparent.as_deref(),
                        "poison message dead-lettered"
                    );
                    metrics::counter!(names::AGGREGATOR_DLQ_TOTAL).increment(1);
                    break true;
                }
                Err((err, _)) => {
                    metrics::counter!(names::AGGREGATOR_DLQ_FAILED_TOTAL).increment(1);
                    if !waiting {
                        waiting = true;
                        health.dead_letter_waiting();
                    }
                    tracing::warn!(
                        %err,
                        partition = poison.partition,
                        offset = poison.offset,
                        request_id = trace.request_id.as_deref(),
                        traceparent = trace.traceparent.as_deref(),
                        "dead-lettering failed: the partition waits, retrying"
                    );
                    let delay = backoff.next().unwrap_or(DLQ_RETRY_MAX);
                    tokio::select! {
                        biased;
                        () = stop.wait() => break false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        if waiting {
            health.dead_letter_stopped_waiting();
        }
        sent
    }
}

/// The longest pause between tries of a dead letter.
const DLQ_RETRY_MAX: Duration = Duration::from_secs(5);

/// Pauses between tries of a dead letter the DLQ refused.
fn dlq_backoff() -> ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(DLQ_RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A header as the poison message had it: its name and value.
type Carried<'a> = (&'a str, Option<&'a [u8]>);

/// The poison message's own headers a dead letter carries, in order: all
/// but those it sets itself, up to [`MAX_DLQ_HEADERS`] bytes (the first ones
/// whole); and, when some did not fit, how many bytes its headers had in all.
fn carried_headers(headers: Option<&OwnedHeaders>) -> (Vec<Carried<'_>>, Option<usize>) {
    let Some(headers) = headers else {
        return (Vec::new(), None);
    };
    let (mut carried, mut kept, mut all, mut cut) = (Vec::new(), 0, 0, false);
    for header in headers.iter() {
        let len = header.key.len() + header.value.map_or(0, <[u8]>::len);
        all += len;
        if cut || DLQ_HEADERS.contains(&header.key) {
            continue;
        }
        if kept + len > MAX_DLQ_HEADERS {
            cut = true;
            continue;
        }
        kept += len;
        carried.push((header.key, header.value));
    }
    (carried, cut.then_some(all))
}

/// A dead letter's headers: the poison message's own (`carried`), then
/// why, where the message was, and (`truncated`) how long it was when it had
/// to be cut.
fn headers(carried: &[Carried<'_>], poison: &Poison, truncated: Option<&str>) -> OwnedHeaders {
    let partition = poison.partition.to_string();
    let offset = poison.offset.to_string();
    let original = carried
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header { key, value: *value })
        });
    let headers = original
        .insert(Header {
            key: "x-dlq-reason",
            value: Some(poison.reason.as_bytes()),
        })
        .insert(Header {
            key: "x-original-partition",
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: "x-original-offset",
            value: Some(offset.as_bytes()),
        });
    match truncated {
        Some(truncated) => headers.insert(Header {
            key: "x-dlq-truncated",
            value: Some(truncated.as_bytes()),
        }),
        None => headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_carries_the_first_headers_that_fit_and_none_of_its_own_names() {
        let big = vec![b'v'; MAX_DLQ_HEADERS / 2];
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "x-request-id",
                value: Some("r-1"),
            })
            .insert(Header {
                key: "x-dlq-reason",
                value: Some("stale"),
            })
            .insert(Header {
                key: "a",
                value: Some(&big[..]),
            })
            .insert(Header {
                key: "b",
                value: Some(&big[..]),
            })
            .insert(Header {
                key: "traceparent",
                value: Some("small, but after one that did not fit"),
            });
        let (carried, cut) = carried_headers(Some(&headers));
        let names: Vec<&str> = carried.iter().map(|(key, _)| *key).collect();
        assert_eq!(names, ["x-request-id", "a"]);
        let all = "x-request-id".len()
            + 3
            + "x-dlq-reason".len()
            + 5
            + 2 * (1 + big.len())
            + "traceparent".len()
            + 37;
        assert_eq!(cut, Some(all));
        assert_eq!(carried_headers(None), (Vec::new(), None));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(reason(&"short"), "short");
        for long in ["x".repeat(5000), "课".repeat(2000)] {
            let cut = reason(&long);
            assert!(cut.len() <= MAX_REASON, "{}", cut.len());
            assert!(cut.ends_with('…'));
            assert!(long.starts_with(cut.trim_end_matches('…')));
        }
    }
}
