//! The course catalog as query holds it: a snapshot in memory of MySQL's
//! `courses` and `course_instructors`, read by every request that needs a
//! title, an enrolment or an instructor's courses, so none of them costs a
//! MySQL query.
//!
//! - Every [`REFRESH_EVERY`] a replica asks MySQL for the catalog's
//!   fingerprint (one row: count, latest `updated_at`, and an XOR of each
//!   entry's id and `updated_at`) and reloads it when that changed; a write
//!   through this replica reloads at once. So another replica's write shows
//!   within about two seconds, this replica's own at once, and a catalog that
//!   does not change costs one small query per interval.
//! - Every write of an entry touches its `updated_at` (its instructors
//!   included), which is what the fingerprint sees.
//! - MySQL down: the last snapshot stays in use. Before the first load
//!   succeeded, a request that needs the catalog tries to load it, and is
//!   503 if it cannot (a stats answer for an admin has no title then).
//!
//! `entry.rs` parses an entry, `import.rs` a CSV of them, `store.rs` writes
//! them, `routes.rs` serves the catalog's three routes.

pub mod entry;
pub mod import;
pub mod routes;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use shared::http::ApiError;

use crate::read_model::{Db, Unavailable};

/// How often a replica looks for catalog changes made elsewhere.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// How long a request waits for a first load of the catalog.
const LOAD_WAIT: Duration = Duration::from_secs(3);

/// One course's entry as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Course {
    pub title: String,
    pub term: Option<String>,
    pub enrolled: Option<u32>,
}

/// The catalog at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// By `course_id`, in MySQL's binary order (the public list's order).
    courses: BTreeMap<String, Course>,
    /// Each instructor's courses, by `sub`.
    taught: HashMap<String, BTreeSet<String>>,
}

impl Snapshot {
    pub fn course(&self, course_id: &str) -> Option<&Course> {
        self.courses.get(course_id)
    }

    pub fn courses(&self) -> impl Iterator<Item = (&String, &Course)> {
        self.courses.iter()
    }

    /// Whether the entry of `course_id` lists `sub`.
    pub fn teaches(&self, sub: &str, course_id: &str) -> bool {
        self.taught
            .get(sub)
            .is_some_and(|courses| courses.contains(course_id))
    }

