//! A submission's trace on its Kafka record: the request id and the client's
//! W3C `traceparent` as headers, produced directly or replayed from the spool.

use std::time::Duration;

use feedback_tests::ingest::{config, TestIngest};
use feedback_tests::otlp::Collector;
use feedback_tests::{consume, free_port, fresh_topic, student, temp_dir, Consumed, JWT_SECRET};
use reqwest::StatusCode;
use serde_json::{json, Value};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Posts a rating for `course` with `headers`; the answer's body.
async fn post_with(ingest: &TestIngest, course: &str, headers: &[(&str, &str)]) -> Value {
    let mut request = ingest
        .client
        .post(format!("{}/v1/feedback", ingest.url))
        .bearer_auth(student(&format!("tracer-{course}")))
        .json(&json!({"course_id": course, "rating": 4}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{headers:?}");
    response.json().await.unwrap()
}

/// The message that carries `answer`'s feedback.
fn of<'a>(messages: &'a [Consumed], answer: &Value) -> &'a Consumed {
    messages
        .iter()
        .find(|m| m.json()["feedback_id"] == answer["feedback_id"])
        .unwrap_or_else(|| panic!("{answer} is not on the topic"))
}

#[tokio::test]
async fn the_request_id_and_a_valid_traceparent_travel_as_kafka_headers_and_an_invalid_one_is_dropped(
) {
    let ingest = TestIngest::spawn().await;
    let traced = post_with(
        &ingest,
        "TRACE-1",
        &[
            ("x-request-id", "req-trace-1"),
            ("traceparent", TRACEPARENT),
        ],
    )
    .await;
    assert_eq!(traced["status"], "accepted");
    // Uppercase hex is not a valid traceparent: ignored, and the submission still taken.
    let invalid = post_with(
        &ingest,
        "TRACE-2",
        &[
            ("x-request-id", "req-trace-2"),
            ("traceparent", &TRACEPARENT.to_uppercase()),
        ],
    )
    .await;
    let zeros = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let all_zero = post_with(&ingest, "TRACE-3", &[("traceparent", zeros)]).await;

    let messages = consume(&ingest.topic, 3, Duration::from_secs(20))
        .await
        .unwrap();
    let message = of(&messages, &traced);
    assert_eq!(message.header("x-request-id"), Some("req-trace-1"));
    assert_eq!(message.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(message.header_names(), ["x-request-id", "traceparent"]);
    let event = message.json();
    assert!(
        event.get("traceparent").is_none() && event.get("request_id").is_none(),
        "the event's JSON does not change: {event}"
    );

    let message = of(&messages, &invalid);
    assert_eq!(message.header("x-request-id"), Some("req-trace-2"));
    assert_eq!(message.header_names(), ["x-request-id"], "no traceparent");
    let message = of(&messages, &all_zero);
    assert_eq!(message.header_names(), ["x-request-id"], "no traceparent");
    assert_eq!(
        message.header("x-request-id").map(str::len),
        Some(36),
        "the id the layers made"
    );
    ingest.shutdown().await;
}

#[tokio::test]
async fn a_spooled_submission_keeps_its_trace_headers_through_the_replay() {
    let topic = fresh_topic().await.unwrap();
    let spool = temp_dir("spool");
    // A broker address where nothing listens: the submission is spooled.
    let mut unreachable = config(&topic, spool.clone());
    unreachable.brokers = "127.0.0.1:1".into();
    let ingest = TestIngest::spawn_with(unreachable).await;
    let traced = post_with(
        &ingest,
        "SPOOLED-1",
        &[
            ("x-request-id", "req-spooled-1"),
            ("traceparent", TRACEPARENT),
        ],
    )
    .await;
    assert_eq!(traced["status"], "spooled");
    let untraced = post_with(&ingest, "SPOOLED-2", &[("x-request-id", "req-spooled-2")]).await;
    assert_eq!(untraced["status"], "spooled");
    ingest.shutdown().await;

    // The same spool, now with the real broker: it replays at start.
    let ingest = TestIngest::spawn_with(config(&topic, spool)).await;
    let messages = consume(&topic, 2, Duration::from_secs(30)).await.unwrap();
    let message = of(&messages, &traced);
    assert_eq!(message.header("x-request-id"), Some("req-spooled-1"));
    assert_eq!(message.header("traceparent"), Some(TRACEPARENT));
    let message = of(&messages, &untraced);
    assert_eq!(message.header("x-request-id"), Some("req-spooled-2"));
    assert_eq!(message.header_names(), ["x-request-id"]);
    ingest.shutdown().await;
}

#[tokio::test]
async fn with_an_otlp_endpoint_set_the_request_span_is_exported_in_the_clients_trace() {
    let collector = Collector::start().await;
    let topic = fresh_topic().await.unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env("FEEDBACK_INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("FEEDBACK_KAFKA_BROKERS", feedback_tests::kafka_brokers())
        .env("FEEDBACK_KAFKA_TOPIC", &topic)
        .env("FEEDBACK_SPOOL_DIR", temp_dir("spool"))
        .env("FEEDBACK_JWT_SECRET", JWT_SECRET)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        // Spans pass the same filter as the log: the request span is INFO.
        .env("RUST_LOG", "warn,shared::http=info")
        .spawn()
        .expect("starting the ingest binary");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    crate::spool::wait_healthy(&client, port).await;
    let response = client
        .post(format!("{url}/v1/feedback"))
        .bearer_auth(student("otel-1"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"course_id": "OTEL-1", "rating": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let trace_id = TRACEPARENT.split('-').nth(1).unwrap();
    let exported = feedback_tests::eventually(
        Duration::from_secs(20),
        "the request span at the collector",
        || async { Ok(collector.has_span(trace_id, "request").then_some(())) },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    exported.unwrap_or_else(|err| panic!("{err} ({} exports)", collector.exports()));
}
