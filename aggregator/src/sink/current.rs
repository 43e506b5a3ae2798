//! `current_responses`, each student's counted response per course (step 3):
//! read for the batch's (course, student) pairs, and the new winners written.
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

use std::collections::{BTreeSet, HashMap};

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, Value};
use shared::mysql::{datetime, from_micros, micros};

use super::shapes::{padded, INSERT_ROWS};
use super::{Received, SinkError};
use crate::counting::{Current, ResponseKey};

/// Reads the current rows of the batch's (course, student) pairs, without
/// locking them: the courses are locked (see above).
pub(super) async fn read(
    tx: &mut Transaction<'_>,
    new: &[&Received],
) -> Result<HashMap<ResponseKey, Current>, SinkError> {
    let keys: BTreeSet<ResponseKey> = new
        .iter()
        .map(|r| {
            (
                r.event.course_id.to_string(),
                r.event.student_key.as_str().to_owned(),
            )
        })
        .collect();
    let keys: Vec<ResponseKey> = keys.into_iter().collect();
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

/// Writes the new winners.
pub(super) async fn write(
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
        tx.exec_drop(sql, Params::Positional(params)).await?;
    }
    Ok(())
}
