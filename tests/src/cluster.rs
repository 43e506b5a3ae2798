//! A real local Redis Cluster for the cluster-mode tests: three masters on
//! 127.0.0.1:7101-7103, started (or found running) by `scripts/infra.sh
//! cluster up`, which takes a lock so parallel tests and test binaries
//! start it once.
//!
//! A cluster has database 0 only: the tests share it and keep apart by
//! course id. Every key the services write names its course
//! (`feedback:course:{<course_id>}`), so a test whose course ids carry a
//! fresh [`unique_name`](crate::unique_name) touches no other test's keys.

use std::time::Duration;

use tokio::sync::OnceCell;

use crate::infra;

/// Its seed nodes, as `FEEDBACK_REDIS_URL` takes them.
pub const CLUSTER_URL: &str =
    "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103";

/// Whether `scripts/infra.sh cluster up` ran in this process.
static STARTED: OnceCell<()> = OnceCell::const_new();

/// Starts the local Redis Cluster unless it answers already; returns its URL.
pub async fn redis_cluster() -> anyhow::Result<&'static str> {
    STARTED
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(|| infra(&["cluster", "up"])).await?
        })
        .await?;
    Ok(CLUSTER_URL)
}

/// A connection to the cluster, as the services make it.
pub fn connect() -> shared::redis_conn::Connection {
    let target = shared::redis_conn::Target::parse(CLUSTER_URL, false).expect("the cluster URL");
    shared::redis_conn::connect(&target, Duration::from_secs(2)).expect("a cluster connection")
}

/// `count` course ids no other test uses.
pub fn courses(count: usize) -> Vec<String> {
    let prefix = crate::unique_name("CL").replace('_', "-");
    (0..count).map(|i| format!("{prefix}-{i:03}")).collect()
}
