//! From an accepted event to Kafka: produce directly while the breaker is
//! closed and the spool is empty; otherwise append to the disk spool, which a
//! drainer replays to Kafka in order once the broker answers again.
//!
//! A record leaves the spool only after the broker acknowledged it. A produce
//! that timed out may still have been written, so the same event can reach
//! Kafka twice: the aggregator dedupes by `feedback_id`.
//!
//! librdkafka's idempotent producer can hit a *fatal* error (a sequence or
//! epoch it cannot recover from), after which it refuses every message. The
//! breaker then opens, submissions spool, and the drainer replaces the
//! producer with a new one (a new producer id) before its next probe.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::time::Instant;

use crate::record::KafkaRecord;
use crate::spool::{Spool, SpoolError};
use shared::breaker::Breaker;
use shared::metrics::names;

/// How a submission was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Kafka acknowledged it.
    Accepted,
    /// It is on the disk spool, synced, and will be delivered in order.
    Spooled,
}

/// Kafka did not take a submission, and the spool refused it too.
#[derive(Debug, thiserror::Error)]
#[error("Kafka is unavailable and {0}")]
pub struct SubmitError(#[from] SpoolError);

/// librdkafka's client context: cluster-wide trouble trips the breaker early,
/// before deliveries time out.
pub struct BreakerContext {
    breaker: Arc<Breaker>,
}

impl ClientContext for BreakerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::Fatal)
        ) {
            self.breaker.trip();
        }
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka's `message.timeout.ms`: how long one delivery may take.
    pub delivery_timeout: Duration,
    /// Records the drainer sends per round.
    pub drain_batch: usize,
}

type KafkaProducer = FutureProducer<BreakerContext>;

pub struct Pipeline {
    /// Replaced after a fatal error (`renew_if_fatal`); cloning it is cheap.
    producer: RwLock<KafkaProducer>,
    pub breaker: Arc<Breaker>,
    /// Where submissions wait while Kafka does not take them.
    pub spool: Spool,
    config: PipelineConfig,
}

impl Pipeline {
    pub fn new(config: PipelineConfig, spool: Spool) -> anyhow::Result<Arc<Self>> {
        let breaker = Arc::new(Breaker::new("Kafka", names::INGEST_BREAKER_STATE));
        let producer = make_producer(&config, &breaker)?;
        Ok(Arc::new(Self {
            producer: RwLock::new(producer),
            breaker,
            spool,
            config,
        }))
    }

    fn producer(&self) -> KafkaProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the producer when librdkafka declared it dead (a fatal error):
    /// it would refuse every message from now on. What it had in flight fails
    /// and is spooled by its submitters; the spool replays through the new one.
    fn renew_if_fatal(&self) {
        let Some((code, reason)) = self.producer().client().fatal_error() else {
            return;
        };
        match make_producer(&self.config, &self.breaker) {
            Ok(fresh) => {
                *self.producer.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                metrics::counter!(names::INGEST_PRODUCER_RENEWALS_TOTAL).increment(1);
                tracing::error!(
                    ?code,
                    reason,
                    "the Kafka producer hit a fatal error: replaced it with a new one"
                );
            }
            Err(err) => {
                tracing::error!(?code, reason, %err, "the Kafka producer hit a fatal error and a new one could not be made");
            }
        }
    }

    /// Takes `record` for delivery: to Kafka directly when it is healthy and
    /// nothing waits in the spool (order per course), else to the spool.
    pub async fn submit(&self, record: KafkaRecord) -> Result<Outcome, SubmitError> {
        if self.breaker.is_closed() && self.spool.is_empty() {
            match self.produce(&record).await {
                Ok(()) => {
                    self.breaker.record_success();
                    return Ok(Outcome::Accepted);
                }
                Err(error) => {
                    tracing::warn!(%error, request_id = %record.request_id, "delivery failed: spooling");
                    self.breaker.record_failure();
                }
            }
        }
        self.spool.append(record).await?;
        Ok(Outcome::Spooled)
    }

