//! Course statistics: Redis first, MySQL behind it (cache-aside).
//!
//! - Hit: the hash `feedback:course:{<course_id>}` answers (`source: cache`):
//!   kept in memory under Redis's client-side tracking (`tracking.rs`), else
//!   one HMGET on the tracking connection, which then keeps it (on a Redis
//!   Cluster, where tracking is off, one HMGET every time).
//! - Miss: MySQL's `course_stats` row answers (`source: database`) and fills
//!   the hash with `shared::redis_hash::Scripts::fill`, which is version-guarded and
//!   refuses a fill below a delta's floor, so a fill racing with the
//!   aggregator can never leave older numbers behind. The TTL is jittered so
//!   courses filled together do not expire together.
//! - Redis unavailable (breaker open, error, timeout): MySQL answers, counted as
//!   a fallback; numbers stay right (Invariant 3).
//! - Concurrent misses for one course share one MySQL read (single flight).
//! - MySQL unavailable on a miss: 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use metrics::Counter;
use shared::domain::CourseId;
use shared::metrics::names;
use shared::mysql::StatsRow;
use shared::redis_hash::Scripts;

use crate::read_model::{Db, Unavailable};
use crate::redis_guard::GuardedRedis;
use crate::tracking::Tracking;

/// Which store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Database,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Database => "database",
        }
    }
}

/// The TTL of filled hashes: a base in seconds, each fill drawing ±10 % around it.
#[derive(Debug, Clone, Copy)]
pub struct Ttl(pub u64);

impl Ttl {
    /// A TTL for one fill (0 means no expiry).
    pub fn pick(self) -> u64 {
        let spread = self.0 / 10;
        if spread == 0 {
            return self.0;
        }
        rand::random_range(self.0 - spread..=self.0.saturating_add(spread))
    }
}

