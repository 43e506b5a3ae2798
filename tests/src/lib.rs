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
    shared::kafka::ensure_topic(
        &kafka_brokers(),
        &topic,
        shared::kafka::PARTITIONS,
        Some(shared::kafka::EVENTS_RETENTION),
    )
    .await?;
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

/// Asserts that service `binary`, with `env`, exits naming
/// `FEEDBACK_JWT_SECRET` when the variable is unset and when it is shorter
/// than 32 bytes (the contract: such a service refuses to start).
pub async fn assert_refuses_to_start_without_a_jwt_secret(binary: &str, env: &[(&str, String)]) {
    for secret in [None, Some("too-short-secret")] {
        let mut command = tokio::process::Command::new(binary);
        command
            .env_remove("FEEDBACK_JWT_SECRET")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(secret) = secret {
            command.env("FEEDBACK_JWT_SECRET", secret);
        }
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("it exits")
            .expect("the binary runs");
        assert!(!output.status.success(), "{secret:?}: it started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("FEEDBACK_JWT_SECRET"),
            "{secret:?}: {stderr}"
        );
    }
}

/// The JWT secret every test service uses.
pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A signed token for `sub` with `role`, valid for an hour.
pub fn token(sub: &str, role: shared::auth::Role) -> String {
    shared::auth::JwtKeys::new(JWT_SECRET.as_bytes())
        .expect("the test secret is long enough")
        .mint(sub, role, 3600)
}

/// A student token for `sub`.
pub fn student(sub: &str) -> String {
    token(sub, shared::auth::Role::Student)
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

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: String,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    pub request_id: Option<String>,
}

impl Consumed {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("the payload is JSON")
    }
}

/// Runs `scripts/infra.sh ARGS` (fault injection: `kill kafka`, `start kafka`, ...).
pub fn infra(args: &[&str]) -> anyhow::Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "scripts/infra.sh {args:?} failed: {status}"
    );
    Ok(())
}

/// Starts `service` again when dropped, so a failed fault test leaves the stack up.
pub struct Restart(pub &'static str);

impl Restart {
    /// SIGKILLs the shared `service` (`scripts/infra.sh kill`); the guard
    /// starts it again when dropped, or at [`Restart::start`].
    pub async fn kill(service: &'static str) -> Self {
        let guard = Restart(service);
        tokio::task::spawn_blocking(move || infra(&["kill", service]))
            .await
            .expect("the kill task")
            .expect("scripts/infra.sh kill");
        guard
    }

    /// Starts the service again now and waits until it answers.
    pub async fn start(self) {
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .expect("the start task");
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        if let Err(err) = infra(&["start", self.0]) {
            eprintln!("could not restart {}: {err}", self.0);
        }
    }
}

/// Serialises the tests of one binary that stop shared services (cargo runs
/// test binaries one at a time, so other binaries never see the outage).
pub static OUTAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads `topic` from the beginning until `done` says the messages so far are
/// enough (fails after `limit`). For streams that may carry duplicates.
pub async fn consume_until(
    topic: &str,
    limit: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = shared::kafka::client_config(&kafka_brokers())
        .set("group.id", unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&out) {
        let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(message) => message?,
            Err(_) => anyhow::bail!(
                "{topic}: the awaited messages did not all arrive within {limit:?} ({} read)",
                out.len()
            ),
        };
        let request_id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "x-request-id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        out.push(Consumed {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            partition: message.partition(),
            offset: message.offset(),
            request_id,
        });
    }
    Ok(out)
}

/// Reads `topic` from the beginning until `count` messages arrived (fails after `limit`).
pub async fn consume(topic: &str, count: usize, limit: Duration) -> anyhow::Result<Vec<Consumed>> {
    consume_until(topic, limit, |messages| messages.len() >= count).await
}

/// A free loopback port (for a child process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether process `pid` (a child not yet reaped) has exited: gone, or a zombie.
fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// SIGKILLs a private server, if running, and reaps it.
fn kill_child(child: &mut Option<std::process::Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The path of an apt-installed server binary (sbin is not on every PATH).
fn system_binary(name: &str) -> String {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| name.to_owned())
}

/// A Redis server of the test's own (the apt `redis-server` binary on a free
/// port, no persistence), for tests that kill or restart Redis without
/// touching the shared one other tests use.
pub struct PrivateRedis {
    /// The port it listens on, kept across restarts so clients reconnect.
    pub port: u16,
    /// The running server, `None` while killed.
    child: Option<std::process::Child>,
    /// Configuration given on its command line, on top of the defaults.
    args: Vec<String>,
}

