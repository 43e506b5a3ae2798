//! The shared servers of `scripts/infra.sh`, and fresh resources on them that
//! no other test uses: a topic, a MySQL database, a Redis database, a temp
//! dir, a port.

use anyhow::Context;

/// Brokers, as the services read them (`FEEDBACK_KAFKA_BROKERS`).
pub fn kafka_brokers() -> String {
    shared::env::kafka_brokers()
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

/// Takes a Redis database of its own (1 to 200; db 0 is the demo's, 253 the
/// benchmark's, 255 holds the counter).
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
    let db = 1 + (n % 200);
    let url = format!("{}/{db}", redis_server_url());
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    Ok(url)
}

/// Creates a fresh topic with the contract's 6 partitions and returns its name.
pub async fn fresh_topic() -> anyhow::Result<String> {
    let topic = unique_name("fbtest").replace('_', "-");
    shared::kafka::ensure_events_topic(&kafka_brokers(), &topic).await?;
    Ok(topic)
}

/// Where the tests keep their files (spools, private MariaDB data
/// directories, the aggregator processes' logs): `feedback-tests` under the
/// system temp dir. They stay after a run for a post-mortem, and
/// `scripts/test.sh` empties the folder before the next one.
pub fn temp_root() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("feedback-tests");
    std::fs::create_dir_all(&dir).expect("creating the tests' temp dir");
    dir
}

/// A fresh empty directory under [`temp_root`].
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let dir = temp_root().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

/// A free loopback port (for a child process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
