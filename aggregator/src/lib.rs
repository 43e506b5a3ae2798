//! Aggregator: consumes `feedback.submitted` events from Kafka into MySQL and
//! Redis with an exactly-once effect.
//!
//! Flow, file by file:
//! - `consumer/`: joins the group and starts each assigned partition at the
//!   offset MySQL recorded (`consumer/start_offsets.rs` claims and reads
//!   those offsets, on a runtime of its own, from librdkafka's callback).
//! - `worker/`: the router (`router.rs`) hands each message to the lane of
//!   its partition; each lane (`lane.rs`) collects up to
//!   `FEEDBACK_BATCH_SIZE` messages or waits `FEEDBACK_BATCH_LINGER_MS`,
//!   decodes them (poison goes to the DLQ, `dlq.rs`) and has the sink
//!   commit them (`commit.rs`: retries, and a batch MySQL refuses committed
//!   in halves). `FEEDBACK_SINK_LANES` lanes commit concurrently, each for
//!   its own share of the partitions.
//! - `sink/`: commits a batch to MySQL in one transaction, one file per
//!   step: the courses' rows locked (`stats.rs`), the history
//!   (`history.rs`), the current rows under the counting rule (`current.rs`
//!   and `counting.rs`), the course stats with their versions (`stats.rs`)
//!   and the offsets (`offsets.rs`); which errors are refusals for good
//!   (`refusal.rs`), and an event set aside with its offset (`quarantine.rs`).
//! - `redis_view.rs`: one task applies the lanes' queued per-course deltas to
//!   the Redis hashes in order; a reconciler repairs hashes that lag.
//! - `worker/advisory.rs`: the offsets, committed to Kafka once a second
//!   (advisory only).
//! - `ops/`: an operator's hand tools, subcommands of the binary
//!   (`aggregator quarantine list|replay|purge`, `aggregator reconcile`).
//! - `steps.rs` times each step of a batch; `health.rs` serves `/readyz`;
//!   `config.rs` reads the settings.
//!
//! Failure modes: Kafka delivers at least once, so a redelivered offset or a
//! duplicate `feedback_id` changes nothing (the sink skips it). MySQL down:
//! the lanes retry with backoff and their partitions are paused once they
//! fall behind; nothing is skipped, `/readyz` is 503. The DLQ refusing a
//! dead letter: the same, its batch waits until it is written. MySQL
//! refusing an event for good (a constraint it breaks, a value out of
//! range): the lane sets that event aside in `quarantined_events` with the
//! reason, counts the rest and goes on (`worker/commit.rs`). Redis down:
//! MySQL keeps committing, touched courses are repaired when Redis answers;
//! a reconciler repairs lagging hashes.

pub mod config;
pub mod consumer;
pub mod counting;
pub mod dlq;
mod health;
pub mod ops;
pub mod redis_view;
pub mod sink;
mod steps;
mod worker;

use std::future::Future;
use std::sync::Arc;

use rdkafka::consumer::Consumer;
use shared::metrics::names;
use shared::shutdown::Stop;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use config::Config;
use consumer::{AggregatorConsumer, Rebalanced};
use dlq::DeadLetters;
use health::{Health, Probes};
use redis_view::RedisView;
use worker::{AdvisoryCommits, Worker};

