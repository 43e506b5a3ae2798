//! Aggregator: consumes `feedback.submitted` events from Kafka into MySQL and
//! Redis with an exactly-once effect.
//!
//! Flow: `consumer.rs` joins the group and starts each assigned partition at
//! the offset MySQL recorded; `worker.rs` routes each message to the lane of
//! its partition, and each lane collects up to `FEEDBACK_BATCH_SIZE` messages
//! or waits `FEEDBACK_BATCH_LINGER_MS`, decodes them (poison goes to the DLQ,
//! `dlq.rs`), and `sink.rs` commits the batch to MySQL in one transaction
//! (history, counting rule via `counting.rs`, course stats with versions,
//! offsets). Then the lane queues the per-course deltas, which one task of
//! `cache.rs` applies to Redis in order, and the offsets are committed to
//! Kafka (advisory only). `FEEDBACK_SINK_LANES`
//! lanes commit concurrently, each for its own share of the partitions.
//!
//! Failure modes: Kafka delivers at least once, so a redelivered offset or a
//! duplicate `feedback_id` changes nothing (the sink skips it). MySQL down:
//! the lanes retry with backoff and their partitions are paused once they
//! fall behind; nothing is skipped, `/readyz` is 503. Redis down: MySQL keeps
//! committing, touched courses are repaired when Redis answers; a reconciler
//! repairs lagging hashes.

pub mod cache;
pub mod config;
pub mod consumer;
pub mod counting;
pub mod dlq;
pub mod sink;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use rdkafka::consumer::Consumer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use cache::CacheWriter;
pub use config::Config;
use consumer::{AggregatorConsumer, Rebalanced};
use dlq::DeadLetters;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Health {
    /// Lanes retrying a commit because MySQL is unreachable.
    failing_lanes: AtomicUsize,
    assigned: AtomicUsize,
}

impl Health {
    pub(crate) fn sink_up(&self) -> bool {
        self.failing_lanes.load(Ordering::Relaxed) == 0
    }
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
        shared::metrics::show_counters(&[
            ("aggregator_events_applied_total", &[]),
            ("aggregator_duplicates_skipped_total", &[]),
            ("aggregator_dlq_total", &[]),
            ("aggregator_dlq_failed_total", &[]),
            ("aggregator_rebalances_total", &[]),
            ("aggregator_redelivered_batches_total", &[]),
            ("aggregator_offsets_rewound_total", &[]),
            ("aggregator_redis_invalidations_total", &[]),
            ("aggregator_redis_repairs_total", &[("reason", "outage")]),
            ("aggregator_redis_repairs_total", &[("reason", "reconcile")]),
            ("aggregator_sink_conflicts_total", &[]),
            ("aggregator_sink_failures_total", &[]),
        ]);
        shared::db::migrate(&config.mysql_url).await?;
        let pool = shared::db::pool(&config.mysql_url)?;
        shared::kafka::ensure_topic(
            &config.brokers,
            &config.topic,
            shared::kafka::PARTITIONS,
            Some(shared::kafka::EVENTS_RETENTION),
        )
        .await?;
        let dead_letters = DeadLetters::new(&config.brokers, &config.topic)?;
        // Dead letters stay until an operator has dealt with them: each is
        // feedback that was accepted and is not counted yet.
        shared::kafka::ensure_topic(&config.brokers, dead_letters.topic(), 1, None).await?;
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
        let routes = Router::new()
            .route("/readyz", get(readyz))
            .merge(shared::http::health_routes());
        // The fallbacks before the layers: a 404 or 405 counts in the metrics too.
        let app = shared::http::fallbacks(routes)
            .layer(shared::http::catch_panic())
            .layer(axum::middleware::from_fn(shared::http::track_metrics))
            .with_state(Probes {
                health: self.health.clone(),
                cache: self.cache.clone(),
                pool: self.pool.clone(),
            });
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

        let pool = self.pool.clone();
        let shared = Arc::new(worker::Shared {
            config: self.config,
            consumer: self.consumer,
            pool: self.pool,
            cache: self.cache,
            dead_letters: self.dead_letters,
            health: self.health,
            advisory: worker::AdvisoryCommits::default(),
        });
        // The router runs on a worker thread, not on the thread that blocks on
        // main: its sends then wake the lanes through the worker's own queue.
        let router = tokio::spawn(worker::run(shared.clone(), self.rebalances, stop_rx));
        match router.await {
            Ok(()) => {}
            // A panic ends the process, as it did when the router ran on main
            // (logging it and going on would leave a member that consumes nothing).
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => anyhow::bail!("the router was cancelled: {err}"),
        }
        shared.consumer.unsubscribe();
        drop(shared); // the lanes are done: this closes the consumer, leaving the group at once
        let _ = reconciler.await;
        let _ = server.await;
        pool.disconnect().await.ok();
        tracing::info!("aggregator stopped");
        Ok(())
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

/// What `/readyz` looks at.
#[derive(Clone)]
struct Probes {
    health: Arc<Health>,
    cache: Arc<CacheWriter>,
    pool: mysql_async::Pool,
}

/// How long `/readyz` waits for MySQL to answer a ping.
const MYSQL_PROBE: Duration = Duration::from_secs(1);

/// 200 while the sink can commit: no lane is retrying a commit, and MySQL
/// answers a ping (so an idle aggregator reports a MySQL outage too).
async fn readyz(State(probes): State<Probes>) -> Response {
    let (health, cache) = (&probes.health, &probes.cache);
    let lanes_retrying = health.failing_lanes.load(Ordering::Relaxed);
    // In a task of its own: a ping cut off by the timeout would leave its
    // connection with an unread answer; the task finishes it instead.
    let pool = probes.pool.clone();
    // (Bounded too, so probes during a long outage do not pile up.)
    let ping = tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
        use mysql_async::prelude::Queryable;
        pool.get_conn().await?.ping().await
    }));
    let answers = tokio::time::timeout(MYSQL_PROBE, ping)
        .await
        .is_ok_and(|joined| joined.is_ok_and(|bounded| bounded.is_ok_and(|p| p.is_ok())));
    let sink_up = health.sink_up() && answers;
    shared::http::readiness(
        sink_up,
        serde_json::json!({
            "mysql": { "up": sink_up, "answers": answers, "lanes_retrying": lanes_retrying },
            "redis": { "up": cache.is_up(), "courses_to_repair": cache.dirty_count() },
            "kafka": { "assigned_partitions": health.assigned.load(Ordering::Relaxed) },
        }),
    )
}
