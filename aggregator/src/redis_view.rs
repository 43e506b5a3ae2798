//! Redis after MySQL: each committed batch's per-course deltas go to Redis in
//! one Lua call (`shared::redis_hash`; on a Redis Cluster one per hash slot),
//! guarded by versions, so redelivery, races with query's fills, and expired
//! or flushed hashes are all harmless.
//!
//! The lanes do not wait for Redis: they queue a committed batch's deltas
//! ([`DeltaQueue`]) and start their next transaction, while one task applies
//! the queue in order, several batches to a pass when it has fallen behind.
//!
//! While Redis is unreachable, MySQL keeps committing and the touched courses
//! are remembered; when Redis answers again they are refilled from MySQL. A
//! periodic reconciler compares recently changed courses in MySQL with Redis
//! and repairs any hash that lags (this covers a crash between the MySQL
//! commit and the Redis update, and a crash while Redis was down).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use shared::metrics::names;
use shared::mysql::{stats_columns, StatsColumns, StatsRow};
use shared::redis_conn::{Connection, Target};
use shared::redis_hash::{Applied, Delta, Scripts};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::steps::Steps;

/// Committed batches waiting for Redis before a lane's next send waits
/// (while Redis is known down, applying only remembers the courses, so the
/// queue keeps moving).
const QUEUED_BATCHES: usize = 64;

/// The most deltas one pass applies when batches have queued up (one
/// script call on a single server).
const DELTAS_PER_CALL: usize = 500;

/// Where the lanes put committed deltas for Redis; cloned into each lane.
#[derive(Clone)]
pub struct DeltaQueue {
    tx: mpsc::Sender<Vec<Delta>>,
    /// Applies a batch itself when the applying task is gone.
    view: Arc<RedisView>,
}

impl DeltaQueue {
    /// Queues a committed batch's deltas, waiting while the queue is full.
    pub async fn push(&self, deltas: Vec<Delta>) {
        if deltas.is_empty() {
            return;
        }
        if let Err(mpsc::error::SendError(deltas)) = self.tx.send(deltas).await {
            // The applying task is gone (it panicked: a bug, resumed when the
            // worker ends); apply here so no committed batch skips Redis.
            self.view.apply(&deltas).await;
        }
    }
}

/// The Redis hashes of the course stats as the aggregator writes them:
/// deltas after each commit, refills from MySQL where they could not go.
pub struct RedisView {
    /// A single server or a cluster (then a batch takes one call per slot).
    redis: Connection,
    /// The Lua scripts that apply deltas and fills, guarded by versions.
    scripts: Scripts,
    /// MySQL, where refills read a course's numbers.
    pool: Pool,
    /// TTL of hashes this view fills.
    ttl_secs: u64,
    /// Courses whose deltas could not reach Redis.
    dirty: Mutex<BTreeSet<String>>,
    /// Whether the last Redis call succeeded (for `/readyz`).
    up: AtomicBool,
}

impl RedisView {
    pub fn new(redis: &Target, pool: Pool, ttl_secs: u64) -> anyhow::Result<Self> {
        Ok(Self {
            redis: shared::redis_conn::connect(redis, Duration::from_millis(500))?,
            scripts: Scripts::new(),
            pool,
            ttl_secs,
            dirty: Mutex::new(BTreeSet::new()),
            up: AtomicBool::new(true),
        })
    }

