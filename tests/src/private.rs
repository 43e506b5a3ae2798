//! Redis and MariaDB servers of a test's own, for tests that kill, freeze or
//! restart them without touching the shared ones other tests use.

use std::time::Duration;

use anyhow::Context;

use crate::eventually;
use crate::resources::{free_port, temp_dir};

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
