//! Ingest's spool: ingest killed with submissions in it delivers them all,
//! in order, once back; a full spool refuses with 503. (Kafka killed under
//! ingest is `kafka_outage.rs`, a binary of its own.)

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::Duration;

use feedback_tests::error_of;
use feedback_tests::ingest::{all_seen, config, first_copies_per_course, TestIngest};
use feedback_tests::{consume_until, free_port, fresh_topic, student, temp_dir, JWT_SECRET};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn spawn_ingest(port: u16, brokers: &str, topic: &str, spool: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env("FEEDBACK_INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("FEEDBACK_KAFKA_BROKERS", brokers)
        .env("FEEDBACK_KAFKA_TOPIC", topic)
        .env("FEEDBACK_SPOOL_DIR", spool)
        .env("FEEDBACK_JWT_SECRET", JWT_SECRET)
        .env("FEEDBACK_RATE_LIMIT_STUDENT_PER_MIN", "0")
        .env("FEEDBACK_RATE_LIMIT_IP_PER_MIN", "0")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("starting the ingest binary")
}

/// Waits until the ingest binary on `port` answers `/healthz`.
pub(crate) async fn wait_healthy(client: &reqwest::Client, port: u16) {
    feedback_tests::eventually(Duration::from_secs(20), "ingest to serve", || async {
        Ok(client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn ingest_killed_with_45_spooled_submissions_delivers_them_all_in_order_after_restart() {
    let topic = fresh_topic().await.unwrap();
    let spool = temp_dir("spool");
    let port = free_port();
    let client = reqwest::Client::new();
    // A broker address where nothing listens: every submission is spooled.
    let mut child = spawn_ingest(port, "127.0.0.1:1", &topic, &spool);
    wait_healthy(&client, port).await;
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..45 {
        let course = format!("CRASH-{}", i % 3);
        let response = client
            .post(format!("http://127.0.0.1:{port}/v1/feedback"))
            .bearer_auth(student(&format!("crash-{i}")))
            .json(&json!({"course_id": course, "rating": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "spooled");
        expected
            .entry(course)
            .or_default()
            .push(answer["feedback_id"].as_str().unwrap().to_owned());
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let mut child = spawn_ingest(port, &feedback_tests::kafka_brokers(), &topic, &spool);
    let ids: HashSet<String> = expected.values().flatten().cloned().collect();
    let messages = consume_until(&topic, Duration::from_secs(60), all_seen(&ids)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(first_copies_per_course(&messages.unwrap()), expected);
}

#[tokio::test]
async fn a_full_spool_answers_503_with_retry_after_and_readyz_says_so() {
    let mut config = config("never-created", temp_dir("spool"));
    config.brokers = "127.0.0.1:1".into();
    config.spool_max_bytes = 2_000;
    let ingest = TestIngest::spawn_with(config).await;
    let mut statuses = Vec::new();
    let mut refused = None;
    for i in 0..20 {
        let response = ingest
            .post(
                &student(&format!("full-{i}")),
                &json!({"course_id": "FULL", "rating": 4}),
            )
            .await;
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("the spool never filled: {statuses:?}"));
    assert!(
        statuses.iter().filter(|s| **s == 202).count() >= 2,
        "{statuses:?}"
    );
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_of(refused).await["code"], "unavailable");
    let ready = ingest
        .client
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["spool"]["has_capacity"], false);
}
