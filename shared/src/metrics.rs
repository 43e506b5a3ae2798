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

/// Every metric's name, declared once: the services record under these
/// constants, and [`CATALOG`] gives each its kind and HELP text.
pub mod names {
    // All three services.
    pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
    pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
    // ingest and query
    pub const AUTH_TOKENS_REFUSED_TOTAL: &str = "auth_tokens_refused_total";
    pub const AUTH_PROVIDER_UP: &str = "auth_provider_up";
    pub const AUTH_PROVIDER_KEYS: &str = "auth_provider_keys";
    pub const AUTH_PROVIDER_FETCHES_TOTAL: &str = "auth_provider_fetches_total";
    // ingest
    pub const INGEST_PRODUCE_DURATION_SECONDS: &str = "ingest_produce_duration_seconds";
    pub const INGEST_BREAKER_STATE: &str = "ingest_breaker_state";
    pub const INGEST_SPOOL_DEPTH: &str = "ingest_spool_depth";
    pub const INGEST_SPOOL_BYTES: &str = "ingest_spool_bytes";
    pub const INGEST_SPOOL_MAX_BYTES: &str = "ingest_spool_max_bytes";
    pub const INGEST_SPOOL_ENTRY_BYTES: &str = "ingest_spool_entry_bytes";
    pub const INGEST_SPOOL_DISK_BYTES: &str = "ingest_spool_disk_bytes";
    pub const INGEST_SPOOL_STORE_UP: &str = "ingest_spool_store_up";
    pub const INGEST_SPOOL_STORE_ERRORS_TOTAL: &str = "ingest_spool_store_errors_total";
    pub const INGEST_SPOOL_STORE_REOPENS_TOTAL: &str = "ingest_spool_store_reopens_total";
    pub const INGEST_SPOOL_STORE_TIMEOUTS_TOTAL: &str = "ingest_spool_store_timeouts_total";
    pub const INGEST_SPOOL_FULL_TOTAL: &str = "ingest_spool_full_total";
    pub const INGEST_SPOOL_REPLAYED_TOTAL: &str = "ingest_spool_replayed_total";
    pub const INGEST_SPOOL_UNREADABLE_TOTAL: &str = "ingest_spool_unreadable_total";
    pub const INGEST_SPOOL_GROUP_COMMIT_SIZE: &str = "ingest_spool_group_commit_size";
    pub const INGEST_PRODUCER_RENEWALS_TOTAL: &str = "ingest_producer_renewals_total";
    pub const INGEST_RATE_LIMITED_TOTAL: &str = "ingest_rate_limited_total";
    pub const INGEST_RATE_LIMIT_KEYS: &str = "ingest_rate_limit_keys";
    pub const INGEST_SENSITIVE_TOTAL: &str = "ingest_sensitive_total";
    pub const INGEST_IDEMPOTENT_REPLAYS_TOTAL: &str = "ingest_idempotent_replays_total";
    pub const INGEST_CATALOG_COURSES: &str = "ingest_catalog_courses";
    pub const INGEST_CATALOG_REFRESHES_TOTAL: &str = "ingest_catalog_refreshes_total";
    pub const INGEST_CATALOG_REFUSED_TOTAL: &str = "ingest_catalog_refused_total";
    // aggregator
    pub const AGGREGATOR_CONSUMER_LAG: &str = "aggregator_consumer_lag";
    pub const AGGREGATOR_BATCH_SIZE: &str = "aggregator_batch_size";
    pub const AGGREGATOR_BATCH_DURATION_SECONDS: &str = "aggregator_batch_duration_seconds";
    pub const AGGREGATOR_BATCH_STEP_SECONDS: &str = "aggregator_batch_step_seconds";
    pub const AGGREGATOR_EVENTS_APPLIED_TOTAL: &str = "aggregator_events_applied_total";
    pub const AGGREGATOR_DUPLICATES_SKIPPED_TOTAL: &str = "aggregator_duplicates_skipped_total";
    pub const AGGREGATOR_REDELIVERED_BATCHES_TOTAL: &str = "aggregator_redelivered_batches_total";
    pub const AGGREGATOR_CURRENT_ROWS_FOUND_TOTAL: &str = "aggregator_current_rows_found_total";
    pub const AGGREGATOR_DLQ_TOTAL: &str = "aggregator_dlq_total";
    pub const AGGREGATOR_DLQ_FAILED_TOTAL: &str = "aggregator_dlq_failed_total";
    pub const AGGREGATOR_QUARANTINED_TOTAL: &str = "aggregator_quarantined_total";
    pub const AGGREGATOR_REBALANCES_TOTAL: &str = "aggregator_rebalances_total";
    pub const AGGREGATOR_OFFSETS_REWOUND_TOTAL: &str = "aggregator_offsets_rewound_total";
    pub const AGGREGATOR_SINK_CONFLICTS_TOTAL: &str = "aggregator_sink_conflicts_total";
    pub const AGGREGATOR_SINK_FAILURES_TOTAL: &str = "aggregator_sink_failures_total";
    pub const AGGREGATOR_REDIS_UP: &str = "aggregator_redis_up";
    pub const AGGREGATOR_REDIS_INVALIDATIONS_TOTAL: &str = "aggregator_redis_invalidations_total";
    pub const AGGREGATOR_REDIS_REPAIRS_TOTAL: &str = "aggregator_redis_repairs_total";
    // query
    pub const QUERY_CACHE_HITS_TOTAL: &str = "query_cache_hits_total";
    pub const QUERY_CACHE_KEPT_HITS_TOTAL: &str = "query_cache_kept_hits_total";
    pub const QUERY_CACHE_MISSES_TOTAL: &str = "query_cache_misses_total";
    pub const QUERY_CACHE_FALLBACKS_TOTAL: &str = "query_cache_fallbacks_total";
    pub const QUERY_MYSQL_LOADS_TOTAL: &str = "query_mysql_loads_total";
    pub const QUERY_CACHE_FILLS_TOTAL: &str = "query_cache_fills_total";
    pub const QUERY_REDIS_BREAKER_STATE: &str = "query_redis_breaker_state";
}

