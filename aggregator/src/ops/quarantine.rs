//! `aggregator quarantine list|replay|purge`: the events MySQL refused for
//! good (`sink/quarantine.rs`), for an operator who has fixed the cause.
//!
//! A row is named by where the event was read, `PARTITION:OFFSET` of the
//! topic in `FEEDBACK_KAFKA_TOPIC` (the table's key). Replay produces the
//! event as read back to that topic, keyed by its course with its request
//! id and `traceparent`, and deletes the row only once Kafka acknowledged
//! it: a crash in between leaves the row, and a second replay's duplicate
//! `feedback_id` changes nothing. An event MySQL still refuses is set aside
//! again, at its new offset.

use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Value};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::would;

/// Which rows a command acts on.
#[derive(Debug, Clone)]
pub enum Selection {
    /// The row of the event read at this partition and offset.
    At(Position),
    All,
    /// Rows set aside before this time.
    Before(OffsetDateTime),
}

/// Where an event was read: `PARTITION:OFFSET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl std::str::FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (partition, offset) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not PARTITION:OFFSET"))?;
        Ok(Self {
            partition: partition
                .parse()
                .map_err(|_| format!("{partition:?} is not a partition"))?,
            offset: offset
                .parse()
                .map_err(|_| format!("{offset:?} is not an offset"))?,
        })
    }
}

/// Parses `--before`: an RFC 3339 time, such as `2025-01-31T00:00:00Z`.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|err| format!("{s:?}: {err} (RFC 3339 expected)"))
}

/// The `WHERE` clause of `selection` on `topic`, with its parameters.
fn filter(topic: &str, selection: &Selection) -> (&'static str, Vec<Value>) {
    let topic = Value::from(topic);
    match selection {
        Selection::At(at) => (
            "topic = ? AND kafka_partition = ? AND kafka_offset = ?",
            vec![topic, at.partition.into(), at.offset.into()],
        ),
        Selection::All => ("topic = ?", vec![topic]),
        Selection::Before(at) => (
            "topic = ? AND quarantined_at < ?",
            vec![topic, shared::mysql::datetime(*at).into()],
        ),
    }
}

/// A row as listed.
struct Listed {
    at: Position,
    feedback_id: String,
    course_id: String,
    reason: String,
    code: i32,
    request_id: Option<String>,
    quarantined_at: String,
}

type ListedColumns = (
    i32,
    i64,
    String,
    String,
    String,
    i32,
    Option<String>,
    String,
);

const LISTED: &str = "kafka_partition, kafka_offset, feedback_id, course_id, reason, error_code,
    request_id, CAST(quarantined_at AS CHAR)";

/// A pool from the environment and a connection of it.
async fn connect() -> anyhow::Result<(Pool, mysql_async::Conn)> {
    let pool = shared::mysql::pool(&shared::env::mysql_url())?;
    let conn = super::connect(&pool).await?;
    Ok((pool, conn))
}

async fn select(
    conn: &mut mysql_async::Conn,
    topic: &str,
    selection: &Selection,
) -> anyhow::Result<Vec<Listed>> {
    let (clause, params) = filter(topic, selection);
    let sql = format!(
        "SELECT {LISTED} FROM quarantined_events WHERE {clause}
         ORDER BY quarantined_at, kafka_partition, kafka_offset"
    );
    let rows: Vec<ListedColumns> = conn.exec(sql, Params::Positional(params)).await?;
    if let (Selection::At(at), true) = (selection, rows.is_empty()) {
        anyhow::bail!(
            "no quarantined event of {topic} at {}:{}",
            at.partition,
            at.offset
        );
    }
    Ok(rows
        .into_iter()
        .map(
            |(partition, offset, feedback_id, course_id, reason, code, request_id, at)| Listed {
                at: Position { partition, offset },
                feedback_id,
                course_id,
                reason,
                code,
                request_id,
                quarantined_at: at,
            },
        )
        .collect())
}

/// `quarantine list`: every row of the topic, oldest first, as a table or JSON lines.
pub async fn list(json: bool) -> anyhow::Result<()> {
    let topic = shared::env::kafka_topic();
    let (pool, mut conn) = connect().await?;
    let rows = select(&mut conn, &topic, &Selection::All).await?;
    drop(conn);
    pool.disconnect().await.ok();
    if json {
        for row in &rows {
            let line = serde_json::json!({
                "topic": topic,
                "partition": row.at.partition,
                "offset": row.at.offset,
                "feedback_id": row.feedback_id,
                "course_id": row.course_id,
                "reason": row.reason,
                "error_code": row.code,
                "request_id": row.request_id,
                "quarantined_at": row.quarantined_at,
            });
            println!("{line}");
        }
        return Ok(());
    }
    println!("AT\tFEEDBACK_ID\tCOURSE_ID\tREASON\tCODE\tREQUEST_ID\tQUARANTINED_AT");
    for row in &rows {
        println!(
            "{}:{}\t{}\t{}\t{}\t{}\t{}\t{}",
            row.at.partition,
            row.at.offset,
            row.feedback_id,
            row.course_id,
            row.reason,
            row.code,
            row.request_id.as_deref().unwrap_or("-"),
            row.quarantined_at
        );
    }
    eprintln!("{} quarantined events of {topic}", rows.len());
    Ok(())
}

