//! A submission's trace in the aggregator: the request id and `traceparent`
//! ingest put on the record are logged with each event committed, and a dead
//! letter keeps the record's headers.

use std::time::Duration;

use feedback_tests::aggregator::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A message to produce: key, payload, headers.
type Message<'a> = (String, Vec<u8>, Vec<(&'a str, &'a str)>);

/// Produces `messages` in order; waits for every acknowledgement.
async fn produce_with_headers(topic: &str, messages: &[Message<'_>]) {
    let producer: FutureProducer = shared::kafka::client_config(&feedback_tests::kafka_brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("a producer");
    for (key, payload, headers) in messages {
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |all, (key, value)| {
                all.insert(Header {
                    key,
                    value: Some(*value),
                })
            });
        producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .expect("Kafka acknowledges");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_the_poison_messages_headers_with_its_own() {
    let scenario = Scenario::new().await;
    let aggregator = scenario.spawn().await;
    let good = random_events(41, 2, 1, 2);
    let key = good[0].course_id.to_string();
    let traced = vec![
        ("x-request-id", "req-poison-1"),
        ("traceparent", TRACEPARENT),
        ("x-other", "kept too"),
        // A dead letter put back on the topic by hand carries the old reason:
        // the new dead letter says its own, once.
        ("x-dlq-reason", "an earlier reason"),
    ];
    let messages = vec![
        (key.clone(), good[0].to_json(), vec![]),
        (key.clone(), b"not json at all".to_vec(), traced),
        (key.clone(), good[1].to_json(), vec![]),
    ];
    produce_with_headers(&scenario.topic, &messages).await;
    wait_for_mysql(
        &scenario.mysql_url,
        &expected(&good),
        Duration::from_secs(60),
    )
    .await;

    let dlq = shared::kafka::dlq_topic(&scenario.topic);
    let dead = feedback_tests::consume(&dlq, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let letter = &dead[0];
    assert_eq!(letter.payload, b"not json at all");
    assert_eq!(
        letter.header_names(),
        [
            "x-request-id",
            "traceparent",
            "x-other",
            "x-dlq-reason",
            "x-original-partition",
            "x-original-offset"
        ]
    );
    assert_eq!(letter.header("x-request-id"), Some("req-poison-1"));
    assert_eq!(letter.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(letter.header("x-other"), Some("kept too"));
    let reason = letter.header("x-dlq-reason").unwrap();
    assert!(reason.contains("not a JSON event"), "{reason}");
    assert_eq!(letter.header("x-original-offset"), Some("1"));
    aggregator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_committed_event_is_logged_at_debug_with_its_request_id_and_traceparent() {
    let scenario = Scenario::new().await;
    let events = random_events(42, 3, 2, 3);
    let messages = vec![
        (
            events[0].course_id.to_string(),
            events[0].to_json(),
            vec![("x-request-id", "req-log-0"), ("traceparent", TRACEPARENT)],
        ),
        (
            events[1].course_id.to_string(),
            events[1].to_json(),
            vec![("x-request-id", "req-log-1")],
        ),
        // Produced by something other than ingest: no trace to log.
        (events[2].course_id.to_string(), events[2].to_json(), vec![]),
    ];
    produce_with_headers(&scenario.topic, &messages).await;
    let process = scenario.spawn_process_with(
        crate::AGGREGATOR,
        &[
            ("FEEDBACK_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,aggregator::events=debug"),
        ],
    );
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;

    let lines =
        feedback_tests::eventually(Duration::from_secs(10), "a log line per event", || async {
            let log = std::fs::read_to_string(&process.log)?;
            let lines: Vec<Value> = log
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|line| line["target"] == "aggregator::events")
                .collect();
            Ok((lines.len() >= 3).then_some(lines))
        })
        .await
        .unwrap();
    process.terminate();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for (event, want) in events.iter().zip([
        (Some("req-log-0"), Some(TRACEPARENT)),
        (Some("req-log-1"), None),
        (None, None),
    ]) {
        let id = event.feedback_id.to_string();
        let line = lines
            .iter()
            .find(|l| l["feedback_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"));
        assert_eq!(line["level"], "DEBUG");
        assert_eq!(line["message"], "event committed");
        assert_eq!(line["course_id"], event.course_id.as_str());
        assert!(
            line["partition"].is_i64() && line["offset"].is_i64(),
            "{line}"
        );
        assert_eq!(line["request_id"].as_str(), want.0, "{line}");
        assert_eq!(line["traceparent"].as_str(), want.1, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_otlp_endpoint_set_each_traced_event_is_a_span_in_the_clients_trace() {
    let collector = feedback_tests::otlp::Collector::start().await;
    let scenario = Scenario::new().await;
    let events = random_events(43, 1, 1, 1);
    let messages = vec![(
        events[0].course_id.to_string(),
        events[0].to_json(),
        vec![("x-request-id", "req-otel-0"), ("traceparent", TRACEPARENT)],
    )];
    produce_with_headers(&scenario.topic, &messages).await;
    let process = scenario.spawn_process_with(
        crate::AGGREGATOR,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;
    let trace_id = TRACEPARENT.split('-').nth(1).unwrap();
    let exported = feedback_tests::eventually(
        Duration::from_secs(20),
        "the event's span at the collector",
        || async { Ok(collector.has_span(trace_id, "commit event").then_some(())) },
    )
    .await;
    process.terminate();
    exported.unwrap_or_else(|err| panic!("{err} ({} exports)", collector.exports()));
}
