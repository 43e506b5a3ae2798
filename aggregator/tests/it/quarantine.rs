//! What MySQL or the DLQ will not take: an event MySQL refuses for good is
//! set aside with its reason and the rest counted, nothing paused; a lock
//! wait that times out is retried, not set aside; a dead letter the DLQ
//! refuses holds its partition until it is written, never skipped.
//!
//! Each test runs the aggregator binary as a child process: its metrics are
//! its own, not the sum of this binary's tests running at once.

use std::collections::BTreeMap;
use std::time::Duration;

use feedback_tests::aggregator::*;
use feedback_tests::eventually;
use mysql_async::prelude::Queryable;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::domain::{Comment, CourseId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;

use crate::AGGREGATOR;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A message to produce: key, value, headers.
type Outgoing = (String, Vec<u8>, Vec<(&'static str, &'static str)>);

/// Produces `messages` in order; returns where each landed (partition, offset).
async fn produce_at(topic: &str, messages: &[Outgoing]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = shared::kafka::client_config(&feedback_tests::kafka_brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("a producer");
    let sends = messages.iter().map(|(key, payload, headers)| {
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |all, (key, value)| {
                all.insert(Header {
                    key,
                    value: Some(*value),
                })
            });
        producer.send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(30),
        )
    });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|sent| {
            let delivered = sent.expect("Kafka acknowledges");
            (delivered.partition, delivered.offset)
        })
        .collect()
}

/// Events as ingest produces them: keyed by course, no headers.
fn outgoing(events: &[FeedbackSubmitted]) -> Vec<Outgoing> {
    events
        .iter()
        .map(|e| (e.course_id.to_string(), e.to_json(), vec![]))
        .collect()
}

/// A submission of `course` by a student no other event has, with `comment`.
fn submission(course: &CourseId, student: &str, comment: &str) -> FeedbackSubmitted {
    FeedbackSubmitted::new(
        course.clone(),
        StudentKey::derive(b"test", student),
        Rating::parse(5).expect("valid"),
        Some(Comment::parse(comment.to_owned()).expect("valid")),
    )
}

/// A child aggregator's `/metrics`.
async fn metrics_of(process: &AggregatorProcess) -> String {
    reqwest::get(format!("http://127.0.0.1:{}/metrics", process.port))
        .await
        .expect("metrics answers")
        .text()
        .await
        .unwrap_or_default()
}

/// A child aggregator's `/readyz`: status and body, `None` while it starts.
async fn readyz_of(process_port: u16) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("http://127.0.0.1:{process_port}/readyz"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or_default()))
}

