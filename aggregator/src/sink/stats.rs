//! `course_stats`, the first and the last table a batch writes: its courses'
//! rows are locked before anything else (step 1), which serialises the
//! transactions that touch a course, and the batch's changes are added to
//! them at the end (step 4), each changed course's version bumped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, Value};
use shared::mysql::{datetime, placeholders};
use shared::redis_hash::Delta;

use super::shapes::{padded, INSERT_ROWS};
use super::{Received, SinkError};
use crate::counting::StatsChange;

/// Locks the `course_stats` rows of the events' courses (a gap lock for a
/// course without one yet); returns each course's version, 0 for one
/// without a row yet.
pub(super) async fn lock_courses(
    tx: &mut Transaction<'_>,
    events: &[Received],
) -> Result<HashMap<String, i64>, SinkError> {
    let courses: BTreeSet<&str> = events.iter().map(|r| r.event.course_id.as_str()).collect();
    let courses: Vec<&str> = courses.into_iter().collect();
    let mut versions = HashMap::new();
    for chunk in courses.chunks(INSERT_ROWS) {
        let chunk = padded(chunk, INSERT_ROWS);
        let sql = format!(
            // Without FORCE INDEX, a few hundred courses and a long IN list
            // make the optimizer scan the table, and the scan locks every
            // course: the lanes then wait for one another.
            "SELECT course_id, version FROM course_stats FORCE INDEX (PRIMARY)
             WHERE course_id IN ({}) FOR UPDATE",
            placeholders(chunk.len())
        );
        let params: Vec<Value> = chunk.iter().map(|c| Value::from(*c)).collect();
        let rows: Vec<(String, i64)> = tx.exec(sql, Params::Positional(params)).await?;
        versions.extend(rows);
    }
    for course in courses {
        versions.entry(course.to_owned()).or_insert(0);
    }
    Ok(versions)
}

/// Adds the changes to `course_stats`, whose rows `versions` came from
/// (locked); returns the Redis deltas with their versions.
pub(super) async fn add(
    tx: &mut Transaction<'_>,
    changes: &BTreeMap<String, StatsChange>,
    versions: &HashMap<String, i64>,
    now_at: time::OffsetDateTime,
) -> Result<Vec<Delta>, SinkError> {
    let now = datetime(now_at);
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<(&String, &StatsChange)> = changes.iter().collect();
    for chunk in entries.chunks(INSERT_ROWS) {
        let sql = format!(
            "INSERT INTO course_stats
               (course_id, responses, rating_sum, rating_1, rating_2, rating_3, rating_4, rating_5, version, updated_at)
             VALUES {}
             ON DUPLICATE KEY UPDATE responses = responses + VALUES(responses),
               rating_sum = rating_sum + VALUES(rating_sum),
               rating_1 = rating_1 + VALUES(rating_1), rating_2 = rating_2 + VALUES(rating_2),
               rating_3 = rating_3 + VALUES(rating_3), rating_4 = rating_4 + VALUES(rating_4),
               rating_5 = rating_5 + VALUES(rating_5),
               version = version + 1, updated_at = VALUES(updated_at)",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?, 1, ?)"; chunk.len()].join(", ")
        );
        let mut params = Vec::with_capacity(chunk.len() * 9);
        for (course_id, change) in chunk {
            params.extend([
                Value::from(course_id.as_str()),
                Value::from(change.responses),
                Value::from(change.rating_sum),
            ]);
            params.extend(change.distribution.iter().map(|n| Value::from(*n)));
            params.push(Value::from(now.as_str()));
        }
        tx.exec_drop(sql, Params::Positional(params)).await?;
    }
    Ok(deltas(changes, versions, now_at))
}

/// The Redis deltas of `changes`, each moving its course from the version
/// `versions` read to the next one.
fn deltas(
    changes: &BTreeMap<String, StatsChange>,
    versions: &HashMap<String, i64>,
    now_at: time::OffsetDateTime,
) -> Vec<Delta> {
    let updated_at_micros = (now_at.unix_timestamp_nanos() / 1000) as i64;
    changes
        .iter()
        .map(|(course_id, change)| {
            let from_version = versions.get(course_id).copied().unwrap_or(0);
            Delta {
                course_id: course_id.clone(),
                from_version,
                to_version: from_version + 1,
                responses: change.responses,
                rating_sum: change.rating_sum,
                distribution: change.distribution,
                updated_at_micros,
            }
        })
        .collect()
}
