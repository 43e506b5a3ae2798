//! Where an assigned partition starts: the next offset MySQL recorded for it.
//!
//! librdkafka asks from inside its rebalance callback, on its own thread, so
//! each statement here runs on a thread of its own with its own small runtime
//! and pool (`on_own_runtime`): it never blocks or re-enters the service's.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Value};
use shared::mysql::datetime;

use crate::sink::{connect, SinkError};

/// The next offset MySQL holds for each of `partitions` of `topic`, once each
/// has a row: a missing one is created at 0. The batches' locking reads then
/// lock existing rows rather than the gap where a missing row would go: lanes
/// that gap-locked the same gap and then inserted their first offsets into it
/// would deadlock on one another.
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

/// [`claim_offsets`], from librdkafka's callback.
pub(super) fn claim_offsets_blocking(
    mysql_url: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, i64>> {
    let topic = topic.to_owned();
    let partitions = partitions.to_vec();
    on_own_runtime(mysql_url, "reading offsets", move |pool| async move {
        claim_offsets(&pool, &topic, &partitions).await
    })
}

/// [`rewind_offset`], from librdkafka's callback.
pub(super) fn rewind_offset_blocking(
    mysql_url: &str,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> anyhow::Result<()> {
    let topic = topic.to_owned();
    on_own_runtime(mysql_url, "moving an offset back", move |pool| async move {
        rewind_offset(&pool, &topic, partition, from, to).await
    })
}

/// Runs `work` on MySQL on a thread of its own with its own small runtime
/// and pool, so it never blocks or re-enters the service's; at most 5 s.
fn on_own_runtime<T, F, Fut>(mysql_url: &str, what: &'static str, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Pool) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let url = mysql_url.to_owned();
    std::thread::spawn(move || -> anyhow::Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let pool = shared::mysql::pool(&url)?;
            let result = tokio::time::timeout(Duration::from_secs(5), work(pool.clone()))
                .await
                .map_err(|_| anyhow::anyhow!("timed out {what}"))?
                .map_err(anyhow::Error::from);
            let _ = pool.disconnect().await;
            result
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the MySQL thread panicked"))?
}