/// What replay produces for one row.
type Replayed = (String, Vec<u8>, Option<String>, Option<String>);

/// `quarantine replay`: produces the selected events back to the topic and
/// deletes each row once Kafka acknowledged it; a dry run without `apply`.
pub async fn replay(selection: Selection, apply: bool) -> anyhow::Result<()> {
    let topic = shared::env::kafka_topic();
    let (pool, mut conn) = connect().await?;
    let rows = select(&mut conn, &topic, &selection).await?;
    let producer: FutureProducer = shared::kafka::client_config(&shared::env::kafka_brokers())
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the producer")?;
    let bar = super::progress(rows.len() as u64, "events")?;
    for row in &rows {
        let line = format!(
            "{}:{} {} (course {})",
            row.at.partition, row.at.offset, row.feedback_id, row.course_id
        );
        // On stdout above the bar (which is on stderr, hidden when that is
        // no terminal), not through it.
        if !apply {
            bar.suspend(|| println!("would replay {line} to {topic}"));
        } else if let Some((partition, offset)) =
            replay_one(&mut conn, &producer, &topic, row.at).await?
        {
            bar.suspend(|| println!("replayed {line} to {topic} at {partition}:{offset}"));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(conn);
    pool.disconnect().await.ok();
    println!(
        "{}replay{} {} events{}",
        would(apply),
        if apply { "ed" } else { "" },
        rows.len(),
        if apply {
            ""
        } else {
            " (dry run: --apply replays)"
        }
    );
    Ok(())
}

/// Produces one row's event and, once Kafka has it, deletes the row.
/// Returns where it landed; `None` when the row was gone (another replay
/// or a purge took it since the listing).
async fn replay_one(
    conn: &mut mysql_async::Conn,
    producer: &FutureProducer,
    topic: &str,
    at: Position,
) -> anyhow::Result<Option<(i32, i64)>> {
    let (clause, params) = filter(topic, &Selection::At(at));
    let row: Option<Replayed> = conn
        .exec_first(
            format!(
                "SELECT course_id, payload, request_id, traceparent
                 FROM quarantined_events WHERE {clause}"
            ),
            Params::Positional(params.clone()),
        )
        .await?;
    let Some((course_id, payload, request_id, traceparent)) = row else {
        return Ok(None);
    };
    let mut headers = OwnedHeaders::new();
    for (key, value) in [
        (shared::trace::REQUEST_ID, &request_id),
        (shared::trace::TRACEPARENT, &traceparent),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
    }
    let record = FutureRecord::to(topic)
        .key(&course_id)
        .payload(&payload)
        .headers(headers);
    let (partition, offset) = producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|delivered| (delivered.partition, delivered.offset))
        .map_err(|(err, _)| err)
        .with_context(|| format!("producing {}:{}", at.partition, at.offset))?;
    conn.exec_drop(
        format!("DELETE FROM quarantined_events WHERE {clause}"),
        Params::Positional(params),
    )
    .await?;
    Ok(Some((partition, offset)))
}

/// `quarantine purge`: deletes the selected rows; a dry run without `apply`.
pub async fn purge(selection: Selection, apply: bool) -> anyhow::Result<()> {
    let topic = shared::env::kafka_topic();
    let (pool, mut conn) = connect().await?;
    let count = if apply {
        let (clause, params) = filter(&topic, &selection);
        conn.exec_iter(
            format!("DELETE FROM quarantined_events WHERE {clause}"),
            Params::Positional(params),
        )
        .await?
        .affected_rows()
    } else {
        let rows = select(&mut conn, &topic, &selection).await?;
        for row in &rows {
            println!(
                "would purge {}:{} {} (course {}, {})",
                row.at.partition, row.at.offset, row.feedback_id, row.course_id, row.reason
            );
        }
        rows.len() as u64
    };
    drop(conn);
    pool.disconnect().await.ok();
    println!(
        "{} {count} quarantined events of {topic}{}",
        if apply { "purged" } else { "would purge" },
        if apply {
            ""
        } else {
            " (dry run: --apply deletes)"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_partition_colon_offset() {
        assert_eq!(
            "2:1234".parse(),
            Ok(Position {
                partition: 2,
                offset: 1234
            })
        );
        for bad in ["", "2", "2:", ":5", "a:5", "2:b", "2:5:7"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn before_takes_rfc_3339() {
        assert!(parse_time("2025-01-31T00:00:00Z").is_ok());
        assert!(parse_time("2025-01-31").is_err());
    }
}