    /// The courses whose entries list `sub`.
    pub fn courses_of(&self, sub: &str) -> Vec<String> {
        self.taught
            .get(sub)
            .map(|courses| courses.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What tells one state of the catalog from another without reading it:
/// entries, the latest `updated_at` and an XOR over each entry's id and
/// `updated_at`, which changes even when a write commits with an older
/// `updated_at` than the latest.
type Fingerprint = (i64, Option<i64>, u64);

/// The snapshot and how it is kept fresh.
pub struct Catalog {
    /// The primary: a replica's lag would hide this replica's own writes.
    db: Db,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// The fingerprint of `current`; `None` forces the next refresh to reload.
    seen: tokio::sync::Mutex<Option<Fingerprint>>,
}

impl Catalog {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            current: RwLock::new(None),
            seen: tokio::sync::Mutex::new(None),
        }
    }

    /// The primary, where the catalog is written.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Reloads after this replica wrote, so its own readers see the write at
    /// once. The write stands if this fails: the next refresh catches up.
    pub async fn refreshed_after_write(&self) {
        if let Err(err) = self.refresh(true).await {
            tracing::warn!(%err, "catalog written but not reloaded; the next refresh will");
        }
    }

    /// The current snapshot, loading it first if no load has succeeded yet
    /// (a MySQL query only then); 503 when that fails too.
    pub async fn loaded(&self) -> Result<Arc<Snapshot>, ApiError> {
        if let Some(snapshot) = self.snapshot() {
            return Ok(snapshot);
        }
        // A request waits no longer than a read would.
        match tokio::time::timeout(LOAD_WAIT, self.refresh(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "catalog not loaded"),
            Err(_) => tracing::warn!("catalog not loaded: MySQL did not answer in time"),
        }
        self.snapshot().ok_or_else(not_loaded)
    }

    /// The current snapshot; `None` until the first load.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads when MySQL's catalog differs from the snapshot's (always,
    /// with `force`). Serialized, so a slower refresh never replaces the
    /// result of a later one.
    pub async fn refresh(&self, force: bool) -> Result<(), Unavailable> {
        let mut seen = self.seen.lock().await;
        let db = &self.db;
        let loaded = db
            .within(async {
                let mut opts = TxOpts::default();
                opts.with_consistent_snapshot(true).with_readonly(true);
                let mut tx = db.pool().start_transaction(opts).await?;
                let fingerprint: Option<Fingerprint> = tx
                    .query_first(format!(
                        "SELECT COUNT(*), MAX({}),
                            BIT_XOR(CRC32(CONCAT(course_id, '@', CAST(updated_at AS CHAR))))
                         FROM courses",
                        shared::mysql::micros("updated_at")
                    ))
                    .await?;
                if !force && seen.is_some() && *seen == fingerprint {
                    return Ok(None);
                }
                let courses: Vec<(String, String, Option<String>, Option<u32>)> = tx
                    .query("SELECT course_id, title, term, enrolled FROM courses")
                    .await?;
                let instructors: Vec<(String, String)> = tx
                    .query("SELECT course_id, sub FROM course_instructors")
                    .await?;
                tx.commit().await?;
                anyhow::Ok(Some((fingerprint, snapshot_of(courses, instructors))))
            })
            .await?;
        if let Some((fingerprint, snapshot)) = loaded {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(snapshot));
            *seen = fingerprint;
        }
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] once the migrations ran, keeping
    /// the last snapshot while MySQL is unavailable. Runs until dropped.
    pub async fn keep_fresh(self: Arc<Self>, migrated: Arc<AtomicBool>) {
        let mut failing = false;
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !migrated.load(Ordering::Acquire) {
                continue;
            }
            match self.refresh(false).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("catalog refreshed again");
                }
                Ok(()) => {}
                // Once per outage, not every interval.
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(%err, "catalog not refreshed; keeping the last one");
                }
                Err(_) => {}
            }
        }
    }
}

fn snapshot_of(
    courses: Vec<(String, String, Option<String>, Option<u32>)>,
    instructors: Vec<(String, String)>,
) -> Snapshot {
    let courses: BTreeMap<String, Course> = courses
        .into_iter()
        .map(|(id, title, term, enrolled)| {
            let course = Course {
                title,
                term,
                enrolled,
            };
            (id, course)
        })
        .collect();
    let mut taught: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (course_id, sub) in instructors {
        taught.entry(sub).or_default().insert(course_id);
    }
    Snapshot { courses, taught }
}

/// The answer while no catalog has been loaded yet (MySQL down since start).
pub fn not_loaded() -> ApiError {
    ApiError::unavailable(
        "unavailable",
        "the course catalog is not loaded yet; please retry shortly",
        5,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_knows_each_instructors_courses_and_nothing_else() {
        let snapshot = snapshot_of(
            vec![
                ("CS101".into(), "Intro".into(), None, Some(40)),
                ("CS102".into(), "Data".into(), Some("2026F".into()), None),
            ],
            vec![
                ("CS101".into(), "li".into()),
                ("CS102".into(), "li".into()),
                ("CS102".into(), "wang".into()),
            ],
        );
        assert!(snapshot.teaches("li", "CS101"));
        assert!(!snapshot.teaches("wang", "CS101"));
        assert!(!snapshot.teaches("nobody", "CS101"));
        assert!(!snapshot.teaches("li", "CS103"));
        assert_eq!(snapshot.courses_of("li"), ["CS101", "CS102"]);
        assert!(snapshot.courses_of("zhao").is_empty());
        assert_eq!(snapshot.course("CS101").unwrap().enrolled, Some(40));
        assert!(snapshot.course("cs101").is_none(), "ids compare in binary");
    }
}
