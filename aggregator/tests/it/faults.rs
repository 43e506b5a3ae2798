//! Exactly once in effect while things fail: Redis flushed, killed and
//! restarted; MySQL stopped for 15 s; the aggregator killed -9 again and
//! again; one of two aggregators in a group killed. Redis and MySQL are
//! private servers of each test (killing the shared ones would disturb the
//! other tests), Kafka is the shared broker.

use std::time::Duration;

use feedback_tests::aggregator::*;
use feedback_tests::{eventually, PrivateMysql, PrivateRedis};

use crate::AGGREGATOR;

/// `events` cut into `n` slices, to produce one at a time with faults between.
fn slices(
    events: &[shared::event::FeedbackSubmitted],
    n: usize,
) -> std::slice::Chunks<'_, shared::event::FeedbackSubmitted> {
    events.chunks(events.len().div_ceil(n))
}

/// Keeps filling every course's hash from MySQL, as query's misses do, to race with the deltas.
fn spawn_filler(scenario: Scenario) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(2), try_fill_all(&scenario)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn try_fill_all(scenario: &Scenario) -> anyhow::Result<()> {
    use mysql_async::prelude::Queryable;
    let pool = mysql_async::Pool::new(scenario.mysql_url.as_str());
    let mut conn = pool.get_conn().await?;
    let courses: Vec<String> = conn.query("SELECT course_id FROM course_stats").await?;
    let scripts = shared::redis_hash::Scripts::new();
    let mut redis = redis::Client::open(scenario.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    for course in courses {
        let stats = shared::mysql::read_stats(&mut conn, &course).await?;
        scripts.fill(&mut redis, &course, &stats, 3600).await?;
    }
    drop(conn);
    pool.disconnect().await?;
    Ok(())
}

/// What [`spawn_watcher`] saw: how many hashes it compared, and every one
/// that held numbers MySQL never had.
#[derive(Default)]
struct Watched {
    compared: usize,
    violations: Vec<String>,
}

/// Keeps comparing every course's hash with MySQL while the faults happen.
/// The hash is read first, then MySQL, whose version only grows: a hash
/// ahead of MySQL, or at MySQL's version with other numbers, holds numbers
/// MySQL never had. (A hash behind MySQL is a lag the deltas or a read mend.)
fn spawn_watcher(
    scenario: Scenario,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<Watched>>,
) {
    let watched = std::sync::Arc::new(std::sync::Mutex::new(Watched::default()));
    let record = watched.clone();
    let task = tokio::spawn(async move {
        loop {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), watch_once(&scenario, &record)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (task, watched)
}

async fn watch_once(
    scenario: &Scenario,
    watched: &std::sync::Mutex<Watched>,
) -> anyhow::Result<()> {
    use mysql_async::prelude::Queryable;
    let pool = mysql_async::Pool::new(scenario.mysql_url.as_str());
    let mut conn = pool.get_conn().await?;
    let courses: Vec<String> = conn.query("SELECT course_id FROM course_stats").await?;
    let mut redis = redis::Client::open(scenario.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    for course in courses {
        let Some(hash) = shared::redis_hash::read(&mut redis, &course).await? else {
            continue;
        };
        let row = shared::mysql::read_stats(&mut conn, &course).await?;
        let numbers = |r: &shared::mysql::StatsRow| (r.responses, r.rating_sum, r.distribution);
        let mut watched = watched.lock().unwrap();
        watched.compared += 1;
        if hash.version > row.version
            || hash.version == row.version && numbers(&hash) != numbers(&row)
        {
            watched
                .violations
                .push(format!("{course}: Redis {hash:?}, MySQL {row:?}"));
        }
    }
    drop(conn);
    pool.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_flushed_killed_and_restarted_mid_stream_never_holds_wrong_numbers() {
    let mut redis = PrivateRedis::start().await.unwrap();
    let mysql_url = feedback_tests::fresh_mysql_database().await.unwrap();
    let scenario = Scenario::with(mysql_url, redis.url(0)).await;
    let aggregator = scenario.spawn().await;
    let filler = spawn_filler(scenario.clone());
    let (watcher, watched) = spawn_watcher(scenario.clone());
    let events = random_events(11, 3000, 10, 300);

    for (i, slice) in slices(&events, 6).enumerate() {
        produce(&scenario.topic, slice).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        match i {
            1 => {
                let mut conn = scenario.redis().await;
                redis::cmd("FLUSHALL")
                    .query_async::<()>(&mut conn)
                    .await
                    .unwrap();
            }
            2 => redis.kill(), // Unreachable while slice 3 is consumed.
            3 => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                redis.restart().await.unwrap(); // Back, empty.
            }
            _ => {}
        }
    }

    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(60)).await;
    // With the filler still racing, every hash present equals MySQL.
    let present = wait_for_redis_to_match(&scenario, Duration::from_secs(15)).await;
    assert!(
        present > 0,
        "the filler's hashes are back after the restart"
    );
    filler.abort();
    assert_eq!(
        wait_for_redis_to_match(&scenario, Duration::from_secs(5)).await,
        present
    );
    watcher.abort();
    {
        let watched = watched.lock().unwrap();
        assert!(
            watched.compared > 100,
            "{} hashes compared",
            watched.compared
        );
        assert!(
            watched.violations.is_empty(),
            "Redis held numbers MySQL never had: {:?}",
            watched.violations
        );
    }
    let (status, body) = aggregator.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"]["courses_to_repair"], 0, "{body}");
    aggregator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_stopped_for_15_seconds_mid_stream_loses_and_skips_nothing() {
    let mut mysql = PrivateMysql::start().await.unwrap();
    let redis_url = feedback_tests::fresh_redis_database().await.unwrap();
    let scenario = Scenario::with(mysql.url("feedback"), redis_url).await;
    let aggregator = scenario.spawn().await;
    let events = random_events(12, 2000, 8, 250);
    produce(&scenario.topic, &events[..500]).await;
    wait_for_mysql(
        &scenario.mysql_url,
        &expected(&events[..500]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(fill_all(&scenario).await, 8);

    mysql.kill();
    produce(&scenario.topic, &events[500..1500]).await;
    let (status, body) = eventually(
        Duration::from_secs(10),
        "readyz to report MySQL down",
        || async {
            let (status, body) = aggregator.readyz().await;
            Ok((status == 503).then_some((status, body)))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (status, &body["checks"]["mysql"]["up"]),
        (503, &serde_json::json!(false)),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    mysql.restart().await.unwrap();
    produce(&scenario.topic, &events[1500..]).await;

    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(90)).await;
    assert_eq!(
        wait_for_redis_to_match(&scenario, Duration::from_secs(10)).await,
        8
    );
    let (status, _) = aggregator.readyz().await;
    assert_eq!(status, 200);
    aggregator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_aggregator_reports_mysql_down_and_back_up() {
    // No traffic, so no lane fails a commit: only a probe can tell.
    let mut mysql = PrivateMysql::start().await.unwrap();
    let redis_url = feedback_tests::fresh_redis_database().await.unwrap();
    let scenario = Scenario::with(mysql.url("feedback"), redis_url).await;
    let aggregator = scenario.spawn().await;
    let (status, body) = aggregator.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["mysql"]["answers"], true, "{body}");

    mysql.kill();
    let (status, body) = aggregator.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (
            &body["checks"]["mysql"]["up"],
            &body["checks"]["mysql"]["lanes_retrying"]
        ),
        (&serde_json::json!(false), &serde_json::json!(0)),
        "{body}"
    );

    mysql.restart().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "readyz to report MySQL back",
        || async { Ok((aggregator.readyz().await.0 == 200).then_some(())) },
    )
    .await
    .unwrap();
    aggregator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aggregator_killed_9_three_times_mid_stream_counts_everything_once() {
    let scenario = Scenario::new().await;
    let events = random_events(13, 4000, 10, 400);
    let mut process = Some(scenario.spawn_process(AGGREGATOR));
    let (mut produced, mut at_last_kill, mut mid_stream) = (0, 0, 0);
    for (i, slice) in slices(&events, 4).enumerate() {
        produce(&scenario.topic, slice).await;
        produced += slice.len() as i64;
        if i < 3 {
            // Killed once it has committed some of what is there: a member
            // with partitions, at work (not a process still joining the group).
            at_last_kill = committed_past(&scenario, at_last_kill).await;
            if at_last_kill < produced {
                mid_stream += 1;
            }
            if let Some(old) = process.take() {
                old.kill9();
            }
            process = Some(scenario.spawn_process(AGGREGATOR));
        }
        if i == 1 {
            // Filled mid-way, so the killed processes' lost Redis updates must be repaired.
            fill_all(&scenario).await;
        }
    }
    eprintln!("{mid_stream} of 3 kills with messages still to commit");

    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(120)).await;
    // Every hash Redis still holds equals MySQL. A kill between a commit and
    // its Redis update loses that delta: the next one finds a gap and deletes
    // the hash, which the next read fills again (as here).
    let present = wait_for_redis_to_match(&scenario, Duration::from_secs(15)).await;
    assert_eq!(
        fill_all(&scenario).await,
        10 - present,
        "the absent ones fill"
    );
    let more = random_events(16, 300, 10, 400);
    assert_eq!(
        produce_more_and_settle(&scenario, &events, &more, Duration::from_secs(30)).await,
        10,
        "and the deltas keep all ten on MySQL"
    );
    process.take().expect("the last aggregator").terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_aggregators_in_one_group_with_one_killed_count_everything_once() {
    let scenario = Scenario::new().await;
    let events = random_events(14, 3000, 12, 300);
    let survivor = scenario.spawn_process(AGGREGATOR);
    let mut victim = Some(scenario.spawn_process(AGGREGATOR));
    for (i, slice) in slices(&events, 3).enumerate() {
        produce(&scenario.topic, slice).await;
        if i == 0 {
            // Killed once it owns partitions and the group has committed some
            // of the slice: a member at work, not one still joining.
            let port = victim.as_ref().expect("the victim").port;
            eventually(
                Duration::from_secs(60),
                "the victim to own partitions",
                || async {
                    // Not listening yet is not a failure: the process may
                    // still be starting (slowly, on a busy machine).
                    let Ok(response) =
                        reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
                    else {
                        return Ok(None);
                    };
                    let ready: serde_json::Value = response.json().await?;
                    let assigned = ready["checks"]["kafka"]["assigned_partitions"].as_i64();
                    Ok(assigned.filter(|n| *n > 0))
                },
            )
            .await
            .unwrap();
            committed_past(&scenario, 0).await;
            if let Some(victim) = victim.take() {
                victim.kill9();
            }
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The survivor takes the victim's partitions once its session times out.
    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(120)).await;
    // Redis follows the survivor's deltas too.
    fill_all(&scenario).await;
    let more = random_events(15, 300, 12, 300);
    assert_eq!(
        produce_more_and_settle(&scenario, &events, &more, Duration::from_secs(30)).await,
        12
    );
    survivor.terminate();
}
