//! Aggregator: consumes `feedback.submitted` events from Kafka into MySQL and
//! Redis with an exactly-once effect.
//!
//! Flow: `consumer.rs` joins the group and starts each assigned partition at
//! the offset MySQL recorded; the batch loop below collects up to
//! `FEEDBACK_BATCH_SIZE` messages or waits `FEEDBACK_BATCH_LINGER_MS`,
//! decodes them (poison goes to the DLQ, `dlq.rs`), and `sink.rs` commits the
//! batch to MySQL in one transaction (history, counting rule via
//! `counting.rs`, course stats with versions, offsets). Then `cache.rs`
//! applies the per-course deltas to Redis, and the offsets are committed to
//! Kafka (advisory only).
//!
//! Failure modes: Kafka delivers at least once, so a redelivered offset or a
//! duplicate `feedback_id` changes nothing (the sink skips it). MySQL down:
//! consumption pauses and the batch is retried with backoff; nothing is
//! skipped, `/readyz` is 503. Redis down: MySQL keeps committing, touched
//! courses are repaired when Redis answers; a reconciler repairs lagging hashes.

pub mod cache;
pub mod config;
pub mod consumer;
pub mod counting;
pub mod dlq;
pub mod sink;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use backon::BackoffBuilder;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use shared::event::FeedbackSubmitted;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use cache::CacheWriter;
pub use config::Config;
use consumer::{AggregatorConsumer, Rebalanced};
use dlq::{DeadLetters, Poison};
use sink::{Received, SinkError};

/// What `/readyz` reports.
#[derive(Default)]
pub struct Health {
    sink_up: AtomicBool,
    assigned: AtomicUsize,
}

