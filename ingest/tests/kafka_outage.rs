//! The shared Kafka broker killed mid-stream under a running ingest: nothing
//! answered 202 is lost, and each course's submissions reach Kafka in the
//! order they were accepted.
//!
//! In a test binary of its own, apart from `it`: cargo runs test binaries one
//! at a time, so no other test sees the broker go away. Every test here
//! holds `OUTAGE`, so none sees another's outage either.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use feedback_tests::ingest::{all_seen, first_copies_per_course, TestIngest};
use feedback_tests::{consume_until, eventually, student, Restart, OUTAGE};
use reqwest::StatusCode;
use serde_json::{json, Value};

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
