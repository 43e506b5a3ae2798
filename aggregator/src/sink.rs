//! MySQL: one transaction per batch, which is what makes the effect exactly once.
//!
//! In order, inside the transaction:
//! 1. lock the batch's courses in `course_stats`, reading their versions;
//! 2. append the events to `feedback_events` in multi-row `INSERT`s of up to
//!    100 rows; a `feedback_id` already there (a replayed spool, a retried
//!    produce) is a duplicate and changes nothing else;
//! 3. read the batch's rows of `current_responses` and apply the counting
//!    rule to them;
//! 4. add the per-course changes to `course_stats`, bumping each changed
//!    course's version (the versions the Redis deltas carry);
//! 5. move each partition's next offset past the batch, on the condition that
//!    it was at most the batch's first offset: nothing of the batch had been
//!    applied. A lane reads on from where its last batch ended, so this holds
//!    but for a redelivery (a rewind, a member that lost the partition while
//!    its batch was in flight); then the transaction is rolled back and the
//!    batch written again with the partitions' offset rows locked and read
//!    after step 1, skipping the messages below them. Reading them first in
//!    every batch cost a statement and a round trip for what is rare.
//!
//! Why step 3 reads without locking. Every transaction that writes a course's
//! current rows holds that course's `course_stats` row first (step 1, its
//! first statement), so the snapshot that step 3 reads (REPEATABLE READ takes
//! it at a transaction's first plain read, after step 1) holds every earlier
//! writer's commit. Locking the current rows instead put gap
//! locks on them for every new student, and lanes writing neighbouring
//! courses then deadlocked on one another's gaps (about one batch in a
//! hundred at 3 lanes, one in thirty at 6), each a whole transaction retried.
//! A course not in `course_stats` yet is only gap-locked in step 1: two
//! transactions with events of the same new course (possible only after the
//! topic's partitions were changed) then both insert its row in step 4, and
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
///
/// A lane reads on from where its last batch ended, so a batch normally starts
/// at or after each partition's recorded next offset: it is written on that
/// assumption and the assumption is checked when the offsets are recorded, by
/// the statement that moves them. When it fails (a redelivery: a rewind, a
/// member that lost the partition while its batch was in flight), the
/// transaction is rolled back and the batch written again after reading the
/// recorded offsets, skipping what they cover.
pub async fn commit(
    pool: &Pool,
    topic: &str,
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
) -> Result<Committed, SinkError> {
    let mut resume = Resume::Assumed;
    loop {
        // `Resume::Read` always commits (or fails): this runs at most twice.
        if let Some(committed) = commit_as(pool, topic, events, consumed, resume).await? {
            return Ok(committed);
        }
        metrics::counter!("aggregator_redelivered_batches_total").increment(1);
        resume = Resume::Read;
    }
}

/// Where a batch learns which of its messages were applied already.
#[derive(Clone, Copy)]
enum Resume {
    /// None were: each partition's recorded next offset is at most the
    /// batch's first offset of it, checked when the offsets are recorded.
    Assumed,
    /// Lock and read the recorded offsets, and skip the messages below them.
    Read,
}

