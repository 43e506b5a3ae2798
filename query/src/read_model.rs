//! Query's read model: the MySQL tables the aggregator writes
//! (`course_stats`, `current_responses`, `feedback_events`), read through a
//! pool on the read URL (a replica when one is set), every wait bounded by a
//! timeout so a dead or hung MySQL turns into a 503 quickly instead of piling
//! up requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use shared::http::ApiError;

/// How long a client is told to wait before retrying while MySQL is unavailable.
const RETRY_AFTER_SECS: u64 = 5;

/// MySQL did not answer (down, timed out, or refused the query), or the work
/// around a read failed. The cause is logged where it happens; clients get a
/// 503. Cloneable, as one failed load answers every request waiting on it,
/// so each source is kept behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// MySQL or the connection to it failed; shown with its whole chain.
    #[error("MySQL unavailable: {}", Chain(&**.0))]
    Failed(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Nothing came back within the time budget.
    #[error("MySQL unavailable: no answer within {0:?}")]
    TimedOut(Duration),
    /// A course's shared stats load panicked.
    #[error("MySQL unavailable: the load panicked")]
    LoadPanicked,
    /// A course's shared stats load ended without an answer.
    #[error("MySQL unavailable: load task failed: {0}")]
    LoadTask(#[source] Arc<tokio::task::JoinError>),
    /// A CSV export's producer ended before it sent a page.
    #[error("MySQL unavailable: the export ended before its first page")]
    ExportEnded,
    /// A page read for a CSV export could not be written as CSV.
    #[error("MySQL unavailable: encoding CSV: {0}")]
    Csv(#[source] Arc<csv::Error>),
}

/// An error and its sources, `: ` between them, as anyhow's `{:#}` shows
/// them: a log line of an [`Unavailable`] names every cause.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<anyhow::Error> for Unavailable {
    fn from(err: anyhow::Error) -> Self {
        Self::Failed(Box::<dyn std::error::Error + Send + Sync>::from(err).into())
    }
}

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
            pool: shared::mysql::pool(url)?,
            timeout,
        })
    }

    /// The same pool under another time budget (for work longer than a read).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            pool: self.pool.clone(),
            timeout,
        }
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
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(Unavailable::TimedOut(self.timeout)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_its_whole_chain_and_keeps_it_as_its_source() {
        let cause = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(cause).context("connecting to MySQL");
        let flattened = format!("MySQL unavailable: {err:#}");
        let unavailable = Unavailable::from(err);
        assert_eq!(unavailable.to_string(), flattened);
        assert_eq!(
            flattened,
            "MySQL unavailable: connecting to MySQL: connection refused"
        );
        let source = std::error::Error::source(&unavailable).expect("a source");
        assert_eq!(source.to_string(), "connecting to MySQL");
        let root = source.source().expect("the cause under the context");
        assert_eq!(root.to_string(), "connection refused");
    }
}
