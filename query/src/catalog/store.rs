//! Catalog writes, on the primary, each in one transaction: the entries
//! upserted, their instructors replaced as a set, every entry's
//! `updated_at` touched.
//!
//! Writers are serialized by a locking read of the table's latest
//! `updated_at`, and each writes a time after it: so `updated_at` grows in
//! commit order, and a reader polling `MAX(updated_at)` (ingest does) cannot
//! miss a write that committed after it looked. Admin writes are rare; the
//! wait is nothing.

use mysql_async::prelude::Queryable;
use mysql_async::{Transaction, TxOpts};
use shared::domain::CourseId;

use super::entry::Entry;
use crate::read_model::{Db, Unavailable};

/// Rows per statement.
const CHUNK: usize = 500;

/// How many times a write is tried when InnoDB picks it as a deadlock's
/// victim (two first writes into an empty catalog can both hold the gap).
const ATTEMPTS: u32 = 3;

/// Writes `entries` (at most one per course) and returns their `updated_at`
/// in microseconds since the epoch.
pub async fn upsert(db: &Db, entries: &[(CourseId, Entry)]) -> Result<i64, Unavailable> {
    db.within(async {
        let mut attempt = 1;
        loop {
            match write(db, entries).await {
                Err(err) if attempt < ATTEMPTS && is_deadlock(&err) => attempt += 1,
                done => return done,
            }
        }
    })
    .await
}

async fn write(db: &Db, entries: &[(CourseId, Entry)]) -> anyhow::Result<i64> {
    let mut tx = db.pool().start_transaction(TxOpts::default()).await?;
    let at = next_time(&mut tx).await?;
    let at_text = shared::mysql::datetime(shared::mysql::from_micros(at));
    for chunk in entries.chunks(CHUNK) {
        upsert_courses(&mut tx, chunk, &at_text).await?;
        replace_instructors(&mut tx, chunk).await?;
    }
    tx.commit().await?;
    Ok(at)
}

/// MySQL's "Deadlock found when trying to get lock".
fn is_deadlock(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<mysql_async::Error>(),
        Some(mysql_async::Error::Server(server)) if server.code == 1213
    )
}

/// Now, or one microsecond after the latest `updated_at` when that is later
/// (a clock set back), holding every entry's lock until commit: the locking
/// read comes first, so "now" is read after the previous writer committed.
async fn next_time(tx: &mut Transaction<'_>) -> anyhow::Result<i64> {
    let micros = shared::mysql::micros;
    let latest: Option<Option<i64>> = tx
        .query_first(format!(
            "SELECT MAX({}) FROM courses FOR UPDATE",
            micros("updated_at")
        ))
        .await?;
    let now: Option<i64> = tx
        .query_first(format!("SELECT {}", micros("NOW(6)")))
        .await?;
    let now = now.unwrap_or_default();
    Ok(latest.flatten().map_or(now, |latest| now.max(latest + 1)))
}

async fn upsert_courses(
    tx: &mut Transaction<'_>,
    chunk: &[(CourseId, Entry)],
    at: &str,
) -> anyhow::Result<()> {
    let rows = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
    let mut params: Vec<mysql_async::Value> = Vec::with_capacity(chunk.len() * 5);
    for (course, entry) in chunk {
        params.push(course.as_str().into());
        params.push(entry.title.as_str().into());
        params.push(entry.term.clone().into());
        params.push(entry.enrolled.into());
        params.push(at.into());
    }
    tx.exec_drop(
        format!(
            "INSERT INTO courses (course_id, title, term, enrolled, updated_at) VALUES {rows}
             ON DUPLICATE KEY UPDATE title = VALUES(title), term = VALUES(term),
                enrolled = VALUES(enrolled), updated_at = VALUES(updated_at)"
        ),
        params,
    )
    .await?;
    Ok(())
}

async fn replace_instructors(
    tx: &mut Transaction<'_>,
    chunk: &[(CourseId, Entry)],
) -> anyhow::Result<()> {
    let ids: Vec<&str> = chunk.iter().map(|(course, _)| course.as_str()).collect();
    tx.exec_drop(
        format!(
            "DELETE FROM course_instructors WHERE course_id IN ({})",
            shared::mysql::placeholders(ids.len())
        ),
        ids,
    )
    .await?;
    let pairs: Vec<(&str, &str)> = chunk
        .iter()
        .flat_map(|(course, entry)| {
            entry
                .instructors
                .iter()
                .map(move |sub| (course.as_str(), sub.as_str()))
        })
        .collect();
    // A course lists at most 100 instructors, so a chunk's pairs are bounded
    // too; a statement takes them in parts all the same, well under
    // MySQL's 65,535 placeholders.
    for part in pairs.chunks(CHUNK * 4) {
        let rows = vec!["(?, ?)"; part.len()].join(", ");
        let params: Vec<&str> = part.iter().flat_map(|(c, s)| [*c, *s]).collect();
        tx.exec_drop(
            format!("INSERT INTO course_instructors (course_id, sub) VALUES {rows}"),
            params,
        )
        .await?;
    }
    Ok(())
}
