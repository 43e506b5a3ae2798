//! Where Redis is, and a connection to it: one server, or a Redis Cluster.
//!
//! `FEEDBACK_REDIS_URL` names one server (`redis://host:6379/0`), or a
//! cluster's nodes separated by commas (`redis://a:7000,redis://b:7000`);
//! `FEEDBACK_REDIS_CLUSTER=true` makes a single URL a cluster's seed node (a
//! managed cluster's configuration endpoint, say). The client learns the
//! other nodes and the slot map from the seeds.
//!
//! Both kinds of [`Connection`] are created without Redis being up and
//! reconnect by themselves, so the services start and keep running through a
//! Redis outage (they answer from MySQL meanwhile). The rest of the code
//! sees one `ConnectionLike` and asks [`Connection::is_cluster`] only where
//! a cluster differs: a script's keys must share a hash slot
//! (`redis_hash::Scripts::apply_batch`), and client-side tracking is per node
//! (query's `tracking.rs` is off on a cluster).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

/// Where Redis is, parsed from `FEEDBACK_REDIS_URL` (and `FEEDBACK_REDIS_CLUSTER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server; its URL may name a database.
    Single(String),
    /// A cluster's seed nodes (a cluster has database 0 only).
    Cluster(Vec<String>),
}

impl Target {
    /// `FEEDBACK_REDIS_URL` and `FEEDBACK_REDIS_CLUSTER` (default `false`).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(
            &crate::env::redis_url(),
            crate::env::parse_or("FEEDBACK_REDIS_CLUSTER", false)?,
        )
    }

    /// `urls` is one URL, or several separated by commas (a cluster's
    /// nodes); `cluster` makes a single URL a cluster's seed.
    pub fn parse(urls: &str, cluster: bool) -> anyhow::Result<Self> {
        let mut nodes: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(!nodes.is_empty(), "FEEDBACK_REDIS_URL names no server");
        let cluster = cluster || nodes.len() > 1;
        for node in &nodes {
            let info = node
                .as_str()
                .into_connection_info()
                .map_err(|e| anyhow::anyhow!("FEEDBACK_REDIS_URL: {node:?} is not valid: {e}"))?;
            // Refused here rather than by every connection later: a cluster
            // answers SELECT with an error.
            anyhow::ensure!(
                !cluster || info.redis_settings().db() == 0,
                "FEEDBACK_REDIS_URL: {node:?} names database {}, but a Redis Cluster has database 0 only",
                info.redis_settings().db()
            );
        }
        Ok(if cluster {
            Self::Cluster(nodes)
        } else {
            Self::Single(nodes.remove(0))
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// A self-reconnecting connection to a single Redis or to a cluster; cheap
/// to clone (clones share the connection).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A connection that does not need Redis up to be created, with short
/// timeouts so a dead Redis is noticed in well under a second.
pub fn connect(target: &Target, timeout: Duration) -> redis::RedisResult<Connection> {
    match target {
        Target::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Ok(Connection::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
        Target::Cluster(nodes) => {
            // A few quick retries: enough to follow a MOVED after a
            // resharding or a failover, not so many that a dead cluster
            // holds a call for longer than a few timeouts.
            let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .overall_response_timeout(Some(timeout * 4))
                .build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            Ok(Connection::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_single_server_and_several_are_a_cluster() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/3", false).unwrap(),
            Target::Single("redis://127.0.0.1:6379/3".into())
        );
        assert_eq!(
            Target::parse(" redis://a:7000 , redis://b:7000,", false).unwrap(),
            Target::Cluster(vec!["redis://a:7000".into(), "redis://b:7000".into()])
        );
        assert_eq!(
            Target::parse("redis://seed:7000", true).unwrap(),
            Target::Cluster(vec!["redis://seed:7000".into()])
        );
    }

    #[test]
    fn a_cluster_url_with_a_database_or_a_bad_url_is_refused_at_start() {
        let err = Target::parse("redis://a:7000/2,redis://b:7000", false).unwrap_err();
        assert!(err.to_string().contains("database 0 only"), "{err}");
        assert!(Target::parse("redis://seed:7000/1", true).is_err());
        assert!(Target::parse("redis://a:7000/0,redis://b:7000/0", false).is_ok());
        assert!(Target::parse(" , ", false).is_err());
        assert!(Target::parse("nonsense://x", false).is_err());
    }

    #[tokio::test]
    async fn a_cluster_connection_is_made_with_no_cluster_up_and_a_call_fails_at_once() {
        let target = Target::parse("redis://127.0.0.1:1,redis://127.0.0.1:2", false).unwrap();
        let mut conn = connect(&target, Duration::from_millis(200)).unwrap();
        assert!(conn.is_cluster());
        let started = std::time::Instant::now();
        let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        assert!(ping.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
