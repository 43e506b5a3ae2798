//! The counting rule holds exactly against the real Kafka, MariaDB and Redis,
//! however often events arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use aggregator::consumer::start_offsets::claim_offsets;
use aggregator::sink::{self, Received};
use feedback_tests::aggregator::*;
use mysql_async::prelude::Queryable;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_random_submissions_with_resubmissions_and_duplicates_count_exactly() {
    let scenario = Scenario::new().await;
    let events = random_events(1, 3000, 12, 400);
    // Every tenth event produced a second time (a replayed spool, a retried produce).
    let mut stream = events.clone();
    stream.extend(events.iter().step_by(10).cloned());
    let aggregator = scenario.spawn().await;
    // Metrics are process-wide and this binary's tests run at once: each
    // figure below is what was added since here, not the absolute count.
    let before = aggregator.metrics().await;
    // Counters show from the start, at 0 until their first increment.
    for name in [
        "aggregator_dlq_failed_total",
        "aggregator_offsets_rewound_total",
        "aggregator_redis_repairs_total{reason=\"outage\"}",
    ] {
        assert!(before.contains(name), "{name} missing from /metrics");
    }
    feedback_tests::assert_every_metric_has_help(&before);
    produce(&scenario.topic, &stream).await;

    let want = expected(&events);
    assert!(
        want.values().map(|n| n.responses).sum::<i64>() < 3000,
        "the workload has resubmissions"
    );
    assert_counted(&scenario.mysql_url, &stream, Duration::from_secs(60)).await;
    let present = wait_for_redis_to_match(&scenario, Duration::from_secs(10)).await;
    assert_eq!(
        present, 0,
        "nothing read the courses, so Redis holds no hash yet"
    );

    // Once filled (as query does on a miss), deltas keep Redis exactly on MySQL.
    assert_eq!(fill_all(&scenario).await, want.len());
    let more = random_events(2, 500, 12, 400);
    assert_eq!(
        produce_more_and_settle(&scenario, &events, &more, Duration::from_secs(10)).await,
        want.len()
    );

    let page = aggregator.metrics().await;
    let added = |name: &str| metric(&page, name) - metric(&before, name);
    assert!(
        added("aggregator_duplicates_skipped_total") >= 300.0,
        "the 300 duplicates counted"
    );

    assert!(
        added("aggregator_batch_size_count") > 0.0,
        "batch sizes recorded"
    );
    // Where a batch's time goes, step by step (the benchmark prints the means).
    // A redelivered batch adds "offsets_lock"; nothing here is redelivered.
    for step in [
        "begin",
        "courses_lock",
        "history",
        "counting",
        "current_write",
        "stats",
        "offsets_record",
        "commit",
        "redis",
    ] {
        let series = format!("aggregator_batch_step_seconds_count{{step=\"{step}\"}}");
        let count = |page: &str| {
            page.lines()
                .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let timed = count(&page) - count(&before);
        assert!(timed >= 1.0, "step {step} timed: {timed}");
    }
    aggregator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivery_from_offset_zero_changes_nothing() {
    let scenario = Scenario::new().await;
    let events = random_events(3, 1000, 5, 150);
    let first = scenario.spawn().await;
    produce(&scenario.topic, &events).await;
    let want = expected(&events);
    wait_for_mysql(&scenario.mysql_url, &want, Duration::from_secs(60)).await;
    first.shutdown().await;
    assert_eq!(fill_all(&scenario).await, want.len());
    let before = mysql_stats(&scenario.mysql_url).await.unwrap();

    // Forget every offset: a new aggregator reads the whole topic again.
    let pool = scenario.mysql().await;
    pool.get_conn()
        .await
        .unwrap()
        .query_drop("DELETE FROM consumer_offsets")
        .await
        .unwrap();
    let again = Scenario {
        group: feedback_tests::unique_name("fbtest-again"),
        ..scenario.clone()
    };
    // Before the second aggregator starts, so none of its duplicates is missed.
    let duplicates_before = metric(
        &shared::metrics::handle().render(),
        "aggregator_duplicates_skipped_total",
    );
    let second = again.spawn().await;
    feedback_tests::eventually(
        Duration::from_secs(60),
        "the topic to be read again",
        || async {
            let page = second.metrics().await;
            // Metrics are process-wide: this test's own figure is what was added since the second pass began.
            let offsets: Option<i64> = pool
                .get_conn()
                .await?
                .query_first("SELECT COALESCE(SUM(next_offset), 0) FROM consumer_offsets")
                .await?;
            Ok((offsets == Some(1000)
                && metric(&page, "aggregator_duplicates_skipped_total") - duplicates_before
                    >= 1000.0)
                .then_some(()))
        },
    )
    .await
    .unwrap();
    second.shutdown().await;

    let after = mysql_stats(&scenario.mysql_url).await.unwrap();
    assert_eq!(
        after, before,
        "numbers and versions unchanged by the redelivery"
    );
    assert_mysql_consistent(&scenario.mysql_url, &events).await;
    assert_eq!(
        wait_for_redis_to_match(&scenario, Duration::from_secs(5)).await,
        want.len()
    );
}

/// A batch as Kafka would hand it over, from partition 0 at `offset`.
fn batch(
    events: &[shared::event::FeedbackSubmitted],
    offset: i64,
) -> (Vec<Received>, BTreeMap<i32, i64>) {
    batch_on(0, events, offset)
}

/// The same from `partition`.
fn batch_on(
    partition: i32,
    events: &[shared::event::FeedbackSubmitted],
    offset: i64,
) -> (Vec<Received>, BTreeMap<i32, i64>) {
    let received: Vec<Received> = events
        .iter()
        .enumerate()
        .map(|(i, event)| Received {
            partition,
            offset: offset + i as i64,
            event: event.clone(),
            trace: Default::default(),
        })
        .collect();
    let last = offset + events.len() as i64 - 1;
    (received, BTreeMap::from([(partition, last)]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_sessions_are_repeatable_read_on_a_server_defaulting_to_read_committed() {
    let mysql =
        feedback_tests::PrivateMysql::start_with(&["--transaction-isolation=READ-COMMITTED"])
            .await
            .unwrap();
    let url = mysql.url("isolation");
    shared::mysql::migrate(&url).await.unwrap();
    let level = |pool: mysql_async::Pool| async move {
        let mut conn = pool.get_conn().await.unwrap();
        // MariaDB's name for it; MySQL 8 calls it transaction_isolation.
        let level: Option<String> = conn.query_first("SELECT @@tx_isolation").await.unwrap();
        drop(conn);
        pool.disconnect().await.unwrap();
        level.unwrap()
    };
    assert_eq!(
        level(mysql_async::Pool::new(url.as_str())).await,
        "READ-COMMITTED",
        "the server's default"
    );
    assert_eq!(
        level(shared::mysql::pool(&url).unwrap()).await,
        "REPEATABLE-READ"
    );
}

/// A current row as `current_rows` reads it: (student_key, feedback_id, rating).
fn row_of(event: &shared::event::FeedbackSubmitted) -> (String, String, u8) {
    (
        event.student_key.as_str().to_owned(),
        event.feedback_id.to_string(),
        event.rating.get(),
    )
}

/// The current row of every (course, student): (student_key, feedback_id, rating).
async fn current_rows(pool: &mysql_async::Pool) -> Vec<(String, String, u8)> {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query(
        "SELECT student_key, feedback_id, rating FROM current_responses ORDER BY student_key",
    )
    .await
    .unwrap()
}

/// What a lane's memo holds when the second batch of
/// `resubmissions_follow_the_rule` commits.
#[derive(Clone, Copy, PartialEq)]
enum Memory {
    /// Nothing (a lane that just started): new pairs are inserted where no
    /// row is, and the rows found instead are read and counted against.
    Empty,
    /// The first batch's rows, as the lane that committed it learned them.
    Learned,
    /// The first batch's rows, but another writer changed one of them since
    /// (and the course's version with it): the memo must not be trusted.
    Stale,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_first_submissions_and_one_with_resubmissions_both_follow_the_rule() {
    resubmissions_follow_the_rule(Memory::Learned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmissions_follow_the_rule_for_a_lane_that_knows_no_rows() {
    resubmissions_follow_the_rule(Memory::Empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmissions_follow_the_rule_when_another_writer_changed_the_rows_a_lane_knows() {
    resubmissions_follow_the_rule(Memory::Stale).await;
}

async fn resubmissions_follow_the_rule(memory: Memory) {
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    let pool = scenario.mysql().await;
    let mut memo = sink::Memo::default();
    // Three students, each one's first rating of course CS000.
    let first = random_events(11, 3, 1, 1_000_000);
    let (received, consumed) = batch(&first, 0);
    let committed = sink::commit_batch(&pool, &scenario.topic, &received, &consumed, &memo)
        .await
        .unwrap();
    assert_eq!(committed.applied, 3);
    if memory != Memory::Empty {
        memo.learn(&committed.seen, &committed.rows);
        assert_eq!(memo.pairs(), 3);
    }
    let mut want: Vec<(String, String, u8)> = first.iter().map(row_of).collect();
    want.sort();
    assert_eq!(current_rows(&pool).await, want);
    let resubmit = |event: &shared::event::FeedbackSubmitted, seconds: i64, rating: u8| {
        let mut again = event.clone();
        again.feedback_id = shared::domain::FeedbackId::generate();
        again.submitted_at += time::Duration::seconds(seconds);
        again.rating = shared::domain::Rating::parse(i64::from(rating)).unwrap();
        again
    };
    let other = |rating: u8| if rating == 5 { 1 } else { 5 };

    // Another writer (another member, from another partition) replaces the
    // second student's row with a submission two seconds later.
    let mut all: Vec<_> = first.clone();
    let mut version = 1;
    let newest = resubmit(&first[1], 2, other(first[1].rating.get()));
    if memory == Memory::Stale {
        let (received, consumed) = batch_on(1, std::slice::from_ref(&newest), 0);
        commit_once(&pool, &scenario.topic, &received, &consumed).await;
        all.push(newest.clone());
        version += 1;
    }

    // The second batch: the first student again, later (replaces); the second
    // again, a second later (replaces their first, but not the other
    // writer's newest); the third again, earlier (never counts); a fourth
    // student for the first time.
    let later = resubmit(&first[0], 1, other(first[0].rating.get()));
    let second_again = resubmit(&first[1], 1, first[1].rating.get());
    let earlier = resubmit(&first[2], -1, other(first[2].rating.get()));
    let fourth = random_events(12, 1, 1, 1_000_000).remove(0);
    let second = vec![later.clone(), second_again.clone(), earlier, fourth.clone()];
    let (received, consumed) = batch(&second, 3);
    let committed = sink::commit_batch(&pool, &scenario.topic, &received, &consumed, &memo)
        .await
        .unwrap();
    assert_eq!(committed.applied, 4, "all four are new to the history");
    // The rows learned: the three students' rows found in MySQL when the memo
    // did not hold them (or was not trusted), then the winners written (the
    // second student's is not one when the other writer's is newer).
    let (found, written) = match memory {
        Memory::Learned => (0, 3),
        Memory::Empty => (3, 3),
        Memory::Stale => (3, 2),
    };
    assert_eq!(committed.rows.len(), found + written);
    let position = |event: &shared::event::FeedbackSubmitted| {
        want.iter()
            .position(|r| r.0 == event.student_key.as_str())
            .unwrap()
    };
    let (at_first, at_second) = (position(&later), position(&second_again));
    want[at_first] = row_of(&later);
    want[at_second] = row_of(if memory == Memory::Stale {
        &newest
    } else {
        &second_again
    });
    want.push(row_of(&fourth));
    want.sort();
    assert_eq!(current_rows(&pool).await, want);
    let delta = &committed.deltas[..];
    assert_eq!(delta.len(), 1);
    assert_eq!(
        (delta[0].from_version, delta[0].to_version),
        (version, version + 1)
    );
    assert_eq!(
        delta[0].responses, 1,
        "only the fourth student is a new response"
    );
    all.extend(second.iter().cloned());
    wait_for_mysql(&scenario.mysql_url, &expected(&all), Duration::from_secs(1)).await;
    assert_mysql_consistent(&scenario.mysql_url, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_twice_is_applied_once() {
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    // The service's own pool, from a URL asking for found rows: duplicates are
    // told by affected rows, which the pool keeps counting changed rows only.
    let pool =
        shared::mysql::pool(&format!("{}?client_found_rows=true", scenario.mysql_url)).unwrap();
    let events = random_events(4, 150, 3, 40);
    let (received, consumed) = batch(&events, 0);

    let first = commit_once(&pool, &scenario.topic, &received, &consumed).await;
    assert_eq!(first.applied, 150);
    assert_eq!(
        first
            .deltas
            .iter()
            .map(|d| (d.from_version, d.to_version))
            .collect::<Vec<_>>(),
        vec![(0, 1); 3]
    );
    let again = commit_once(&pool, &scenario.topic, &received, &consumed).await;
    assert_eq!(
        (again.applied, again.duplicates),
        (0, 150),
        "redelivered offsets are skipped"
    );
    assert!(again.deltas.is_empty(), "no delta for Redis");

    // The same events at new offsets (a replayed spool): duplicates by feedback_id.
    let (replayed, consumed) = batch(&events, 150);
    let third = commit_once(&pool, &scenario.topic, &replayed, &consumed).await;
    assert_eq!(
        (third.applied, third.duplicates),
        (0, 150),
        "duplicate feedback_ids are skipped"
    );

    let want = expected(&events);
    wait_for_mysql(&scenario.mysql_url, &want, Duration::from_secs(1)).await;
    let versions: Vec<i64> = mysql_stats(&scenario.mysql_url)
        .await
        .unwrap()
        .values()
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        versions,
        vec![1, 1, 1],
        "one version step per course, none for the copies"
    );
}

/// A lane's batch is written on the assumption that none of it was applied,
/// checked when the offsets move; a batch reaching below the recorded offset
/// is rolled back and written again past it. Here the messages at the
/// overlapping offsets are other events than the first batch's (Kafka would
/// redeliver the same ones), so only the offset check can keep them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_overlapping_the_recorded_offsets_counts_only_what_lies_past_them() {
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    let pool = shared::mysql::pool(&scenario.mysql_url).unwrap();
    // As at a partition's assignment: its offset row exists.
    claim_offsets(&pool, &scenario.topic, &[0]).await.unwrap();
    let events = random_events(11, 250, 3, 60);

    let (first, consumed) = batch(&events[..100], 0);
    let first = commit_once(&pool, &scenario.topic, &first, &consumed).await;
    assert_eq!((first.applied, first.duplicates), (100, 0));

    // Offsets 50 to 149: 50 to 99 were recorded by the first batch.
    let (overlapping, consumed) = batch(&events[100..200], 50);
    let second = commit_once(&pool, &scenario.topic, &overlapping, &consumed).await;
    assert_eq!(
        (second.applied, second.duplicates),
        (50, 50),
        "offsets 50 to 99 are skipped, 100 to 149 counted"
    );

    let (next, consumed) = batch(&events[200..], 150);
    let third = commit_once(&pool, &scenario.topic, &next, &consumed).await;
    assert_eq!((third.applied, third.duplicates), (50, 0));

    let counted: Vec<_> = events[..100]
        .iter()
        .chain(&events[150..])
        .cloned()
        .collect();
    wait_for_mysql(
        &scenario.mysql_url,
        &expected(&counted),
        Duration::from_secs(1),
    )
    .await;
    assert_mysql_consistent(&scenario.mysql_url, &counted).await;
    assert_eq!(
        mysql_offsets(&pool, &scenario).await,
        BTreeMap::from([(0, 200)])
    );
    pool.disconnect().await.unwrap();
}

/// Commits a batch as a lane that just started would (its memo empty).
async fn commit_once(
    pool: &mysql_async::Pool,
    topic: &str,
    received: &[Received],
    consumed: &BTreeMap<i32, i64>,
) -> sink::Committed {
    sink::commit_batch(pool, topic, received, consumed, &sink::Memo::default())
        .await
        .unwrap()
}

/// Commits a batch as a lane does: a deadlock or lock wait timeout is retried.
async fn commit_retrying(
    pool: &mysql_async::Pool,
    topic: &str,
    received: &[Received],
    consumed: &BTreeMap<i32, i64>,
) -> usize {
    let mut conflicts = 0;
    loop {
        match sink::commit_batch(pool, topic, received, consumed, &sink::Memo::default()).await {
            Ok(_) => return conflicts,
            Err(sink::SinkError::Conflict(_)) => conflicts += 1,
            Err(err) => panic!("commit failed: {err}"),
        }
    }
}

/// A course's events reach two partitions only after the topic's partition
/// count changed, but then two transactions can hold the same course at once.
/// The sink reads current rows without locking them, relying on the course's
/// `course_stats` row lock (or, for a new course, on the deadlock when both
/// insert it): these rounds commit two such batches concurrently, the first
/// round with new courses, and the numbers must still follow the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transactions_with_the_same_courses_at_once_still_count_exactly() {
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    let pool = shared::mysql::pool(&scenario.mysql_url).unwrap();
    // Few students on few courses: most events of a round collide with the other batch's.
    let events = random_events(9, 2400, 3, 25);
    let mut conflicts = 0;
    for (round, pair) in events.chunks(200).enumerate() {
        let (left, right) = pair.split_at(pair.len() / 2);
        let offset = (round * 100) as i64;
        let ((a, a_consumed), (b, b_consumed)) =
            (batch_on(0, left, offset), batch_on(1, right, offset));
        let (x, y) = tokio::join!(
            commit_retrying(&pool, &scenario.topic, &a, &a_consumed),
            commit_retrying(&pool, &scenario.topic, &b, &b_consumed),
        );
        conflicts += x + y;
    }
    wait_for_mysql(
        &scenario.mysql_url,
        &expected(&events),
        Duration::from_secs(1),
    )
    .await;
    assert_mysql_consistent(&scenario.mysql_url, &events).await;
    // Not asserted (timing decides), but shown: how often InnoDB made one wait it out.
    eprintln!("{conflicts} transactions retried after a deadlock");
    pool.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_mysql_commit_and_the_redis_update_is_repaired() {
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    let pool = scenario.mysql().await;
    let events = random_events(5, 200, 4, 60);
    let (received, consumed) = batch(&events[..100], 0);
    commit_once(&pool, &scenario.topic, &received, &consumed).await;
    assert_eq!(
        fill_all(&scenario).await,
        4,
        "Redis holds version 1 of each course"
    );

    // The next batch reaches MySQL, and the process dies before Redis hears of it.
    let (received, consumed) = batch(&events[100..], 100);
    let lost = commit_once(&pool, &scenario.topic, &received, &consumed).await;
    assert!(lost.deltas.iter().all(|d| d.to_version == 2));
    let mut redis = scenario.redis().await;
    let stale = shared::redis_hash::read(&mut redis, "CS000")
        .await
        .unwrap()
        .expect("a hash");
    assert_eq!(stale.version, 1, "Redis lags behind MySQL");

    // A restarted aggregator's reconciler repairs it, with nothing new to consume.
    // (The topic is empty: offsets were recorded on partition 0 only by the direct commits.)
    let aggregator = scenario.spawn().await;
    assert_eq!(
        wait_for_redis_to_match(&scenario, Duration::from_secs(10)).await,
        4
    );
    let repaired = shared::redis_hash::read(&mut redis, "CS000")
        .await
        .unwrap()
        .expect("a hash");
    assert_eq!(repaired.version, 2);
    aggregator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dlq_with_a_reason_and_never_block_their_partition() {
    let scenario = Scenario::new().await;
    let aggregator = scenario.spawn().await;
    let good = random_events(6, 20, 1, 20); // One course: one partition, poison in the middle.
    let key = good[0].course_id.to_string();
    let mut bad_schema = serde_json::to_value(&good[0]).unwrap();
    bad_schema["rating"] = serde_json::json!(9);
    let mut bad_version = serde_json::to_value(&good[1]).unwrap();
    bad_version["version"] = serde_json::json!(2);
    // In UTC past the year 9999: converting it must not panic a lane, or
    // the restarted aggregator would meet it again (a crash loop).
    let mut bad_time = serde_json::to_value(&good[2]).unwrap();
    bad_time["submitted_at"] = serde_json::json!("9999-12-31T23:30:00-01:00");
    let mut messages: Vec<(String, Vec<u8>)> = good[..10]
        .iter()
        .map(|e| (key.clone(), e.to_json()))
        .collect();
    messages.push((key.clone(), b"not json at all".to_vec()));
    messages.push((key.clone(), serde_json::to_vec(&bad_schema).unwrap()));
    messages.push((key.clone(), serde_json::to_vec(&bad_version).unwrap()));
    messages.push((key.clone(), serde_json::to_vec(&bad_time).unwrap()));
    // Near the broker's limit: with the dead letter's headers it would not
    // fit; it goes cut, saying so.
    let huge = vec![b'x'; 1_040_000];
    messages.push((key.clone(), huge.clone()));
    // Valid JSON with a field the schema does not know, named with 600,000
    // characters: the decoder's reason quotes the name.
    let long_name = format!("{{\"{}\":1}}", "y".repeat(600_000)).into_bytes();
    messages.push((key.clone(), long_name));
    messages.extend(good[10..].iter().map(|e| (key.clone(), e.to_json())));
    produce_raw(&scenario.topic, &messages).await;

    wait_for_mysql(
        &scenario.mysql_url,
        &expected(&good),
        Duration::from_secs(60),
    )
    .await;
    let dead = feedback_tests::consume(
        &shared::kafka::dlq_topic(&scenario.topic),
        6,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let payloads: Vec<Vec<u8>> = dead.iter().map(|m| m.payload.clone()).collect();
    let mut sent: Vec<Vec<u8>> = messages[10..16].iter().map(|(_, p)| p.clone()).collect();
    sent[4].truncate(aggregator::dlq::MAX_DLQ_PAYLOAD);
    sent[5].truncate(aggregator::dlq::MAX_DLQ_PAYLOAD);
    assert_eq!(payloads.len(), 6);
    assert!(
        payloads == sent,
        "the dead letters are the poison, in order"
    );
    assert!(
        dead.iter().all(|m| m.key == key),
        "the key travels with the poison"
    );
    let reasons = dlq_reasons(&shared::kafka::dlq_topic(&scenario.topic), 6).await;
    assert!(reasons[0].contains("not a JSON event"), "{reasons:?}");
    assert!(reasons[1].contains("rating"), "{reasons:?}");
    assert!(
        reasons[2].contains("unknown event version 2"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("submitted_at"), "{reasons:?}");
    assert!(reasons[4].contains("not a JSON event"), "{reasons:?}");
    assert!(
        reasons[5].contains("unknown field"),
        "{}",
        &reasons[5][..80]
    );
    assert!(reasons[5].len() <= aggregator::dlq::MAX_REASON);
    let truncated = dlq_header(
        &shared::kafka::dlq_topic(&scenario.topic),
        4,
        "x-dlq-truncated",
    )
    .await;
    assert_eq!(
        truncated.as_deref(),
        Some("payload 1040000 bytes, key 5 bytes")
    );
    let metrics = aggregator.metrics().await;
    assert!(metric(&metrics, "aggregator_dlq_total") >= 6.0);
    assert_eq!(metric(&metrics, "aggregator_dlq_failed_total"), 0.0);
    aggregator.shutdown().await;
}

/// Header `name` of the dead letter at `index`, if it has one.
async fn dlq_header(topic: &str, index: usize, name: &str) -> Option<String> {
    dlq_headers(topic, index + 1, name).await.pop().flatten()
}

/// The `x-dlq-reason` header of the first `count` dead letters, in order.
async fn dlq_reasons(topic: &str, count: usize) -> Vec<String> {
    dlq_headers(topic, count, "x-dlq-reason")
        .await
        .into_iter()
        .map(|reason| reason.expect("a reason header"))
        .collect()
}

/// Header `name` of the first `count` dead letters, in order.
async fn dlq_headers(topic: &str, count: usize, name: &str) -> Vec<Option<String>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = shared::kafka::client_config(&feedback_tests::kafka_brokers())
        .set("group.id", feedback_tests::unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let value = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        reasons.push(value);
    }
    reasons
}

/// The next offsets MySQL records for `scenario`'s topic, by partition.
async fn mysql_offsets(pool: &mysql_async::Pool, scenario: &Scenario) -> BTreeMap<i32, i64> {
    claim_offsets(pool, &scenario.topic, &[])
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The group's offsets in Kafka (advisory), per partition that has one.
fn kafka_committed(scenario: &Scenario) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    // Same group id, never subscribed: it reads the group's offsets without joining it.
    let consumer: BaseConsumer = shared::kafka::client_config(&feedback_tests::kafka_brokers())
        .set("group.id", &scenario.group)
        .create()
        .expect("a consumer");
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..6 {
        partitions.add_partition(&scenario.topic, partition);
    }
    consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .expect("the group's offsets")
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(next) => Some((e.partition(), next)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_groups_offsets_in_kafka_catch_up_with_mysqls_while_running_and_at_shutdown() {
    let scenario = Scenario::new().await;
    let events = random_events(7, 1200, 30, 300);
    let aggregator = scenario.spawn().await;
    produce(&scenario.topic, &events).await;
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;
    let pool = scenario.mysql().await;
    let in_mysql = mysql_offsets(&pool, &scenario).await;
    assert_eq!(in_mysql.values().sum::<i64>(), 1200, "{in_mysql:?}");

    // While it runs: the advisory commit (at most one a second) catches up.
    let scenario_ref = &scenario;
    let want = in_mysql.clone();
    feedback_tests::eventually(Duration::from_secs(10), "Kafka's offsets", || {
        let want = want.clone();
        async move { Ok((kafka_committed(scenario_ref) == want).then_some(())) }
    })
    .await
    .unwrap();

    // A last batch just before shutdown still reaches Kafka: the shutdown sends what is pending.
    let more = random_events(8, 60, 30, 300);
    produce(&scenario.topic, &more).await;
    let mut all = events.clone();
    all.extend(more);
    assert_counted(&scenario.mysql_url, &all, Duration::from_secs(60)).await;
    aggregator.shutdown().await;
    let in_mysql = mysql_offsets(&pool, &scenario).await;
    assert_eq!(in_mysql.values().sum::<i64>(), 1260);
    assert_eq!(kafka_committed(&scenario), in_mysql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_recorded_past_the_end_of_a_lost_log_are_moved_back_and_nothing_new_is_skipped() {
    // As after Kafka lost its log (a broker's data wiped, the topic made
    // again) while MySQL kept its offsets: every partition's offset is far
    // past the end of the log.
    let scenario = Scenario::new().await;
    shared::mysql::migrate(&scenario.mysql_url).await.unwrap();
    let pool = mysql_async::Pool::new(scenario.mysql_url.as_str());
    let partitions: Vec<i32> = (0..shared::kafka::PARTITIONS).collect();
    claim_offsets(&pool, &scenario.topic, &partitions)
        .await
        .unwrap();
    {
        use mysql_async::prelude::Queryable;
        let mut conn = pool.get_conn().await.unwrap();
        conn.exec_drop(
            "UPDATE consumer_offsets SET next_offset = 1000000 WHERE topic = ?",
            (&scenario.topic,),
        )
        .await
        .unwrap();
    }

    let events = random_events(22, 600, 6, 120);
    produce(&scenario.topic, &events).await;
    let aggregator = scenario.spawn().await;
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;
    let offsets = mysql_offsets(&pool, &scenario).await;
    assert_eq!(
        offsets.values().sum::<i64>(),
        600,
        "each partition's offset is its log's end: {offsets:?}"
    );
    assert!(
        metric(
            &aggregator.metrics().await,
            "aggregator_offsets_rewound_total"
        ) >= 1.0,
        "the rewinds are counted"
    );
    aggregator.shutdown().await;
    pool.disconnect().await.unwrap();
}
