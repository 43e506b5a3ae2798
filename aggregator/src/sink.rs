//! MySQL: one transaction per batch, which is what makes the effect exactly once.
//!
//! In order, inside the transaction:
//! 1. lock the batch's partitions in `consumer_offsets` and skip messages below
//!    the recorded next offset (a redelivery of what was applied);
//! 2. lock the batch's courses in `course_stats`, reading their versions;
//! 3. append the rest to `feedback_events` in multi-row `INSERT`s of up to 100
//!    rows; a `feedback_id` already there (a replayed spool, a retried
//!    produce) is a duplicate and changes nothing else;
//! 4. read the batch's rows of `current_responses` and apply the counting
//!    rule to them;
//! 5. add the per-course changes to `course_stats`, bumping each changed
//!    course's version (the versions the Redis deltas carry);
//! 6. record each partition's next offset.
//!
//! Why step 4 reads without locking. Every transaction that writes a course's
//! current rows holds that course's `course_stats` row first (step 2), and
//! nothing before step 2 reads without locking, so the snapshot that step 4
//! reads (REPEATABLE READ takes it at a transaction's first plain read) holds
//! every earlier writer's commit. Locking the current rows instead put gap
//! locks on them for every new student, and lanes writing neighbouring
//! courses then deadlocked on one another's gaps (about one batch in a
//! hundred at 3 lanes, one in thirty at 6), each a whole transaction retried.
//! A course not in `course_stats` yet is only gap-locked in step 2: two
//! transactions with events of the same new course (possible only after the
//! topic's partitions were changed) then both insert its row in step 5, and
//! InnoDB rolls one back as a deadlock; its retry finds the row and waits.
//!
//! Redis is updated only after the commit (see `cache.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, TxOpts, Value};
use shared::cache::Delta;
use shared::db::{datetime, from_micros, micros, placeholders};
use shared::event::FeedbackSubmitted;

use crate::counting::{self, Current, ResponseKey};

/// The largest multi-row `INSERT`; a batch is cut into this fixed shape plus a remainder.
pub const INSERT_ROWS: usize = 100;

/// The statement shape for a batch's partitions (a topic has 6 unless resized).
const PARTITION_ROWS: usize = 8;

/// `items` with its last element repeated up to `len` (unchanged when empty
/// or longer). For reads only, where a repeated key changes nothing: variable
/// statement shapes would each be prepared anew (two round trips and a parse
/// per statement); padded ones stay in the connection's statement cache.
fn padded<T: Clone>(items: &[T], len: usize) -> Vec<T> {
    let mut out = items.to_vec();
    if let Some(last) = items.last().cloned() {
        out.resize(len.max(items.len()), last);
    }
    out
}

/// An event read from Kafka, with where it came from.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub event: FeedbackSubmitted,
}

/// What one committed batch did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Events counted for the first time.
    pub applied: usize,
    /// Events skipped: redelivered offsets and duplicate `feedback_id`s.
    pub duplicates: usize,
    /// The per-course changes, with the versions they move between.
    pub deltas: Vec<Delta>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A deadlock or lock wait timeout: retry the transaction at once.
    #[error("transaction conflict: {0}")]
    Conflict(mysql_async::Error),
    /// MySQL is unreachable or failed: retry with backoff.
    #[error("MySQL unavailable: {0}")]
    Unavailable(String),
}

impl From<mysql_async::Error> for SinkError {
    fn from(err: mysql_async::Error) -> Self {
        match &err {
            mysql_async::Error::Server(server) if matches!(server.code, 1213 | 1205) => {
                SinkError::Conflict(err)
            }
            _ => SinkError::Unavailable(err.to_string()),
        }
    }
}

