//! `aggregator reconcile --course ID|--all [--apply]`: compares courses'
//! Redis hashes with MySQL's `course_stats` on demand, with the judgement
//! and repair the background reconciler uses (`RedisView::check`), and
//! prints every course that is not in step.

use anyhow::Context;
use mysql_async::prelude::Queryable;
use shared::mysql::{StatsColumns, StatsRow};

use super::connect;
use crate::redis_view::{Drift, RedisView};

/// Courses read from MySQL at a time for `--all`.
const PAGE: u32 = 500;

/// Which courses to check.
pub enum Courses {
    One(String),
    All,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Totals {
    pub checked: u64,
    /// Courses that lag or differ.
    pub drifted: u64,
    pub repaired: u64,
}

/// Runs `aggregator reconcile`, settings from the environment.
pub async fn run(courses: Courses, apply: bool) -> anyhow::Result<()> {
    let mysql_url = shared::env::mysql_url();
    let pool = shared::mysql::pool(&mysql_url)?;
    let view = RedisView::new(
        &shared::redis_conn::Target::from_env()?,
        pool.clone(),
        shared::env::cache_ttl_secs()?,
    )?;
    let totals = match courses {
        Courses::One(course) => {
            let stats = {
                let mut conn = connect(&pool).await?;
                shared::mysql::read_stats(&mut conn, &course).await?
            };
            anyhow::ensure!(stats.version > 0, "course {course:?} has no stats in MySQL");
            let mut totals = Totals::default();
            if let Some(line) = check(&view, &course, &stats, apply, &mut totals).await? {
                println!("{line}");
            }
            totals
        }
        Courses::All => all(&view, &pool, apply).await?,
    };
    println!(
        "{} courses checked, {} not in step, {} repaired{}",
        totals.checked,
        totals.drifted,
        totals.repaired,
        if apply {
            ""
        } else {
            " (dry run: --apply repairs)"
        }
    );
    pool.disconnect().await.ok();
    Ok(())
}

/// Every course of `course_stats`, a page at a time, with a progress bar.
async fn all(view: &RedisView, pool: &mysql_async::Pool, apply: bool) -> anyhow::Result<Totals> {
    let total: Option<u64> = connect(pool)
        .await?
        .query_first("SELECT COUNT(*) FROM course_stats")
        .await?;
    let bar = super::progress(total.unwrap_or(0), "courses")?;
    let mut totals = Totals::default();
    let mut last = String::new();
    loop {
        let sql = format!(
            "SELECT {} FROM course_stats WHERE course_id > ? ORDER BY course_id LIMIT ?",
            shared::mysql::stats_columns()
        );
        let rows: Vec<StatsColumns> = connect(pool).await?.exec(sql, (&last, PAGE)).await?;
        let Some(page_last) = rows.last().map(|row| row.0.clone()) else {
            break;
        };
        for (course, stats) in rows.into_iter().map(StatsRow::from_columns) {
            if let Some(line) = check(view, &course, &stats, apply, &mut totals).await? {
                // On stdout above the bar (which is on stderr, hidden when
                // that is no terminal), not through it.
                bar.suspend(|| println!("{line}"));
            }
            bar.inc(1);
        }
        last = page_last;
    }
    bar.finish_and_clear();
    Ok(totals)
}

/// Checks one course; a line to print when it lags or differs.
async fn check(
    view: &RedisView,
    course: &str,
    stats: &StatsRow,
    apply: bool,
    totals: &mut Totals,
) -> anyhow::Result<Option<String>> {
    let (drift, repaired) = view
        .check(course, stats, apply)
        .await
        .with_context(|| format!("checking course {course:?}"))?;
    totals.checked += 1;
    if matches!(drift, Drift::Lagging | Drift::Differs) {
        totals.drifted += 1;
        totals.repaired += u64::from(repaired);
        let done = match (apply, repaired) {
            (false, _) => "would repair",
            (true, true) => "repaired",
            // A delta or a fill raced ahead meanwhile: it carries MySQL's numbers.
            (true, false) => "left: a newer write came first",
        };
        return Ok(Some(format!(
            "{course}\t{}\tmysql version {}\t{done}",
            drift.as_str(),
            stats.version
        )));
    }
    Ok(None)
}