/// One attempt at [`commit`]; `None` when `Resume::Assumed` turned out wrong
/// (the transaction was rolled back).
async fn commit_as(
    pool: &Pool,
    topic: &str,
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
    resume: Resume,
) -> Result<Option<Committed>, SinkError> {
    let mut steps = Steps::start();
    let mut conn = connect(pool).await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    steps.lap("begin");
    // One clock reading for the batch: MySQL's updated_at and the deltas' agree.
    let now_at = shared::event::now_micros();
    let now = datetime(now_at);

    // The courses first, then the offsets, in both modes (one lock order).
    let versions = locked_courses(&mut tx, events).await?;
    steps.lap("courses_lock");
    let next = match resume {
        Resume::Assumed => HashMap::new(),
        Resume::Read => {
            let next = locked_offsets(&mut tx, topic, consumed.keys().copied()).await?;
            steps.lap("offsets_lock");
            next
        }
    };
    let mut seen = HashSet::new();
    let fresh: Vec<&Received> = events
        .iter()
        .filter(|r| r.offset >= next.get(&r.partition).copied().unwrap_or(0))
        .filter(|r| seen.insert(r.event.feedback_id))
        .collect();
    let new = insert_history(&mut tx, &fresh, now_at).await?;
    steps.lap("history");

    let existing = read_current(&mut tx, &new).await?;
    steps.lap("current_read");
    let decoded = events.len();
    let counted: Vec<FeedbackSubmitted> = new.iter().map(|r| r.event.clone()).collect();
    let outcome = counting::apply(existing, &counted);
    steps.lap("counting");
    upsert_current(&mut tx, &outcome.writes).await?;
    steps.lap("current_write");
    let deltas = update_stats(&mut tx, &outcome.changes, &versions, now_at).await?;
    steps.lap("stats");
    match resume {
        Resume::Assumed => {
            if !advance_offsets(&mut tx, topic, events, consumed, &now).await? {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        Resume::Read => record_offsets(&mut tx, topic, consumed, &now).await?,
    }
    steps.lap("offsets_record");
    tx.commit().await?;
    steps.lap("commit");

    Ok(Some(Committed {
        applied: new.len(),
        // Redelivered offsets, copies within the batch, and ids already in the history.
        duplicates: decoded - new.len(),
        deltas,
    }))
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
    // partition, offset and this batch's received_at: another writer of the
    // same partition and offset holds the same courses (step 1), so it
    // committed before this insert, and its offsets then fail this batch at
    // step 5 (or were read and skipped); an earlier copy at the same position
    // has an earlier received_at.
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

/// Moves each partition's next offset past the batch, provided it is at most
/// the batch's first event of that partition (nothing of the batch was applied
/// before); false, with nothing moved that matters, when a partition's is not
/// (or has no row yet). A partition with only poison messages moves without
/// the condition: it has nothing to count twice.
async fn advance_offsets(
    tx: &mut mysql_async::Transaction<'_>,
    topic: &str,
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
    now: &str,
) -> Result<bool, SinkError> {
    if consumed.is_empty() {
        return Ok(true);
    }
    let mut first: HashMap<i32, i64> = HashMap::new();
    for r in events {
        let at = first.entry(r.partition).or_insert(r.offset);
        *at = (*at).min(r.offset);
    }
    let sql = format!(
        "UPDATE consumer_offsets
         SET next_offset = GREATEST(next_offset, CASE kafka_partition {} END), updated_at = ?
         WHERE topic = ? AND ({})",
        vec!["WHEN ? THEN ?"; consumed.len()].join(" "),
        vec!["(kafka_partition = ? AND next_offset <= ?)"; consumed.len()].join(" OR ")
    );
    let mut params = Vec::with_capacity(consumed.len() * 4 + 2);
    for (partition, last) in consumed {
        params.extend([Value::from(*partition), Value::from(last + 1)]);
    }
    params.extend([Value::from(now), Value::from(topic)]);
    for partition in consumed.keys() {
        let bound = first.get(partition).copied().unwrap_or(i64::MAX);
        params.extend([Value::from(*partition), Value::from(bound)]);
    }
    tx.exec_drop(sql, Params::Positional(params)).await?;
    // Each matching row changes (its updated_at at least), so it is counted.
    Ok(tx.affected_rows() == consumed.len() as u64)
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

/// Moves `partition`'s recorded next offset from `from` back to `to`, if it
/// is still `from` (the one place an offset goes down: Kafka lost the log).
pub async fn rewind_offset(
    pool: &Pool,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<(), SinkError> {
    let mut conn = connect(pool).await?;
    conn.exec_drop(
        "UPDATE consumer_offsets SET next_offset = ?, updated_at = ?
         WHERE topic = ? AND kafka_partition = ? AND next_offset = ?",
        (
            to,
            datetime(shared::event::now_micros()),
            topic,
            partition,
            from,
        ),
    )
    .await?;
    Ok(())
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
