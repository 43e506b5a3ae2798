//! `current_responses`, each student's counted response per course (step 3):
//! the batch's events counted against the rows they replace, and the new
//! winners written.
//!
//! The rows a batch replaces come from the lane's memo (`memo.rs`) where it
//! holds them; a pair it does not hold is taken to have no row and inserted
//! only where none is. When MySQL inserted fewer rows than that, some pairs
//! had rows after all: those are read, the batch counted again against them,
//! and their winners written. A pair's row is then either the one the batch
//! inserted (its winner's `feedback_id`, which no earlier row can carry: the
//! history just took that id as new) or the untouched row from before.
//!
//! Why the read does not lock. Every transaction that writes a course's
//! current rows holds that course's `course_stats` row first (step 1, its
//! first statement), so the snapshot the read sees (REPEATABLE READ takes it
//! at a transaction's first plain read, after step 1) holds every earlier
//! writer's commit. Locking the current rows instead would put gap locks on
//! them for every new student, and lanes writing neighbouring courses would
//! then deadlock on one another's gaps, each a whole transaction retried.
//! A course not in `course_stats` yet is only gap-locked in step 1: two
//! transactions with events of the same new course (possible only after the
//! topic's partitions were changed) then both insert its row in step 4, and
//! InnoDB rolls one back as a deadlock; its retry finds the row and waits.

use std::collections::{HashMap, HashSet};

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, Value};
use shared::event::FeedbackSubmitted;
use shared::metrics::names;
use shared::mysql::{datetime, from_micros, micros};

use super::shapes::{padded, INSERT_ROWS};
use super::SinkError;
use crate::counting::{self, Current, Outcome, ResponseKey};

/// Counts `events` (new, deduplicated) against `known`, the rows the memo
/// holds for their pairs, and writes the winners; returns the outcome and
/// the rows found that the memo did not hold (and the batch left as they were
/// or replaced).
pub(super) async fn count(
    tx: &mut Transaction<'_>,
    mut known: HashMap<ResponseKey, Current>,
    events: &[FeedbackSubmitted],
) -> Result<(Outcome, Vec<(ResponseKey, Current)>), SinkError> {
    let outcome = counting::apply(known.clone(), events);
    let (replacing, fresh): (Vec<_>, Vec<_>) = outcome
        .writes
        .iter()
        .cloned()
        .partition(|(key, _)| known.contains_key(key));
    write(tx, &replacing).await?;
    if insert_absent(tx, &fresh).await? == fresh.len() {
        return Ok((outcome, Vec::new()));
    }
    let ours: HashMap<&ResponseKey, &str> = fresh
        .iter()
        .map(|(key, row)| (key, row.feedback_id.as_str()))
        .collect();
    let keys: Vec<ResponseKey> = fresh.iter().map(|(key, _)| key.clone()).collect();
    let found: Vec<(ResponseKey, Current)> = read(tx, &keys)
        .await?
        .into_iter()
        .filter(|(key, row)| ours.get(key) != Some(&row.feedback_id.as_str()))
        .collect();
    metrics::counter!(names::AGGREGATOR_CURRENT_ROWS_FOUND_TOTAL).increment(found.len() as u64);
    known.extend(found.iter().cloned());
    let outcome = counting::apply(known, events);
    let found_keys: HashSet<&ResponseKey> = found.iter().map(|(key, _)| key).collect();
    let corrections: Vec<(ResponseKey, Current)> = outcome
        .writes
        .iter()
        .filter(|(key, _)| found_keys.contains(key))
        .cloned()
        .collect();
    write(tx, &corrections).await?;
    Ok((outcome, found))
}

/// Reads the current rows of `keys`, without locking them: the courses are
/// locked (see above).
async fn read(
    tx: &mut Transaction<'_>,
    keys: &[ResponseKey],
) -> Result<HashMap<ResponseKey, Current>, SinkError> {
    let mut current = HashMap::new();
    for chunk in keys.chunks(INSERT_ROWS) {
        let chunk = padded(chunk, INSERT_ROWS);
        let sql = format!(
            "SELECT course_id, student_key, feedback_id, rating, {}
             FROM current_responses FORCE INDEX (PRIMARY)
             WHERE (course_id, student_key) IN ({})",
            micros("submitted_at"),
            vec!["(?, ?)"; chunk.len()].join(", ")
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(c, s)| [Value::from(c.as_str()), Value::from(s.as_str())])
            .collect();
        let rows: Vec<(String, String, String, u8, i64)> =
            tx.exec(sql, Params::Positional(params)).await?;
        for (course_id, student_key, feedback_id, rating, at) in rows {
            current.insert(
                (course_id, student_key),
                Current {
                    feedback_id,
                    rating,
                    submitted_at: from_micros(at),
                },
            );
        }
    }
    Ok(current)
}

/// Writes winners over the rows they replace.
async fn write(
    tx: &mut Transaction<'_>,
    writes: &[(ResponseKey, Current)],
) -> Result<(), SinkError> {
    for chunk in writes.chunks(INSERT_ROWS) {
        let sql = format!(
            "INSERT INTO current_responses (course_id, student_key, feedback_id, rating, submitted_at)
             VALUES {}
             ON DUPLICATE KEY UPDATE feedback_id = VALUES(feedback_id), rating = VALUES(rating),
               submitted_at = VALUES(submitted_at)",
            vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        tx.exec_drop(sql, Params::Positional(row_params(chunk)))
            .await?;
    }
    Ok(())
}

/// Inserts winners of pairs taken to have no row, leaving any row there is
/// untouched; how many were inserted.
async fn insert_absent(
    tx: &mut Transaction<'_>,
    writes: &[(ResponseKey, Current)],
) -> Result<usize, SinkError> {
    let mut inserted = 0;
    for chunk in writes.chunks(INSERT_ROWS) {
        // A no-op update rather than INSERT IGNORE, which would also turn
        // errors into warnings; the pool counts only changed rows.
        let sql = format!(
            "INSERT INTO current_responses (course_id, student_key, feedback_id, rating, submitted_at)
             VALUES {}
             ON DUPLICATE KEY UPDATE course_id = course_id",
            vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        tx.exec_drop(sql, Params::Positional(row_params(chunk)))
            .await?;
        inserted += tx.affected_rows() as usize;
    }
    Ok(inserted)
}

/// The five values of each row, in the column order both writes use.
fn row_params(chunk: &[(ResponseKey, Current)]) -> Vec<Value> {
    let mut params = Vec::with_capacity(chunk.len() * 5);
    for ((course_id, student_key), row) in chunk {
        params.extend([
            Value::from(course_id.as_str()),
            Value::from(student_key.as_str()),
            Value::from(row.feedback_id.as_str()),
            Value::from(row.rating),
            Value::from(datetime(row.submitted_at)),
        ]);
    }
    params
}