/// The value of one labelled series (`name{labels}`), 0 when absent.
fn series(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Every `/readyz` answer seen while a lane waited (which pauses consumption).
type Stalls = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Polls a child aggregator's `/readyz` every 50 ms, keeping the answers
/// that say a lane waits: for MySQL (retrying a commit) or for the DLQ.
fn watch_stalls(port: u16) -> (tokio::task::JoinHandle<()>, Stalls) {
    let seen: Stalls = Default::default();
    let record = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some((status, body)) = readyz_of(port).await {
                let checks = &body["checks"];
                if checks["mysql"]["lanes_retrying"] != 0 || checks["dlq"]["waiting"] != 0 {
                    record.lock().unwrap().push(format!("{status} {body}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (task, seen)
}

/// A row of `quarantined_events`, the columns a test checks.
#[derive(Debug)]
struct QuarantineRow {
    partition: i32,
    offset: i64,
    feedback_id: String,
    course_id: String,
    payload: Vec<u8>,
    code: i32,
    reason: String,
    message: String,
    request_id: Option<String>,
    traceparent: Option<String>,
    at: String,
}

async fn quarantine_rows(mysql_url: &str) -> Vec<QuarantineRow> {
    let pool = mysql_async::Pool::new(mysql_url);
    let mut conn = pool.get_conn().await.expect("MySQL");
    let rows: Vec<mysql_async::Row> = conn
        .query(
            "SELECT kafka_partition, kafka_offset, feedback_id, course_id, payload, error_code,
                    reason, error_message, request_id, traceparent, CAST(quarantined_at AS CHAR)
             FROM quarantined_events ORDER BY kafka_partition, kafka_offset",
        )
        .await
        .expect("the quarantine");
    drop(conn);
    pool.disconnect().await.unwrap();
    rows.into_iter()
        .map(|mut row| QuarantineRow {
            partition: row.take(0).unwrap(),
            offset: row.take(1).unwrap(),
            feedback_id: row.take(2).unwrap(),
            course_id: row.take(3).unwrap(),
            payload: row.take(4).unwrap(),
            code: row.take(5).unwrap(),
            reason: row.take(6).unwrap(),
            message: row.take(7).unwrap(),
            request_id: row.take(8).unwrap(),
            traceparent: row.take(9).unwrap(),
            at: row.take(10).unwrap(),
        })
        .collect()
}

/// MySQL's next offset per partition of the scenario's topic.
async fn offsets(scenario: &Scenario) -> BTreeMap<i32, i64> {
    let pool = scenario.mysql().await;
    let rows: Vec<(i32, i64)> = pool
        .get_conn()
        .await
        .unwrap()
        .exec(
            "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE topic = ?",
            (&scenario.topic,),
        )
        .await
        .unwrap();
    pool.disconnect().await.unwrap();
    rows.into_iter().collect()
}

/// Waits until MySQL's offsets have moved past every message produced.
async fn wait_for_offsets(scenario: &Scenario, produced: i64) {
    eventually(
        Duration::from_secs(60),
        "every offset committed",
        || async { Ok((committed(scenario).await? == produced).then_some(())) },
    )
    .await
    .unwrap();
}

async fn sql(mysql_url: &str, statement: &str) {
    let pool = mysql_async::Pool::new(mysql_url);
    pool.get_conn()
        .await
        .unwrap()
        .query_drop(statement)
        .await
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
    pool.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_mysql_refuses_for_good_are_quarantined_and_the_rest_counted_without_a_pause() {
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    // Rules MySQL enforces that the pipeline does not know of, as a site
    // could add them: one comment breaks a CHECK, another is too long for a
    // narrowed column. Every other comment passes both.
    sql(
        &scenario.mysql_url,
        "ALTER TABLE feedback_events ADD CONSTRAINT no_forbidden_words
           CHECK (comment IS NULL OR comment NOT LIKE '%forbidden%')",
    )
    .await;
    sql(
        &scenario.mysql_url,
        "ALTER TABLE feedback_events MODIFY comment VARCHAR(100) NULL",
    )
    .await;

    let good = random_events(31, 900, 6, 200);
    let checked = submission(&good[300].course_id, "refused-1", "this is forbidden here");
    let long = submission(&good[600].course_id, "refused-2", &"长".repeat(150));
    // Each among good events of its own course, before and after it.
    let mut messages = outgoing(&good[..300]);
    messages.push((
        checked.course_id.to_string(),
        checked.to_json(),
        vec![
            ("x-request-id", "req-refused-1"),
            ("traceparent", TRACEPARENT),
        ],
    ));
    messages.extend(outgoing(&good[300..600]));
    messages.push((long.course_id.to_string(), long.to_json(), vec![]));
    messages.extend(outgoing(&good[600..]));

    let first = scenario.spawn_process(AGGREGATOR);
    let (watcher, stalls) = watch_stalls(first.port);
    let positions = produce_at(&scenario.topic, &messages).await;
    assert_counted(&scenario.mysql_url, &good, Duration::from_secs(90)).await;
    wait_for_offsets(&scenario, messages.len() as i64).await;

    let rows = quarantine_rows(&scenario.mysql_url).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let by_id = |event: &FeedbackSubmitted| {
        rows.iter()
            .find(|r| r.feedback_id == event.feedback_id.to_string())
            .unwrap_or_else(|| panic!("{} quarantined: {rows:#?}", event.feedback_id))
    };
    let row = by_id(&checked);
    assert_eq!((row.partition, row.offset), positions[300]);
    assert_eq!(row.course_id, checked.course_id.as_str());
    assert_eq!(row.payload, checked.to_json(), "the value as read");
    assert_eq!((row.code, row.reason.as_str()), (4025, "check_constraint"));
    assert!(row.message.contains("no_forbidden_words"), "{row:?}");
    assert_eq!(row.request_id.as_deref(), Some("req-refused-1"));
    assert_eq!(row.traceparent.as_deref(), Some(TRACEPARENT));
    let row = by_id(&long);
    assert_eq!((row.partition, row.offset), positions[601]);
    assert_eq!(row.payload, long.to_json());
    assert_eq!((row.code, row.reason.as_str()), (1406, "too_long"));
    assert!(row.message.contains("comment"), "{row:?}");
    assert_eq!((&row.request_id, &row.traceparent), (&None, &None));

    // Nothing waited: no lane retried, no partition was paused, and each
    // refusal is counted under its reason.
    watcher.abort();
    let stalls = stalls.lock().unwrap().clone();
    assert!(stalls.is_empty(), "readyz said: {stalls:?}");
    let page = metrics_of(&first).await;
    assert_eq!(metric(&page, "aggregator_sink_failures_total"), 0.0);
    assert_eq!(
        series(
            &page,
            "aggregator_quarantined_total{reason=\"check_constraint\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&page, "aggregator_quarantined_total{reason=\"too_long\"}"),
        1.0
    );
    assert_eq!(metric(&page, "aggregator_quarantined_total"), 2.0);
    assert_eq!(
        metric(&page, "aggregator_events_applied_total"),
        good.len() as f64
    );

    // A restart reads on past them: neither is read, set aside or counted again.
    first.terminate();
    let before = quarantine_rows(&scenario.mysql_url).await;
    let second = scenario.spawn_process(AGGREGATOR);
    let more = random_events(32, 120, 6, 200);
    produce(&scenario.topic, &more).await;
    let all: Vec<_> = good.iter().chain(&more).cloned().collect();
    assert_counted(&scenario.mysql_url, &all, Duration::from_secs(90)).await;
    wait_for_offsets(&scenario, (messages.len() + more.len()) as i64).await;
    let after = quarantine_rows(&scenario.mysql_url).await;
    assert_eq!(
        after
            .iter()
            .map(|r| (&r.feedback_id, &r.at))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|r| (&r.feedback_id, &r.at))
            .collect::<Vec<_>>(),
    );
    let page = metrics_of(&second).await;
    assert_eq!(metric(&page, "aggregator_quarantined_total"), 0.0);
    assert_eq!(metric(&page, "aggregator_duplicates_skipped_total"), 0.0);
    assert_eq!(
        metric(&page, "aggregator_events_applied_total"),
        more.len() as f64
    );
    second.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_wait_timeout_is_retried_until_the_lock_goes_and_nothing_is_quarantined() {
    // A private server whose lock waits time out at once (the default
    // waits 50 s): a lock another session holds makes lock wait timeouts
    // (1205) for as long as it is held.
    let mysql = feedback_tests::PrivateMysql::start_with(&["--innodb-lock-wait-timeout=0"])
        .await
        .unwrap();
    let redis_url = feedback_tests::fresh_redis_database().await.unwrap();
    let scenario = Scenario::with(mysql.url("feedback"), redis_url).await;
    let events = random_events(33, 600, 6, 150);
    let (before, during) = events.split_at(300);
    let aggregator = scenario.spawn_process(AGGREGATOR);
    produce(&scenario.topic, before).await;
    assert_counted(&scenario.mysql_url, before, Duration::from_secs(90)).await;

    // Another session holds one course's stats row, which every batch of
    // that course locks first.
    let held = before[0].course_id.to_string();
    let pool = mysql_async::Pool::new(scenario.mysql_url.as_str());
    let mut holder = pool.get_conn().await.unwrap();
    holder.query_drop("START TRANSACTION").await.unwrap();
    let locked: Option<i64> = holder
        .exec_first(
            "SELECT responses FROM course_stats WHERE course_id = ? FOR UPDATE",
            (&held,),
        )
        .await
        .unwrap();
    assert!(locked.is_some(), "{held} has a stats row");
    produce(&scenario.topic, during).await;
    // For 3 s the course's batches meet timeout after timeout; none of its
    // events is set aside, and none is counted past the lock.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let rows = quarantine_rows(&scenario.mysql_url).await;
        assert!(
            rows.is_empty(),
            "a lock wait timeout set events aside: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = mysql_stats(&scenario.mysql_url).await.unwrap();
    assert_eq!(
        stats[&held].0,
        expected(before)[&held],
        "{held} waits for the lock"
    );
    let conflicts = metric(
        &metrics_of(&aggregator).await,
        "aggregator_sink_conflicts_total",
    );
    assert!(conflicts >= 3.0, "{conflicts} lock wait timeouts retried");
    holder.query_drop("ROLLBACK").await.unwrap();
    drop(holder);
    pool.disconnect().await.unwrap();

    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(90)).await;
    assert!(quarantine_rows(&scenario.mysql_url).await.is_empty());
    let page = metrics_of(&aggregator).await;
    assert_eq!(metric(&page, "aggregator_quarantined_total"), 0.0);
    assert_eq!(metric(&page, "aggregator_sink_failures_total"), 0.0);
    aggregator.terminate();
}

/// Creates `topic` with one partition whose messages may be `max_bytes` at most.
async fn create_topic_taking(topic: &str, max_bytes: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        shared::kafka::client_config(&feedback_tests::kafka_brokers())
            .create()
            .unwrap();
    let max_bytes = max_bytes.to_string();
    let topic =
        NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", &max_bytes);
    let created = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    for result in created {
        result.expect("the topic is created");
    }
}

/// Lets `topic` take messages of up to `max_bytes`.
async fn let_topic_take(topic: &str, max_bytes: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        shared::kafka::client_config(&feedback_tests::kafka_brokers())
            .create()
            .unwrap();
    let max_bytes = max_bytes.to_string();
    let config =
        AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &max_bytes);
    for result in admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.expect("the topic's configuration is changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_the_dlq_refuses_holds_its_partition_until_it_is_written() {
    let scenario = Scenario::new().await;
    let dlq = shared::kafka::dlq_topic(&scenario.topic);
    // A DLQ that refuses every dead letter (each is larger than 64 bytes),
    // as a misconfigured or full broker would.
    create_topic_taking(&dlq, 64).await;
    let good = random_events(34, 40, 1, 40); // One course: one partition.
    let key = good[0].course_id.to_string();
    let mut messages = outgoing(&good[..20]);
    messages.push((key.clone(), b"not json at all".to_vec(), vec![]));
    messages.extend(outgoing(&good[20..]));
    let aggregator = scenario.spawn_process(AGGREGATOR);
    let positions = produce_at(&scenario.topic, &messages).await;
    let (partition, poison_at) = positions[20];

    // It keeps trying, and for all that time nothing past the poison is
    // committed (before the fix, it gave up after five tries and went on).
    eventually(Duration::from_secs(60), "dead-letter retries", || async {
        let page = metrics_of(&aggregator).await;
        Ok((metric(&page, "aggregator_dlq_failed_total") >= 2.0).then_some(()))
    })
    .await
    .unwrap();
    let (status, body) = readyz_of(aggregator.port).await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["dlq"]["waiting"].as_u64() >= Some(1),
        "{body}"
    );
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let next = offsets(&scenario).await.get(&partition).copied();
        assert!(
            next.is_none_or(|next| next <= poison_at),
            "offset {next:?} moved past the poison at {poison_at} without its dead letter"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counted = mysql_stats(&scenario.mysql_url).await.unwrap_or_default();
    let responses: i64 = counted.values().map(|(n, _)| n.responses).sum();
    assert!(
        responses <= expected(&good[..20]).values().map(|n| n.responses).sum(),
        "nothing after the poison is counted: {counted:?}"
    );

    // The DLQ takes it: the dead letter is written once, and the rest follows.
    let_topic_take(&dlq, 1_048_588).await;
    let dead = feedback_tests::consume(&dlq, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(dead[0].payload, b"not json at all");
    assert_counted(&scenario.mysql_url, &good, Duration::from_secs(60)).await;
    wait_for_offsets(&scenario, messages.len() as i64).await;
    eventually(Duration::from_secs(10), "readyz 200", || async {
        Ok(readyz_of(aggregator.port)
            .await
            .filter(|(status, _)| *status == 200)
            .map(|_| ()))
    })
    .await
    .unwrap();
    assert_eq!(
        metric(&metrics_of(&aggregator).await, "aggregator_dlq_total"),
        1.0
    );
    aggregator.terminate();
}
