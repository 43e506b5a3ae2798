//! Ingest's HTTP surface against the real Kafka: what reaches the topic, and
//! every refusal in the contract's error format.

use std::time::Duration;

use feedback_tests::error_of;
use feedback_tests::ingest::{config, TestIngest};
use feedback_tests::{consume, student, temp_dir, token};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::auth::Role;

fn schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(shared::event::SCHEMA_V1).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[tokio::test]
async fn an_accepted_submission_is_on_the_topic_keyed_by_course_as_schema_valid_json() {
    let ingest = TestIngest::spawn().await;
    let response = ingest
        .client
        .post(format!("{}/v1/feedback", ingest.url))
        .bearer_auth(student("s-1001"))
        .header("x-request-id", "req-abc-123")
        .json(&json!({"course_id": "CS101", "rating": 4, "comment": "讲得很清楚, \"great\""}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["x-request-id"], "req-abc-123");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");

    let messages = consume(&ingest.topic, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let message = &messages[0];
    assert_eq!(message.key, "CS101");
    assert_eq!(message.request_id.as_deref(), Some("req-abc-123"));
    let event = message.json();
    assert!(schema().is_valid(&event), "{event} does not validate");
    assert_eq!(event["feedback_id"], answer["feedback_id"]);
    assert_eq!(event["rating"], 4);
    assert_eq!(event["comment"], "讲得很清楚, \"great\"");
    assert_eq!(event["course_id"], "CS101");
    let key = event["student_key"].as_str().unwrap();
    assert_eq!(key.len(), 64);
    assert!(
        !message.payload.windows(7).any(|w| w == b"s-1001\""),
        "the raw subject never leaves ingest"
    );

    // A request id past 128 visible ASCII characters is replaced, not kept
    // with the event.
    let response = ingest
        .client
        .post(format!("{}/v1/feedback", ingest.url))
        .bearer_auth(student("s-1002"))
        .header("x-request-id", "x".repeat(20_000))
        .json(&json!({"course_id": "CS101", "rating": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let replaced = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(replaced.len(), 36, "a fresh UUID: {replaced}");
    let messages = consume(&ingest.topic, 2, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(messages[1].request_id.as_deref(), Some(replaced.as_str()));
    ingest.shutdown().await;
}

/// JSON Schema, and so the API document, calls `3.0` an integer: ingest
/// takes it as the rating 3, and the event carries a plain integer.
#[tokio::test]
async fn a_whole_rating_written_as_a_float_is_taken_as_that_integer() {
    let ingest = TestIngest::spawn().await;
    let response = ingest
        .client
        .post(format!("{}/v1/feedback", ingest.url))
        .bearer_auth(student("s-float"))
        .header("content-type", "application/json")
        .body(r#"{"course_id": "CS101", "rating": 3.0}"#)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        response.text().await.unwrap()
    );
    let messages = consume(&ingest.topic, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let event = messages[0].json();
    assert!(schema().is_valid(&event), "{event} does not validate");
    assert!(event["rating"].is_u64(), "{event}");
    assert_eq!(event["rating"], 3);

    // A fraction is still no rating.
    let response = ingest
        .post(
            &student("s-float"),
            &json!({"course_id": "CS101", "rating": 3.5}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(response).await["field"], "rating");
    ingest.shutdown().await;
}

/// The string schema the API document gives a submission's `comment`: its
/// `maxLength` and its `pattern` (the YAML line's double-quoted value,
/// unescaped).
fn documented_comment_schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let depth = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|line| line.trim_end() != "    FeedbackSubmission:")
        .skip_while(|line| line.trim_end() != "        comment:")
        .skip(1)
        .take_while(|line| depth(line) > 8)
        .collect();
    let value = |key: &str| {
        lines
            .iter()
            .find_map(|line| line.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("the document gives FeedbackSubmission's comment {key}"))
    };
    let max_length: u64 = value("maxLength: ").parse().unwrap();
    let pattern = value("pattern: ").trim_matches('"').replace("\\\\", "\\");
    let schema = json!({"type": "string", "maxLength": max_length, "pattern": pattern});
    jsonschema::validator_for(&schema).unwrap()
}

/// The document's schema for a comment takes what ingest takes, as sent:
/// control characters but tab, line feed and carriage return are refused
/// by both, and so is a comment over 2000 characters, even when trimming
/// would have made it shorter or dropped the control character.
#[tokio::test]
async fn the_documents_comment_schema_refuses_the_comments_ingest_refuses() {
    let schema = documented_comment_schema();
    let ingest = TestIngest::spawn().await;
    let alice = student("alice-comments");
    let padded = format!("{}{}", " ".repeat(10), "好".repeat(1995));
    let full = "好".repeat(2000);
    for comment in [
        "讲得很清楚\n\tline two\r\n",
        "a bell \u{7}",
        "\u{11}öß",
        "delete \u{7f}",
        "next line \u{85}",
        "\u{b}vertical tab",
        "no-break\u{a0}space",
        "zero\u{200b}width",
        padded.as_str(),
        full.as_str(),
    ] {
        let body = json!({"course_id": "CS101", "rating": 3, "comment": comment});
        let status = ingest.post(&alice, &body).await.status();
        assert!(
            [StatusCode::ACCEPTED, StatusCode::UNPROCESSABLE_ENTITY].contains(&status),
            "{comment:?}: {status}"
        );
        assert_eq!(
            status == StatusCode::ACCEPTED,
            schema.is_valid(&json!(comment)),
            "{comment:?}: ingest answered {status}, the document's schema disagrees"
        );
    }
    ingest.shutdown().await;
}

/// The router alone: a token is refused before anything reaches Kafka.
#[tokio::test]
async fn tokens_are_checked_401_for_bad_403_for_another_role() {
    let ingest = feedback_tests::ingest::router().await;
    let body = json!({"course_id": "CS101", "rating": 4});
    let url = format!("{}/v1/feedback", ingest.url);
    let post = |token: &str| ingest.send(ingest.client.post(&url).bearer_auth(token).json(&body));

    let none = ingest.send(ingest.client.post(&url).json(&body)).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(none).await["code"], "invalid_token");

    let forged = shared::auth::JwtKeys::new(b"a-different-secret-of-32-bytes-or-more")
        .unwrap()
        .mint("x", Role::Student, 60);
    for bad in ["garbage", "a.b.c", forged.as_str()] {
        let response = post(bad).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    for role in [Role::Admin, Role::Instructor] {
        let refused = post(&token("staff", role)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{role:?}");
        assert_eq!(error_of(refused).await["code"], "forbidden");
    }
}

#[tokio::test]
async fn a_chunked_body_over_16_kib_is_refused_while_reading_and_the_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ingest = TestIngest::spawn().await;
    let address = ingest.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // No Content-Length: only reading can find the body too large.
    let head = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        student("alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("1000\r\n{}\r\n", " ".repeat(0x1000));
    for _ in 0..5 {
        // The server may answer and close before the last chunks: that is the point.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    ingest.shutdown().await;
}

#[tokio::test]
async fn every_bad_input_gets_its_status_code_and_field() {
    let ingest = TestIngest::spawn().await;
    let url = format!("{}/v1/feedback", ingest.url);
    let alice = student("alice");
    let raw = |ct: &'static str, body: Vec<u8>| {
        ingest
            .client
            .post(&url)
            .bearer_auth(&alice)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    let r = raw("text/plain", br#"{"course_id":"C","rating":3}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_of(r).await["code"], "unsupported_media_type");
    // JSON is UTF-8: a body declared in another charset is not one ingest reads.
    for ct in [
        "application/json; charset=latin1",
        "application/json; charset=\"UTF-16\"",
    ] {
        let r = raw(ct, br#"{"course_id":"C","rating":3}"#.to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
    }

    let r = raw("application/json", vec![b' '; 16 * 1024 + 1])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The rest of the body is never read: this connection takes no further request.
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(error_of(r).await["code"], "payload_too_large");

    let r = raw("application/json; charset=utf-8", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(r).await["code"], "invalid_json");

    let r = raw(
        "application/json",
        b"{\"course_id\":\"\xc3\x28\",\"rating\":3}".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "invalid UTF-8");

    let cases = [
        (
            json!({"course_id": "CS101", "rating": 6}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rating",
        ),
        (
            json!({"course_id": "CS101", "rating": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rating",
        ),
        (
            json!({"course_id": "CS101", "rating": 2.5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rating",
        ),
        (
            json!({"course_id": "CS101", "rating": "5"}),
            StatusCode::BAD_REQUEST,
            "rating",
        ),
        (
            json!({"course_id": "CS101"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rating",
        ),
        (
            json!({"course_id": "CS 101", "rating": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "course_id",
        ),
        (
            json!({"course_id": "x".repeat(65), "rating": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "course_id",
        ),
        (
            json!({"course_id": 101, "rating": 3}),
            StatusCode::BAD_REQUEST,
            "course_id",
        ),
        (
            json!({"course_id": "CS101", "rating": 3, "comment": "好".repeat(2001)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "comment",
        ),
        (
            json!({"course_id": "CS101", "rating": 3, "comment": 42}),
            StatusCode::BAD_REQUEST,
            "comment",
        ),
    ];
    for (body, status, field) in cases {
        let response = ingest.post(&alice, &body).await;
        assert_eq!(response.status(), status, "{body}");
        let error = error_of(response).await;
        assert_eq!(error["field"], field, "{body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A long comment in Chinese within the limit is fine.
    let ok = ingest
        .post(
            &alice,
            &json!({"course_id": "CS101", "rating": 3, "comment": "好".repeat(2000)}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);

    let r = ingest.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(error_of(r).await["code"], "method_not_allowed");
    for path in ["/", "/healthz", "/readyz", "/metrics"] {
        let r = ingest
            .client
            .delete(format!("{}{path}", ingest.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert!(r.headers().contains_key("x-request-id"), "{path}");
        assert_eq!(error_of(r).await["code"], "method_not_allowed", "{path}");
    }
    let r = ingest
        .client
        .get(format!("{}/nope", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        r.headers().contains_key("x-request-id"),
        "the 404 passes the layers"
    );
    assert_eq!(error_of(r).await["code"], "not_found");
    ingest.shutdown().await;
}

#[tokio::test]
async fn sensitive_words_are_masked_before_they_reach_kafka() {
    let ingest = TestIngest::spawn().await;
    let response = ingest
        .post(&student("bob"), &json!({"course_id": "CS101", "rating": 1, "comment": "这老师是傻*逼, F.U.C.K this class"}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let messages = consume(&ingest.topic, 1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        messages[0].json()["comment"],
        "这老师是***, ******* this class"
    );
    ingest.shutdown().await;
}

#[tokio::test]
async fn the_reject_policy_answers_422_sensitive_content() {
    let topic = feedback_tests::fresh_topic().await.unwrap();
    let mut config = config(&topic, temp_dir("spool"));
    config.sensitive_policy = ingest::filter::Policy::Reject;
    let ingest = TestIngest::spawn_with(config).await;
    let response = ingest
        .post(
            &student("bob"),
            &json!({"course_id": "CS101", "rating": 1, "comment": "傻逼课程"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error = error_of(response).await;
    assert_eq!(
        (error["code"].as_str(), error["field"].as_str()),
        (Some("sensitive_content"), Some("comment"))
    );
    let clean = ingest
        .post(
            &student("bob"),
            &json!({"course_id": "CS101", "rating": 1, "comment": "课程很好"}),
        )
        .await;
    assert_eq!(clean.status(), StatusCode::ACCEPTED);
    ingest.shutdown().await;
}

#[tokio::test]
async fn a_student_over_the_limit_gets_429_with_rate_limit_headers() {
    let topic = feedback_tests::fresh_topic().await.unwrap();
    let mut config = config(&topic, temp_dir("spool"));
    config.rate_limit_student_per_min = 3;
    let ingest = TestIngest::spawn_with(config).await;
    let body = json!({"course_id": "CS101", "rating": 5});
    let keyed = || {
        ingest
            .client
            .post(format!("{}/v1/feedback", ingest.url))
            .bearer_auth(student("carol"))
            .header("idempotency-key", "carol-1")
            .json(&body)
            .send()
    };
    let first: Value = keyed().await.unwrap().json().await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            ingest.post(&student("carol"), &body).await.status(),
            StatusCode::ACCEPTED
        );
    }
    // Over the limit, a retry of a request already answered still gets its
    // answer (the contract: the same key gets the same answer).
    let retry = keyed().await.unwrap();
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    let limited = ingest.post(&student("carol"), &body).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    for header in [
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(limited.headers().contains_key(header), "missing {header}");
    }
    assert_eq!(limited.headers()["x-ratelimit-limit"], "3");
    assert_eq!(error_of(limited).await["code"], "rate_limited");
    assert_eq!(
        ingest.post(&student("dave"), &body).await.status(),
        StatusCode::ACCEPTED,
        "other students are not limited"
    );
    ingest.shutdown().await;
}

#[tokio::test]
async fn one_client_address_over_its_limit_gets_429() {
    let topic = feedback_tests::fresh_topic().await.unwrap();
    let mut config = config(&topic, temp_dir("spool"));
    config.rate_limit_ip_per_min = 4;
    let ingest = TestIngest::spawn_with(config).await;
    let body = json!({"course_id": "CS101", "rating": 5});
    let statuses: Vec<u16> = futures_statuses(&ingest, &body, 6).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    ingest.shutdown().await;
}

/// One submission per student, each with its `X-Forwarded-For`: the statuses.
async fn forwarded_statuses(ingest: &TestIngest, forwarded: &[&str]) -> Vec<u16> {
    let body = json!({"course_id": "CS101", "rating": 5});
    let mut statuses = Vec::new();
    for (n, header) in forwarded.iter().enumerate() {
        let answer = ingest
            .client
            .post(format!("{}/v1/feedback", ingest.url))
            .bearer_auth(student(&format!("xff-{n}")))
            .header("x-forwarded-for", *header)
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_address_limit_keys_on_the_forwarded_client() {
    let topic = feedback_tests::fresh_topic().await.unwrap();
    let mut config = config(&topic, temp_dir("spool"));
    config.rate_limit_ip_per_min = 2;
    config.trusted_proxies = "127.0.0.1".parse().unwrap();
    let ingest = TestIngest::spawn_with(config).await;
    // Two clients behind the one proxy address each have their own
    // allowance; the first one's third request is over its limit, whatever
    // it puts left of the address the proxy saw.
    let statuses = forwarded_statuses(
        &ingest,
        &[
            "203.0.113.1",
            "203.0.113.1",
            "203.0.113.2",
            "203.0.113.2",
            "198.51.100.77, 203.0.113.1",
        ],
    )
    .await;
    assert_eq!(statuses, [202, 202, 202, 202, 429]);
    ingest.shutdown().await;
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_for_header_changes_nothing() {
    let topic = feedback_tests::fresh_topic().await.unwrap();
    let mut config = config(&topic, temp_dir("spool"));
    config.rate_limit_ip_per_min = 2;
    let ingest = TestIngest::spawn_with(config).await;
    let statuses =
        forwarded_statuses(&ingest, &["203.0.113.1", "203.0.113.2", "203.0.113.3"]).await;
    assert_eq!(
        statuses,
        [202, 202, 429],
        "the peer's limit, not the header's"
    );
    ingest.shutdown().await;
}

async fn futures_statuses(ingest: &TestIngest, body: &Value, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            ingest
                .post(&student(&format!("ip-{i}")), body)
                .await
                .status()
                .as_u16(),
        );
    }
    out
}

#[tokio::test]
async fn the_same_idempotency_key_gets_the_same_answer_and_one_event_even_after_a_restart() {
    let topic = feedback_tests::fresh_topic().await.unwrap();
    let spool = temp_dir("spool");
    let ingest = TestIngest::spawn_with(config(&topic, spool.clone())).await;
    let post = |ingest: &TestIngest, sub: &str, key: &str| {
        ingest
            .client
            .post(format!("{}/v1/feedback", ingest.url))
            .bearer_auth(student(sub))
            .header("idempotency-key", key)
            .json(&json!({"course_id": "CS101", "rating": 2}))
            .send()
    };
    // Concurrent duplicates share one answer.
    let (a, b) = tokio::join!(
        post(&ingest, "erin", "key-1"),
        post(&ingest, "erin", "key-1")
    );
    let a: Value = a.unwrap().json().await.unwrap();
    let b: Value = b.unwrap().json().await.unwrap();
    assert_eq!(a, b);
    let other: Value = post(&ingest, "frank", "key-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(
        other["feedback_id"], a["feedback_id"],
        "keys are per student"
    );
    let bad = post(&ingest, "erin", "has space").await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let two = ingest
        .client
        .post(format!("{}/v1/feedback", ingest.url))
        .bearer_auth(student("erin"))
        .header("idempotency-key", "key-1")
        .header("idempotency-key", "key-2")
        .json(&json!({"course_id": "CS101", "rating": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        two.status(),
        StatusCode::BAD_REQUEST,
        "which key would it be?"
    );
    assert_eq!(error_of(two).await["field"], "Idempotency-Key");
    ingest.shutdown().await;

    let ingest = TestIngest::spawn_with(config(&topic, spool)).await;
    let again: Value = post(&ingest, "erin", "key-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, a, "the key survives a restart");
    ingest.shutdown().await;

    let messages = consume(&topic, 2, Duration::from_secs(20)).await.unwrap();
    let ids: Vec<Value> = messages
        .iter()
        .map(|m| m.json()["feedback_id"].clone())
        .collect();
    assert_eq!(
        ids.iter().filter(|id| **id == a["feedback_id"]).count(),
        1,
        "{ids:?}"
    );
    // Exactly two events on the topic: the partitions' ends add up to 2 (a
    // consumer timing out would also have "found" no third one).
    let consumer: rdkafka::consumer::BaseConsumer =
        shared::kafka::client_config(&feedback_tests::kafka_brokers())
            .create()
            .unwrap();
    let ends: i64 = (0..shared::kafka::PARTITIONS)
        .map(|p| {
            rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                &topic,
                p,
                Duration::from_secs(10),
            )
            .unwrap()
            .1
        })
        .sum();
    assert_eq!(ends, 2, "no third event");
}

#[tokio::test]
async fn health_readiness_metrics_and_the_form_are_served_without_a_token() {
    let ingest = TestIngest::spawn().await;
    let get = |path: &str| ingest.client.get(format!("{}{path}", ingest.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["kafka"]["breaker"], "closed");
    assert_eq!(ready["checks"]["spool"]["depth"], 0);
    let posted = ingest
        .post(
            &student("gina"),
            &json!({"course_id": "CS101", "rating": 5}),
        )
        .await;
    assert_eq!(posted.status(), StatusCode::ACCEPTED);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "ingest_produce_duration_seconds",
        "ingest_spool_depth",
        // Counters show from the start, at 0 until their first increment.
        "ingest_spool_full_total",
        "ingest_rate_limited_total{limit=\"address\"}",
        "ingest_sensitive_total{action=\"rejected\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    feedback_tests::assert_every_metric_has_help(&metrics);
    feedback_tests::assert_page_is_served_self_contained(
        &ingest.url,
        "/",
        &serde_json::json!({"mode": "secret"}),
        &["/form.css", "/form.js", "/oidc.js"],
        &[
            "/v1/feedback",
            "课程反馈",
            "Course feedback",
            "Idempotency-Key",
        ],
    )
    .await;
    ingest.shutdown().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_does_not_lock_its_idempotency_key() {
    // A "broker" that accepts connections and never answers: the first
    // request waits on its delivery until the client gives up.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = silent.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let mut config = config("never-created", temp_dir("spool"));
    config.brokers = broker;
    config.delivery_timeout = Duration::from_secs(2);
    let ingest = TestIngest::spawn_with(config).await;
    let post = |client: &reqwest::Client| {
        client
            .post(format!("{}/v1/feedback", ingest.url))
            .bearer_auth(student("hana"))
            .header("idempotency-key", "hang-up")
            .json(&json!({"course_id": "CS101", "rating": 4}))
            .send()
    };

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = post(&impatient).await;
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "the first request is still delivering when its client hangs up: {gave_up:?}"
    );

    // The retry waits for the first request's delivery (spooled when the
    // broker does not answer) and gets its answer, rather than a 409.
    let retry = post(&ingest.client).await.unwrap();
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["status"], "spooled");
    let again: Value = post(&ingest.client).await.unwrap().json().await.unwrap();
    assert_eq!(again, retry, "the same answer again");
    let ready = ingest.readyz().await.unwrap();
    assert_eq!(
        ready["checks"]["spool"]["depth"], 1,
        "one event for the key"
    );
    ingest.shutdown().await;
    held.abort();
}

#[tokio::test]
async fn ingest_refuses_to_start_without_a_jwt_secret_of_32_bytes() {
    feedback_tests::assert_refuses_to_start_without_a_jwt_secret(
        env!("CARGO_BIN_EXE_ingest"),
        &[
            ("FEEDBACK_INGEST_ADDR", "127.0.0.1:0".into()),
            (
                "FEEDBACK_SPOOL_DIR",
                temp_dir("no-secret-spool").display().to_string(),
            ),
        ],
    )
    .await;
}

/// Identity-provider mode's settings are checked before anything starts:
/// each wrong one is named.
#[tokio::test]
async fn ingest_refuses_to_start_with_identity_settings_that_cannot_work() {
    let base = |extra: &[(&'static str, &str)]| {
        let mut env = vec![
            ("FEEDBACK_INGEST_ADDR", "127.0.0.1:0".to_owned()),
            (
                "FEEDBACK_SPOOL_DIR",
                temp_dir("idp-settings-spool").display().to_string(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    let issuer = (
        "FEEDBACK_OIDC_ISSUER",
        "http://127.0.0.1:8180/realms/feedback",
    );
    let audience = ("FEEDBACK_OIDC_AUDIENCE", "feedback-api");
    let student_key = (
        "FEEDBACK_STUDENT_KEY_SECRET",
        "a-student-key-secret-of-32-bytes-or-more",
    );
    let binary = env!("CARGO_BIN_EXE_ingest");
    feedback_tests::assert_refuses_to_start_naming(
        binary,
        &base(&[issuer, student_key]),
        "FEEDBACK_OIDC_AUDIENCE",
    )
    .await;
    feedback_tests::assert_refuses_to_start_naming(
        binary,
        &base(&[issuer, audience]),
        "FEEDBACK_STUDENT_KEY_SECRET",
    )
    .await;
    feedback_tests::assert_refuses_to_start_naming(
        binary,
        &base(&[issuer, audience, ("FEEDBACK_STUDENT_KEY_SECRET", "short")]),
        "FEEDBACK_STUDENT_KEY_SECRET",
    )
    .await;
    feedback_tests::assert_refuses_to_start_naming(
        binary,
        &base(&[
            ("FEEDBACK_OIDC_ISSUER", "http://login.example.edu/realms/x"),
            audience,
            student_key,
        ]),
        "FEEDBACK_OIDC_ISSUER",
    )
    .await;
    feedback_tests::assert_refuses_to_start_naming(
        binary,
        &base(&[
            issuer,
            audience,
            student_key,
            ("FEEDBACK_JWT_MAX_TTL_SECS", "soon"),
        ]),
        "FEEDBACK_JWT_MAX_TTL_SECS",
    )
    .await;
}

/// `.` and `..` are path segments no URL client sends as such: a course
/// named so could never be read back. The contract refuses every id that
/// does not start with a letter or a digit.
#[tokio::test]
async fn a_course_id_that_does_not_start_with_a_letter_or_a_digit_is_422() {
    let ingest = feedback_tests::ingest::router().await;
    let url = format!("{}/v1/feedback", ingest.url);
    for course in [".", "..", "-a", "_a", ":a", ".x"] {
        let body = json!({"course_id": course, "rating": 4});
        let request = ingest
            .client
            .post(&url)
            .bearer_auth(student("ivy"))
            .json(&body);
        let response = ingest.send(request).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{course}"
        );
        let error = error_of(response).await;
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some("invalid_value"), Some("course_id")),
            "{course}"
        );
    }
}