    /// Starts the task that applies queued deltas in order. It ends once every
    /// clone of the returned queue is dropped and what they queued is applied.
    pub fn spawn_queue(self: &Arc<Self>) -> (DeltaQueue, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Vec<Delta>>(QUEUED_BATCHES);
        let view = self.clone();
        let task = tokio::spawn(async move {
            let mut deltas = Vec::new();
            while let Some(batch) = rx.recv().await {
                deltas.extend(batch);
                // Batches queued meanwhile go in the same call, in order: a
                // course's deltas chain from one version to the next.
                while deltas.len() < DELTAS_PER_CALL {
                    match rx.try_recv() {
                        Ok(batch) => deltas.extend(batch),
                        Err(_) => break,
                    }
                }
                let mut steps = Steps::start();
                view.apply(&deltas).await;
                steps.lap("redis");
                deltas.clear();
            }
        });
        (
            DeltaQueue {
                tx,
                view: self.clone(),
            },
            task,
        )
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Applies a committed batch's deltas; on failure remembers the courses.
    pub async fn apply(&self, deltas: &[Delta]) {
        if deltas.is_empty() {
            return;
        }
        if !self.is_up() {
            // Known down: don't make every batch wait out a timeout. The
            // reconcile loop probes and repairs these courses once Redis answers.
            self.remember(deltas);
            return;
        }
        let mut invalidated = 0;
        let mut failed: Vec<&Delta> = Vec::new();
        let mut error = None;
        for call in self.scripts.apply_batch(&self.redis, deltas).await {
            match call.result {
                Ok(results) => {
                    invalidated += results
                        .iter()
                        .filter(|r| **r == Applied::Invalidated)
                        .count();
                }
                Err(err) => {
                    // Only this call's slot failed (a cluster node down, say):
                    // the other calls applied and are not repaired.
                    failed.extend(call.deltas);
                    error = Some(err);
                }
            }
        }
        self.mark(error.is_none());
        if invalidated > 0 {
            metrics::counter!(names::AGGREGATOR_REDIS_INVALIDATIONS_TOTAL)
                .increment(invalidated as u64);
        }
        if let Some(err) = error {
            tracing::warn!(%err, courses = failed.len(), "Redis update failed: courses marked for repair");
            self.remember(failed);
        }
    }

    /// Remembers the courses of deltas that did not reach Redis.
    fn remember<'a>(&self, deltas: impl IntoIterator<Item = &'a Delta>) {
        if let Ok(mut dirty) = self.dirty.lock() {
            dirty.extend(deltas.into_iter().map(|d| d.course_id.clone()));
        }
    }

    fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("Redis reachable again");
            } else {
                tracing::warn!("Redis unreachable: MySQL keeps committing");
            }
        }
        metrics::gauge!(names::AGGREGATOR_REDIS_UP).set(if up { 1.0 } else { 0.0 });
    }

    /// Repairs Redis until `stop`: courses touched while it was down, then
    /// every `interval` the courses changed within `window` (the first pass
    /// at start covers a crash between a MySQL commit and its Redis update).
    pub async fn keep_repaired(
        self: Arc<Self>,
        interval: Duration,
        window: Duration,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            if self.dirty_count() > 0 {
                self.repair_dirty().await;
            }
            match self.reconcile(window).await {
                Ok(0) => {}
                Ok(repaired) => {
                    tracing::info!(repaired, "reconciler repaired lagging Redis hashes")
                }
                Err(err) => tracing::debug!(%err, "reconcile pass skipped"),
            }
        }
    }

    /// Refills the courses remembered while Redis was down. Returns how many are left.
    pub async fn repair_dirty(&self) -> usize {
        let courses: Vec<String> = match self.dirty.lock() {
            Ok(dirty) => dirty.iter().cloned().collect(),
            Err(_) => return 0,
        };
        for course in courses {
            match self.refill(&course).await {
                Ok(()) => {
                    if let Ok(mut dirty) = self.dirty.lock() {
                        dirty.remove(&course);
                    }
                    metrics::counter!(names::AGGREGATOR_REDIS_REPAIRS_TOTAL, "reason" => "outage")
                        .increment(1);
                }
                Err(err) => {
                    tracing::debug!(%err, course, "repair postponed");
                    break;
                }
            }
        }
        self.dirty_count()
    }

    /// Writes MySQL's numbers for `course` (the fill skips a hash that is as new).
    async fn refill(&self, course: &str) -> anyhow::Result<()> {
        let stats = {
            let mut conn =
                tokio::time::timeout(Duration::from_secs(3), self.pool.get_conn()).await??;
            shared::mysql::read_stats(&mut conn, course).await?
        };
        let mut redis = self.redis.clone();
        match self
            .scripts
            .fill(&mut redis, course, &stats, self.ttl_secs)
            .await
        {
            Ok(_) => {
                self.mark(true);
                Ok(())
            }
            Err(err) => {
                self.mark(false);
                Err(err.into())
            }
        }
    }

    /// Compares courses changed in the last `window` with Redis and repairs
    /// hashes that lag behind MySQL. Returns how many were repaired.
    ///
    /// `updated_at` has no index (see `shared::mysql`): the statement scans
    /// `course_stats`, one row per course, rather than every stats update
    /// paying for an index entry.
    pub async fn reconcile(&self, window: Duration) -> anyhow::Result<usize> {
        let since = shared::event::now_micros() - window;
        let rows: Vec<StatsColumns> = {
            let mut conn =
                tokio::time::timeout(Duration::from_secs(3), self.pool.get_conn()).await??;
            let sql = format!(
                "SELECT {} FROM course_stats WHERE updated_at >= ?",
                stats_columns()
            );
            conn.exec(sql, (shared::mysql::datetime(since),)).await?
        };
        let mut repaired = 0;
        for (course, stats) in rows.into_iter().map(StatsRow::from_columns) {
            if self.check(&course, &stats, true).await?.1 {
                repaired += 1;
                metrics::counter!(names::AGGREGATOR_REDIS_REPAIRS_TOTAL, "reason" => "reconcile")
                    .increment(1);
            }
        }
        Ok(repaired)
    }

    /// Compares `course`'s hash with MySQL's `stats` and, with `repair`,
    /// refills a hash that lags or differs. Returns what it found and
    /// whether it wrote. The reconcile loop and `aggregator reconcile` both
    /// judge a hash here.
    pub async fn check(
        &self,
        course: &str,
        stats: &StatsRow,
        repair: bool,
    ) -> anyhow::Result<(Drift, bool)> {
        let mut redis = self.redis.clone();
        let cached = shared::redis_hash::read(&mut redis, course).await;
        self.mark(cached.is_ok());
        let drift = Drift::of(cached?.as_ref(), stats);
        if !repair {
            return Ok((drift, false));
        }
        let written = match drift {
            Drift::InStep | Drift::Absent | Drift::Ahead => false,
            Drift::Lagging => {
                self.scripts
                    .fill(&mut redis, course, stats, self.ttl_secs)
                    .await?
            }
            Drift::Differs => {
                // The fill leaves a hash at the same version alone: drop it
                // first (a delta racing in meanwhile finds no hash and
                // leaves a floor, which refuses this fill: the next read
                // fills).
                shared::redis_hash::invalidate(&mut redis, course).await?;
                self.scripts
                    .fill(&mut redis, course, stats, self.ttl_secs)
                    .await?
            }
        };
        Ok((drift, written))
    }
}

