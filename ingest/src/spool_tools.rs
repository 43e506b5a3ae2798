//! `ingest spool status|verify|export|replay`: the operator's hand tools for
//! a spool left on disk (Kafka was down, then ingest stopped). They open the
//! spool directory themselves, so ingest must be stopped first: sled lets one
//! process at a time have it, and the tools say so instead of waiting.
//!
//! Only `replay --apply` changes the spool; everything else reads. Records
//! moved aside as unreadable cannot be replayed (their bytes do not decode
//! to a key, headers and payload): `export --unreadable` hands them over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use shared::event::FeedbackSubmitted;
use time::OffsetDateTime;

use crate::pipeline::{Pipeline, PipelineConfig};
use crate::record::KafkaRecord;
use crate::spool::{Spool, SpoolFiles};

/// How many errors `verify` prints; the counts cover the rest.
const ERRORS_SHOWN: usize = 5;

#[derive(Args)]
pub struct SpoolArgs {
    /// The spool directory (that of the stopped ingest).
    #[arg(
        long,
        global = true,
        env = "FEEDBACK_SPOOL_DIR",
        default_value = "var/spool"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: SpoolCommand,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Records waiting, their bytes, oldest and newest `submitted_at`, and
    /// how many were moved aside as unreadable. Reads only.
    Status,
    /// Decodes every record, the moved-aside ones included; exits 1 if any
    /// is bad (every moved-aside record is). Reads only.
    Verify,
    /// Writes the records as JSON lines: `seq`, `key` (the course id),
    /// `headers` and `event`. Reads only.
    Export {
        /// Where to write; `-` is standard output.
        #[arg(long, default_value = "-")]
        out: String,
        /// Export the records moved aside as unreadable instead: `seq`,
        /// `bytes_base64` (as stored) and `error` (why they do not decode).
        #[arg(long)]
        unreadable: bool,
    },
    /// Produces the waiting records to Kafka in order, as ingest's drainer
    /// does (idempotent, acks=all, keyed by course_id, the same headers),
    /// each removed only once Kafka acknowledged it. Without `--apply`, a
    /// dry run: says what it would produce and changes nothing.
    Replay {
        /// The Kafka bootstrap servers.
        #[arg(long, env = "FEEDBACK_KAFKA_BROKERS", default_value = shared::env::DEFAULT_KAFKA_BROKERS)]
        brokers: String,
        /// The topic ingest produces to.
        #[arg(long, env = "FEEDBACK_KAFKA_TOPIC", default_value = shared::env::DEFAULT_KAFKA_TOPIC)]
        topic: String,
        /// Produce and remove them (otherwise a dry run).
        #[arg(long)]
        apply: bool,
        /// Refused: unreadable records cannot be produced, as nothing says
        /// what their key, headers and payload were. Use `export --unreadable`.
        #[arg(long)]
        unreadable: bool,
    },
}

impl SpoolArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            SpoolCommand::Status => status(&self.dir),
            SpoolCommand::Verify => verify(&self.dir),
            SpoolCommand::Export { out, unreadable } => export(&self.dir, &out, unreadable),
            SpoolCommand::Replay {
                brokers,
                topic,
                apply,
                unreadable,
            } => {
                anyhow::ensure!(
                    !unreadable,
                    "records moved aside as unreadable cannot be replayed: their bytes do not \
                     decode to a key, headers and payload. `ingest spool export --unreadable` \
                     writes them out (base64, with the reason) for a person to look at"
                );
                let target = Target { brokers, topic };
                if apply {
                    replay(&self.dir, &target).await
                } else {
                    dry_run(&self.dir, &target)
                }
            }
        }
    }
}

/// Where `replay` produces.
struct Target {
    brokers: String,
    topic: String,
}

/// A waiting record, decoded as far as it goes.
fn decode(bytes: &[u8]) -> Result<(KafkaRecord, FeedbackSubmitted), String> {
    let record = KafkaRecord::decode_spool_bytes(bytes).map_err(|e| e.to_string())?;
    let event = FeedbackSubmitted::decode(&record.payload)
        .map_err(|e| format!("its payload is no event: {e}"))?;
    Ok((record, event))
}

