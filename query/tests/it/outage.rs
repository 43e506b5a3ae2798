//! Outages: Redis killed (a private redis-server, never the shared one) and
//! MySQL unreachable. Numbers are never wrong; what cannot be answered is a
//! 503 in the contract's format.

use std::time::{Duration, Instant};

use feedback_tests::error_of;
use feedback_tests::query::{config, expected, figures, fresh_stores, Seed, TestQuery};
use feedback_tests::PrivateRedis;
use reqwest::StatusCode;
use serde_json::Value;
use shared::redis_hash::Scripts;

async fn readyz(query: &TestQuery) -> (StatusCode, Value) {
    let response = query.get_as("/readyz", None).await;
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_stats_come_from_mysql_and_the_cache_is_used_again_once_it_is_back() {
    let mut private = PrivateRedis::start().await.expect("a private redis-server");
    let query = TestQuery::spawn_on_redis(&private.url(0)).await;
    let before = query.seed().stats("OUT1", [0, 1, 1, 1, 1], 4).await;
    assert_eq!(query.stats_of("OUT1").await["source"], "database");
    assert_eq!(query.stats_of("OUT1").await["source"], "cache");

    private.kill();
    // The hash kept in memory goes as soon as the tracking connection sees Redis gone.
    query
        .stats_when(
            "OUT1",
            Duration::from_secs(2),
            "Redis's loss to be seen",
            |s| s["source"] == "database",
        )
        .await
        .unwrap();
    for _ in 0..5 {
        let stats = query.stats_of("OUT1").await;
        assert_eq!(stats["source"], "database");
        assert_eq!(figures(&stats), expected(&before));
    }
    let (status, body) = readyz(&query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["redis"]["up"], false);
    assert_ne!(body["checks"]["redis"]["breaker"], "closed", "{body}");
    assert_eq!(body["checks"]["mysql"]["up"], true);

    // The breaker is open: requests go straight to MySQL, none waits on Redis.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(query.stats_of("OUT1").await["source"], "database");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?} for 20 requests",
        started.elapsed()
    );
    assert!(query.stats.counts().fallbacks >= 20);

    // MySQL moves on while Redis is down (the aggregator keeps committing): still right.
    let after = query.seed().stats("OUT1", [0, 1, 1, 1, 5], 8).await;
    let stats = query.stats_of("OUT1").await;
    assert_eq!(
        (stats["source"].as_str(), figures(&stats)),
        (Some("database"), expected(&after))
    );

    // Redis comes back empty: a probe closes the breaker, a miss refills, hits follow.
    private.restart().await.unwrap();
    let stats = query
        .stats_when(
            "OUT1",
            Duration::from_secs(20),
            "the cache to answer again",
            |s| s["source"] == "cache",
        )
        .await
        .unwrap();
    assert_eq!(figures(&stats), expected(&after));
    let (status, body) = readyz(&query).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["checks"]["redis"],
        serde_json::json!({"up": true, "breaker": "closed"})
    );
    query.shutdown().await;
}

#[tokio::test]
async fn with_mysql_unreachable_cached_stats_are_served_and_the_rest_is_503_with_retry_after() {
    let (_, redis_url) = fresh_stores().await;
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let row = shared::mysql::StatsRow {
        responses: 3,
        rating_sum: 12,
        distribution: [0, 0, 0, 3, 0],
        version: 3,
        updated_at_micros: 1_793_527_200_000_000,
    };
    Scripts::new()
        .fill(&mut redis, "CACHED", &row, 600)
        .await
        .unwrap();
    // Nothing listens on port 1: MySQL is "down" for this instance only.
    let mut settings = config("mysql://root@127.0.0.1:1/feedback", &redis_url);
    settings.mysql_timeout = Duration::from_secs(1);
    let query = TestQuery::spawn_with(settings).await;

    let stats = query.stats_of("CACHED").await;
    assert_eq!(
        (stats["source"].as_str(), figures(&stats)),
        (Some("cache"), (3, 12, [0, 0, 0, 3, 0]))
    );

    for path in [
        "/v1/courses/UNCACHED/stats",
        "/v1/courses/CACHED/feedback",
        "/v1/courses/CACHED/feedback.csv",
        "/v1/courses/CACHED/trend",
        "/v1/courses",
    ] {
        let response = query.get(path).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.headers()["retry-after"], "5", "{path}");
        assert_eq!(error_of(response).await["code"], "unavailable", "{path}");
    }
    let (status, body) = readyz(&query).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["mysql"]["up"], false);
    assert_eq!(body["checks"]["redis"]["up"], true);
    assert_eq!(
        query.get_as("/healthz", None).await.status(),
        StatusCode::OK
    );
    query.shutdown().await;
}