    /// Produces `record` and waits for the broker's acknowledgement, or for
    /// the breaker to open.
    async fn produce(&self, record: &KafkaRecord) -> Result<(), KafkaError> {
        let started = Instant::now();
        // Created before enqueueing, so an opening during the wait is not missed.
        let opened = self.breaker.opened();
        let sent = match self.enqueue(record) {
            Ok(delivery) => tokio::select! {
                result = delivery => result.map_err(|_| KafkaError::Canceled).and_then(|r| r.map(|_| ()).map_err(|(e, _)| e)),
                // The breaker opened while we waited: stop waiting on a dead broker.
                // If the message is delivered after all, the aggregator drops the copy.
                _ = opened => Err(KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)),
            },
            Err(e) => Err(e),
        };
        metrics::histogram!(names::INGEST_PRODUCE_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        sent
    }

    /// Hands `record` to librdkafka now (in call order); the future resolves on acknowledgement.
    fn enqueue(&self, record: &KafkaRecord) -> Result<DeliveryFuture, KafkaError> {
        let message = FutureRecord::to(&self.config.topic)
            .key(record.key.as_bytes())
            .payload(&record.payload)
            .headers(trace_headers(record));
        self.producer().send_result(message).map_err(|(e, _)| e)
    }

    /// Replays the spool to Kafka in order until `stop` resolves.
    pub async fn drain(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let pause = match self.drain_once().await {
                Ok(Drained::Empty) => None,
                // More waits: go on at once, unless shutting down (the rest
                // stays spooled and replays after the restart).
                Ok(Drained::Some) => {
                    if futures::FutureExt::now_or_never(stop.as_mut()).is_some() {
                        break;
                    }
                    continue;
                }
                Ok(Drained::Waiting(d)) => Some(d),
                Err(err) => {
                    tracing::error!(%err, "draining the spool failed");
                    Some(Duration::from_secs(1))
                }
            };
            let notified = self.spool.spooled.notified();
            tokio::select! {
                _ = &mut stop => break,
                _ = notified, if pause.is_none() => {}
                _ = tokio::time::sleep(pause.unwrap_or_default()), if pause.is_some() => {}
            }
        }
    }

    async fn drain_once(&self) -> anyhow::Result<Drained> {
        if self.spool.is_empty() {
            return Ok(Drained::Empty);
        }
        self.renew_if_fatal();
        if !self.breaker.try_probe() {
            return Ok(Drained::Waiting(
                self.breaker.until_probe().max(Duration::from_millis(50)),
            ));
        }
        // Half-open, the probe is the oldest record itself: only a delivery
        // proves Kafka takes messages again (a metadata answer does not), and
        // a failed one says why in the log.
        let probing = self.breaker.state() == shared::breaker::State::HalfOpen;
        let limit = if probing { 1 } else { self.config.drain_batch };
        let batch = self.spool.oldest(limit).await?;
        let (delivered, failed) = self.send_in_order(&batch).await;
        let count = delivered.len();
        self.spool.forget(delivered).await?;
        metrics::counter!(names::INGEST_SPOOL_REPLAYED_TOTAL).increment(count as u64);
        if let Some(error) = failed {
            if probing {
                tracing::info!(%error, left = self.spool.depth(), "Kafka probe (the oldest spooled record) failed: the spool waits");
            } else {
                tracing::warn!(%error, delivered = count, left = self.spool.depth(), "spool replay interrupted");
            }
            self.breaker.record_failure();
            return Ok(Drained::Waiting(
                self.breaker.until_probe().max(Duration::from_millis(200)),
            ));
        }
        self.breaker.record_success();
        if self.spool.is_empty() {
            tracing::info!("spool drained: producing directly again");
        }
        Ok(Drained::Some)
    }

    /// Replays the whole spool to Kafka in order (`ingest spool replay
    /// --apply`, with no service running): batch by batch, each record
    /// forgotten only once the broker acknowledged it. The first failure
    /// stops it; what was not delivered stays spooled. `progress` hears how
    /// many each batch delivered.
    pub async fn replay_all(&self, mut progress: impl FnMut(u64)) -> anyhow::Result<u64> {
        let mut replayed = 0;
        while !self.spool.is_empty() {
            // Unreadable records are moved aside here, as the drainer does.
            let batch = self.spool.oldest(self.config.drain_batch).await?;
            let (delivered, failed) = self.send_in_order(&batch).await;
            let count = delivered.len() as u64;
            self.spool.forget(delivered).await?;
            replayed += count;
            progress(count);
            if let Some(error) = failed {
                self.spool.flush().await?;
                anyhow::bail!(
                    "Kafka did not take every record ({error}): {replayed} delivered, {} left in the spool",
                    self.spool.depth()
                );
            }
        }
        self.spool.flush().await?;
        Ok(replayed)
    }

    /// Sends `batch` and waits for each acknowledgement: the sequence
    /// numbers delivered, and the first error, if any.
    async fn send_in_order(&self, batch: &[(u64, KafkaRecord)]) -> (Vec<u64>, Option<KafkaError>) {
        // Enqueue all in order first; the idempotent producer keeps that order per partition.
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (seq, record) in batch {
            match self.enqueue(record) {
                Ok(delivery) => deliveries.push((*seq, delivery)),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        let mut delivered = Vec::with_capacity(deliveries.len());
        for (seq, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => delivered.push(seq),
                Ok(Err((error, _))) => {
                    failed.get_or_insert(error);
                }
                Err(_) => {
                    failed.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        (delivered, failed)
    }

    /// Shutdown: wait for in-flight deliveries, then try the spool for up to
    /// `limit`; say what could not be drained (it stays on disk for the next start).
    pub async fn close(&self, limit: Duration) {
        let producer = self.producer();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(3))).await;
        let deadline = Instant::now() + limit;
        while !self.spool.is_empty() && self.breaker.is_closed() && Instant::now() < deadline {
            if self.drain_once().await.is_err() {
                break;
            }
        }
        if let Err(err) = self.spool.flush().await {
            tracing::error!(%err, "flushing the spool at shutdown failed");
        }
        if self.spool.is_empty() {
            tracing::info!("spool empty at shutdown");
        } else {
            tracing::warn!(
                depth = self.spool.depth(),
                bytes = self.spool.bytes(),
                "spool not drained at shutdown: it stays on disk and drains at the next start"
            );
        }
    }

    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    pub fn brokers(&self) -> &str {
        &self.config.brokers
    }
}

/// A record's trace as Kafka headers (`shared::trace`): its request id
/// always, its client's `traceparent` when it came with one.
fn trace_headers(record: &KafkaRecord) -> OwnedHeaders {
    let headers = OwnedHeaders::new().insert(Header {
        key: shared::trace::REQUEST_ID,
        value: Some(record.request_id.as_bytes()),
    });
    match &record.traceparent {
        Some(traceparent) => headers.insert(Header {
            key: shared::trace::TRACEPARENT,
            value: Some(traceparent.as_bytes()),
        }),
        None => headers,
    }
}

/// The idempotent producer, with the breaker in its context.
fn make_producer(config: &PipelineConfig, breaker: &Arc<Breaker>) -> anyhow::Result<KafkaProducer> {
    shared::kafka::submission_producer_config(&config.brokers, config.delivery_timeout)
        .create_with_context(BreakerContext {
            breaker: breaker.clone(),
        })
        .context("creating the Kafka producer")
}

enum Drained {
    /// Nothing to do until something is spooled.
    Empty,
    /// Sent a batch; go again.
    Some,
    /// Kafka is not back yet; try again after this long.
    Waiting(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::tempdir;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use shared::breaker::State;

    fn record(i: usize) -> KafkaRecord {
        KafkaRecord {
            key: format!("C{i}"),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
            request_id: format!("r{i}"),
            traceparent: None,
        }
    }

    /// A pipeline producing to `topic` on the mock cluster.
    fn on_mock(
        mock: &MockCluster<'_, DefaultProducerContext>,
        topic: &str,
        spool: Spool,
    ) -> Arc<Pipeline> {
        Pipeline::new(
            PipelineConfig {
                brokers: mock.bootstrap_servers(),
                topic: topic.into(),
                delivery_timeout: Duration::from_millis(1500),
                drain_batch: 500,
            },
            spool,
        )
        .unwrap()
    }

    /// Waits out the breaker's cool-down, so the next drain round probes.
    async fn until_probe(pipeline: &Pipeline) {
        tokio::time::sleep(pipeline.breaker.until_probe() + Duration::from_millis(20)).await;
    }

    /// librdkafka's mock cluster stands in for the broker (fault injection);
    /// the real-broker path is in `tests/outage.rs`.
    #[tokio::test]
    async fn half_open_the_oldest_record_alone_probes_and_only_its_delivery_closes_the_breaker() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("spool-probe", 2, 1).unwrap();
        let spool = Spool::open(&tempdir(), 1 << 20).unwrap();
        for i in 0..5 {
            spool.append(record(i)).await.unwrap();
        }
        let pipeline = on_mock(&mock, "spool-probe", spool);

        mock.broker_down(1).unwrap();
        pipeline.breaker.trip();
        until_probe(&pipeline).await;
        let round = pipeline.drain_once().await.unwrap();
        assert!(matches!(round, Drained::Waiting(_)), "the probe failed");
        assert_eq!(pipeline.spool.depth(), 5, "nothing left the spool");
        assert_eq!(pipeline.breaker.state(), State::Open);

        mock.broker_up(1).unwrap();
        until_probe(&pipeline).await;
        let round = pipeline.drain_once().await.unwrap();
        assert!(matches!(round, Drained::Some));
        assert_eq!(
            pipeline.spool.depth(),
            4,
            "the probe sent the oldest record alone"
        );
        assert_eq!(pipeline.spool.oldest(1).await.unwrap()[0].1, record(1));
        assert!(
            pipeline.breaker.is_closed(),
            "its delivery closed the breaker"
        );

        let round = pipeline.drain_once().await.unwrap();
        assert!(matches!(round, Drained::Some));
        assert!(
            pipeline.spool.is_empty(),
            "closed, the rest goes in one batch"
        );
        assert!(matches!(
            pipeline.drain_once().await.unwrap(),
            Drained::Empty
        ));
    }

    /// A fatal error, as librdkafka would raise it for a sequence it cannot
    /// recover from (its own test hook; there is no safe way to provoke one).
    fn make_fatal(producer: &KafkaProducer) {
        let reason = std::ffi::CString::new("injected by the test").unwrap();
        let err = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        assert_eq!(
            err,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        assert!(producer.client().fatal_error().is_some());
    }

    #[tokio::test]
    async fn after_a_fatal_producer_error_submissions_spool_and_the_drainer_replaces_the_producer()
    {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("fatal", 2, 1).unwrap();
        let spool = Spool::open(&tempdir(), 1 << 20).unwrap();
        let pipeline = on_mock(&mock, "fatal", spool);
        assert_eq!(pipeline.submit(record(0)).await.unwrap(), Outcome::Accepted);

        let dead = pipeline.producer();
        make_fatal(&dead);
        // The dead producer refuses it: the submission is spooled, not lost.
        assert_eq!(pipeline.submit(record(1)).await.unwrap(), Outcome::Spooled);
        assert_eq!(pipeline.submit(record(2)).await.unwrap(), Outcome::Spooled);
        assert_eq!(pipeline.spool.depth(), 2);

        // The probe (the oldest record alone), then the rest.
        for _ in 0..4 {
            until_probe(&pipeline).await;
            if matches!(pipeline.drain_once().await.unwrap(), Drained::Empty) {
                break;
            }
        }
        assert!(
            pipeline.spool.is_empty(),
            "the spool drained through the new producer"
        );
        assert!(
            pipeline.producer().client().fatal_error().is_none(),
            "a new producer"
        );
        assert!(
            dead.client().fatal_error().is_some(),
            "the old one stays dead"
        );
        assert!(pipeline.breaker.is_closed());
        assert_eq!(pipeline.submit(record(3)).await.unwrap(), Outcome::Accepted);
    }
}
