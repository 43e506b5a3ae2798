//! Reads the catalog from MySQL in the background, every [`super::REFRESH`].
//!
//! Each round asks for the table's fingerprint (`COUNT(*)` and
//! `MAX(updated_at)`, one cheap query) and lists the courses (ids, titles,
//! terms) only when it changed; every few minutes the list is read anyway,
//! so that a change the fingerprint cannot see (an id renamed in place)
//! still arrives. A changed list replaces the map the requests read and is
//! saved on disk. A round is bounded in time (mysql_async has no connect
//! timeout of its own), and a failed one leaves the courses held as they
//! were.
//!
//! An open catalog is read on a best-effort basis: MySQL may well not be
//! there for it (ingest alone, or another database), so a failure is
//! logged once at `warn` and then at `debug` until a read succeeds, rather
//! than every round. A closed one needs MySQL, and says so every round.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use shared::metrics::names;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Catalog, Course, Courses, Mode};
use crate::spool::CatalogCopy;

/// How long one round may take, connecting included.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the whole list is read whatever the fingerprint says.
const FULL_READ_EVERY: Duration = Duration::from_secs(300);

/// The table's fingerprint: its rows and its latest `updated_at` (in
/// microseconds; `None` when empty). Every change query makes to the
/// catalog adds or removes a row or moves `updated_at`.
type Fingerprint = (i64, Option<i64>);

/// What one round read.
enum Read {
    Unchanged,
    Courses(Fingerprint, Courses),
}

/// The background reader of the catalog.
pub struct Refresher {
    catalog: Arc<Catalog>,
    /// Connects on first use, so building it needs no MySQL.
    pool: Pool,
    /// Where a changed catalog is saved.
    copy: CatalogCopy,
    every: Duration,
}

impl Refresher {
    pub fn new(
        catalog: Arc<Catalog>,
        mysql_url: &str,
        copy: CatalogCopy,
        every: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            catalog,
            pool: shared::mysql::pool(mysql_url)?,
            copy,
            every,
        })
    }

    /// Reads the catalog until `stop` completes, the first time at once.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::select! {
            () = stop => {}
            () = self.rounds() => {}
        }
        // Its handle on the spool's store goes with it, so a restart in the
        // same process can open the spool again.
        let Self { pool, copy, .. } = self;
        drop(copy);
        let _ = tokio::time::timeout(Duration::from_secs(1), pool.disconnect()).await;
    }

    async fn rounds(&self) {
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen: Option<Fingerprint> = None;
        let mut last_full: Option<Instant> = None;
        let mut unsaved = None;
        // Whether failures are being logged quietly (open mode, warned once).
        let mut quiet = false;
        loop {
            ticker.tick().await;
            let full = last_full.is_none_or(|at| at.elapsed() >= FULL_READ_EVERY);
            let known = if full { None } else { seen };
            let outcome = match tokio::time::timeout(ROUND_TIMEOUT, read(&self.pool, known)).await {
                Err(_) => Err(format!(
                    "MySQL did not answer within {} s",
                    ROUND_TIMEOUT.as_secs()
                )),
                Ok(result) => result.map_err(|err| format!("{err:#}")),
            };
            if outcome.is_ok() && quiet {
                tracing::info!("catalog read from MySQL again");
                quiet = false;
            }
            let label = match outcome {
                Ok(Read::Unchanged) => {
                    self.catalog.confirmed();
                    "unchanged"
                }
                Ok(Read::Courses(fingerprint, courses)) => {
                    seen = Some(fingerprint);
                    if full {
                        last_full = Some(Instant::now());
                    }
                    let count = courses.len();
                    if let Some(saved) = self.catalog.learned(courses) {
                        tracing::info!(courses = count, "catalog changed");
                        unsaved = Some(saved);
                    }
                    "read"
                }
                Err(error) if quiet => {
                    tracing::debug!(%error, "catalog not read from MySQL; keeping the courses held");
                    self.catalog.failed(error);
                    "failed"
                }
                Err(error) => {
                    if self.catalog.mode() == Mode::Open {
                        tracing::warn!(%error, "catalog not read from MySQL; GET /v1/catalog lists the courses held, and further failures are logged at debug until a read succeeds");
                        quiet = true;
                    } else {
                        tracing::warn!(%error, "catalog not read from MySQL; keeping the courses held");
                    }
                    self.catalog.failed(error);
                    "failed"
                }
            };
            metrics::counter!(names::INGEST_CATALOG_REFRESHES_TOTAL, "outcome" => label)
                .increment(1);
            // Kept until a save succeeds: a disk fault now must not leave an
            // older copy for the next start.
            if let Some(saved) = unsaved.take() {
                if let Err(err) = self.copy.save(&saved).await {
                    tracing::warn!(%err, "catalog not saved on disk; retrying next round");
                    unsaved = Some(saved);
                }
            }
        }
    }
}

/// The fingerprint, then the courses when it is not `known`. In that
/// order: a change between the two reads makes the next fingerprint differ,
/// so it is listed then.
async fn read(pool: &Pool, known: Option<Fingerprint>) -> anyhow::Result<Read> {
    let mut conn = pool.get_conn().await.context("connecting to MySQL")?;
    let sql = format!(
        "SELECT COUNT(*), {} FROM courses",
        shared::mysql::micros("MAX(updated_at)")
    );
    let fingerprint: Fingerprint = conn
        .query_first(sql)
        .await
        .map_err(no_table)?
        .unwrap_or((0, None));
    if known == Some(fingerprint) {
        return Ok(Read::Unchanged);
    }
    let rows: Vec<(String, String, Option<String>)> = conn
        .query("SELECT course_id, title, term FROM courses")
        .await
        .map_err(no_table)?;
    let courses = rows
        .into_iter()
        .map(|(course_id, title, term)| (course_id, Course { title, term }))
        .collect();
    Ok(Read::Courses(fingerprint, courses))
}

/// MySQL error 1146 in words an operator acts on: query creates the table.
fn no_table(err: mysql_async::Error) -> anyhow::Error {
    match err {
        mysql_async::Error::Server(server) if server.code == 1146 => {
            anyhow::anyhow!("MySQL has no courses table yet (query creates it when it starts)")
        }
        other => anyhow::Error::new(other).context("reading the catalog"),
    }
}
