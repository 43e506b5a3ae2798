//! Query's settings, from the environment (the contract's table, plus a few
//! of query's own with defaults).

use std::time::Duration;

use shared::env::{parse_or, var, var_or};

/// The highest anonymity threshold taken: a typo such as `50000` would
/// otherwise withhold every course without a word.
pub const MAX_MIN_RESPONSES: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct Config {
    /// `FEEDBACK_QUERY_ADDR`
    pub addr: String,
    /// `FEEDBACK_REDIS_URL`: one server, or a Redis Cluster's nodes separated by commas.
    pub redis_url: String,
    /// `FEEDBACK_REDIS_CLUSTER` (default false): a single `redis_url` is a cluster's seed node.
    pub redis_cluster: bool,
    /// `FEEDBACK_MYSQL_URL`: migrations and `rebuild-cache` use the primary.
    pub mysql_url: String,
    /// `FEEDBACK_MYSQL_READ_URL`: a replica for the request path; `None` reads the primary.
    pub mysql_read_url: Option<String>,
    /// How tokens are checked: `FEEDBACK_OIDC_*` or `FEEDBACK_JWT_SECRET`,
    /// and `FEEDBACK_JWT_MAX_TTL_SECS`. Query never holds the students'
    /// pseudonym key.
    pub auth: shared::auth::Settings,
    /// `FEEDBACK_CACHE_TTL_SECS` (default 86400): the TTL of filled hashes, jittered ±10 %.
    pub cache_ttl_secs: u64,
    /// `FEEDBACK_PREWARM_COURSES` (default 100): the most active courses loaded at start.
    pub prewarm_courses: u32,
    /// `FEEDBACK_QUERY_REDIS_TIMEOUT_MS` (default 250): one Redis call's budget.
    pub redis_timeout: Duration,
    /// `FEEDBACK_QUERY_MYSQL_TIMEOUT_MS` (default 3000): one MySQL read's budget.
    pub mysql_timeout: Duration,
    /// `FEEDBACK_QUERY_EXPORT_STALL_MS` (default 60000): how long a CSV export
    /// waits for a client that stopped reading before cutting it off (it holds
    /// a MySQL connection and a snapshot meanwhile).
    pub export_stall: Duration,
    /// `FEEDBACK_MIN_RESPONSES` (default 5; 1 turns it off): below this many
    /// current responses a course is withheld from its instructors.
    pub min_responses: u32,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let cache_ttl_secs = shared::env::cache_ttl_secs()?;
        let export_stall_ms: u64 = parse_or("FEEDBACK_QUERY_EXPORT_STALL_MS", 60_000)?;
        anyhow::ensure!(
            (1_000..=600_000).contains(&export_stall_ms),
            "FEEDBACK_QUERY_EXPORT_STALL_MS must be 1000 to 600000 (10 minutes)"
        );
        let min_responses: u32 = parse_or("FEEDBACK_MIN_RESPONSES", 5)?;
        anyhow::ensure!(
            (1..=MAX_MIN_RESPONSES).contains(&min_responses),
            "FEEDBACK_MIN_RESPONSES must be 1 (no threshold) to {MAX_MIN_RESPONSES}"
        );
        Ok(Self {
            addr: var_or("FEEDBACK_QUERY_ADDR", "127.0.0.1:8082"),
            redis_url: shared::env::redis_url(),
            redis_cluster: parse_or("FEEDBACK_REDIS_CLUSTER", false)?,
            mysql_url: shared::env::mysql_url(),
            mysql_read_url: var("FEEDBACK_MYSQL_READ_URL"),
            auth: shared::auth::Settings::from_env()?,
            cache_ttl_secs,
            prewarm_courses: parse_or("FEEDBACK_PREWARM_COURSES", 100)?,
            redis_timeout: Duration::from_millis(parse_or("FEEDBACK_QUERY_REDIS_TIMEOUT_MS", 250)?),
            mysql_timeout: Duration::from_millis(parse_or(
                "FEEDBACK_QUERY_MYSQL_TIMEOUT_MS",
                3000,
            )?),
            export_stall: Duration::from_millis(export_stall_ms),
            min_responses,
        })
    }

    /// The URL the request path reads from.
    pub fn read_url(&self) -> &str {
        self.mysql_read_url.as_deref().unwrap_or(&self.mysql_url)
    }
}
