//! Poison messages (not JSON, not the schema, an unknown type or version) go
//! to `<topic>.dlq` with the reason in a header, so they never block their
//! partition; the original bytes, key and position travel with them.

use std::time::Duration;

use anyhow::Context;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use shared::metrics::names;

/// The most of a poison message's payload and key a dead letter carries.
/// A broker takes about 1 MiB per message by default (and librdkafka sends
/// at most 1,000,000 bytes): a poison message near that size, with the
/// headers added, would not fit, and be skipped after five tries. Longer
/// ones are cut, saying so and their full length in `x-dlq-truncated`; the
/// whole message stays in the topic at its partition and offset.
pub const MAX_DLQ_PAYLOAD: usize = 512 * 1024;
pub const MAX_DLQ_KEY: usize = 4 * 1024;

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

    /// Sends `poison` to the dead-letter topic, retrying a few times.
    pub async fn send(&self, poison: &Poison) {
        let payload = &poison.payload[..poison.payload.len().min(MAX_DLQ_PAYLOAD)];
        let key = poison
            .key
            .as_ref()
            .map(|key| &key[..key.len().min(MAX_DLQ_KEY)]);
        let truncated = (payload.len() < poison.payload.len()
            || key.map(<[u8]>::len) < poison.key.as_ref().map(Vec::len))
        .then(|| {
            format!(
                "payload {} bytes, key {} bytes",
                poison.payload.len(),
                poison.key.as_ref().map_or(0, Vec::len)
            )
        });
        for attempt in 1..=5 {
            let mut record = FutureRecord::to(&self.topic)
                .payload(payload)
                .headers(headers(poison, truncated.as_deref()));
            if let Some(key) = key {
                record = record.key(key);
            }
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(1)))
                .await
            {
                Ok(_) => {
                    tracing::warn!(partition = poison.partition, offset = poison.offset, reason = %poison.reason, "poison message dead-lettered");
                    metrics::counter!(names::AGGREGATOR_DLQ_TOTAL).increment(1);
                    return;
                }
                Err((err, _)) => {
                    tracing::warn!(%err, attempt, "dead-lettering failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
        tracing::error!(
            partition = poison.partition,
            offset = poison.offset,
            "poison message could not be dead-lettered; skipped"
        );
        metrics::counter!(names::AGGREGATOR_DLQ_FAILED_TOTAL).increment(1);
    }
}

/// A dead letter's headers: why, where the message was, and (`truncated`)
/// how long it was when it had to be cut.
fn headers(poison: &Poison, truncated: Option<&str>) -> OwnedHeaders {
    let partition = poison.partition.to_string();
    let offset = poison.offset.to_string();
    let headers = OwnedHeaders::new()
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