/// One count, kept both as a Prometheus counter and as a number this
/// instance's tests can read exactly (the recorder is global to a process).
struct Tally {
    metric: Counter,
    local: AtomicU64,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Self {
            metric: metrics::counter!(name),
            local: AtomicU64::new(0),
        }
    }

    fn add(&self) {
        self.metric.increment(1);
        self.local.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

/// What the read path did, since start.
pub struct Counters {
    hits: Tally,
    /// The hits answered from memory (`tracking.rs`), without asking Redis.
    kept_hits: Tally,
    misses: Tally,
    fallbacks: Tally,
    loads: Tally,
    /// This instance's share of `query_cache_fills_total{outcome="unreachable"}`.
    unreachable_fills: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub hits: u64,
    /// Of the hits, those answered from memory without asking Redis.
    pub kept_hits: u64,
    pub misses: u64,
    /// Answered from MySQL because Redis was unavailable.
    pub fallbacks: u64,
    /// MySQL reads of a course's stats.
    pub mysql_loads: u64,
    /// Fills that found Redis unreachable (or its breaker open).
    pub unreachable_fills: u64,
}

impl Counters {
    fn new() -> Self {
        Self {
            hits: Tally::new(names::QUERY_CACHE_HITS_TOTAL),
            kept_hits: Tally::new(names::QUERY_CACHE_KEPT_HITS_TOTAL),
            misses: Tally::new(names::QUERY_CACHE_MISSES_TOTAL),
            fallbacks: Tally::new(names::QUERY_CACHE_FALLBACKS_TOTAL),
            loads: Tally::new(names::QUERY_MYSQL_LOADS_TOTAL),
            unreachable_fills: AtomicU64::new(0),
        }
    }
}

/// A MySQL read in flight, awaited by every request that missed meanwhile.
type Load = Shared<BoxFuture<'static, Result<StatsRow, Unavailable>>>;

pub struct Stats {
    pub redis: Arc<GuardedRedis>,
    tracking: Arc<Tracking>,
    scripts: Scripts,
    db: Db,
    ttl: Ttl,
    /// Loads in flight per course (single flight).
    inflight: Mutex<HashMap<String, Load>>,
    counters: Counters,
}

impl Stats {
    pub fn new(redis: Arc<GuardedRedis>, tracking: Arc<Tracking>, db: Db, ttl: Ttl) -> Self {
        Self {
            redis,
            tracking,
            scripts: Scripts::new(),
            db,
            ttl,
            inflight: Mutex::new(HashMap::new()),
            counters: Counters::new(),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            hits: self.counters.hits.get(),
            kept_hits: self.counters.kept_hits.get(),
            misses: self.counters.misses.get(),
            fallbacks: self.counters.fallbacks.get(),
            mysql_loads: self.counters.loads.get(),
            unreachable_fills: self.counters.unreachable_fills.load(Ordering::Relaxed),
        }
    }

    /// A course's numbers and which store gave them.
    pub async fn get(
        self: &Arc<Self>,
        course: &CourseId,
    ) -> Result<(StatsRow, Source), Unavailable> {
        let id = course.as_str();
        if self.redis.healthy() {
            if let Some(row) = self.tracking.get(id) {
                self.counters.hits.add();
                self.counters.kept_hits.add();
                return Ok((row, Source::Cache));
            }
        }
        let tracking = &self.tracking;
        let cached = self
            .redis
            .call(|mut conn| async move {
                if tracking.enabled() {
                    let read = tracking.read(id).await;
                    // Refused just now: this Redis cannot track; read it the ordinary way.
                    if read.is_ok() || tracking.enabled() {
                        return read;
                    }
                }
                shared::redis_hash::read(&mut conn, id).await
            })
            .await;
        match cached {
            Ok(Some(row)) => {
                self.counters.hits.add();
                return Ok((row, Source::Cache));
            }
            Ok(None) => self.counters.misses.add(),
            Err(_) => self.counters.fallbacks.add(),
        }
        let row = self.load(id).await?;
        Ok((row, Source::Database))
    }

    /// Joins the load in flight for `course`, or starts one. The load runs in
    /// its own task, so a client hanging up does not cancel it for the others.
    fn load(self: &Arc<Self>, course: &str) -> Load {
        let mut inflight = self.lock_inflight();
        if let Some(load) = inflight.get(course) {
            return load.clone();
        }
        let this = self.clone();
        let id = course.to_owned();
        let task = tokio::spawn(async move {
            // Caught, so the entry goes even if the load panics: a panicked
            // load left in the map would answer every later miss with 503.
            let result = std::panic::AssertUnwindSafe(this.load_and_fill(&id))
                .catch_unwind()
                .await;
            this.lock_inflight().remove(&id);
            result.unwrap_or_else(|_| Err(Unavailable::LoadPanicked))
        });
        let load = async move {
            task.await
                .unwrap_or_else(|err| Err(Unavailable::LoadTask(Arc::new(err))))
        }
        .boxed()
        .shared();
        inflight.insert(course.to_owned(), load.clone());
        load
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Load>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads MySQL, then fills Redis (when it is reachable) with what it read.
    async fn load_and_fill(&self, course: &str) -> Result<StatsRow, Unavailable> {
        self.counters.loads.add();
        let row = self
            .db
            .within(async {
                let mut conn = self.db.conn().await?;
                shared::mysql::read_stats(&mut conn, course).await
            })
            .await?;
        self.fill(course, &row).await;
        Ok(row)
    }

    /// Writes `row` to Redis unless the hash is as new or a delta's floor is
    /// above it. Returns whether it wrote.
    pub async fn fill(&self, course: &str, row: &StatsRow) -> bool {
        let ttl = self.ttl.pick();
        let scripts = &self.scripts;
        let written = self
            .redis
            .call(|mut conn| async move { scripts.fill(&mut conn, course, row, ttl).await })
            .await;
        let outcome = match written {
            Ok(true) => "written",
            Ok(false) => "refused",
            Err(_) => {
                self.counters
                    .unreachable_fills
                    .fetch_add(1, Ordering::Relaxed);
                "unreachable"
            }
        };
        metrics::counter!(names::QUERY_CACHE_FILLS_TOTAL, "outcome" => outcome).increment(1);
        written == Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_jittered_within_ten_percent() {
        let ttl = Ttl(86_400);
        let picks: Vec<u64> = (0..200).map(|_| ttl.pick()).collect();
        assert!(picks.iter().all(|t| (77_760..=95_040).contains(t)));
        assert!(picks.iter().any(|t| *t != picks[0]), "not all the same");
        assert_eq!(Ttl(0).pick(), 0, "0 keeps meaning no expiry");
        assert_eq!(Ttl(5).pick(), 5);
        let huge = Ttl(u64::MAX).pick();
        assert!(huge >= u64::MAX - u64::MAX / 10, "no overflow at the top");
    }
}
