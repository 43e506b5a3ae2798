//! Shared helpers for the integration tests in `tests/tests/`.
//!
//! Every test runs against the real services of `scripts/infra.sh` and takes
//! resources of its own — a Kafka topic, a MySQL database, a Redis database —
//! named uniquely, so tests run in parallel and never touch a running demo
//! (which uses topic `feedback-events`, database `feedback` and Redis db 0).

use std::time::Duration;

use anyhow::Context;

/// Brokers, as the services read them (`FEEDBACK_KAFKA_BROKERS`).
pub fn kafka_brokers() -> String {
    shared::config::kafka_brokers()
}

/// The MySQL server URL without a database.
pub fn mysql_server_url() -> String {
    std::env::var("FEEDBACK_TEST_MYSQL_SERVER")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// The Redis server URL without a database.
pub fn redis_server_url() -> String {
    std::env::var("FEEDBACK_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name nobody else uses: `prefix` plus a fresh ULID, lower case.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Creates a fresh, empty MySQL database and returns its URL.
pub async fn fresh_mysql_database() -> anyhow::Result<String> {
    let name = unique_name("fbtest");
    let pool = mysql_async::Pool::new(mysql_server_url().as_str());
    let mut conn = pool
        .get_conn()
        .await
        .context("connecting to MySQL (is scripts/infra.sh up?)")?;
    mysql_async::prelude::Queryable::query_drop(
        &mut conn,
        format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
    )
    .await?;
    drop(conn);
    pool.disconnect().await?;
    Ok(format!("{}/{name}", mysql_server_url()))
}

/// Takes a Redis database of its own (1 to 254; db 0 is the demo's, 255 holds the counter).
pub async fn fresh_redis_database() -> anyhow::Result<String> {
    let client = redis::Client::open(format!("{}/255", redis_server_url()))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let n: u64 = redis::cmd("INCR")
        .arg("feedback-tests:next-db")
        .query_async(&mut conn)
        .await?;
    let db = 1 + (n % 254);
    let url = format!("{}/{db}", redis_server_url());
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    Ok(url)
}

/// Creates a fresh topic with the contract's 6 partitions and returns its name.
pub async fn fresh_topic() -> anyhow::Result<String> {
    let topic = unique_name("fbtest").replace('_', "-");
    shared::kafka::ensure_topic(&kafka_brokers(), &topic, shared::kafka::PARTITIONS).await?;
    Ok(topic)
}

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
