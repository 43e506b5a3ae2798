//! The aggregator's settings, from the environment.

use std::time::Duration;

use shared::env::{parse_or, var_or};

#[derive(Debug, Clone)]
pub struct Config {
    /// `FEEDBACK_AGGREGATOR_ADDR` (health and metrics only)
    pub addr: String,
    /// `FEEDBACK_KAFKA_BROKERS`
    pub brokers: String,
    /// `FEEDBACK_KAFKA_TOPIC`
    pub topic: String,
    /// `FEEDBACK_CONSUMER_GROUP` (default `feedback-aggregator`)
    pub group: String,
    /// `FEEDBACK_REDIS_URL`: one server, or a Redis Cluster's nodes separated by commas.
    pub redis_url: String,
    /// `FEEDBACK_REDIS_CLUSTER` (default false): a single `redis_url` is a cluster's seed node.
    pub redis_cluster: bool,
    /// `FEEDBACK_MYSQL_URL`
    pub mysql_url: String,
    /// `FEEDBACK_BATCH_SIZE` (default 100)
    pub batch_size: usize,
    /// `FEEDBACK_BATCH_LINGER_MS` (default 50): how long a batch waits to fill.
    pub linger: Duration,
    /// `FEEDBACK_SINK_LANES` (default 3): MySQL transactions in flight at
    /// once, each for its own share of the partitions (partition % lanes).
    pub lanes: usize,
    /// `FEEDBACK_CACHE_TTL_SECS` (default 86400): TTL of hashes the reconciler fills.
    pub cache_ttl_secs: u64,
    /// `FEEDBACK_RECONCILE_INTERVAL_MS` (default 2000)
    pub reconcile_interval: Duration,
    /// `FEEDBACK_RECONCILE_WINDOW_SECS` (default 600): how far back "recently changed" reaches.
    pub reconcile_window: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let batch_size: usize = parse_or("FEEDBACK_BATCH_SIZE", 100)?;
        anyhow::ensure!(
            (1..=10_000).contains(&batch_size),
            "FEEDBACK_BATCH_SIZE must be 1 to 10000"
        );
        let lanes: usize = parse_or("FEEDBACK_SINK_LANES", 3)?;
        anyhow::ensure!(
            (1..=64).contains(&lanes),
            "FEEDBACK_SINK_LANES must be 1 to 64"
        );
        let reconcile_interval_ms: u64 = parse_or("FEEDBACK_RECONCILE_INTERVAL_MS", 2_000)?;
        anyhow::ensure!(
            (1..=3_600_000).contains(&reconcile_interval_ms),
            "FEEDBACK_RECONCILE_INTERVAL_MS must be 1 to 3600000 (an hour)"
        );
        let reconcile_window_secs: u64 = parse_or("FEEDBACK_RECONCILE_WINDOW_SECS", 600)?;
        anyhow::ensure!(
            (1..=2_592_000).contains(&reconcile_window_secs),
            "FEEDBACK_RECONCILE_WINDOW_SECS must be 1 to 2592000 (30 days)"
        );
        Ok(Self {
            addr: var_or("FEEDBACK_AGGREGATOR_ADDR", "127.0.0.1:8081"),
            brokers: shared::env::kafka_brokers(),
            topic: shared::env::kafka_topic(),
            group: var_or("FEEDBACK_CONSUMER_GROUP", "feedback-aggregator"),
            redis_url: shared::env::redis_url(),
            redis_cluster: parse_or("FEEDBACK_REDIS_CLUSTER", false)?,
            mysql_url: shared::env::mysql_url(),
            batch_size,
            linger: Duration::from_millis(parse_or("FEEDBACK_BATCH_LINGER_MS", 50)?),
            lanes,
            cache_ttl_secs: shared::env::cache_ttl_secs()?,
            reconcile_interval: Duration::from_millis(reconcile_interval_ms),
            reconcile_window: Duration::from_secs(reconcile_window_secs),
        })
    }
}
