//! Stats against the real Redis and MariaDB: hit, miss and fill, the
//! version guard against the aggregator's deltas, single flight, pre-warm
//! and the cache rebuild.

use std::time::Duration;

use feedback_tests::query::{config, expected, figures, fresh_stores, Seed, TestQuery};
use feedback_tests::{eventually, PrivateRedis};
use mysql_async::prelude::Queryable;
use redis::AsyncCommands;
use shared::mysql::StatsRow;
use shared::redis_hash::{Applied, Delta, Scripts};

#[tokio::test]
async fn a_miss_answers_from_mysql_and_fills_redis_then_the_next_request_hits() {
    let query = TestQuery::spawn().await;
    let seeded = query.seed().stats("CS101", [1, 0, 2, 5, 4], 12).await;

    let first = query.stats_of("CS101").await;
    assert_eq!(first["source"], "database");
    assert_eq!(figures(&first), expected(&seeded));
    assert_eq!(figures(&first), (12, 47, [1, 0, 2, 5, 4]));
    assert_eq!(first["average"].as_f64().unwrap(), 47.0 / 12.0);
    assert_eq!(first["updated_at"], "2026-11-01T10:00:00.123456Z");
    assert_eq!(first["course_id"], "CS101");

    let mut redis = query.redis().await;
    let cached = shared::redis_hash::read(&mut redis, "CS101").await.unwrap();
    assert_eq!(
        cached,
        Some(seeded.clone()),
        "the fill wrote MySQL's row, version included"
    );
    let ttl: i64 = redis
        .ttl(shared::redis_hash::course_key("CS101"))
        .await
        .unwrap();
    assert!(
        (890..=1100).contains(&ttl),
        "TTL {ttl} is the configured 1000 s ± 10 %"
    );

    let second = query.stats_of("CS101").await;
    assert_eq!(second["source"], "cache");
    assert_eq!(figures(&second), expected(&seeded));
    assert_eq!(second["updated_at"], first["updated_at"]);

    let counts = query.stats.counts();
    assert_eq!(
        (
            counts.hits,
            counts.misses,
            counts.mysql_loads,
            counts.fallbacks
        ),
        (1, 1, 1, 0)
    );
    query.shutdown().await;
}

#[tokio::test]
async fn a_course_never_seen_answers_zeros_with_a_null_average() {
    let query = TestQuery::spawn().await;
    let stats = query.stats_of("NEVER-SEEN").await;
    assert_eq!(figures(&stats), (0, 0, [0; 5]));
    assert!(stats["average"].is_null());
    assert!(stats["updated_at"].is_null());
    assert_eq!(stats["source"], "database");
    // Cached as version 0, so the aggregator's first delta (0 → 1) applies on top of it.
    assert_eq!(query.stats_of("NEVER-SEEN").await["source"], "cache");
    query.shutdown().await;
}

fn delta(course: &str, from: i64, rating: usize) -> Delta {
    let mut distribution = [0; 5];
    distribution[rating - 1] = 1;
    Delta {
        course_id: course.into(),
        from_version: from,
        to_version: from + 1,
        responses: 1,
        rating_sum: rating as i64,
        distribution,
        updated_at_micros: 1_793_530_800_000_000,
    }
}

#[tokio::test]
async fn a_late_fill_loses_to_a_delta_that_got_there_first() {
    let query = TestQuery::spawn().await;
    let v5 = query.seed().stats("RACE", [0, 0, 1, 1, 1], 5).await;
    assert_eq!(query.stats_of("RACE").await["source"], "database");

    // The aggregator commits version 6 to MySQL, then applies its delta 5 → 6 to the hash.
    query.seed().stats("RACE", [0, 0, 1, 2, 1], 6).await;
    let mut redis = query.redis().await;
    let applied = Scripts::new()
        .apply(&mut redis, &[delta("RACE", 5, 4)])
        .await
        .unwrap();
    assert_eq!(applied, vec![Applied::Applied]);

    // A reader that took version 5 from MySQL before that commit fills late: refused.
    assert!(
        !query.stats.fill("RACE", &v5).await,
        "a fill at 5 over a hash at 6 is refused"
    );
    let hash = shared::redis_hash::read(&mut redis, "RACE")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((hash.version, hash.responses, hash.rating_sum), (6, 4, 16));

    let stats = query.stats_of("RACE").await;
    assert_eq!(stats["source"], "cache");
    assert_eq!(figures(&stats), (4, 16, [0, 0, 1, 2, 1]));
    query.shutdown().await;
}

