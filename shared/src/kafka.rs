//! Kafka set-up both ingest and the aggregator need: the base client
//! configuration, topic creation and the dead-letter topic's name.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

/// Partitions of a topic created by the services (the contract's 6).
pub const PARTITIONS: i32 = 6;

/// How long the feedback topic keeps its events (`retention.ms`): the
/// seeds' design keeps a week, long enough to replay into a rebuilt database
/// after a week-end's outage. MySQL holds the history for good.
pub const EVENTS_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Configuration every client starts from.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "4");
    config
}

/// The producer settings of a submission: ingest's, and the bench's Kafka
/// floor, which must produce as ingest does to be its limit. Every request
/// waits for its acknowledgement by all in-sync replicas, with idempotence
/// so librdkafka's retries never write a message twice.
pub fn submission_producer_config(brokers: &str, delivery_timeout: Duration) -> ClientConfig {
    let mut config = client_config(brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Each request waits for its acknowledgement, so linger is latency
        // paid by every submission: it stays short.
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        )
        .set("socket.timeout.ms", "3000")
        .set("topic.metadata.refresh.interval.ms", "10000");
    config
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Creates a submissions topic (`topic`) unless it exists: the contract's
/// partitions, keeping its events for [`EVENTS_RETENTION`]. Ingest, the
/// aggregator, the tests and the bench each make the same topic.
pub async fn ensure_events_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    ensure_topic(brokers, topic, PARTITIONS, Some(EVENTS_RETENTION)).await
}

/// Creates `topic` with `partitions` partitions unless it exists, keeping
/// its messages for `retention` (`None`: until deleted by hand). An existing
/// topic keeps the settings it has: an operator may have changed them.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    retention: Option<Duration>,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let retention_ms = retention.map_or_else(|| "-1".to_owned(), |r| r.as_millis().to_string());
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("retention.ms", &retention_ms);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}