/// Every metric the services export, with its HELP text: the one list an
/// operator (and the dashboard and alert rules in `deploy/`) can read them from.
#[rustfmt::skip]
pub const CATALOG: &[(&str, Kind, &str)] = &[
    // All three services.
    (names::HTTP_REQUESTS_TOTAL, Kind::Counter, "HTTP requests answered, by matched route, method and status code."),
    (names::HTTP_REQUEST_DURATION_SECONDS, Kind::Histogram, "Time from a request's arrival to its answer's head, by matched route and method."),
    // ingest and query
    (names::AUTH_TOKENS_REFUSED_TOTAL, Kind::Counter, "Requests answered 401 invalid_token, by the check that failed (reason); the client is never told which."),
    (names::AUTH_PROVIDER_UP, Kind::Gauge, "Identity-provider mode: 1 when the last fetch of the provider's discovery document and keys succeeded, 0 when it failed."),
    (names::AUTH_PROVIDER_KEYS, Kind::Gauge, "Identity-provider mode: signing keys (RS256 or ES256) held from the provider's JWKS."),
    (names::AUTH_PROVIDER_FETCHES_TOTAL, Kind::Counter, "Identity-provider mode: fetches of the provider's keys, by cause (start, schedule, unknown_kid) and outcome (ok, error)."),
    // ingest
    (names::INGEST_PRODUCE_DURATION_SECONDS, Kind::Histogram, "Time for Kafka to acknowledge one submission."),
    (names::INGEST_BREAKER_STATE, Kind::Gauge, "Kafka circuit breaker: 0 closed, 1 open (submissions spool), 2 half-open."),
    (names::INGEST_SPOOL_DEPTH, Kind::Gauge, "Submissions on the disk spool waiting for Kafka."),
    (names::INGEST_SPOOL_BYTES, Kind::Gauge, "Bytes of submissions on the disk spool."),
    (names::INGEST_SPOOL_MAX_BYTES, Kind::Gauge, "The cap on the spool's disk use in bytes (FEEDBACK_SPOOL_MAX_BYTES): records and idempotency entries are held to a third of it, the rest being sled's overhead; a full spool refuses (503 while Kafka is down)."),
    (names::INGEST_SPOOL_ENTRY_BYTES, Kind::Gauge, "Bytes of idempotency entries in the spool's store, counted against the cap with the records."),
    (names::INGEST_SPOOL_DISK_BYTES, Kind::Gauge, "Bytes of the spool store's files on disk (sled's log, snapshots and blobs), measured at most once a second."),
    (names::INGEST_SPOOL_STORE_UP, Kind::Gauge, "1 while the spool's store takes writes, 0 after a disk error until it is opened again (ingest exits if it cannot be)."),
    (names::INGEST_SPOOL_STORE_ERRORS_TOTAL, Kind::Counter, "Disk errors from the spool's store; each one closes it for a reopen."),
    (names::INGEST_SPOOL_STORE_REOPENS_TOTAL, Kind::Counter, "Times the spool's store was opened again after a disk error."),
    (names::INGEST_SPOOL_STORE_TIMEOUTS_TOTAL, Kind::Counter, "Calls on the spool's store that got no answer within their deadline (a disk that hangs)."),
    (names::INGEST_SPOOL_FULL_TOTAL, Kind::Counter, "Submissions refused with 503 because the spool was full."),
    (names::INGEST_SPOOL_REPLAYED_TOTAL, Kind::Counter, "Spooled submissions delivered to Kafka after an outage."),
    (names::INGEST_SPOOL_UNREADABLE_TOTAL, Kind::Counter, "Spool records that could not be decoded and were moved aside."),
    (names::INGEST_SPOOL_GROUP_COMMIT_SIZE, Kind::Histogram, "Submissions synced to disk together in one spool commit."),
    (names::INGEST_PRODUCER_RENEWALS_TOTAL, Kind::Counter, "Kafka producers replaced after librdkafka declared one dead."),
    (names::INGEST_RATE_LIMITED_TOTAL, Kind::Counter, "Submissions refused with 429, by limit (student or address)."),
    (names::INGEST_RATE_LIMIT_KEYS, Kind::Gauge, "Students or addresses the rate limiter tracks, by limit."),
    (names::INGEST_SENSITIVE_TOTAL, Kind::Counter, "Comments with sensitive words, by action (masked or rejected)."),
    (names::INGEST_IDEMPOTENT_REPLAYS_TOTAL, Kind::Counter, "Requests answered again from an earlier answer under the same Idempotency-Key."),
    (names::INGEST_CATALOG_COURSES, Kind::Gauge, "FEEDBACK_CATALOG=closed: courses in the catalog ingest holds (from MySQL, or its copy on disk)."),
    (names::INGEST_CATALOG_REFRESHES_TOTAL, Kind::Counter, "FEEDBACK_CATALOG=closed: reads of the catalog from MySQL, by outcome (unchanged, read: the list was read, failed: the courses held stay)."),
    (names::INGEST_CATALOG_REFUSED_TOTAL, Kind::Counter, "FEEDBACK_CATALOG=closed: submissions refused by the catalog, by reason (unknown_course: 422, unavailable: 503 as no catalog was ever read)."),
    // aggregator
    (names::AGGREGATOR_CONSUMER_LAG, Kind::Gauge, "Messages behind the end of each partition this replica owns (0 for the others)."),
    (names::AGGREGATOR_BATCH_SIZE, Kind::Histogram, "Events in one MySQL transaction."),
    (names::AGGREGATOR_BATCH_DURATION_SECONDS, Kind::Histogram, "Time to commit one batch to MySQL."),
    (names::AGGREGATOR_BATCH_STEP_SECONDS, Kind::Histogram, "Time of each step of a batch (statements, commit, Redis update), by step."),
    (names::AGGREGATOR_EVENTS_APPLIED_TOTAL, Kind::Counter, "Events newly written to MySQL."),
    (names::AGGREGATOR_DUPLICATES_SKIPPED_TOTAL, Kind::Counter, "Events skipped because their feedback_id was already applied."),
    (names::AGGREGATOR_REDELIVERED_BATCHES_TOTAL, Kind::Counter, "Batches that overlapped offsets already in MySQL and were written again past them."),
    (names::AGGREGATOR_CURRENT_ROWS_FOUND_TOTAL, Kind::Counter, "Students' current rows a batch found in MySQL because its lane's memo did not hold them (after a start or a rebalance), read back and counted against."),
    (names::AGGREGATOR_DLQ_TOTAL, Kind::Counter, "Messages sent to the dead-letter topic (undecodable or invalid)."),
    (names::AGGREGATOR_DLQ_FAILED_TOTAL, Kind::Counter, "Failed attempts to write a dead letter; the lane waits and tries again until one succeeds (nothing is skipped), consumption paused meanwhile."),
    (names::AGGREGATOR_QUARANTINED_TOTAL, Kind::Counter, "Events MySQL refused for good (a constraint the data breaks, a value out of range), set aside in quarantined_events with their offsets and not counted, by reason."),
    (names::AGGREGATOR_REBALANCES_TOTAL, Kind::Counter, "Consumer group rebalances this replica went through."),
    (names::AGGREGATOR_OFFSETS_REWOUND_TOTAL, Kind::Counter, "Partitions restarted from the log's start because Kafka lost the recorded offset."),
    (names::AGGREGATOR_SINK_CONFLICTS_TOTAL, Kind::Counter, "Batch transactions rolled back on a deadlock or a lost offset race, then retried."),
    (names::AGGREGATOR_SINK_FAILURES_TOTAL, Kind::Counter, "Batch transactions that failed on a MySQL error, then retried."),
    (names::AGGREGATOR_REDIS_UP, Kind::Gauge, "1 while the aggregator's Redis updates succeed, 0 while Redis is unreachable."),
    (names::AGGREGATOR_REDIS_INVALIDATIONS_TOTAL, Kind::Counter, "Course hashes dropped from Redis because an update could not be applied."),
    (names::AGGREGATOR_REDIS_REPAIRS_TOTAL, Kind::Counter, "Course hashes rewritten from MySQL, by reason (outage or reconcile)."),
    // query
    (names::QUERY_CACHE_HITS_TOTAL, Kind::Counter, "Stats answered from the cache."),
    (names::QUERY_CACHE_KEPT_HITS_TOTAL, Kind::Counter, "Cache hits answered from the copy tracked in memory, without a Redis call."),
    (names::QUERY_CACHE_MISSES_TOTAL, Kind::Counter, "Stats not in Redis, read from MySQL."),
    (names::QUERY_CACHE_FALLBACKS_TOTAL, Kind::Counter, "Stats answered from MySQL because Redis was unavailable."),
    (names::QUERY_MYSQL_LOADS_TOTAL, Kind::Counter, "MySQL reads of a course's stats."),
    (names::QUERY_CACHE_FILLS_TOTAL, Kind::Counter, "Redis fills after a miss, by outcome."),
    (names::QUERY_REDIS_BREAKER_STATE, Kind::Gauge, "Redis circuit breaker: 0 closed, 1 open (answers from MySQL), 2 half-open."),
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
        metrics::counter!(names::INGEST_SPOOL_FULL_TOTAL).increment(0);
        let text = handle.render();
        assert!(
            text.contains("# HELP ingest_spool_full_total Submissions refused with 503"),
            "{text}"
        );
    }
}
