//! The Kafka consumer: group membership, and resuming from MySQL.
//!
//! MySQL's `consumer_offsets` is the record of progress. On every partition
//! assignment the rebalance callback reads it and starts each partition at
//! the offset MySQL recorded (the beginning when MySQL has none), so Kafka's
//! own commits are only advisory (`start_offsets.rs` reads and claims those
//! offsets). Revocations are passed to the batch loop, which drops what it
//! buffered for partitions it no longer owns.

pub mod start_offsets;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::Offset;
use shared::metrics::names;
use tokio::sync::mpsc::UnboundedSender;

use start_offsets::{claim_offsets_blocking, rewind_offset_blocking};

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
                // librdkafka says -1 for a partition this replica does not
                // consume (revoked in a rebalance, say): shown as 0, so that
                // the replicas' figures add up to the group's lag instead of
                // one keeping a revoked partition's last figure for good.
                if *partition >= 0 {
                    metrics::gauge!(names::AGGREGATOR_CONSUMER_LAG, "partition" => partition.to_string())
                        .set(stats.consumer_lag.max(0) as f64);
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
                    Ok(mut stored) => {
                        self.rewind_past_log_end(consumer, &partitions, &mut stored);
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
        metrics::counter!(names::AGGREGATOR_REBALANCES_TOTAL).increment(1);
    }
}

impl AggregatorContext {
    /// A partition whose recorded offset lies past the end of its log: Kafka
    /// lost the log (a broker's data wiped, the topic deleted and made again)
    /// while MySQL kept its offsets. Starting there would skip every new
    /// message until the log grew past the old offset. So such a partition
    /// starts again at its log's beginning, and MySQL's offset moves back
    /// with it; what was applied already is a duplicate, which the sink
    /// skips by `feedback_id`. Only this member's `assigned` partitions (the
    /// others' offsets are their owners'), read with three tries in 10 s in
    /// all; when the log's end cannot be read, or MySQL not updated, the
    /// offset stays as it was (and the error says so).
    fn rewind_past_log_end(
        &self,
        consumer: &BaseConsumer<Self>,
        assigned: &[i32],
        stored: &mut HashMap<i32, i64>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for partition in assigned {
            let Some(next) = stored.get_mut(partition) else {
                continue;
            };
            let watermarks = self.watermarks(consumer, *partition, deadline);
            let Some((low, high)) = watermarks else {
                tracing::error!(
                    partition,
                    recorded = *next,
                    "the partition's log end could not be read: not checked against MySQL's offset"
                );
                continue;
            };
            if *next <= high {
                continue;
            }
            let (from, to, partition) = (*next, low.max(0), *partition);
            match rewind_offset_blocking(&self.mysql_url, &self.topic, partition, from, to) {
                Ok(()) => {
                    tracing::error!(
                        partition,
                        recorded = from,
                        log_end = high,
                        restart_at = to,
                        "MySQL's offset lies past the end of Kafka's log (the log was lost): \
                         reading the partition again from its beginning"
                    );
                    metrics::counter!(names::AGGREGATOR_OFFSETS_REWOUND_TOTAL).increment(1);
                    *next = to;
                }
                Err(err) => tracing::error!(
                    partition,
                    recorded = from,
                    log_end = high,
                    %err,
                    "MySQL's offset lies past the end of Kafka's log and could not be moved back"
                ),
            }
        }
    }

    /// `partition`'s log start and end, with up to three tries before `deadline`.
    fn watermarks(
        &self,
        consumer: &BaseConsumer<Self>,
        partition: i32,
        deadline: Instant,
    ) -> Option<(i64, i64)> {
        for _ in 0..3 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match consumer.fetch_watermarks(
                &self.topic,
                partition,
                left.min(Duration::from_secs(3)),
            ) {
                Ok(found) => return Some(found),
                Err(err) => tracing::warn!(partition, %err, "reading the partition's log end"),
            }
        }
        None
    }
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
        // librdkafka prefetches up to 64 MiB by default, all of it resident
        // when the aggregator is behind; 2 MiB is still thousands of events.
        // A queue that small refills only if librdkafka retries soon after
        // finding it full (by default it waits a second), and its fetch
        // responses are held to the same size.
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.max.bytes", "2097152")
        .set("max.partition.fetch.bytes", "524288")
        .create_with_context(AggregatorContext {
            mysql_url: mysql_url.to_owned(),
            topic: topic.to_owned(),
            events,
        })
        .context("creating the Kafka consumer")?;
    consumer.subscribe(&[topic]).context("subscribing")?;
    Ok(consumer)
}