/// Commits a batch: `events` decoded from the topic, `consumed` every offset
/// the batch covers (poison messages included, so they are not read again).
pub async fn commit(
    pool: &Pool,
    topic: &str,
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
) -> Result<Committed, SinkError> {
    let mut steps = Steps::start();
    let mut conn = connect(pool).await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    steps.lap("begin");
    // One clock reading for the batch: MySQL's updated_at and the deltas' agree.
    let now_at = shared::event::now_micros();
    let now = datetime(now_at);

    let next = locked_offsets(&mut tx, topic, consumed.keys().copied()).await?;
    steps.lap("offsets_lock");
    let mut seen = HashSet::new();
    let fresh: Vec<&Received> = events
        .iter()
        .filter(|r| r.offset >= next.get(&r.partition).copied().unwrap_or(0))
        .filter(|r| seen.insert(r.event.feedback_id))
        .collect();
    let versions = locked_courses(&mut tx, &fresh).await?;
    steps.lap("courses_lock");
    let new = insert_history(&mut tx, &fresh, now_at).await?;
    steps.lap("history");

    let existing = read_current(&mut tx, &new).await?;
    steps.lap("current_read");
    let decoded = events.len();
    let events: Vec<FeedbackSubmitted> = new.iter().map(|r| r.event.clone()).collect();
    let outcome = counting::apply(existing, &events);
    steps.lap("counting");
    upsert_current(&mut tx, &outcome.writes).await?;
    steps.lap("current_write");
    let deltas = update_stats(&mut tx, &outcome.changes, &versions, now_at).await?;
    steps.lap("stats");
    record_offsets(&mut tx, topic, consumed, &now).await?;
    steps.lap("offsets_record");
    tx.commit().await?;
    steps.lap("commit");

    Ok(Committed {
        applied: new.len(),
        // Redelivered offsets, copies within the batch, and ids already in the history.
        duplicates: decoded - new.len(),
        deltas,
    })
}

/// Times a batch's steps into `aggregator_batch_step_seconds{step}`, so that
/// where a batch's time goes (each statement, the commit, Redis after it) can
/// be read off `/metrics`; the benchmark prints the means beside its ceiling.
pub(crate) struct Steps {
    last: Instant,
}

impl Steps {
    pub(crate) fn start() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    /// Records the time since the previous lap (or the start) as `step`.
    pub(crate) fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        metrics::histogram!("aggregator_batch_step_seconds", "step" => step)
            .record((now - self.last).as_secs_f64());
        self.last = now;
    }
}

/// Locks the partitions' offset rows; returns each one's next offset.
async fn locked_offsets(
    tx: &mut mysql_async::Transaction<'_>,
    topic: &str,
    partitions: impl Iterator<Item = i32>,
) -> Result<HashMap<i32, i64>, SinkError> {
    let partitions: Vec<Value> = partitions.map(Value::from).collect();
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let partitions = padded(&partitions, PARTITION_ROWS);
    let sql = format!(
        "SELECT kafka_partition, next_offset FROM consumer_offsets FORCE INDEX (PRIMARY)
         WHERE topic = ? AND kafka_partition IN ({}) FOR UPDATE",
        placeholders(partitions.len())
    );
    let mut params = vec![Value::from(topic)];
    params.extend(partitions);
    let rows: Vec<(i32, i64)> = tx.exec(sql, Params::Positional(params)).await?;
    Ok(rows.into_iter().collect())
}

/// Locks the `course_stats` rows of the events' courses (a gap lock for a
/// course without one yet); returns each existing course's version.
async fn locked_courses(
    tx: &mut mysql_async::Transaction<'_>,
    fresh: &[&Received],
) -> Result<HashMap<String, i64>, SinkError> {
    let courses: BTreeSet<&str> = fresh.iter().map(|r| r.event.course_id.as_str()).collect();
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
    Ok(versions)
}

/// Appends events to the history, stamped with the batch's time `now_at`;
/// returns those that were not there already.
async fn insert_history<'a>(
    tx: &mut mysql_async::Transaction<'_>,
    fresh: &[&'a Received],
    now_at: time::OffsetDateTime,
) -> Result<Vec<&'a Received>, SinkError> {
    let now = datetime(now_at);
    let mut inserted = 0;
    for chunk in fresh.chunks(INSERT_ROWS) {
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
                Value::from(now.as_str()),
            ]);
        }
        tx.exec_drop(sql, Params::Positional(params)).await?;
        inserted += tx.affected_rows() as usize;
    }
    if inserted == fresh.len() {
        return Ok(fresh.to_vec());
    }
    // Some were there already (a replayed spool, a retried produce, a
    // redelivery after MySQL's offsets were lost). Ours are the rows with our
    // partition, offset and this batch's received_at: the offset rows locked
    // above keep anyone else from writing the same partition and offset, and
    // an earlier copy at the same position has an earlier received_at.
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

