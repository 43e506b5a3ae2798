//! `aggregator dlq list|replay|purge`: the dead letters of
//! `<FEEDBACK_KAFKA_TOPIC>.dlq` (`crate::dlq`), for an operator who has made
//! them readable again.
//!
//! The aggregator creates the dead-letter topic with one partition, so a
//! dead letter is named by its offset there. Listing reads the topic from
//! its first record up to the end it had when the command started, with
//! partitions assigned by hand: no group, nothing committed. Replay produces
//! a dead letter's original key, value and headers (the `x-dlq-*` and
//! `x-original-*` ones left out) back to the topic; Kafka deletes no single
//! record, so it stays in the DLQ until `purge` (DeleteRecords: every
//! record before an offset) or the topic's retention removes it.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::would;

/// How long a Kafka request of these tools may take.
const KAFKA_WAIT: Duration = Duration::from_secs(10);

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Copy)]
pub enum Selection {
    At(i64),
    All,
}

/// A dead letter as read.
struct DeadLetter {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Every header, in order.
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    /// The headers the original message had: all but those dead-lettering added.
    fn original_headers(&self) -> OwnedHeaders {
        self.headers
            .iter()
            .filter(|(key, _)| !key.starts_with("x-dlq-") && !key.starts_with("x-original-"))
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            })
    }
}

/// The source topic and its dead-letter topic, from the environment.
fn topics() -> (String, String) {
    let topic = shared::env::kafka_topic();
    let dlq = shared::kafka::dlq_topic(&topic);
    (topic, dlq)
}

/// Reads the dead letters of `dlq` from its first record to its end now.
fn read_all(brokers: &str, dlq: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = shared::kafka::client_config(brokers)
        // Required by librdkafka, never joined: partitions are assigned by hand.
        .set("group.id", "feedback-aggregator-dlq-tool")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(dlq), KAFKA_WAIT)
        .with_context(|| format!("reading {dlq}'s metadata"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(partitions > 0, "{dlq} does not exist");
    anyhow::ensure!(
        partitions == 1,
        "{dlq} has {partitions} partitions; these tools read the one partition the aggregator creates"
    );
    let (low, high) = consumer
        .fetch_watermarks(dlq, 0, KAFKA_WAIT)
        .with_context(|| format!("reading {dlq}'s offsets"))?;
    let mut letters = Vec::new();
    if low >= high {
        return Ok(letters);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(dlq, 0, Offset::Offset(low))?;
    consumer.assign(&assignment)?;
    let mut next = low;
    while next < high {
        let message = consumer
            .poll(KAFKA_WAIT)
            .with_context(|| format!("{dlq}: nothing read past offset {next}, its end is {high}"))?
            .with_context(|| format!("reading {dlq}"))?;
        next = message.offset() + 1;
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        });
        letters.push(DeadLetter {
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map_or_else(Vec::new, <[u8]>::to_vec),
            headers,
        });
    }
    Ok(letters)
}

