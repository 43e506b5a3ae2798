//! `feedback_events`, the history: every event once, by `feedback_id`, with
//! where it was read and when (step 2).

use std::collections::HashSet;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, Value};
use shared::mysql::{datetime, micros, placeholders};

use super::shapes::INSERT_ROWS;
use super::{Received, SinkError};

/// Appends events to the history, stamped with the batch's time `now_at`;
/// returns those that were not there already.
pub(super) async fn append<'a>(
    tx: &mut Transaction<'_>,
    fresh: &[&'a Received],
    now_at: time::OffsetDateTime,
) -> Result<Vec<&'a Received>, SinkError> {
    let now = datetime(now_at);
    let mut inserted = 0;
    for chunk in fresh.chunks(INSERT_ROWS) {
        inserted += insert(tx, chunk, &now).await?;
    }
    if inserted == fresh.len() {
        return Ok(fresh.to_vec());
    }
    ours(tx, fresh, now_at).await
}

/// One multi-row `INSERT` of `chunk`, received at `now`; how many rows were new.
async fn insert(
    tx: &mut Transaction<'_>,
    chunk: &[&Received],
    now: &str,
) -> Result<usize, SinkError> {
    let sql = format!(
        "INSERT INTO feedback_events
               (feedback_id, course_id, student_key, rating, comment, submitted_at, kafka_partition, kafka_offset,
                received_at)
             VALUES {}
             ON DUPLICATE KEY UPDATE feedback_id = feedback_id",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
    );
    let mut params = Vec::with_capacity(chunk.len() * 9);
    for r in chunk {
        let e = &r.event;
        params.extend([
            Value::from(e.feedback_id.to_string()),
            Value::from(e.course_id.as_str()),
            Value::from(e.student_key.as_str()),
            Value::from(e.rating.get()),
            e.comment
                .as_ref()
                .map_or(Value::NULL, |c| Value::from(c.as_str())),
            Value::from(datetime(e.submitted_at)),
            Value::from(r.partition),
            Value::from(r.offset),
            Value::from(now),
        ]);
    }
    tx.exec_drop(sql, Params::Positional(params)).await?;
    Ok(tx.affected_rows() as usize)
}

/// Which of `fresh` this batch inserted, when some were there already (a
/// replayed spool, a retried produce, a redelivery after MySQL's offsets
/// were lost). Ours are the rows with our partition, offset and this batch's
/// received_at: another writer of the same partition and offset holds the
/// same courses (step 1), so it committed before this insert, and its
/// offsets then fail this batch at step 5 (or were read and skipped); an
/// earlier copy at the same position has an earlier received_at.
async fn ours<'a>(
    tx: &mut Transaction<'_>,
    fresh: &[&'a Received],
    now_at: time::OffsetDateTime,
) -> Result<Vec<&'a Received>, SinkError> {
    let now_micros = (now_at.unix_timestamp_nanos() / 1000) as i64;
    let mut ours = HashSet::new();
    for chunk in fresh.chunks(INSERT_ROWS) {
        let sql = format!(
            "SELECT feedback_id, kafka_partition, kafka_offset FROM feedback_events
             WHERE feedback_id IN ({}) AND {} = ?",
            placeholders(chunk.len()),
            micros("received_at")
        );
        let mut params: Vec<Value> = chunk
            .iter()
            .map(|r| Value::from(r.event.feedback_id.to_string()))
            .collect();
        params.push(Value::from(now_micros));
        let rows: Vec<(String, i32, i64)> = tx.exec(sql, Params::Positional(params)).await?;
        ours.extend(rows);
    }
    Ok(fresh
        .iter()
        .filter(|r| ours.contains(&(r.event.feedback_id.to_string(), r.partition, r.offset)))
        .copied()
        .collect())
}