/// Reads the current rows of the batch's (course, student) pairs, without
/// locking them: the courses are locked (see the module's comment).
async fn read_current(
    tx: &mut mysql_async::Transaction<'_>,
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
async fn upsert_current(
    tx: &mut mysql_async::Transaction<'_>,
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

/// Adds the changes to `course_stats`, whose rows `versions` came from
/// (locked); returns the Redis deltas with their versions.
async fn update_stats(
    tx: &mut mysql_async::Transaction<'_>,
    changes: &BTreeMap<String, counting::StatsChange>,
    versions: &HashMap<String, i64>,
    now_at: time::OffsetDateTime,
) -> Result<Vec<Delta>, SinkError> {
    let now = datetime(now_at);
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<(&String, &counting::StatsChange)> = changes.iter().collect();
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
    let updated_at_micros = (now_at.unix_timestamp_nanos() / 1000) as i64;
    Ok(changes
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
        .collect())
}

/// Records each partition's next offset (never moving it back).
async fn record_offsets(
    tx: &mut mysql_async::Transaction<'_>,
    topic: &str,
    consumed: &BTreeMap<i32, i64>,
    now: &str,
) -> Result<(), SinkError> {
    if consumed.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO consumer_offsets (topic, kafka_partition, next_offset, updated_at) VALUES {}
         ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, VALUES(next_offset)),
           updated_at = VALUES(updated_at)",
        vec!["(?, ?, ?, ?)"; consumed.len()].join(", ")
    );
    let mut params = Vec::with_capacity(consumed.len() * 4);
    for (partition, last) in consumed {
        params.extend([
            Value::from(topic),
            Value::from(*partition),
            Value::from(last + 1),
            Value::from(now),
        ]);
    }
    tx.exec_drop(sql, Params::Positional(params)).await?;
    Ok(())
}

/// A connection, or `Unavailable` within 5 s (mysql_async has no connect timeout).
async fn connect(pool: &Pool) -> Result<mysql_async::Conn, SinkError> {
    tokio::time::timeout(Duration::from_secs(5), pool.get_conn())
        .await
        .map_err(|_| SinkError::Unavailable("timed out connecting to MySQL".into()))?
        .map_err(SinkError::from)
}

/// The next offset MySQL holds for each of `partitions` of `topic`, once each
/// has a row: a missing one is created at 0. The batches' locking reads then
/// lock existing rows rather than the gap where a missing row would go: lanes
/// that gap-locked the same gap and then inserted their first offsets into it
/// deadlocked on one another, over and over at 6 lanes.
pub async fn claim_offsets(
    pool: &Pool,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, SinkError> {
    let mut conn = connect(pool).await?;
    if !partitions.is_empty() {
        let sql = format!(
            "INSERT INTO consumer_offsets (topic, kafka_partition, next_offset, updated_at) VALUES {}
             ON DUPLICATE KEY UPDATE next_offset = next_offset",
            vec!["(?, ?, 0, ?)"; partitions.len()].join(", ")
        );
        let now = datetime(shared::event::now_micros());
        let params: Vec<Value> = partitions
            .iter()
            .flat_map(|p| {
                [
                    Value::from(topic),
                    Value::from(*p),
                    Value::from(now.as_str()),
                ]
            })
            .collect();
        conn.exec_drop(sql, Params::Positional(params)).await?;
    }
    let rows: Vec<(i32, i64)> = conn
        .exec(
            "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE topic = ?",
            (topic,),
        )
        .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::padded;

    #[test]
    fn padding_repeats_the_last_item_and_leaves_longer_or_empty_lists_alone() {
        assert_eq!(padded(&[1, 2, 3], 5), [1, 2, 3, 3, 3]);
        assert_eq!(padded(&[1, 2, 3], 2), [1, 2, 3]);
        assert_eq!(padded::<i32>(&[], 4), Vec::<i32>::new());
    }
}
