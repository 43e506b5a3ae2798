//! Filling Redis from MySQL in bulk: the pre-warm at start (the most active
//! courses, in the background) and `query rebuild-cache` (every course).
//!
//! Both go through `shared::redis_hash::Scripts::fill`, so neither can overwrite a
//! newer hash the aggregator wrote meanwhile. The rebuild deletes a page of
//! hashes *before* reading that page from MySQL: a delta landing in between
//! finds no hash and leaves a floor, and a fill below the floor is refused, so
//! the rebuild never leaves numbers older than a delta Redis has seen. It
//! deletes the page's hashes under their names before hash tags as well,
//! which nothing reads any more.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use mysql_async::prelude::Queryable;
use shared::mysql::StatsRow;
use shared::redis_conn::Connection;
use shared::redis_hash::Scripts;

use crate::read_model::{Db, Unavailable};
use crate::stats_cache::{Stats, Ttl};

/// Loads the `courses` courses with the most responses into Redis. Returns how many were written.
pub async fn prewarm(stats: &Stats, db: &Db, courses: u32) -> Result<usize, Unavailable> {
    if courses == 0 {
        return Ok(0);
    }
    let sql = format!(
        "SELECT {} FROM course_stats ORDER BY responses DESC, course_id LIMIT ?",
        shared::mysql::stats_columns()
    );
    let rows: Vec<shared::mysql::StatsColumns> = db
        .within(async {
            let mut conn = db.conn().await?;
            Ok(conn.exec(sql, (courses,)).await?)
        })
        .await?;
    let mut written = 0;
    for (course, row) in rows.into_iter().map(StatsRow::from_columns) {
        if stats.fill(&course, &row).await {
            written += 1;
        }
    }
    Ok(written)
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub courses: u64,
    pub written: u64,
    /// Not written: a newer hash or floor was there (the aggregator or query raced ahead).
    pub refused: u64,
}

/// Rebuilds every course's hash from MySQL, `page_size` courses at a time.
pub async fn rebuild(
    db: &Db,
    redis: &mut Connection,
    ttl: Ttl,
    page_size: u32,
    progress: &ProgressBar,
) -> anyhow::Result<Totals> {
    let scripts = Scripts::new();
    let mut totals = Totals::default();
    let mut last = String::new();
    loop {
        let mut conn = db.conn().await?;
        let ids: Vec<String> = conn
            .exec(
                "SELECT course_id FROM course_stats WHERE course_id > ? ORDER BY course_id LIMIT ?",
                (&last, page_size),
            )
            .await?;
        let Some(page_last) = ids.last().cloned() else {
            break;
        };
        // On a cluster the client splits this DEL by slot.
        let keys: Vec<String> = ids
            .iter()
            .flat_map(|id| {
                [
                    shared::redis_hash::course_key(id),
                    shared::redis_hash::untagged_course_key(id),
                ]
            })
            .collect();
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut *redis)
            .await?;
        let rows: Vec<shared::mysql::StatsColumns> = conn
            .exec(
                format!(
                    "SELECT {} FROM course_stats WHERE course_id IN ({})",
                    shared::mysql::stats_columns(),
                    shared::mysql::placeholders(ids.len())
                ),
                ids,
            )
            .await?;
        drop(conn);
        for (course, row) in rows.into_iter().map(StatsRow::from_columns) {
            totals.courses += 1;
            if scripts.fill(&mut *redis, &course, &row, ttl.pick()).await? {
                totals.written += 1;
            } else {
                totals.refused += 1;
            }
            progress.inc(1);
        }
        last = page_last;
    }
    Ok(totals)
}

/// `query rebuild-cache`: settings from the environment, a progress bar on stderr, totals on stdout.
pub async fn rebuild_from_env(page_size: u32) -> anyhow::Result<()> {
    let mysql_url = shared::env::mysql_url();
    let ttl = Ttl(shared::env::parse_or("FEEDBACK_CACHE_TTL_SECS", 86_400)?);
    shared::mysql::migrate(&mysql_url)
        .await
        .context("MySQL must be up to rebuild the cache")?;
    let db = Db::new(&mysql_url, Duration::from_secs(30))?;
    let target = shared::redis_conn::Target::from_env()?;
    let mut redis = shared::redis_conn::connect(&target, Duration::from_secs(2))?;
    let total: Option<u64> = db
        .conn()
        .await?
        .query_first("SELECT COUNT(*) FROM course_stats")
        .await?;
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {pos}/{len} courses, {per_sec}, eta {eta}",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let totals = rebuild(&db, &mut redis, ttl, page_size.max(1), &bar).await;
    bar.finish_and_clear();
    let totals = totals?;
    println!(
        "rebuilt {} courses in {:.1?}: {} written, {} left as newer",
        totals.courses,
        started.elapsed(),
        totals.written,
        totals.refused
    );
    db.pool().clone().disconnect().await?;
    Ok(())
}
