//! The Kafka consumer: group membership, and resuming from MySQL.
//!
//! MySQL's `consumer_offsets` is the record of progress. On every partition
//! assignment the rebalance callback reads it and starts each partition at
//! the offset MySQL recorded (the beginning when MySQL has none), so Kafka's
//! own commits are only advisory. Revocations are passed to the batch loop,
//! which drops what it buffered for partitions it no longer owns.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::Offset;
use tokio::sync::mpsc::UnboundedSender;

/// What the batch loop must know about a rebalance.
#[derive(Debug)]
pub enum Rebalanced {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

pub struct AggregatorContext {
    mysql_url: String,
    topic: String,
    events: UnboundedSender<Rebalanced>,
}

pub type AggregatorConsumer = StreamConsumer<AggregatorContext>;

impl ClientContext for AggregatorContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!("aggregator_consumer_lag", "partition" => partition.to_string())
                        .set(stats.consumer_lag as f64);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

impl ConsumerContext for AggregatorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match claim_offsets_blocking(&self.mysql_url, &self.topic, &partitions) {
                    Ok(stored) => {
                        for partition in &partitions {
                            let offset = stored
                                .get(partition)
                                .map_or(Offset::Beginning, |n| Offset::Offset(*n));
                            let _ = tpl.set_partition_offset(&self.topic, *partition, offset);
                        }
                        tracing::info!(
                            ?partitions,
                            ?stored,
                            "partitions assigned; resuming from MySQL's offsets"
                        );
                    }
                    // MySQL down during a rebalance: Kafka's committed offsets are never
                    // ahead of MySQL's (they are committed after it), and the sink skips
                    // anything already applied, so starting there is safe.
                    Err(err) => {
                        tracing::warn!(%err, ?partitions, "MySQL offsets unavailable: resuming from Kafka's")
                    }
                }
                if let Err(err) = consumer.assign(tpl) {
                    tracing::error!(%err, "assigning partitions failed");
                }
                let _ = self.events.send(Rebalanced::Assigned(partitions));
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!(?err, "rebalance error: dropping the assignment");
                }
                let _ = self.events.send(Rebalanced::Revoked(partitions));
                if let Err(err) = consumer.unassign() {
                    tracing::error!(%err, "unassigning partitions failed");
                }
            }
        }
        metrics::counter!("aggregator_rebalances_total").increment(1);
    }
}

/// Reads MySQL's offsets (`sink::claim_offsets`) from inside librdkafka's
/// callback: on a thread of its own with its own small runtime, so it never
/// blocks or re-enters the service's.
fn claim_offsets_blocking(
    mysql_url: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, i64>> {
    let url = mysql_url.to_owned();
    let topic = topic.to_owned();
    let partitions = partitions.to_vec();
    std::thread::spawn(move || -> anyhow::Result<HashMap<i32, i64>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let pool = shared::db::pool(&url)?;
            let result = tokio::time::timeout(
                Duration::from_secs(5),
                crate::sink::claim_offsets(&pool, &topic, &partitions),
            )
            .await
            .map_err(|_| anyhow::anyhow!("timed out reading offsets"))?
            .map_err(anyhow::Error::from);
            let _ = pool.disconnect().await;
            result
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the offsets thread panicked"))?
}

/// Creates the consumer and subscribes to `topic`.
pub fn subscribe(
    brokers: &str,
    group: &str,
    topic: &str,
    mysql_url: &str,
    events: UnboundedSender<Rebalanced>,
) -> anyhow::Result<AggregatorConsumer> {
    let consumer: AggregatorConsumer = shared::kafka::client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", "20")
        .create_with_context(AggregatorContext {
            mysql_url: mysql_url.to_owned(),
            topic: topic.to_owned(),
            events,
        })
        .context("creating the Kafka consumer")?;
    consumer.subscribe(&[topic]).context("subscribing")?;
    Ok(consumer)
}
