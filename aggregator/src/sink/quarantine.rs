//! `quarantined_events`: an event MySQL refused for good, set aside with the
//! reason, in the transaction that moves its partition's offset past it.
//!
//! One transaction for both is what keeps it exactly once: a crash before
//! the commit leaves neither (the event is read and refused again), after it
//! both (it is not read again). The offset rows are locked and read first,
//! as for a redelivered batch: an event they are past already was applied or
//! set aside before, and is left alone.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, TxOpts, Value};
use shared::mysql::datetime;

use super::{connect, offsets, Received, Refusal, Resume, SinkError};

/// An event to set aside, with what an operator needs to produce it again
/// once the cause is fixed.
pub struct Quarantined<'a> {
    /// The event, and where it was read.
    pub received: &'a Received,
    /// The message's value as read.
    pub payload: &'a [u8],
    /// Why MySQL refused it.
    pub refusal: &'a Refusal,
}

/// Sets `entry` aside and moves the offsets past `consumed` (its own and
/// any poison around it), in one transaction; false when the offsets were
/// past it already (nothing written). Every error is one to retry: nothing
/// else may happen to the event.
pub async fn quarantine(
    pool: &Pool,
    topic: &str,
    entry: &Quarantined<'_>,
    consumed: &BTreeMap<i32, i64>,
) -> Result<bool, SinkError> {
    write(pool, topic, entry, consumed)
        .await
        .map_err(SinkError::retried)
}

async fn write(
    pool: &Pool,
    topic: &str,
    entry: &Quarantined<'_>,
    consumed: &BTreeMap<i32, i64>,
) -> Result<bool, SinkError> {
    let mut conn = connect(pool).await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let now = datetime(shared::event::now_micros());
    let received = entry.received;
    let recorded = offsets::lock(&mut tx, topic, consumed.keys().copied()).await?;
    let past = recorded
        .get(&received.partition)
        .is_some_and(|next| received.offset < *next);
    if !past {
        let refusal = entry.refusal;
        let params = vec![
            Value::from(topic),
            Value::from(received.partition),
            Value::from(received.offset),
            Value::from(received.event.feedback_id.to_string()),
            Value::from(received.event.course_id.as_str()),
            Value::from(entry.payload),
            Value::from(refusal.code()),
            Value::from(refusal.reason),
            Value::from(crate::dlq::reason(&refusal.message())),
            received
                .trace
                .request_id
                .as_deref()
                .map_or(Value::NULL, Value::from),
            received
                .trace
                .traceparent
                .as_deref()
                .map_or(Value::NULL, Value::from),
            Value::from(now.as_str()),
        ];
        tx.exec_drop(
            "INSERT INTO quarantined_events
               (topic, kafka_partition, kafka_offset, feedback_id, course_id, payload, error_code,
                reason, error_message, request_id, traceparent, quarantined_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE topic = topic",
            Params::Positional(params),
        )
        .await?;
    }
    offsets::move_past(&mut tx, topic, &[], consumed, Resume::Read, &now).await?;
    tx.commit().await?;
    Ok(!past)
}