#[tokio::test]
async fn a_redis_that_refuses_tracking_still_serves_hits_reading_it_every_time() {
    // An ACL that forbids CLIENT (so CLIENT TRACKING) to the default user.
    let private = PrivateRedis::start_with(&[
        "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-client",
    ])
    .await
    .expect("a private redis-server");
    let query = TestQuery::spawn_on_redis(&private.url(0)).await;
    let seeded = query.seed().stats("NOTRACK", [1, 1, 1, 1, 1], 5).await;
    assert_eq!(query.stats_of("NOTRACK").await["source"], "database");
    for _ in 0..3 {
        let stats = query.stats_of("NOTRACK").await;
        assert_eq!(
            (stats["source"].as_str(), figures(&stats)),
            (Some("cache"), expected(&seeded))
        );
    }
    let counts = query.stats.counts();
    assert_eq!((counts.hits, counts.kept_hits, counts.fallbacks), (3, 0, 0));
    let (status, body) = readyz(&query).await;
    assert_eq!(
        (status, &body["checks"]["redis"]["breaker"]),
        (StatusCode::OK, &serde_json::json!("closed"))
    );
    query.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_stops_the_kept_hashes_from_answering_within_seconds() {
    let private = PrivateRedis::start().await.expect("a private redis-server");
    let query = TestQuery::spawn_on_redis(&private.url(0)).await;
    let before = query.seed().stats("HUNG", [0, 0, 0, 1, 1], 2).await;
    assert_eq!(query.stats_of("HUNG").await["source"], "database");
    // A hit keeps the hash in memory and the next is answered from there; the
    // fill's own invalidation may still drop the first copy kept (see
    // `stats.rs`), so of three hits at least one comes from memory.
    for _ in 0..3 {
        assert_eq!(query.stats_of("HUNG").await["source"], "cache");
    }
    let kept = query.stats.counts().kept_hits;
    assert!(kept >= 1, "no hit came from memory: {kept}");

    // Redis hangs, and MySQL moves on meanwhile (the aggregator cannot reach Redis).
    private.freeze(true);
    let after = query.seed().stats("HUNG", [0, 0, 0, 1, 4], 5).await;
    // Within a heartbeat (1 s) and a timeout (the test's 250 ms), give or take.
    let stats = query
        .stats_when("HUNG", Duration::from_secs(5), "MySQL to answer", |s| {
            s["source"] == "database"
        })
        .await;
    private.freeze(false);
    let stats = stats.unwrap();
    assert_eq!(figures(&stats), expected(&after));
    assert_ne!(figures(&stats), expected(&before));
    query.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_left_idle_in_the_pool_across_a_mysql_restart_fail_no_work() {
    // The pool keeps idle connections for a minute (shared::mysql::pool): after a
    // restart they are all dead, and checking one out must replace it rather
    // than hand it to a request.
    let mut mysql = feedback_tests::PrivateMysql::start().await.unwrap();
    let pool = shared::mysql::pool(&mysql.url("mysql")).unwrap();
    let held = futures::future::try_join_all((0..6).map(|_| pool.get_conn()))
        .await
        .unwrap();
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = pool.get_conn().await.unwrap();
    let connected: Option<(String, i64)> = mysql_async::prelude::Queryable::query_first(
        &mut conn,
        "SHOW GLOBAL STATUS LIKE 'Threads_connected'",
    )
    .await
    .unwrap();
    assert_eq!(
        connected.unwrap().1,
        6,
        "the six stay open, idle in the pool"
    );
    drop(conn);
    mysql.kill();
    mysql.restart().await.unwrap();
    for n in 0..8 {
        let mut conn = pool
            .get_conn()
            .await
            .unwrap_or_else(|e| panic!("checkout {n}: {e}"));
        let one: Option<i64> = mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("query {n}: {e}"));
        assert_eq!(one, Some(1));
    }
    pool.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prewarm_that_met_redis_down_runs_again_once_redis_is_back() {
    let (mysql_url, _) = fresh_stores().await;
    let seed = Seed::new(&mysql_url);
    let busy = seed.stats("WARM-LATE", [0, 0, 0, 3, 4], 7).await;
    let mut private = PrivateRedis::start().await.expect("a private redis-server");
    private.kill();

    let mut settings = config(&mysql_url, &private.url(0));
    settings.prewarm_courses = 5;
    let query = TestQuery::spawn_with(settings).await;
    // This query's first pre-warm has met Redis down.
    feedback_tests::eventually(
        Duration::from_secs(10),
        "the pre-warm to meet Redis down",
        || async { Ok((query.stats.counts().unreachable_fills > 0).then_some(())) },
    )
    .await
    .unwrap();
    private.restart().await.unwrap();

    let redis = redis::Client::open(private.url(0))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let cached = feedback_tests::eventually(Duration::from_secs(20), "the pre-warm", || {
        let mut redis = redis.clone();
        async move { Ok(shared::redis_hash::read(&mut redis, "WARM-LATE").await?) }
    })
    .await
    .unwrap();
    assert_eq!(cached, busy);
    query.shutdown().await;
}
