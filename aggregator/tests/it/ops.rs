//! The operator's hand tools, run as the binary against the real services:
//! `aggregator quarantine list|replay|purge` and `aggregator reconcile`.
//! Each changes nothing without `--apply`.

use std::process::Command;
use std::time::Duration;

use feedback_tests::aggregator::*;
use mysql_async::prelude::Queryable;
use shared::domain::{CourseId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;

use crate::AGGREGATOR;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Runs `aggregator args…` on the scenario's resources; its stdout, after
/// asserting it succeeded.
fn tool(scenario: &Scenario, args: &[&str]) -> String {
    let output = Command::new(AGGREGATOR)
        .args(args)
        .env("FEEDBACK_KAFKA_BROKERS", feedback_tests::kafka_brokers())
        .env("FEEDBACK_KAFKA_TOPIC", &scenario.topic)
        .env("FEEDBACK_MYSQL_URL", &scenario.mysql_url)
        .env("FEEDBACK_REDIS_URL", &scenario.redis_url)
        .output()
        .expect("running the aggregator binary");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "aggregator {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Sets `event` aside as the sink does, as if read at `partition:offset`.
async fn quarantine(scenario: &Scenario, event: &FeedbackSubmitted, offset: i64, request: &str) {
    let pool = scenario.mysql().await;
    pool.get_conn()
        .await
        .unwrap()
        .exec_drop(
            "INSERT INTO quarantined_events
               (topic, kafka_partition, kafka_offset, feedback_id, course_id, payload, error_code,
                reason, error_message, request_id, traceparent, quarantined_at)
             VALUES (?, 0, ?, ?, ?, ?, 4025, 'check_constraint', 'CONSTRAINT failed', ?, ?,
                     '2025-01-01 00:00:00')",
            (
                &scenario.topic,
                offset,
                event.feedback_id.to_string(),
                event.course_id.as_str(),
                event.to_json(),
                request,
                TRACEPARENT,
            ),
        )
        .await
        .unwrap();
    pool.disconnect().await.unwrap();
}

/// The positions (`partition:offset`) of the scenario's quarantined events.
async fn quarantined(scenario: &Scenario) -> Vec<String> {
    let pool = scenario.mysql().await;
    let rows: Vec<(i32, i64)> = pool
        .get_conn()
        .await
        .unwrap()
        .exec(
            "SELECT kafka_partition, kafka_offset FROM quarantined_events
             WHERE topic = ? ORDER BY kafka_offset",
            (&scenario.topic,),
        )
        .await
        .unwrap();
    pool.disconnect().await.unwrap();
    rows.iter().map(|(p, o)| format!("{p}:{o}")).collect()
}

fn event(course: &str, student: &str) -> FeedbackSubmitted {
    FeedbackSubmitted::new(
        CourseId::parse(course).unwrap(),
        StudentKey::derive(b"test", student),
        Rating::parse(4).unwrap(),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_tools_list_replay_and_purge_only_with_apply() {
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    let first = event("CS-101", "q-1");
    let second = event("CS-202", "q-2");
    quarantine(&scenario, &first, 5, "req-q-1").await;
    quarantine(&scenario, &second, 7, "req-q-2").await;

    let listed = tool(&scenario, &["quarantine", "list", "--json"]);
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert_eq!(lines[0]["offset"], 5);
    assert_eq!(lines[0]["feedback_id"], first.feedback_id.to_string());
    assert_eq!(lines[0]["course_id"], "CS-101");
    assert_eq!(lines[0]["reason"], "check_constraint");
    assert_eq!(lines[0]["error_code"], 4025);
    assert_eq!(lines[0]["request_id"], "req-q-1");
    let table = tool(&scenario, &["quarantine", "list"]);
    assert!(
        table.contains("0:7\t") && table.contains("req-q-2"),
        "{table}"
    );

    // A dry run says what it would do and does nothing.
    let said = tool(&scenario, &["quarantine", "replay", "--at", "0:5"]);
    assert!(said.contains("would replay 0:5"), "{said}");
    assert_eq!(quarantined(&scenario).await, ["0:5", "0:7"]);

    let said = tool(
        &scenario,
        &["quarantine", "replay", "--at", "0:5", "--apply"],
    );
    assert!(said.contains("replayed 0:5"), "{said}");
    assert_eq!(quarantined(&scenario).await, ["0:7"]);
    let produced = feedback_tests::consume(&scenario.topic, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(produced[0].key, "CS-101");
    assert_eq!(produced[0].payload, first.to_json(), "the value as read");
    assert_eq!(produced[0].request_id.as_deref(), Some("req-q-1"));
    assert!(
        produced[0]
            .headers
            .contains(&("traceparent".into(), TRACEPARENT.into())),
        "{:?}",
        produced[0].headers
    );

    let said = tool(&scenario, &["quarantine", "purge", "--all"]);
    assert!(said.contains("would purge 1"), "{said}");
    assert_eq!(quarantined(&scenario).await, ["0:7"]);
    // Set aside after the cut-off: left.
    tool(
        &scenario,
        &[
            "quarantine",
            "purge",
            "--before",
            "2024-12-31T00:00:00Z",
            "--apply",
        ],
    );
    assert_eq!(quarantined(&scenario).await, ["0:7"]);
    tool(&scenario, &["quarantine", "purge", "--all", "--apply"]);
    assert!(quarantined(&scenario).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_hashes_that_differ_or_lag_and_repairs_them_only_with_apply() {
    let scenario = Scenario::new().await;
    let events = random_events(41, 60, 3, 20);
    let aggregator = scenario.spawn().await;
    produce(&scenario.topic, &events).await;
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;
    // Stopped, so its own reconciler does not repair what this test breaks.
    aggregator.shutdown().await;
    fill_all(&scenario).await;
    wait_for_redis_to_match(&scenario, Duration::from_secs(10)).await;

    let mysql = mysql_stats(&scenario.mysql_url).await.unwrap();
    let mut courses = mysql.keys();
    let (corrupt, lagging) = (courses.next().unwrap(), courses.next().unwrap());
    let mut redis = scenario.redis().await;
    let _: () = redis::cmd("HSET")
        .arg(shared::redis_hash::course_key(corrupt))
        .arg("responses")
        .arg(999)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(shared::redis_hash::course_key(lagging))
        .arg("version")
        .arg(mysql[lagging].1 - 1)
        .query_async(&mut redis)
        .await
        .unwrap();

    let said = tool(&scenario, &["reconcile", "--all"]);
    assert!(said.contains(&format!("{corrupt}\tdiffers")), "{said}");
    assert!(said.contains(&format!("{lagging}\tlagging")), "{said}");
    assert!(said.contains("2 not in step, 0 repaired"), "{said}");
    let hash = shared::redis_hash::read(&mut redis, corrupt).await.unwrap();
    assert_eq!(
        hash.map(|h| h.responses),
        Some(999),
        "a dry run repairs nothing"
    );

    let said = tool(&scenario, &["reconcile", "--course", corrupt, "--apply"]);
    assert!(said.contains("1 repaired"), "{said}");
    let said = tool(&scenario, &["reconcile", "--all", "--apply"]);
    assert!(said.contains("1 not in step, 1 repaired"), "{said}");
    assert_eq!(
        wait_for_redis_to_match(&scenario, Duration::from_secs(5)).await,
        mysql.len()
    );
    let said = tool(&scenario, &["reconcile", "--all"]);
    assert!(said.contains("0 not in step"), "{said}");
}

/// Every record the topic holds now, over its partitions.
fn records_in(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = shared::kafka::client_config(&feedback_tests::kafka_brokers())
        .set("group.id", "fbtest-watermarks")
        .create()
        .unwrap();
    (0..shared::kafka::PARTITIONS)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_tools_list_replay_and_purge_only_with_apply() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let scenario = Scenario::new().await;
    let dlq = shared::kafka::dlq_topic(&scenario.topic);
    shared::kafka::ensure_topic(&feedback_tests::kafka_brokers(), &dlq, 1, None)
        .await
        .unwrap();
    // Two dead letters as the aggregator writes them: the message's own
    // headers, then why and where it was.
    let producer: FutureProducer = shared::kafka::client_config(&feedback_tests::kafka_brokers())
        .create()
        .unwrap();
    for (n, payload) in [b"not json".as_slice(), b"{\"v\": 99}"]
        .into_iter()
        .enumerate()
    {
        let offset = (10 + n).to_string();
        let request = format!("req-dlq-{n}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "x-request-id",
                value: Some(&request),
            })
            .insert(Header {
                key: "traceparent",
                value: Some(TRACEPARENT),
            })
            .insert(Header {
                key: "x-dlq-reason",
                value: Some("expected value at line 1"),
            })
            .insert(Header {
                key: "x-original-partition",
                value: Some("2"),
            })
            .insert(Header {
                key: "x-original-offset",
                value: Some(&offset),
            });
        producer
            .send(
                FutureRecord::to(&dlq)
                    .key("CS-101")
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .expect("Kafka acknowledges");
    }

    let listed = tool(&scenario, &["dlq", "list", "--json"]);
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert_eq!(lines[1]["offset"], 1);
    assert_eq!(lines[1]["reason"], "expected value at line 1");
    assert_eq!(
        (
            &lines[1]["original_partition"],
            &lines[1]["original_offset"]
        ),
        (&2.into(), &11.into())
    );
    assert_eq!(lines[1]["request_id"], "req-dlq-1");

    let said = tool(&scenario, &["dlq", "replay", "--offset", "1"]);
    assert!(said.contains("would replay 1"), "{said}");
    assert_eq!(records_in(&scenario.topic), 0, "a dry run produces nothing");
    tool(&scenario, &["dlq", "replay", "--offset", "1", "--apply"]);
    let produced = feedback_tests::consume(&scenario.topic, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(records_in(&scenario.topic), 1);
    assert_eq!(
        (produced[0].key.as_str(), &produced[0].payload[..]),
        ("CS-101", &b"{\"v\": 99}"[..])
    );
    let names: Vec<&str> = produced[0]
        .headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        names,
        ["x-request-id", "traceparent"],
        "the original headers only"
    );
    assert_eq!(produced[0].request_id.as_deref(), Some("req-dlq-1"));

    let said = tool(&scenario, &["dlq", "purge", "--before-offset", "1"]);
    assert!(said.contains("would purge 1"), "{said}");
    assert_eq!(
        tool(&scenario, &["dlq", "list", "--json"]).lines().count(),
        2
    );
    tool(
        &scenario,
        &["dlq", "purge", "--before-offset", "1", "--apply"],
    );
    let listed = tool(&scenario, &["dlq", "list", "--json"]);
    let offsets: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"].clone())
        .collect();
    assert_eq!(offsets, [serde_json::Value::from(1)], "{listed}");
}
