//! Kafka outages and crashes: nothing answered 202 is lost, and each course's
//! submissions reach Kafka in the order they were accepted.
//!
//! The first test kills the shared Kafka broker; every test in this binary
//! holds `OUTAGE`, and cargo runs test binaries one at a time, so no other
//! test sees the outage.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::Duration;

use common::{config, TestIngest};
use feedback_tests::error_of;
use feedback_tests::{
    consume_until, eventually, free_port, fresh_topic, student, temp_dir, Consumed, Restart,
    JWT_SECRET, OUTAGE,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// For each course, the feedback ids in the order their first copy sits in the topic.
fn first_copies_per_course(messages: &[Consumed]) -> HashMap<String, Vec<String>> {
    let mut seen = HashSet::new();
    let mut per_course: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_partition: Vec<&Consumed> = messages.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    for m in by_partition {
        let id = m.json()["feedback_id"].as_str().unwrap().to_owned();
        if seen.insert(id.clone()) {
            per_course.entry(m.key.clone()).or_default().push(id);
        }
    }
    per_course
}

fn all_seen(expected: &HashSet<String>) -> impl FnMut(&[Consumed]) -> bool + '_ {
    move |messages| {
        let seen: HashSet<String> = messages
            .iter()
            .map(|m| m.json()["feedback_id"].as_str().unwrap().to_owned())
            .collect();
        expected.is_subset(&seen)
    }
}

#[tokio::test]
async fn kafka_killed_mid_stream_every_submission_is_answered_202_and_arrives_in_course_order() {
    let _serial = OUTAGE.lock().await;
    let ingest = std::sync::Arc::new(TestIngest::spawn().await);
    let courses = ["OUT-A", "OUT-B", "OUT-C", "OUT-D"];
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = courses
        .iter()
        .map(|course| {
            let ingest = ingest.clone();
            let course = course.to_string();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0..60 {
                    let body = json!({"course_id": course, "rating": 1 + i % 5, "comment": format!("{course} #{i}")});
                    let response = ingest.post(&student(&format!("{course}-s{i}")), &body).await;
                    assert_eq!(response.status(), StatusCode::ACCEPTED, "{course} #{i}");
                    let answer: Value = response.json().await.unwrap();
                    if answer["status"] == "accepted" {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    answers.push((answer["feedback_id"].as_str().unwrap().to_owned(), answer["status"].as_str().unwrap().to_owned()));
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                (course, answers)
            })
        })
        .collect();

    // Kill the broker once submissions are flowing straight to Kafka: the
    // first acknowledgement can take longer than any fixed wait.
    feedback_tests::eventually(
        Duration::from_secs(30),
        "submissions accepted by Kafka",
        || {
            let accepted = accepted.clone();
            async move {
                Ok(
                    (accepted.load(std::sync::atomic::Ordering::SeqCst) >= courses.len())
                        .then_some(()),
                )
            }
        },
    )
    .await
    .unwrap();
    let restart = Restart::kill("kafka").await;
    // Until ingest has seen the broker gone (its breaker open), then a second
    // more of submissions spooling, rather than a fixed sleep.
    let ready_while_down: Value = eventually(
        Duration::from_secs(20),
        "ingest to see Kafka down",
        || async {
            let ready = ingest.readyz().await?;
            Ok((ready["checks"]["kafka"]["breaker"] != "closed").then_some(ready))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    restart.start().await;

    let mut expected_order: HashMap<String, Vec<String>> = HashMap::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for writer in writers {
        let (course, answers) = writer.await.unwrap();
        for (_, status) in &answers {
            *statuses.entry(status.clone()).or_default() += 1;
        }
        expected_order.insert(course, answers.into_iter().map(|(id, _)| id).collect());
    }
    assert!(
        statuses.get("spooled").copied().unwrap_or(0) > 0,
        "some submissions were spooled: {statuses:?}"
    );
    assert!(
        statuses.get("accepted").copied().unwrap_or(0) > 0,
        "some went straight to Kafka: {statuses:?}"
    );
    assert_eq!(
        ready_while_down["status"], "ready",
        "spooling keeps ingest ready: {ready_while_down}"
    );
    assert_ne!(
        ready_while_down["checks"]["kafka"]["breaker"], "closed",
        "{ready_while_down}"
    );

    let expected: HashSet<String> = expected_order.values().flatten().cloned().collect();
    assert_eq!(expected.len(), 240);
    let messages = consume_until(&ingest.topic, Duration::from_secs(90), all_seen(&expected))
        .await
        .unwrap();
    assert_eq!(
        first_copies_per_course(&messages),
        expected_order,
        "each course's events are in acceptance order"
    );
    feedback_tests::eventually(Duration::from_secs(10), "the spool to drain", || async {
        let ready = ingest.readyz().await?;
        Ok((ready["checks"]["spool"]["depth"] == 0).then_some(()))
    })
    .await
    .unwrap();
}

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

async fn wait_healthy(client: &reqwest::Client, port: u16) {
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
    let _serial = OUTAGE.lock().await;
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
    let _serial = OUTAGE.lock().await;
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