impl PrivateRedis {
    /// Starts one and waits until it answers PING.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts one with extra `redis-server` arguments (`["--maxmemory", "1mb"]`).
    pub async fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        let mut redis = Self {
            port: free_port(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        redis.restart().await?;
        Ok(redis)
    }

    /// Its URL for database `db`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// SIGKILLs it (its data is gone: it has no persistence).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// SIGSTOPs it (`true`) or SIGCONTs it (`false`): a hung Redis that
    /// keeps its connections open but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let status = std::process::Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            assert!(matches!(status, Ok(s) if s.success()), "kill {signal}");
        }
    }

    /// Starts it again, empty, on the same port, and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let binary = system_binary("redis-server");
        let child = std::process::Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server (is scripts/infra.sh up?)")?;
        let pid = child.id();
        self.child = Some(child);
        let url = self.url(0);
        let port = self.port;
        eventually(Duration::from_secs(10), "the private Redis", || {
            let url = url.clone();
            async move {
                // It exits at once when its port was taken meanwhile (by an
                // outgoing connection's ephemeral port, say): say so, rather
                // than PING whatever holds the port until the time runs out.
                anyhow::ensure!(
                    !has_exited(pid),
                    "the private Redis exited (port {port} taken?)"
                );
                let Ok(client) = redis::Client::open(url) else {
                    return Ok(None);
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return Ok(None);
                };
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                Ok(pong.ok().map(|_| ()))
            }
        })
        .await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A MariaDB server of the test's own (the apt `mariadbd` on a free port,
/// data in a temp dir, no grant checks: loopback only), for tests that stop
/// MySQL without touching the shared one other tests use.
pub struct PrivateMysql {
    /// The port it listens on, kept across restarts.
    pub port: u16,
    /// Its data directory, kept across restarts.
    dir: std::path::PathBuf,
    /// The running server, `None` while stopped.
    child: Option<std::process::Child>,
    /// Configuration given on its command line, on top of the defaults.
    args: Vec<String>,
}

impl PrivateMysql {
    /// Initialises a data directory, starts the server and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts one with extra `mariadbd` options (`["--transaction-isolation=READ-COMMITTED"]`).
    pub async fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        let dir = temp_dir("fbtest-mysql");
        // A temp dir of its own: in the shared /tmp, concurrent installs'
        // bootstrap servers clashed on their temporary tables' files and one
        // failed ("Unknown table 'mysql.tmp_user_sys'", 2 in 8 at once).
        std::fs::create_dir_all(dir.join("tmp")).context("creating its temp dir")?;
        let status = std::process::Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("running mariadb-install-db (is scripts/infra.sh up?)")?;
        anyhow::ensure!(status.success(), "mariadb-install-db failed: {status}");
        let mut mysql = Self {
            port: free_port(),
            dir,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        mysql.restart().await?;
        Ok(mysql)
    }

    /// The URL of database `name` on it.
    pub fn url(&self, name: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops it (SIGKILL: connections drop at once, as in a crash).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same data and port, and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let binary = system_binary("mariadbd");
        let child = std::process::Command::new(binary)
            .args(["--no-defaults", "--user=root", "--skip-grant-tables"])
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .arg(format!("--port={}", self.port))
            .args([
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
            ])
            .args([
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
            ])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting mariadbd")?;
        let pid = child.id();
        self.child = Some(child);
        let url = format!("mysql://root@127.0.0.1:{}", self.port);
        let log = self.dir.join("error.log");
        eventually(Duration::from_secs(60), "the private MariaDB", || {
            let url = url.clone();
            let log = log.clone();
            async move {
                anyhow::ensure!(
                    !has_exited(pid),
                    "the private MariaDB exited; the end of its log:\n{}",
                    std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                let pool = mysql_async::Pool::new(url.as_str());
                let answered = match pool.get_conn().await {
                    Ok(mut conn) => {
                        mysql_async::prelude::Queryable::query_drop(&mut conn, "SELECT 1")
                            .await
                            .is_ok()
                    }
                    Err(_) => false,
                };
                let _ = pool.disconnect().await;
                Ok(answered.then_some(()))
            }
        })
        .await
    }
}

impl Drop for PrivateMysql {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `error` object of a contract error body, checking the content type.
pub async fn error_of(response: reqwest::Response) -> serde_json::Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "error content type {content_type:?}"
    );
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    body["error"].clone()
}

/// Asserts that every metric in a `/metrics` text has HELP text and a type,
/// so an operator reading the endpoint (or Grafana) sees what each means.
pub fn assert_every_metric_has_help(text: &str) {
    let help: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!typed.is_empty(), "no metrics: {text}");
    let missing: Vec<&&str> = typed.iter().filter(|name| !help.contains(*name)).collect();
    assert!(missing.is_empty(), "metrics without HELP: {missing:?}");
}