/// A built aggregator: listener bound, migrations run, consumer subscribed.
pub struct Application {
    listener: TcpListener,
    config: Config,
    consumer: AggregatorConsumer,
    rebalances: mpsc::UnboundedReceiver<Rebalanced>,
    pool: mysql_async::Pool,
    cache: Arc<CacheWriter>,
    dead_letters: DeadLetters,
    health: Arc<Health>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        shared::metrics::install();
        shared::db::migrate(&config.mysql_url).await?;
        let pool = shared::db::pool(&config.mysql_url)?;
        shared::kafka::ensure_topic(&config.brokers, &config.topic, shared::kafka::PARTITIONS)
            .await?;
        let dead_letters = DeadLetters::new(&config.brokers, &config.topic)?;
        shared::kafka::ensure_topic(&config.brokers, dead_letters.topic(), 1).await?;
        let cache = Arc::new(CacheWriter::new(
            &config.redis_url,
            pool.clone(),
            config.cache_ttl_secs,
        )?);
        let (events, rebalances) = mpsc::unbounded_channel();
        let consumer = consumer::subscribe(
            &config.brokers,
            &config.group,
            &config.topic,
            &config.mysql_url,
            events,
        )?;
        let listener = shared::http::bind(&config.addr).await?;
        let health = Arc::new(Health::default());
        health.sink_up.store(true, Ordering::Relaxed);
        Ok(Self {
            listener,
            config,
            consumer,
            rebalances,
            pool,
            cache,
            dead_letters,
            health,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Consumes until `shutdown`; finishes (or abandons) the batch in hand,
    /// leaves the group and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        tracing::info!(addr = %self.listener.local_addr()?, topic = %self.config.topic, group = %self.config.group, "aggregator running");
        let app = Router::new()
            .route("/readyz", get(readyz))
            .merge(shared::http::health_routes())
            .layer(axum::middleware::from_fn(shared::http::track_metrics))
            .with_state((self.health.clone(), self.cache.clone()));
        let server = tokio::spawn(shared::http::serve(
            self.listener,
            app,
            stopped(stop_rx.clone()),
        ));
        let reconciler = tokio::spawn(reconcile_loop(
            self.cache.clone(),
            self.config.reconcile_interval,
            self.config.reconcile_window,
            stopped(stop_rx.clone()),
        ));

        let mut worker = Worker {
            config: self.config,
            consumer: self.consumer,
            rebalances: self.rebalances,
            pool: self.pool,
            cache: self.cache,
            dead_letters: self.dead_letters,
            health: self.health,
            pending: VecDeque::new(),
            paused: false,
        };
        worker.run(stopped(stop_rx)).await;
        worker.consumer.unsubscribe();
        drop(worker.consumer); // closes the consumer: leaves the group at once
        let _ = reconciler.await;
        let _ = server.await;
        worker.pool.disconnect().await.ok();
        tracing::info!("aggregator stopped");
        Ok(())
    }
}

/// The batch loop's state.
struct Worker {
    config: Config,
    consumer: AggregatorConsumer,
    rebalances: mpsc::UnboundedReceiver<Rebalanced>,
    pool: mysql_async::Pool,
    cache: Arc<CacheWriter>,
    dead_letters: DeadLetters,
    health: Arc<Health>,
    /// Messages received while the sink was down, to go into the next batch.
    pending: VecDeque<OwnedMessage>,
    /// Whether consumption is paused (MySQL down).
    paused: bool,
}

impl Worker {
    async fn run(&mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let first = match self.pending.pop_front() {
                Some(message) => message,
                None => tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    message = self.consumer.recv() => match message {
                        Ok(message) => {
                            let message = message.detach();
                            self.apply_rebalances(&mut Vec::new());
                            message
                        }
                        Err(err) => {
                            tracing::warn!(%err, "consumer error");
                            continue;
                        }
                    },
                },
            };
            let batch = self.collect(first).await;
            if batch.is_empty() {
                continue;
            }
            if !self.process(batch, &mut stop).await {
                return;
            }
        }
    }

    /// Fills a batch up to the size limit or until the linger runs out.
    async fn collect(&mut self, first: OwnedMessage) -> Vec<OwnedMessage> {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.config.linger;
        while batch.len() < self.config.batch_size {
            if let Some(message) = self.pending.pop_front() {
                batch.push(message);
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let message = message.detach();
                        self.apply_rebalances(&mut batch);
                        batch.push(message);
                    }
                    Err(err) => tracing::warn!(%err, "consumer error"),
                },
            }
        }
        self.apply_rebalances(&mut batch);
        batch
    }

    /// Takes in the rebalances librdkafka reported, which it does from inside
    /// `recv()`: so this runs after every `recv()`, before its message is
    /// buffered. A revocation forgets what was buffered for those partitions
    /// (their next owner, maybe this consumer again, restarts from MySQL's
    /// offsets); a message received after it comes from the new assignment and
    /// is kept. Dropping it too would let a later offset be committed past it.
    fn apply_rebalances(&mut self, batch: &mut Vec<OwnedMessage>) {
        while let Ok(event) = self.rebalances.try_recv() {
            match event {
                Rebalanced::Revoked(partitions) => {
                    batch.retain(|m| !partitions.contains(&m.partition()));
                    self.pending
                        .retain(|m| !partitions.contains(&m.partition()));
                    self.health.assigned.store(0, Ordering::Relaxed);
                }
                Rebalanced::Assigned(partitions) => {
                    self.health
                        .assigned
                        .store(partitions.len(), Ordering::Relaxed);
                    if self.paused {
                        // A new assignment starts unpaused; MySQL is still down.
                        self.set_paused(true);
                    }
                }
            }
        }
    }

    /// Decodes, dead-letters poison, commits to MySQL (retrying until it
    /// works or shutdown), then updates Redis and Kafka. False on shutdown.
    async fn process(
        &mut self,
        batch: Vec<OwnedMessage>,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        let started = Instant::now();
        let mut consumed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            let last = consumed
                .entry(message.partition())
                .or_insert(message.offset());
            *last = (*last).max(message.offset());
            let payload = message.payload().unwrap_or_default();
            match FeedbackSubmitted::decode(payload) {
                Ok(event) => events.push(Received {
                    partition: message.partition(),
                    offset: message.offset(),
                    event,
                }),
                Err(err) => {
                    self.dead_letters
                        .send(&Poison {
                            partition: message.partition(),
                            offset: message.offset(),
                            key: message.key().map(<[u8]>::to_vec),
                            payload: payload.to_vec(),
                            reason: err.to_string(),
                        })
                        .await
                }
            }
        }

        let Some(committed) = self.commit_with_retry(&events, &consumed, stop).await else {
            tracing::info!(
                messages = batch.len(),
                "shutdown while MySQL was down: batch abandoned, it is redelivered later"
            );
            return false;
        };
        self.cache.apply(&committed.deltas).await;
        self.commit_to_kafka(&consumed);

        metrics::histogram!("aggregator_batch_size").record(batch.len() as f64);
        metrics::histogram!("aggregator_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("aggregator_events_applied_total").increment(committed.applied as u64);
        metrics::counter!("aggregator_duplicates_skipped_total")
            .increment(committed.duplicates as u64);
        tracing::debug!(
            messages = batch.len(),
            applied = committed.applied,
            duplicates = committed.duplicates,
            "batch committed"
        );
        true
    }

    /// Commits to MySQL. Conflicts retry at once; an unreachable MySQL pauses
    /// consumption and retries with backoff (nothing is skipped).
    async fn commit_with_retry(
        &mut self,
        events: &[Received],
        consumed: &BTreeMap<i32, i64>,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<sink::Committed> {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(3))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match sink::commit(&self.pool, &self.config.topic, events, consumed).await {
                Ok(committed) => {
                    if self.paused {
                        self.set_paused(false);
                        tracing::info!("MySQL reachable again: consumption resumed");
                    }
                    self.health.sink_up.store(true, Ordering::Relaxed);
                    return Some(committed);
                }
                Err(SinkError::Conflict(err)) => {
                    tracing::debug!(%err, "transaction conflict; retrying");
                    metrics::counter!("aggregator_sink_conflicts_total").increment(1);
                }
                Err(SinkError::Unavailable(err)) => {
                    if !self.paused {
                        tracing::warn!(%err, "MySQL unavailable: consumption paused, retrying");
                        self.set_paused(true);
                    }
                    self.health.sink_up.store(false, Ordering::Relaxed);
                    metrics::counter!("aggregator_sink_failures_total").increment(1);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(3));
                    // Keep polling while paused so the group keeps us; keep whatever arrives.
                    let wait = tokio::time::sleep(delay);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            biased;
                            _ = &mut *stop => return None,
                            _ = &mut wait => break,
                            message = self.consumer.recv() => if let Ok(message) = message {
                                let message = message.detach();
                                self.apply_rebalances(&mut Vec::new());
                                self.pending.push_back(message);
                            },
                        }
                    }
                }
            }
        }
    }

    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(err) = result {
            tracing::warn!(%err, paused, "changing the pause state failed");
        }
    }

    /// Advisory: lets tools see progress; MySQL's offsets are what resumes.
    fn commit_to_kafka(&self, consumed: &BTreeMap<i32, i64>) {
        let mut offsets = TopicPartitionList::new();
        for (partition, last) in consumed {
            let _ = offsets.add_partition_offset(
                &self.config.topic,
                *partition,
                Offset::Offset(last + 1),
            );
        }
        if let Err(err) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(%err, "advisory Kafka commit failed");
        }
    }
}

/// Repairs Redis: courses touched while it was down, then every `interval`
/// the courses changed within `window` (the first pass at start covers a
/// crash between a MySQL commit and its Redis update).
async fn reconcile_loop(
    cache: Arc<CacheWriter>,
    interval: Duration,
    window: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if cache.dirty_count() > 0 {
            cache.repair_dirty().await;
        }
        match cache.reconcile(window).await {
            Ok(0) => {}
            Ok(repaired) => tracing::info!(repaired, "reconciler repaired lagging Redis hashes"),
            Err(err) => tracing::debug!(%err, "reconcile pass skipped"),
        }
    }
}

async fn readyz(State((health, cache)): State<(Arc<Health>, Arc<CacheWriter>)>) -> Response {
    let sink_up = health.sink_up.load(Ordering::Relaxed);
    shared::http::readiness(
        sink_up,
        serde_json::json!({
            "mysql": { "up": sink_up },
            "redis": { "up": cache.is_up(), "courses_to_repair": cache.dirty_count() },
            "kafka": { "assigned_partitions": health.assigned.load(Ordering::Relaxed) },
        }),
    )
}