/// `dlq list`: every dead letter, oldest first, as a table or JSON lines.
pub async fn list(json: bool) -> anyhow::Result<()> {
    let (_, dlq) = topics();
    let brokers = shared::env::kafka_brokers();
    let letters = tokio::task::spawn_blocking(move || read_all(&brokers, &dlq)).await??;
    if !json {
        println!("OFFSET\tREASON\tORIGINAL\tREQUEST_ID\tTRUNCATED");
    }
    for letter in &letters {
        let original = format!(
            "{}:{}",
            letter.header("x-original-partition").unwrap_or_default(),
            letter.header("x-original-offset").unwrap_or_default()
        );
        if json {
            let line = serde_json::json!({
                "offset": letter.offset,
                "reason": letter.header("x-dlq-reason"),
                "original_partition": letter.header("x-original-partition").and_then(|p| p.parse::<i32>().ok()),
                "original_offset": letter.header("x-original-offset").and_then(|o| o.parse::<i64>().ok()),
                "key": letter.key.as_deref().map(String::from_utf8_lossy),
                "request_id": letter.header(shared::trace::REQUEST_ID),
                "traceparent": letter.header(shared::trace::TRACEPARENT),
                "truncated": letter.header("x-dlq-truncated"),
            });
            println!("{line}");
        } else {
            println!(
                "{}\t{}\t{original}\t{}\t{}",
                letter.offset,
                letter.header("x-dlq-reason").unwrap_or_default(),
                letter
                    .header(shared::trace::REQUEST_ID)
                    .unwrap_or_else(|| "-".into()),
                letter
                    .header("x-dlq-truncated")
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    if !json {
        eprintln!("{} dead letters", letters.len());
    }
    Ok(())
}

/// `dlq replay`: produces the selected dead letters' original messages back
/// to the topic; a dry run without `apply`. A dead letter cut to fit is
/// not replayed: the whole message is in the topic at its original place.
pub async fn replay(selection: Selection, apply: bool) -> anyhow::Result<()> {
    let (topic, dlq) = topics();
    let brokers = shared::env::kafka_brokers();
    let read_from = brokers.clone();
    let letters = tokio::task::spawn_blocking(move || read_all(&read_from, &dlq)).await??;
    let chosen: Vec<&DeadLetter> = letters
        .iter()
        .filter(|l| {
            matches!(selection, Selection::All)
                || matches!(selection, Selection::At(at) if at == l.offset)
        })
        .collect();
    if let Selection::At(at) = selection {
        anyhow::ensure!(!chosen.is_empty(), "no dead letter at offset {at}");
    }
    let producer: FutureProducer = shared::kafka::client_config(&brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the producer")?;
    let bar = super::progress(chosen.len() as u64, "dead letters")?;
    let (mut replayed, mut skipped) = (0, 0);
    for letter in chosen {
        // On stdout above the bar (which is on stderr, hidden when that is
        // no terminal), not through it.
        if let Some(cut) = letter.header("x-dlq-truncated") {
            skipped += 1;
            bar.suspend(|| {
                println!(
                    "skipped {}: cut to fit ({cut}); the whole message is in {topic} at {}:{}",
                    letter.offset,
                    letter.header("x-original-partition").unwrap_or_default(),
                    letter.header("x-original-offset").unwrap_or_default()
                )
            });
        } else if !apply {
            replayed += 1;
            bar.suspend(|| println!("would replay {} to {topic}", letter.offset));
        } else {
            let mut record = FutureRecord::to(&topic)
                .payload(&letter.payload)
                .headers(letter.original_headers());
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            let delivered = producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(err, _)| err)
                .with_context(|| format!("producing dead letter {}", letter.offset))?;
            replayed += 1;
            bar.suspend(|| {
                println!(
                    "replayed {} to {topic} at {}:{}",
                    letter.offset, delivered.partition, delivered.offset
                )
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{}replay{} {replayed} dead letters, {skipped} skipped{}",
        would(apply),
        if apply { "ed" } else { "" },
        if apply {
            "; they stay in the DLQ until purged"
        } else {
            " (dry run: --apply replays)"
        }
    );
    Ok(())
}

/// `dlq purge --before-offset N`: deletes every dead letter before offset
/// `before` (Kafka's DeleteRecords); a dry run without `apply`.
pub async fn purge(before: i64, apply: bool) -> anyhow::Result<()> {
    let (_, dlq) = topics();
    let brokers = shared::env::kafka_brokers();
    let (read_from, topic) = (brokers.clone(), dlq.clone());
    let letters = tokio::task::spawn_blocking(move || read_all(&read_from, &topic)).await??;
    let gone = letters.iter().filter(|l| l.offset < before).count();
    if apply {
        let admin: AdminClient<DefaultClientContext> = shared::kafka::client_config(&brokers)
            .create()
            .context("creating the admin client")?;
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&dlq, 0, Offset::Offset(before))?;
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_WAIT));
        let result = admin.delete_records(&offsets, &options).await?;
        for element in result.elements() {
            element
                .error()
                .with_context(|| format!("deleting {dlq} before offset {before}"))?;
        }
    }
    println!(
        "{} {gone} dead letters of {dlq} before offset {before}{}",
        if apply { "purged" } else { "would purge" },
        if apply {
            ""
        } else {
            " (dry run: --apply deletes)"
        }
    );
    Ok(())
}