/// How a course's Redis hash stands against its MySQL row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// The same version and numbers.
    InStep,
    /// No hash: the next read fills it, nothing to repair.
    Absent,
    /// A newer version than the row read: a commit landed since the read.
    Ahead,
    /// An older version: a delta never reached Redis.
    Lagging,
    /// The same version with other numbers: only a hand edit or a bug
    /// makes this, since every write carries MySQL's numbers.
    Differs,
}

impl Drift {
    pub fn of(cached: Option<&StatsRow>, stats: &StatsRow) -> Self {
        let Some(hash) = cached else {
            return Self::Absent;
        };
        match hash.version.cmp(&stats.version) {
            std::cmp::Ordering::Greater => Self::Ahead,
            std::cmp::Ordering::Less => Self::Lagging,
            // The numbers and the version decide; updated_at only stamps them.
            std::cmp::Ordering::Equal
                if (hash.responses, hash.rating_sum, hash.distribution)
                    == (stats.responses, stats.rating_sum, stats.distribution) =>
            {
                Self::InStep
            }
            std::cmp::Ordering::Equal => Self::Differs,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InStep => "in_step",
            Self::Absent => "absent",
            Self::Ahead => "ahead",
            Self::Lagging => "lagging",
            Self::Differs => "differs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_judged_by_its_version_then_its_numbers() {
        let mysql = StatsRow {
            responses: 3,
            rating_sum: 12,
            distribution: [0, 0, 0, 3, 0],
            version: 5,
            updated_at_micros: 1,
        };
        let with = |version, responses| StatsRow {
            version,
            responses,
            updated_at_micros: 2,
            ..mysql.clone()
        };
        assert_eq!(Drift::of(None, &mysql), Drift::Absent);
        assert_eq!(Drift::of(Some(&with(5, 3)), &mysql), Drift::InStep);
        assert_eq!(Drift::of(Some(&with(5, 999)), &mysql), Drift::Differs);
        assert_eq!(Drift::of(Some(&with(4, 2)), &mysql), Drift::Lagging);
        assert_eq!(Drift::of(Some(&with(6, 4)), &mysql), Drift::Ahead);
    }
}
