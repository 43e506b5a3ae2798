//! `consumer_offsets` inside a batch's transaction (step 5): each partition's
//! next offset moves past the batch in the transaction that applied it, so
//! MySQL's offsets say exactly what is applied. (Claiming them when a
//! partition is assigned, and moving one back, is `consumer/start_offsets.rs`.)

use std::collections::{BTreeMap, HashMap};

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, Value};
use shared::mysql::placeholders;

use super::shapes::{padded, PARTITION_ROWS};
use super::{Received, Resume, SinkError};

/// Locks the partitions' offset rows; returns each one's next offset.
pub(super) async fn lock(
    tx: &mut Transaction<'_>,
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

/// Moves each partition's next offset past the batch, at `now`: on the
/// condition that nothing of the batch was applied before when that was
/// assumed (false when it was), unconditionally when the offsets were read.
pub(super) async fn move_past(
    tx: &mut Transaction<'_>,
    topic: &str,
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
    resume: Resume,
    now: &str,
) -> Result<bool, SinkError> {
    match resume {
        Resume::Assumed => advance(tx, topic, events, consumed, now).await,
        Resume::Read => {
            record(tx, topic, consumed, now).await?;
            Ok(true)
        }
    }
}

/// Records each partition's next offset (never moving it back).
async fn record(
    tx: &mut Transaction<'_>,
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
async fn advance(
    tx: &mut Transaction<'_>,
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