#[tokio::test]
async fn a_course_named_like_another_courses_floor_keeps_its_own_hash() {
    // Course ids may contain `:`. With the floor at `feedback:course:X:floor`,
    // course `X:floor`'s hash was course `X`'s floor: a delta's gap on `X`
    // overwrote it with a number, and every read of it failed with WRONGTYPE.
    let query = TestQuery::spawn().await;
    query.seed().stats("X", [0, 0, 0, 1, 0], 5).await;
    let other = query.seed().stats("X:floor", [2, 0, 0, 0, 1], 7).await;
    assert_eq!(query.stats_of("X").await["source"], "database");
    assert_eq!(query.stats_of("X:floor").await["source"], "database");

    // A delta 9 → 10 finds `X` at 5: the hash is deleted and `X`'s floor raised.
    let mut redis = query.redis().await;
    let applied = Scripts::new()
        .apply(&mut redis, &[delta("X", 9, 4)])
        .await
        .unwrap();
    assert_eq!(applied, vec![Applied::Invalidated]);

    assert_eq!(
        shared::redis_hash::read(&mut redis, "X:floor")
            .await
            .unwrap(),
        Some(other.clone()),
        "course X:floor's hash is untouched by X's floor"
    );
    let stats = query.stats_of("X:floor").await;
    assert_eq!(stats["source"], "cache");
    assert_eq!(figures(&stats), expected(&other));
    assert_eq!(
        query.stats.counts().fallbacks,
        0,
        "no Redis error on the way"
    );
    query.shutdown().await;
}

#[tokio::test]
async fn a_hash_is_kept_in_memory_until_redis_says_it_changed_expired_or_was_flushed() {
    // A Redis of its own: tracking is server-wide, so another test's FLUSHDB
    // (each fresh test database starts with one) on the shared server would
    // drop this query's kept copies too, and the exact counts below would miss.
    let private = PrivateRedis::start().await.expect("a private redis-server");
    let query = TestQuery::spawn_on_redis(&private.url(0)).await;
    let v5 = query.seed().stats("KEPT", [0, 0, 1, 2, 2], 5).await;
    assert_eq!(query.stats_of("KEPT").await["source"], "database");
    // A hit reads Redis on the tracking connection and keeps the hash. The
    // miss read the absent key on that connection too, so the fill's own
    // invalidation may still be on its way and drop the first copy (one more
    // read of Redis): by the third hit a copy is kept.
    for _ in 0..3 {
        let stats = query.stats_of("KEPT").await;
        assert_eq!(
            (stats["source"].as_str(), figures(&stats)),
            (Some("cache"), expected(&v5))
        );
    }
    let warm = query.stats.counts();
    assert_eq!(warm.hits, 3);
    assert!(warm.kept_hits >= 1, "no hit came from memory: {warm:?}");
    // From then on every hit is answered from memory.
    for _ in 0..3 {
        assert_eq!(figures(&query.stats_of("KEPT").await), expected(&v5));
    }
    let counts = query.stats.counts();
    assert_eq!(
        (counts.hits, counts.kept_hits),
        (warm.hits + 3, warm.kept_hits + 3)
    );

    // The aggregator's delta 5 → 6 changes the hash: Redis invalidates the kept copy.
    let v6 = query.seed().stats("KEPT", [0, 0, 1, 2, 3], 6).await;
    let mut redis = query.redis().await;
    let applied = Scripts::new()
        .apply(&mut redis, &[delta("KEPT", 5, 5)])
        .await
        .unwrap();
    assert_eq!(applied, vec![Applied::Applied]);
    let stats = query
        .stats_when("KEPT", Duration::from_secs(2), "the delta's numbers", |s| {
            figures(s) == expected(&v6)
        })
        .await
        .unwrap();
    assert_eq!(stats["source"], "cache");
    let kept_before = query.stats.counts().kept_hits;
    assert_eq!(figures(&query.stats_of("KEPT").await), expected(&v6));
    assert_eq!(
        query.stats.counts().kept_hits,
        kept_before + 1,
        "kept again"
    );

    // The hash expires: the kept copy goes with it and MySQL answers.
    let _: () = redis
        .pexpire(shared::redis_hash::course_key("KEPT"), 1)
        .await
        .unwrap();
    query
        .stats_when(
            "KEPT",
            Duration::from_secs(2),
            "the expiry to be seen",
            |s| s["source"] == "database",
        )
        .await
        .unwrap();

    // A flush of the database forgets every kept hash at once.
    assert_eq!(query.stats_of("KEPT").await["source"], "cache");
    assert_eq!(query.stats_of("KEPT").await["source"], "cache");
    let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
    query
        .stats_when(
            "KEPT",
            Duration::from_secs(2),
            "the flush to be seen",
            |s| s["source"] == "database",
        )
        .await
        .unwrap();
    query.shutdown().await;
}

