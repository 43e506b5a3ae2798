//! Reading a topic back, to see what a service put on it.

use std::time::Duration;

use crate::resources::{kafka_brokers, unique_name};

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: String,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    /// Its `x-request-id` header.
    pub request_id: Option<String>,
    /// Every header, in order (a value that is not UTF-8 replaced lossily; none as empty).
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("the payload is JSON")
    }

    /// The value of its header `name`, if it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The names of its headers, in order.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(key, _)| key.as_str()).collect()
    }
}

/// Reads `topic` from the beginning until `done` says the messages so far are
/// enough (fails after `limit`). For streams that may carry duplicates.
pub async fn consume_until(
    topic: &str,
    limit: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = shared::kafka::client_config(&kafka_brokers())
        .set("group.id", unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&out) {
        let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(message) => message?,
            Err(_) => anyhow::bail!(
                "{topic}: the awaited messages did not all arrive within {limit:?} ({} read)",
                out.len()
            ),
        };
        let headers: Vec<(String, String)> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let request_id = headers
            .iter()
            .find(|(key, _)| key == "x-request-id")
            .map(|(_, value)| value.clone());
        out.push(Consumed {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            partition: message.partition(),
            offset: message.offset(),
            request_id,
            headers,
        });
    }
    Ok(out)
}

/// Reads `topic` from the beginning until `count` messages arrived (fails after `limit`).
pub async fn consume(topic: &str, count: usize, limit: Duration) -> anyhow::Result<Vec<Consumed>> {
    consume_until(topic, limit, |messages| messages.len() >= count).await
}
