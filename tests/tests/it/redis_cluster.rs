//! The aggregator and query on a real Redis Cluster (three masters on
//! 127.0.0.1:7101-7103, `scripts/infra.sh cluster up`): a batch's deltas
//! reach every node, one script call per slot, and query serves the
//! cluster's numbers, each new delta at once (client-side tracking is off
//! there). The tests share the cluster and keep apart by course id.

use std::time::Duration;

use feedback_tests::aggregator::{
    assert_counted, expected, produce, random_events, wait_for_redis_to_match, Numbers, Scenario,
    TestAggregator,
};
use feedback_tests::{cluster, fresh_mysql_database, query::TestQuery};
use shared::domain::{CourseId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;
use shared::mysql::StatsRow;
use shared::redis_hash::{course_key, Delta, Scripts};

/// `count` random events over `courses`, several per student and course.
fn events_over(courses: &[String], seed: u64, count: usize) -> Vec<FeedbackSubmitted> {
    random_events(seed, count, courses.len(), 30)
        .into_iter()
        .map(|mut event| {
            let n: usize = event.course_id.as_str()[2..].parse().expect("CS<n>");
            event.course_id = CourseId::parse(courses[n].clone()).expect("a valid course id");
            event
        })
        .collect()
}

/// Fills every course's hash at version 0, as query does for a course it
/// read before any feedback: each hash is then moved on by deltas alone.
async fn fill_at_version_zero(courses: &[String]) {
    let scripts = Scripts::new();
    let mut redis = cluster::connect();
    for course in courses {
        let written = scripts
            .fill(&mut redis, course, &StatsRow::default(), 3600)
            .await
            .expect("a fill on the cluster");
        assert!(written, "{course}: a fresh course's hash is written");
    }
}

/// A scenario on the cluster whose reconciler does not run after its first
/// pass at start: a delta that failed is never repaired from MySQL, so the
/// hashes match MySQL only if the deltas themselves were applied.
async fn scenario_without_repairs() -> (Scenario, TestAggregator) {
    let url = cluster::redis_cluster()
        .await
        .expect("the local Redis Cluster");
    let mysql_url = fresh_mysql_database().await.expect("a MySQL database");
    let scenario = Scenario::with(mysql_url, url.to_owned()).await;
    let mut config = scenario.config();
    config.reconcile_interval = Duration::from_secs(3600);
    let aggregator = TestAggregator::spawn(config).await;
    (scenario, aggregator)
}

/// How many of `courses`' hashes each of the cluster's nodes holds (a node
/// answers a key of another node's slot with MOVED).
async fn hashes_per_node(courses: &[String]) -> Vec<usize> {
    let mut counts = Vec::new();
    for port in [7101, 7102, 7103] {
        let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("a node URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a node");
        let mut held = 0;
        for course in courses {
            let version: redis::RedisResult<Option<i64>> = redis::cmd("HGET")
                .arg(course_key(course))
                .arg("version")
                .query_async(&mut node)
                .await;
            if matches!(version, Ok(Some(_))) {
                held += 1;
            }
        }
        counts.push(held);
    }
    counts
}

#[tokio::test]
async fn the_aggregator_applies_batches_spanning_every_node_of_a_cluster_with_exact_counts() {
    let (scenario, aggregator) = scenario_without_repairs().await;
    let courses = cluster::courses(24);
    fill_at_version_zero(&courses).await;
    let events = events_over(&courses, 27, 600);

    produce(&scenario.topic, &events).await;
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;
    let present = wait_for_redis_to_match(&scenario, Duration::from_secs(20)).await;

    assert_eq!(
        present,
        courses.len(),
        "every course's hash follows MySQL by deltas alone"
    );
    let per_node = hashes_per_node(&courses).await;
    assert!(
        per_node.iter().all(|held| *held > 0),
        "the batches spanned all three nodes: {per_node:?}"
    );
    assert_eq!(per_node.iter().sum::<usize>(), courses.len());
    let (_, ready) = aggregator.readyz().await;
    assert_eq!(ready["checks"]["redis"]["up"], true, "{ready}");
    assert_eq!(
        ready["checks"]["redis"]["courses_to_repair"], 0,
        "no delta failed: {ready}"
    );
    aggregator.shutdown().await;
}

#[tokio::test]
async fn query_serves_the_clusters_exact_numbers_and_each_new_delta_at_once() {
    let (scenario, aggregator) = scenario_without_repairs().await;
    let courses = cluster::courses(12);
    fill_at_version_zero(&courses[..8]).await;
    let events = events_over(&courses, 6, 240);
    produce(&scenario.topic, &events).await;
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;
    wait_for_redis_to_match(&scenario, Duration::from_secs(20)).await;
    let mut config = feedback_tests::query::config(&scenario.mysql_url, &scenario.redis_url);
    config.prewarm_courses = 0;
    let query = TestQuery::spawn_with(config).await;
    let want = expected(&events);

    // Filled courses answer from the cluster; the others from MySQL, which
    // fills them, and then from the cluster.
    for (i, course) in courses.iter().enumerate() {
        let first = query.stats_of(course).await;
        let source = if i < 8 { "cache" } else { "database" };
        assert_eq!(first["source"], source, "{course}: {first}");
        assert_eq!(numbers_of(&first), want[course], "{course}");
        let again = query.stats_of(course).await;
        assert_eq!(again["source"], "cache", "{course}: {again}");
        assert_eq!(numbers_of(&again), want[course], "{course}");
    }

    // A new rating is served as soon as its delta is in the cluster.
    let course = &courses[0];
    let late = FeedbackSubmitted::new(
        CourseId::parse(course.clone()).unwrap(),
        StudentKey::derive(b"test", "a-late-student"),
        Rating::parse(1).unwrap(),
        None,
    );
    produce(&scenario.topic, std::slice::from_ref(&late)).await;
    let all: Vec<_> = events.iter().cloned().chain([late]).collect();
    let want_now = expected(&all)[course].clone();
    let served = query
        .stats_when(course, Duration::from_secs(20), "the new rating", |stats| {
            numbers_of(stats) == want_now
        })
        .await
        .expect("query serves the new numbers");
    assert_eq!(served["source"], "cache", "{served}");
    assert_eq!(query.stats.counts().kept_hits, 0, "tracking is off");

    // `query rebuild-cache` on the cluster (its DEL spans slots).
    let db = query::read_model::Db::new(&scenario.mysql_url, Duration::from_secs(5)).unwrap();
    let mut redis = cluster::connect();
    let totals = query::warm::rebuild(
        &db,
        &mut redis,
        query::stats_cache::Ttl(600),
        5,
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .expect("a rebuild on the cluster");
    assert_eq!(totals.courses, courses.len() as u64, "{totals:?}");
    assert_eq!(totals.written, courses.len() as u64, "{totals:?}");
    assert_counted(&scenario.mysql_url, &all, Duration::from_secs(10)).await;
    wait_for_redis_to_match(&scenario, Duration::from_secs(5)).await;

    query.shutdown().await;
    aggregator.shutdown().await;
}

/// Why the deltas go per slot: the cluster refuses one script call over
/// several slots, and takes the same deltas split by slot.
#[tokio::test]
async fn a_cluster_refuses_one_script_call_across_slots_and_takes_one_per_slot() {
    cluster::redis_cluster()
        .await
        .expect("the local Redis Cluster");
    let courses = cluster::courses(16);
    fill_at_version_zero(&courses).await;
    let deltas: Vec<Delta> = courses
        .iter()
        .map(|course| Delta {
            course_id: course.clone(),
            from_version: 0,
            to_version: 1,
            responses: 1,
            rating_sum: 5,
            distribution: [0, 0, 0, 0, 1],
            updated_at_micros: 1_793_527_200_000_000,
        })
        .collect();
    let scripts = Scripts::new();
    let mut redis = cluster::connect();

    let refused = scripts
        .apply(&mut redis, &deltas)
        .await
        .expect_err("one call across slots");
    assert_eq!(refused.code(), Some("CROSSSLOT"), "{refused}");

    let calls = scripts.apply_batch(&redis, &deltas).await;
    assert!(calls.len() > 1, "sixteen courses span several slots");
    for call in &calls {
        assert!(call.result.is_ok(), "{:?}", call.result);
    }
    for course in &courses {
        let hash = shared::redis_hash::read(&mut redis, course)
            .await
            .unwrap()
            .expect("the hash");
        assert_eq!((hash.version, hash.responses, hash.rating_sum), (1, 1, 5));
    }
}

fn numbers_of(stats: &serde_json::Value) -> Numbers {
    let d = &stats["distribution"];
    let count = |k: &str| d[k].as_i64().unwrap_or(-1);
    Numbers {
        responses: stats["responses"].as_i64().unwrap_or(-1),
        rating_sum: stats["rating_sum"].as_i64().unwrap_or(-1),
        distribution: [count("1"), count("2"), count("3"), count("4"), count("5")],
    }
}
