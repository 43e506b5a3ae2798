//! Query's MySQL side: a pool on the read URL (a replica when one is set),
//! every wait bounded by a timeout so a dead or hung MySQL turns into a 503
//! quickly instead of piling up requests.

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use shared::http::ApiError;

/// How long a client is told to wait before retrying while MySQL is unavailable.
const RETRY_AFTER_SECS: u64 = 5;

/// MySQL did not answer (down, timed out, or refused the query). The cause is
/// logged where it happens; clients get a 503.
#[derive(Debug, Clone, thiserror::Error)]
#[error("MySQL unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<Unavailable> for ApiError {
    fn from(err: Unavailable) -> Self {
        tracing::warn!(%err, "answering 503");
        ApiError::unavailable(
            "unavailable",
            "the statistics store is unavailable; please retry shortly",
            RETRY_AFTER_SECS,
        )
    }
}

/// A pool and the time budget of one piece of work on it.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// Bounds a connection checkout plus the statements that follow it.
    timeout: Duration,
}

impl Db {
    /// A pool for `url`; nothing connects until the first use.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            pool: shared::db::pool(url)?,
            timeout,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection (for work that [`Db::within`] bounds).
    pub async fn conn(&self) -> anyhow::Result<Conn> {
        Ok(self.pool.get_conn().await?)
    }

    /// Runs `work` under the time budget; any failure becomes [`Unavailable`].
    pub async fn within<T>(
        &self,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Unavailable(format!("{err:#}"))),
            Err(_) => Err(Unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Whether MySQL answers a trivial query within a second (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let ping = async {
            let mut conn = self.conn().await?;
            conn.query_drop("SELECT 1").await?;
            anyhow::Ok(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(()))
        )
    }
}