#[tokio::test]
async fn a_delta_that_found_no_hash_leaves_a_floor_that_refuses_a_stale_fill() {
    let query = TestQuery::spawn().await;
    query.seed().stats("FLOOR", [2, 0, 0, 0, 3], 5).await;
    let mut redis = query.redis().await;

    // The delta 5 → 6 arrives while the hash is absent: skipped, floor 6 left behind.
    let applied = Scripts::new()
        .apply(&mut redis, &[delta("FLOOR", 5, 1)])
        .await
        .unwrap();
    assert_eq!(applied, vec![Applied::Skipped]);

    // A reader still sees version 5 in MySQL (the replica lags, or it read first):
    // it answers MySQL's numbers but its fill is refused, so Redis holds nothing stale.
    let stats = query.stats_of("FLOOR").await;
    assert_eq!(
        (stats["source"].as_str(), figures(&stats)),
        (Some("database"), (5, 17, [2, 0, 0, 0, 3]))
    );
    assert_eq!(
        shared::redis_hash::read(&mut redis, "FLOOR").await.unwrap(),
        None
    );

    // Once MySQL shows version 6, the fill goes through and the cache serves it.
    query.seed().stats("FLOOR", [3, 0, 0, 0, 3], 6).await;
    assert_eq!(query.stats_of("FLOOR").await["source"], "database");
    let stats = query.stats_of("FLOOR").await;
    assert_eq!(
        (stats["source"].as_str(), figures(&stats)),
        (Some("cache"), (6, 18, [3, 0, 0, 0, 3]))
    );
    query.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_for_one_course_make_one_mysql_query() {
    let query = std::sync::Arc::new(TestQuery::spawn().await);
    let seeded = query.seed().stats("BUSY", [0, 1, 2, 3, 4], 9).await;

    // Hold the table so the first load waits until every request has missed.
    let seed = query.seed();
    let mut lock = seed.pool.get_conn().await.unwrap();
    lock.query_drop("LOCK TABLES course_stats WRITE")
        .await
        .unwrap();
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let query = query.clone();
            tokio::spawn(async move { query.stats_of("BUSY").await })
        })
        .collect();
    eventually(Duration::from_secs(10), "50 misses", || async {
        Ok((query.stats.counts().misses >= 50).then_some(()))
    })
    .await
    .unwrap();
    lock.query_drop("UNLOCK TABLES").await.unwrap();

    for request in requests {
        let stats = request.await.unwrap();
        assert_eq!(stats["source"], "database");
        assert_eq!(figures(&stats), expected(&seeded));
    }
    assert_eq!(
        query.stats.counts().mysql_loads,
        1,
        "one MySQL read served all 50"
    );
    assert_eq!(query.stats_of("BUSY").await["source"], "cache");
}

