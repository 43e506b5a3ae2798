//! The test harness every integration test of the workspace shares.
//!
//! Every test runs against the real services of `scripts/infra.sh` and takes
//! resources of its own — a Kafka topic, a MySQL database, a Redis database —
//! named uniquely, so tests run in parallel and never touch a running demo
//! (which uses topic `feedback-events`, database `feedback` and Redis db 0).
//!
//! The layout, from the ground up:
//!
//! - [`resources`]: the shared servers' addresses and fresh resources on
//!   them (topic, database, Redis db, temp dir, port).
//! - [`tokens`]: the JWT secret every test service uses, and its tokens.
//! - [`kafka`]: reading a topic back.
//! - [`otlp`]: a stand-in OpenTelemetry collector, to see spans exported.
//! - [`faults`]: killing and restarting a shared server (`scripts/infra.sh`).
//! - [`idp`]: the real identity provider: a realm per test, tokens from
//!   its login flow, its keys rotated.
//! - [`private`]: Redis and MariaDB servers of a test's own, to kill freely.
//! - [`cluster`]: a real local Redis Cluster (`scripts/infra.sh cluster up`).
//! - [`answers`]: checks on what a service answers (error bodies, metrics,
//!   refusing to start).
//! - [`running`]: a service built in the test, on a task until stopped.
//! - [`oneshot`]: requests straight to a router, without a server.
//! - [`ingest`], [`aggregator`], [`query`]: each service as its tests drive
//!   it (configuration, a running instance, its own helpers).
//! - [`stack`]: the three services together, for the end-to-end tests.
//!
//! The general helpers are re-exported here (`feedback_tests::eventually`);
//! a service's are used through its module (`feedback_tests::query::Seed`).

pub mod aggregator;
pub mod answers;
pub mod cluster;
pub mod faults;
pub mod idp;
pub mod ingest;
pub mod kafka;
pub mod oneshot;
pub mod otlp;
pub mod private;
pub mod query;
pub mod resources;
pub mod running;
pub mod stack;
pub mod tokens;

use std::time::Duration;

pub use answers::{
    assert_every_metric_has_help, assert_page_is_served_self_contained,
    assert_refuses_to_start_naming, assert_refuses_to_start_without_a_jwt_secret, error_of,
};
pub use faults::{infra, Restart, OUTAGE};
pub use kafka::{consume, consume_until, Consumed};
pub use oneshot::Oneshot;
pub use private::{PrivateMysql, PrivateRedis};
pub use resources::{
    free_port, fresh_mysql_database, fresh_redis_database, fresh_topic, kafka_brokers,
    mysql_server_url, redis_server_url, temp_dir, temp_root, unique_name,
};
pub use running::Running;
pub use tokens::{student, token, JWT_SECRET};

/// Polls `check` every 100 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
