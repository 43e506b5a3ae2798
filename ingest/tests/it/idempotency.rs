//! `Idempotency-Key` across ingest replicas (several behind one address, each
//! with its own spool and store) and a key's answer given only to the same
//! submission, after the checks every request passes.

use std::time::Duration;

use feedback_tests::error_of;
use feedback_tests::ingest::{config, TestIngest};
use feedback_tests::{consume_until, fresh_topic, student, temp_dir};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::domain::FeedbackId;

/// Posts `body` as student `sub` with `Idempotency-Key: key`.
async fn post_keyed(ingest: &TestIngest, sub: &str, key: &str, body: &Value) -> reqwest::Response {
    ingest
        .client
        .post(format!("{}/v1/feedback", ingest.url))
        .bearer_auth(student(sub))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("ingest answers")
}

/// The 202 answer to [`post_keyed`].
async fn accepted(ingest: &TestIngest, sub: &str, key: &str, body: &Value) -> Value {
    let response = post_keyed(ingest, sub, key, body).await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer
}

#[tokio::test]
async fn a_retry_on_another_replica_gets_the_same_feedback_id_spooled_or_not() {
    let topic = fresh_topic().await.unwrap();
    let a = TestIngest::spawn_with(config(&topic, temp_dir("spool-a"))).await;
    let b = TestIngest::spawn_with(config(&topic, temp_dir("spool-b"))).await;
    // A third replica whose Kafka is unreachable: it spools.
    let mut spooling = config(&topic, temp_dir("spool-c"));
    spooling.brokers = "127.0.0.1:1".into();
    spooling.delivery_timeout = Duration::from_secs(1);
    let c = TestIngest::spawn_with(spooling).await;
    let body = json!({"course_id": "CS101", "rating": 4, "comment": "同一个请求"});

    let first = accepted(&a, "rita", "retry-1", &body).await;
    assert_eq!(first["status"], "accepted");
    let id = first["feedback_id"].as_str().unwrap().to_owned();
    assert!(FeedbackId::parse(&id).is_ok(), "a ULID: {id}");
    let again = accepted(&b, "rita", "retry-1", &body).await;
    assert_eq!(again, first, "the same answer from the other replica");
    let spooled = accepted(&c, "rita", "retry-1", &body).await;
    assert_eq!(
        (spooled["feedback_id"].as_str(), spooled["status"].as_str()),
        (Some(id.as_str()), Some("spooled"))
    );

    // Another student's same key is another submission; so is another key.
    let frank = accepted(&b, "frank", "retry-1", &body).await;
    assert_ne!(frank["feedback_id"], first["feedback_id"]);
    let next = accepted(&a, "rita", "retry-2", &body).await;
    assert_ne!(next["feedback_id"], first["feedback_id"]);
    // B has answered the key: other content under it is refused there too.
    let reused = post_keyed(
        &b,
        "rita",
        "retry-1",
        &json!({"course_id": "CS101", "rating": 1}),
    )
    .await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(reused).await["code"], "idempotency_key_reused");

    // On the topic: A's and B's copies of the one submission, one id, which
    // the aggregator keeps once; C's stays in its spool.
    let messages = consume_until(&topic, Duration::from_secs(20), |m| m.len() >= 4)
        .await
        .unwrap();
    let ids: Vec<String> = messages
        .iter()
        .map(|m| m.json()["feedback_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == id).count(), 2, "{ids:?}");
    for other in [&frank, &next] {
        let other = other["feedback_id"].as_str().unwrap();
        assert!(ids.iter().any(|i| i == other), "{ids:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_key_already_answered_is_checked_like_any_request_and_replayed_only_for_its_submission() {
    let ingest = TestIngest::spawn().await;
    let url = format!("{}/v1/feedback", ingest.url);
    let body = json!({"course_id": "CS101", "rating": 5, "comment": "first"});
    let first = accepted(&ingest, "sam", "answered", &body).await;
    let raw = |content_type: Option<&str>, bytes: Vec<u8>| {
        let mut request = ingest
            .client
            .post(&url)
            .bearer_auth(student("sam"))
            .header("idempotency-key", "answered")
            .body(bytes);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };

    // Not a submission at all: the answer of any such request, not the stored 202.
    for (content_type, bytes, status, code) in [
        (
            None,
            vec![],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Some("application/json"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Some("text/plain"),
            body.to_string().into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Some("application/json"),
            vec![b' '; 16 * 1024 + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Some("application/json"),
            br#"{"course_id":"CS101","rating":6}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
        ),
    ] {
        let response = raw(content_type, bytes).await.unwrap();
        assert_eq!(response.status(), status, "{content_type:?}");
        assert_eq!(error_of(response).await["code"], code, "{content_type:?}");
    }

    // Another submission under the key: 422, naming the header.
    for other in [
        json!({"course_id": "CS101", "rating": 4, "comment": "first"}),
        json!({"course_id": "CS102", "rating": 5, "comment": "first"}),
        json!({"course_id": "CS101", "rating": 5}),
    ] {
        let response = post_keyed(&ingest, "sam", "answered", &other).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{other}"
        );
        let error = error_of(response).await;
        assert_eq!(error["code"], "idempotency_key_reused", "{other}");
        assert_eq!(error["field"], "Idempotency-Key");
    }

    // The same submission, however it is spelled, gets the first answer.
    assert_eq!(accepted(&ingest, "sam", "answered", &body).await, first);
    let spelled = br#"{ "comment": "  first ", "rating": 5, "course_id": "CS101" }"#;
    let response = raw(Some("application/json"), spelled.to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await.unwrap(), first);
    ingest.shutdown().await;
}