#[tokio::test]
async fn prewarm_loads_the_most_active_courses_at_start() {
    let (mysql_url, redis_url) = fresh_stores().await;
    let seed = Seed::new(&mysql_url);
    seed.stats("QUIET", [1, 0, 0, 0, 0], 1).await;
    let busiest = seed.stats("BUSIEST", [0, 0, 0, 10, 20], 30).await;
    let busy = seed.stats("BUSY", [0, 0, 5, 5, 0], 10).await;

    let mut settings = config(&mysql_url, &redis_url);
    settings.prewarm_courses = 2;
    let query = TestQuery::spawn_with(settings).await;
    let mut redis = query.redis().await;
    let cached = eventually(Duration::from_secs(15), "the pre-warm", || {
        let mut redis = redis.clone();
        async move {
            let a = shared::redis_hash::read(&mut redis, "BUSIEST").await?;
            let b = shared::redis_hash::read(&mut redis, "BUSY").await?;
            Ok(a.zip(b))
        }
    })
    .await
    .unwrap();
    assert_eq!(cached, (busiest, busy));
    assert_eq!(
        shared::redis_hash::read(&mut redis, "QUIET").await.unwrap(),
        None
    );
    assert_eq!(query.stats_of("BUSIEST").await["source"], "cache");
    assert_eq!(query.stats_of("QUIET").await["source"], "database");
    query.shutdown().await;
}

async fn seed_for_rebuild(mysql_url: &str, redis_url: &str) -> Vec<(String, StatsRow)> {
    let seed = Seed::new(mysql_url);
    let mut rows = Vec::new();
    for (i, course) in ["RB-A", "RB-B", "RB-C", "RB-D", "RB-E"].iter().enumerate() {
        let i = i as i64;
        rows.push((
            course.to_string(),
            seed.stats(course, [i, 1, 0, 2, i], 3 + i).await,
        ));
    }
    // A hash behind MySQL, and one with numbers MySQL never had at the same version.
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut stale = rows[1].1.clone();
    stale.version -= 1;
    stale.responses = 999;
    Scripts::new()
        .fill(&mut redis, "RB-B", &stale, 0)
        .await
        .unwrap();
    let mut corrupt = rows[2].1.clone();
    corrupt.rating_sum = -7;
    Scripts::new()
        .fill(&mut redis, "RB-C", &corrupt, 0)
        .await
        .unwrap();
    rows
}

#[tokio::test]
async fn rebuild_writes_every_course_from_mysql_page_by_page() {
    let (mysql_url, redis_url) = fresh_stores().await;
    let rows = seed_for_rebuild(&mysql_url, &redis_url).await;
    let db = query::read_model::Db::new(&mysql_url, Duration::from_secs(5)).unwrap();
    let target = shared::redis_conn::Target::Single(redis_url.clone());
    let mut redis = shared::redis_conn::connect(&target, Duration::from_secs(2)).unwrap();
    let totals = query::warm::rebuild(
        &db,
        &mut redis,
        query::stats_cache::Ttl(600),
        2,
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(
        totals,
        query::warm::Totals {
            courses: 5,
            written: 5,
            refused: 0
        }
    );
    for (course, row) in &rows {
        let hash = shared::redis_hash::read(&mut redis, course).await.unwrap();
        assert_eq!(hash.as_ref(), Some(row), "{course}");
        let ttl: i64 = redis
            .ttl(shared::redis_hash::course_key(course))
            .await
            .unwrap();
        assert!((530..=660).contains(&ttl), "{course}: TTL {ttl}");
    }
}

#[tokio::test]
async fn the_rebuild_cache_command_prints_its_totals() {
    let (mysql_url, redis_url) = fresh_stores().await;
    let rows = seed_for_rebuild(&mysql_url, &redis_url).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_query"))
        .args(["rebuild-cache", "--page-size", "3"])
        .env("FEEDBACK_MYSQL_URL", &mysql_url)
        .env("FEEDBACK_REDIS_URL", &redis_url)
        .env_remove("FEEDBACK_JWT_SECRET")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("rebuilt 5 courses"), "{stdout}");
    assert!(stdout.contains("5 written"), "{stdout}");
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (course, row) in &rows {
        assert_eq!(
            shared::redis_hash::read(&mut redis, course)
                .await
                .unwrap()
                .as_ref(),
            Some(row),
            "{course}"
        );
    }
}

