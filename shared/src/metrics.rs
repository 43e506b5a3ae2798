//! The Prometheus recorder: installed once per process, with histogram
//! buckets for latencies and batch sizes, and its upkeep running.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from 100 µs to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Count buckets for batch sizes.
const COUNTS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// What kind of metric a name is, for its `# TYPE` and HELP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the services export, with its HELP text: the one list an
/// operator (and the dashboard and alert rules in `deploy/`) can read them from.
#[rustfmt::skip]
pub const CATALOG: &[(&str, Kind, &str)] = &[
    // All three services.
    ("http_requests_total", Kind::Counter, "HTTP requests answered, by matched route, method and status code."),
    ("http_request_duration_seconds", Kind::Histogram, "Time from a request's arrival to its answer's head, by matched route and method."),
    // ingest
    ("ingest_produce_duration_seconds", Kind::Histogram, "Time for Kafka to acknowledge one submission."),
    ("ingest_breaker_state", Kind::Gauge, "Kafka circuit breaker: 0 closed, 1 open (submissions spool), 2 half-open."),
    ("ingest_spool_depth", Kind::Gauge, "Submissions on the disk spool waiting for Kafka."),
    ("ingest_spool_bytes", Kind::Gauge, "Bytes of submissions on the disk spool."),
    ("ingest_spool_max_bytes", Kind::Gauge, "The spool's cap in bytes (FEEDBACK_SPOOL_MAX_BYTES); a full spool answers 503."),
    ("ingest_spool_full_total", Kind::Counter, "Submissions refused with 503 because the spool was full."),
    ("ingest_spool_replayed_total", Kind::Counter, "Spooled submissions delivered to Kafka after an outage."),
    ("ingest_spool_unreadable_total", Kind::Counter, "Spool records that could not be decoded and were moved aside."),
    ("ingest_spool_group_commit_size", Kind::Histogram, "Submissions synced to disk together in one spool commit."),
    ("ingest_producer_renewals_total", Kind::Counter, "Kafka producers replaced after librdkafka declared one dead."),
    ("ingest_rate_limited_total", Kind::Counter, "Submissions refused with 429, by limit (student or address)."),
    ("ingest_rate_limit_keys", Kind::Gauge, "Students or addresses the rate limiter tracks, by limit."),
    ("ingest_sensitive_total", Kind::Counter, "Comments with sensitive words, by action (masked or rejected)."),
    ("ingest_idempotent_replays_total", Kind::Counter, "Requests answered again from an earlier answer under the same Idempotency-Key."),
    // aggregator
    ("aggregator_consumer_lag", Kind::Gauge, "Messages behind the end of each partition this replica owns (0 for the others)."),
    ("aggregator_batch_size", Kind::Histogram, "Events in one MySQL transaction."),
    ("aggregator_batch_duration_seconds", Kind::Histogram, "Time to commit one batch to MySQL."),
    ("aggregator_batch_step_seconds", Kind::Histogram, "Time of each step of a batch (statements, commit, Redis update), by step."),
    ("aggregator_events_applied_total", Kind::Counter, "Events newly written to MySQL."),
    ("aggregator_duplicates_skipped_total", Kind::Counter, "Events skipped because their feedback_id was already applied."),
    ("aggregator_redelivered_batches_total", Kind::Counter, "Batches that overlapped offsets already in MySQL and were written again past them."),
    ("aggregator_dlq_total", Kind::Counter, "Messages sent to the dead-letter topic (undecodable or invalid)."),
    ("aggregator_dlq_failed_total", Kind::Counter, "Poison messages that could not be written to the dead-letter topic after five tries and were skipped (logged with partition and offset)."),
    ("aggregator_rebalances_total", Kind::Counter, "Consumer group rebalances this replica went through."),
    ("aggregator_offsets_rewound_total", Kind::Counter, "Partitions restarted from the log's start because Kafka lost the recorded offset."),
    ("aggregator_sink_conflicts_total", Kind::Counter, "Batch transactions rolled back on a deadlock or a lost offset race, then retried."),
    ("aggregator_sink_failures_total", Kind::Counter, "Batch transactions that failed on a MySQL error, then retried."),
    ("aggregator_redis_up", Kind::Gauge, "1 while the aggregator's Redis updates succeed, 0 while Redis is unreachable."),
    ("aggregator_redis_invalidations_total", Kind::Counter, "Course hashes dropped from Redis because an update could not be applied."),
    ("aggregator_redis_repairs_total", Kind::Counter, "Course hashes rewritten from MySQL, by reason (outage or reconcile)."),
    // query
    ("query_cache_hits_total", Kind::Counter, "Stats answered from the cache."),
    ("query_cache_kept_hits_total", Kind::Counter, "Cache hits answered from the copy tracked in memory, without a Redis call."),
    ("query_cache_misses_total", Kind::Counter, "Stats not in Redis, read from MySQL."),
    ("query_cache_fallbacks_total", Kind::Counter, "Stats answered from MySQL because Redis was unavailable."),
    ("query_mysql_loads_total", Kind::Counter, "MySQL reads of a course's stats."),
    ("query_cache_fills_total", Kind::Counter, "Redis fills after a miss, by outcome."),
    ("query_redis_breaker_state", Kind::Gauge, "Redis circuit breaker: 0 closed, 1 open (answers from MySQL), 2 half-open."),
];

/// The process's recorder handle, installing it on first use.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), COUNTS))
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist in tests; ours still renders what it records.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Gives every metric of [`CATALOG`] its HELP text.
fn describe() {
    for &(name, kind, help) in CATALOG {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Shows each counter on `/metrics` from the start, at 0, rather than only
/// after its first increment: a query or an alert on a counter that is not
/// there yet sees no data, not zero. Each entry is a name and its labels.
pub fn show_counters(counters: &[(&'static str, &[(&'static str, &'static str)])]) {
    for (name, labels) in counters {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(key, value)| metrics::Label::new(*key, *value))
            .collect();
        metrics::counter!(*name, labels).increment(0);
    }
}

/// Installs the recorder and runs its upkeep (histogram rotation) every few seconds.
pub fn install() -> PrometheusHandle {
    let handle = handle();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_name_follows_prometheus_naming() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, help) in CATALOG {
            assert!(seen.insert(name), "{name} listed twice");
            assert!(!help.is_empty() && help.ends_with('.'), "{name}'s HELP");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                _ => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
    }

    #[test]
    fn a_described_metric_renders_with_its_help() {
        let handle = handle();
        metrics::counter!("ingest_spool_full_total").increment(0);
        let text = handle.render();
        assert!(
            text.contains("# HELP ingest_spool_full_total Submissions refused with 503"),
            "{text}"
        );
    }
}