fn status(dir: &Path) -> anyhow::Result<ExitCode> {
    let files = SpoolFiles::open(dir)?;
    let (mut count, mut bytes, mut undecodable) = (0u64, 0u64, 0u64);
    let mut span: Option<(OffsetDateTime, OffsetDateTime)> = None;
    for entry in files.waiting() {
        let (_, value) = entry?;
        count += 1;
        bytes += value.len() as u64;
        match decode(&value) {
            Ok((_, event)) => {
                let at = event.submitted_at;
                span = Some(span.map_or((at, at), |(lo, hi)| (lo.min(at), hi.max(at))));
            }
            Err(_) => undecodable += 1,
        }
    }
    println!("spool: {}", dir.display());
    println!("waiting: {count} records, {bytes} bytes");
    if let Some((oldest, newest)) = span {
        println!("oldest submitted_at: {}", rfc3339(oldest));
        println!("newest submitted_at: {}", rfc3339(newest));
    }
    if undecodable > 0 {
        println!("of which do not decode: {undecodable} (see `ingest spool verify`)");
    }
    println!(
        "moved aside as unreadable: {} (see `ingest spool export --unreadable`)",
        files.unreadable_len()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let files = SpoolFiles::open(dir)?;
    let bar = progress(files.waiting_len() + files.unreadable_len(), "records")?;
    let (mut good, mut bad) = (0u64, 0u64);
    let mut errors = Vec::new();
    let trees = [
        ("waiting", files.waiting()),
        ("moved aside", files.unreadable()),
    ];
    for (tree, entries) in trees {
        for entry in entries {
            let (seq, value) = entry?;
            bar.inc(1);
            match decode(&value) {
                Ok(_) => good += 1,
                Err(error) => {
                    bad += 1;
                    if errors.len() < ERRORS_SHOWN {
                        errors.push(format!("seq {seq} ({tree}): {error}"));
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    println!("spool: {}", dir.display());
    println!("good: {good}, bad: {bad}");
    for error in &errors {
        println!("  {error}");
    }
    if bad as usize > errors.len() {
        println!("  ... and {} more", bad as usize - errors.len());
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn export(dir: &Path, out: &str, unreadable: bool) -> anyhow::Result<ExitCode> {
    let files = SpoolFiles::open(dir)?;
    let mut sink: Box<dyn Write> = if out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(out).with_context(|| format!("creating {out}"))?)
    };
    let mut sink = std::io::BufWriter::new(&mut sink);
    let (entries, total) = if unreadable {
        (files.unreadable(), files.unreadable_len())
    } else {
        (files.waiting(), files.waiting_len())
    };
    let bar = progress(total, "records")?;
    let (mut written, mut skipped) = (0u64, 0u64);
    for entry in entries {
        let (seq, value) = entry?;
        bar.inc(1);
        let line = if unreadable {
            Some(unreadable_line(seq, &value))
        } else {
            KafkaRecord::from_spool_bytes(&value).map(|record| record_line(seq, &record))
        };
        match line {
            Some(line) => {
                serde_json::to_writer(&mut sink, &line)?;
                sink.write_all(b"\n")?;
                written += 1;
            }
            None => skipped += 1,
        }
    }
    sink.flush()?;
    bar.finish_and_clear();
    eprintln!("exported {written} records");
    if skipped > 0 {
        eprintln!(
            "skipped {skipped} that do not decode (`ingest spool verify` lists them; \
             ingest moves them aside when it next replays)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A waiting record as a JSON line: what Kafka would get.
fn record_line(seq: u64, record: &KafkaRecord) -> Value {
    let mut headers = serde_json::Map::new();
    headers.insert(
        shared::trace::REQUEST_ID.into(),
        record.request_id.clone().into(),
    );
    if let Some(traceparent) = &record.traceparent {
        headers.insert(
            shared::trace::TRACEPARENT.into(),
            traceparent.clone().into(),
        );
    }
    let mut line = json!({"seq": seq, "key": record.key, "headers": headers});
    // A payload that is not JSON is kept as it is, not lost from the export.
    match serde_json::from_slice::<Value>(&record.payload) {
        Ok(event) => line["event"] = event,
        Err(_) => line["payload_base64"] = base64(&record.payload).into(),
    }
    line
}

/// A record moved aside as a JSON line: its bytes and why they do not decode.
fn unreadable_line(seq: u64, bytes: &[u8]) -> Value {
    let error = match decode(bytes) {
        Ok(_) => "it decodes now (moved aside by a build that could not read it)".to_owned(),
        Err(error) => error,
    };
    json!({"seq": seq, "bytes_base64": base64(bytes), "error": error})
}

fn dry_run(dir: &Path, target: &Target) -> anyhow::Result<ExitCode> {
    let files = SpoolFiles::open(dir)?;
    let (mut count, mut bytes, mut undecodable) = (0u64, 0u64, 0u64);
    let mut courses = std::collections::BTreeSet::new();
    for entry in files.waiting() {
        let (_, value) = entry?;
        match KafkaRecord::from_spool_bytes(&value) {
            Some(record) => {
                count += 1;
                bytes += record.payload.len() as u64;
                courses.insert(record.key);
            }
            None => undecodable += 1,
        }
    }
    println!(
        "dry run: would produce {count} records ({bytes} bytes of events, {} courses) to topic \
         {} on {}, oldest first, keyed by course_id, removing each once Kafka acknowledged it",
        courses.len(),
        target.topic,
        target.brokers
    );
    if undecodable > 0 {
        println!("{undecodable} waiting records do not decode: they would be moved aside");
    }
    let aside = files.unreadable_len();
    if aside > 0 {
        println!(
            "{aside} records moved aside as unreadable are not replayed \
             (`ingest spool export --unreadable`)"
        );
    }
    println!("nothing was sent or removed; add --apply to do it");
    Ok(ExitCode::SUCCESS)
}

async fn replay(dir: &Path, target: &Target) -> anyhow::Result<ExitCode> {
    // Opened first for its clear answer when an ingest holds the directory.
    let files = SpoolFiles::open(dir)?;
    let total = files.waiting_len();
    files.close()?;
    // sled lets go of the lock a moment after the last handle is dropped.
    let spool = Spool::open_waiting(dir, u64::MAX, Duration::from_secs(5)).await?;
    let pipeline = Pipeline::new(
        PipelineConfig {
            brokers: target.brokers.clone(),
            topic: target.topic.clone(),
            delivery_timeout: Duration::from_millis(shared::env::parse_or(
                "FEEDBACK_KAFKA_DELIVERY_TIMEOUT_MS",
                5000,
            )?),
            drain_batch: 500,
        },
        spool,
    )?;
    let bar = progress(total, "records produced")?;
    let replayed = pipeline.replay_all(|n| bar.inc(n)).await;
    bar.finish_and_clear();
    let replayed = replayed?;
    println!(
        "produced {replayed} records to topic {} on {}; the spool is empty",
        target.topic, target.brokers
    );
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr (drawn only when it is a terminal).
fn progress(total: usize, what: &str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "[{{bar:40}}] {{pos}}/{{len}} {what}, {{per_sec}}, eta {{eta}}"
        ))
        .context("progress template")?
        .progress_chars("=> "),
    );
    Ok(bar)
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}