#[tokio::test]
async fn with_a_read_url_stats_are_read_from_the_replica() {
    // Two databases stand for a primary and its replica, apart on purpose:
    // the answer shows which one the request path read.
    let (primary, redis_url) = fresh_stores().await;
    let (replica, _) = fresh_stores().await;
    Seed::new(&primary)
        .stats("REPLICA", [1, 0, 0, 0, 0], 1)
        .await;
    let on_replica = Seed::new(&replica)
        .stats("REPLICA", [0, 0, 0, 2, 3], 5)
        .await;
    let mut settings = config(&primary, &redis_url);
    settings.mysql_read_url = Some(replica.clone());
    let query = TestQuery::spawn_with(settings).await;
    let stats = query.stats_of("REPLICA").await;
    assert_eq!(stats["source"], "database");
    assert_eq!(figures(&stats), expected(&on_replica));
    query.shutdown().await;
}

#[tokio::test]
async fn query_refuses_to_start_without_a_jwt_secret_of_32_bytes() {
    feedback_tests::assert_refuses_to_start_without_a_jwt_secret(
        env!("CARGO_BIN_EXE_query"),
        &[("FEEDBACK_QUERY_ADDR", "127.0.0.1:0".into())],
    )
    .await;
}

/// Query needs no student key in identity-provider mode (it never holds
/// one), but an issuer without an audience, or on plain HTTP off the
/// loopback, stops it.
#[tokio::test]
async fn query_refuses_to_start_with_identity_settings_that_cannot_work() {
    let binary = env!("CARGO_BIN_EXE_query");
    let addr = ("FEEDBACK_QUERY_ADDR", "127.0.0.1:0".to_owned());
    feedback_tests::assert_refuses_to_start_naming(
        binary,
        &[
            addr.clone(),
            (
                "FEEDBACK_OIDC_ISSUER",
                "https://login.example.edu/realms/x".into(),
            ),
        ],
        "FEEDBACK_OIDC_AUDIENCE",
    )
    .await;
    feedback_tests::assert_refuses_to_start_naming(
        binary,
        &[
            addr,
            ("FEEDBACK_OIDC_ISSUER", "http://10.1.2.3/realms/x".into()),
            ("FEEDBACK_OIDC_AUDIENCE", "feedback-api".into()),
        ],
        "FEEDBACK_OIDC_ISSUER",
    )
    .await;
}

/// Ingest no longer takes a course id that does not start with a letter or
/// a digit, but one already in MySQL stays readable: its stats, comments,
/// CSV and trend. (`.` and `..` themselves are path segments that URL
/// clients remove, `%2E` spelled or not, so no ordinary client asks for them.)
#[tokio::test]
async fn a_course_id_ingest_no_longer_takes_is_still_read() {
    let query = TestQuery::spawn().await;
    let seed = query.seed();
    for course in ["-a", "_a", ":a", ".x"] {
        seed.stats(course, [0, 0, 0, 1, 0], 1).await;
        let row = feedback_tests::query::Response::new(
            "old",
            4,
            Some("from before"),
            "2026-11-01 10:00:00",
        );
        seed.responses(course, &[row]).await;

        let stats = query.stats_of(course).await;
        assert_eq!(
            (stats["course_id"].as_str(), figures(&stats)),
            (Some(course), (1, 4, [0, 0, 0, 1, 0]))
        );
        let page = query.json(&format!("/v1/courses/{course}/feedback")).await;
        assert_eq!(page["items"][0]["comment"], "from before", "{course}");
        let trend = query
            .json(&format!(
                "/v1/courses/{course}/trend?from=2026-11-01&to=2026-11-01"
            ))
            .await;
        assert_eq!(trend["points"][0]["count"], 1, "{course}");
        let csv = query
            .get(&format!("/v1/courses/{course}/feedback.csv"))
            .await;
        assert_eq!(csv.status(), reqwest::StatusCode::OK, "{course}");
        assert!(
            csv.text().await.unwrap().contains("from before"),
            "{course}"
        );
    }
    query.shutdown().await;
}