/// A built aggregator: listener bound, migrations run, consumer subscribed.
pub struct Application {
    listener: TcpListener,
    config: Config,
    consumer: AggregatorConsumer,
    /// What the rebalance callback reports, for the router.
    rebalances: mpsc::UnboundedReceiver<Rebalanced>,
    pool: mysql_async::Pool,
    redis: Arc<RedisView>,
    dead_letters: DeadLetters,
    health: Arc<Health>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        install_metrics();
        shared::mysql::migrate(&config.mysql_url).await?;
        let pool = shared::mysql::pool(&config.mysql_url)?;
        shared::kafka::ensure_events_topic(&config.brokers, &config.topic).await?;
        let dead_letters = DeadLetters::new(&config.brokers, &config.topic)?;
        // Dead letters stay until an operator has dealt with them: each is
        // feedback that was accepted and is not counted yet.
        shared::kafka::ensure_topic(&config.brokers, dead_letters.topic(), 1, None).await?;
        let redis_target =
            shared::redis_conn::Target::parse(&config.redis_url, config.redis_cluster)?;
        let redis = Arc::new(RedisView::new(
            &redis_target,
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
            redis,
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
        let stop = Stop::new();
        tokio::spawn(stop.trigger_on(shutdown));
        tracing::info!(addr = %self.listener.local_addr()?, topic = %self.config.topic, group = %self.config.group, "aggregator running");
        let probes = Probes {
            health: self.health.clone(),
            redis: self.redis.clone(),
            pool: self.pool.clone(),
        };
        let server = tokio::spawn(shared::http::serve(
            self.listener,
            health::app(probes),
            stop.wait(),
        ));
        let reconciler = tokio::spawn(self.redis.clone().keep_repaired(
            self.config.reconcile_interval,
            self.config.reconcile_window,
            stop.wait(),
        ));

        let pool = self.pool.clone();
        let worker = Arc::new(Worker {
            config: self.config,
            consumer: self.consumer,
            pool: self.pool,
            redis: self.redis,
            dead_letters: self.dead_letters,
            health: self.health,
            advisory: AdvisoryCommits::default(),
        });
        // The router runs on a runtime worker thread, not on the thread that
        // blocks on main: its sends then wake the lanes through that thread's
        // own queue.
        let router = tokio::spawn(worker::run(worker.clone(), self.rebalances, stop));
        router_ended(router.await)?;
        worker.consumer.unsubscribe();
        drop(worker); // the lanes are done: this closes the consumer, leaving the group at once
        let _ = reconciler.await;
        let _ = server.await;
        pool.disconnect().await.ok();
        tracing::info!("aggregator stopped");
        Ok(())
    }
}

/// How the router's task ended: a panic ends the process (logging it and
/// going on would leave a member that consumes nothing).
fn router_ended(ended: Result<(), tokio::task::JoinError>) -> anyhow::Result<()> {
    match ended {
        Ok(()) => Ok(()),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(anyhow::Error::new(err).context("the router was cancelled")),
    }
}

/// Installs the metrics recorder, with every counter shown from the start
/// (at 0 until its first increment).
fn install_metrics() {
    shared::metrics::install();
    let reasons: Vec<[(&str, &str); 1]> = sink::refusal::REASONS
        .iter()
        .map(|reason| [("reason", *reason)])
        .collect();
    let quarantined: Vec<_> = reasons
        .iter()
        .map(|labels| (names::AGGREGATOR_QUARANTINED_TOTAL, &labels[..]))
        .collect();
    shared::metrics::show_counters(&quarantined);
    shared::metrics::show_counters(&[
        (names::AGGREGATOR_EVENTS_APPLIED_TOTAL, &[]),
        (names::AGGREGATOR_DUPLICATES_SKIPPED_TOTAL, &[]),
        (names::AGGREGATOR_DLQ_TOTAL, &[]),
        (names::AGGREGATOR_DLQ_FAILED_TOTAL, &[]),
        (names::AGGREGATOR_REBALANCES_TOTAL, &[]),
        (names::AGGREGATOR_REDELIVERED_BATCHES_TOTAL, &[]),
        (names::AGGREGATOR_OFFSETS_REWOUND_TOTAL, &[]),
        (names::AGGREGATOR_REDIS_INVALIDATIONS_TOTAL, &[]),
        (
            names::AGGREGATOR_REDIS_REPAIRS_TOTAL,
            &[("reason", "outage")],
        ),
        (
            names::AGGREGATOR_REDIS_REPAIRS_TOTAL,
            &[("reason", "reconcile")],
        ),
        (names::AGGREGATOR_SINK_CONFLICTS_TOTAL, &[]),
        (names::AGGREGATOR_SINK_FAILURES_TOTAL, &[]),
    ]);
}
