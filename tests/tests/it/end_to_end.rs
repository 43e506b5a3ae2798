//! End to end: students' submissions through ingest, Kafka, the aggregator,
//! MySQL and Redis to query's answers, the three services running in this
//! test on a topic, database and Redis db of their own. Invariants 1 and 2:
//! every 202 counted once by the counting rule, and query = Redis = MySQL.

use std::collections::BTreeMap;
use std::time::Duration;

use feedback_tests::stack::{start_aggregator, start_ingest, start_query};
use feedback_tests::Running;
use feedback_tests::{
    eventually, fresh_mysql_database, fresh_redis_database, fresh_topic, student, temp_dir, token,
};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};
use shared::auth::Role;

/// One submission as a student sees it.
struct Post<'a> {
    sub: &'a str,
    course: &'a str,
    rating: u8,
    key: Option<&'a str>,
}

/// Posts and returns the answer, which must be a 202.
async fn post(client: &reqwest::Client, ingest: &Running, post: &Post<'_>) -> Value {
    // A body naming another student: ingest takes the student from the token.
    let body = json!({
        "course_id": post.course,
        "rating": post.rating,
        "comment": format!("{} 的评论, \"{}\"", post.sub, post.rating),
        "student_id": "someone-else",
        "student_key": "someone-else",
    });
    let mut request = client
        .post(format!("{}/v1/feedback", ingest.url))
        .bearer_auth(student(post.sub))
        .json(&body);
    if let Some(key) = post.key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("ingest answers");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    response.json().await.expect("a JSON answer")
}

/// (responses, rating_sum, distribution) of query's or the expected stats.
type Figures = (i64, i64, [i64; 5]);

fn figures_of(stats: &Value) -> Figures {
    let distribution = std::array::from_fn(|i| {
        stats["distribution"][(i + 1).to_string()]
            .as_i64()
            .expect("a count")
    });
    (
        stats["responses"].as_i64().expect("responses"),
        stats["rating_sum"].as_i64().expect("rating_sum"),
        distribution,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submissions_through_every_service_are_counted_once_by_the_rule_and_served_alike() {
    let topic = fresh_topic()
        .await
        .expect("a topic (is scripts/infra.sh up?)");
    let mysql_url = fresh_mysql_database().await.expect("a MySQL database");
    let redis_url = fresh_redis_database().await.expect("a Redis database");
    let spool = temp_dir("e2e-spool");

    let aggregator = start_aggregator(&topic, &mysql_url, &redis_url).await;
    let query = start_query(&mysql_url, &redis_url).await;
    let client = reqwest::Client::new();

    // 24 students, 3 courses, two rounds of ratings; each student's current
    // rating in a course is their last 202 in it.
    let courses = ["E2E-A", "E2E-B", "E2E-C"];
    let subs: Vec<String> = (0..24).map(|i| format!("e2e-student-{i}")).collect();
    let mut current: BTreeMap<(&str, &str), u8> = BTreeMap::new();
    let mut ingest = start_ingest(&topic, &spool).await;
    for round in 0..2u8 {
        if round == 1 {
            // A restart between the rounds: the same subject must be the same
            // student (the same pseudonym), so round 2 replaces round 1.
            ingest.stop().await;
            ingest = start_ingest(&topic, &spool).await;
        }
        for (i, sub) in subs.iter().enumerate() {
            for (c, course) in courses.iter().enumerate() {
                // Not everyone rates every course, or rates it twice.
                if (i + c) % 3 == 0 && round == 0 || (i * 7 + c) % 4 == 0 && round == 1 {
                    continue;
                }
                let rating = 1 + ((i * 5 + c * 3 + round as usize * 2) % 5) as u8;
                let answer = post(
                    &client,
                    &ingest,
                    &Post {
                        sub,
                        course,
                        rating,
                        key: None,
                    },
                )
                .await;
                assert_eq!(answer["status"], "accepted", "{answer}");
                current.insert((sub.as_str(), course), rating);
            }
        }
    }

    // An idempotent retry that arrives after the student's next submission:
    // the same feedback_id, counted once, so it does not bring the 5 back.
    let first = Post {
        sub: "e2e-retrying",
        course: "E2E-A",
        rating: 5,
        key: Some("e2e-key-1"),
    };
    let answer = post(&client, &ingest, &first).await;
    let later = Post {
        sub: "e2e-retrying",
        course: "E2E-A",
        rating: 2,
        key: None,
    };
    post(&client, &ingest, &later).await;
    assert_eq!(
        post(&client, &ingest, &first).await,
        answer,
        "the retry gets the first answer"
    );
    current.insert(("e2e-retrying", "E2E-A"), 2);

    let mut expected: BTreeMap<&str, Figures> = BTreeMap::new();
    for ((_, course), rating) in &current {
        let entry = expected.entry(course).or_insert((0, 0, [0; 5]));
        entry.0 += 1;
        entry.1 += i64::from(*rating);
        entry.2[usize::from(*rating) - 1] += 1;
    }
    assert_eq!(expected.len(), 3);

    let admin = token("e2e-admin", Role::Admin);
    let stats_of = |course: &'static str| {
        let request = client
            .get(format!("{}/v1/courses/{course}/stats", query.url))
            .bearer_auth(&admin);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status() == 200, "stats {}", response.status());
            Ok(response.json::<Value>().await?)
        }
    };
    for course in courses {
        let want = expected[course];
        let stats = eventually(
            Duration::from_secs(60),
            "query's stats to settle",
            || async {
                let stats = stats_of(course).await?;
                Ok((figures_of(&stats) == want).then_some(stats))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{course}: {e:#}; expected {want:?}"));
        assert_eq!(stats["course_id"], course);

        // Redis holds the same (the fill, or the aggregator's deltas), and query
        // answers from it.
        let cached = eventually(Duration::from_secs(10), "the course's hash", || async {
            Ok(stats_of(course)
                .await
                .ok()
                .filter(|s| s["source"] == "cache"))
        })
        .await
        .unwrap();
        assert_eq!(figures_of(&cached), want, "{course} from Redis");
        let mut redis = redis::Client::open(redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let hash = shared::redis_hash::read(&mut redis, course)
            .await
            .unwrap()
            .expect("a hash");
        assert_eq!(
            (hash.responses, hash.rating_sum, hash.distribution),
            want,
            "{course}: Redis"
        );

        // MySQL: the stats row, and one current row per counted student.
        let pool = mysql_async::Pool::new(mysql_url.as_str());
        let mut conn = pool.get_conn().await.unwrap();
        let row = shared::mysql::read_stats(&mut conn, course).await.unwrap();
        assert_eq!(
            (row.responses, row.rating_sum, row.distribution),
            want,
            "{course}: MySQL"
        );
        assert_eq!(row.version, hash.version, "{course}: the same version");
        let current_rows: Option<i64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM current_responses WHERE course_id = ?",
                (course,),
            )
            .await
            .unwrap();
        assert_eq!(current_rows, Some(want.0));
        drop(conn);
        pool.disconnect().await.unwrap();

        // The comments: one per counted student, no student identifier.
        let page: Value = client
            .get(format!(
                "{}/v1/courses/{course}/feedback?limit=200",
                query.url
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().expect("items");
        assert_eq!(
            items.len() as i64,
            want.0,
            "{course}: one comment a student"
        );
        for item in items {
            let mut fields: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            fields.sort_unstable();
            assert_eq!(
                fields,
                [
                    "comment",
                    "feedback_id",
                    "flagged",
                    "rating",
                    "submitted_at"
                ]
            );
            assert_eq!(item["flagged"], false, "{item}");
            let comment = item["comment"].as_str().unwrap();
            assert!(comment.starts_with("e2e-"), "{comment}");
        }
    }

    // Every 202 is one history row; the retried key added none.
    let pool = mysql_async::Pool::new(mysql_url.as_str());
    let mut conn = pool.get_conn().await.unwrap();
    let history: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM feedback_events")
        .await
        .unwrap();
    let posted = (0..2u8)
        .map(|round| {
            (0..subs.len())
                .flat_map(|i| (0..courses.len()).map(move |c| (i, c)))
                .filter(|(i, c)| {
                    !((i + c) % 3 == 0 && round == 0 || (i * 7 + c) % 4 == 0 && round == 1)
                })
                .count() as i64
        })
        .sum::<i64>()
        + 2;
    assert_eq!(history, Some(posted));
    drop(conn);
    pool.disconnect().await.unwrap();

    ingest.stop().await;
    query.stop().await;
    aggregator.stop().await;
}

/// Two ingest replicas behind one address, each with its own spool and
/// idempotency store: a student's retry that lands on the other replica is
/// the same submission (one `feedback_id`, one history row), and arriving
/// after the student's next submission it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_that_lands_on_another_ingest_replica_is_one_history_row_counted_once() {
    let scenario = feedback_tests::aggregator::Scenario::new().await;
    let aggregator =
        start_aggregator(&scenario.topic, &scenario.mysql_url, &scenario.redis_url).await;
    let a = start_ingest(&scenario.topic, &temp_dir("replica-a")).await;
    let b = start_ingest(&scenario.topic, &temp_dir("replica-b")).await;
    let client = reqwest::Client::new();

    let keyed = Post {
        sub: "e2e-replicas",
        course: "E2E-R",
        rating: 5,
        key: Some("e2e-replica-key"),
    };
    let first = post(&client, &a, &keyed).await;
    let later = Post {
        rating: 2,
        key: None,
        ..keyed
    };
    let later = post(&client, &a, &later).await;
    let retry = post(&client, &b, &keyed).await;
    assert_eq!(
        retry["feedback_id"], first["feedback_id"],
        "{retry} {first}"
    );

    // The three messages (one course, one partition) committed.
    eventually(
        Duration::from_secs(60),
        "the aggregator to commit the three messages",
        || async {
            let committed = feedback_tests::aggregator::committed(&scenario).await?;
            Ok((committed >= 3).then_some(()))
        },
    )
    .await
    .unwrap();
    let pool = mysql_async::Pool::new(scenario.mysql_url.as_str());
    let mut conn = pool.get_conn().await.unwrap();
    let mut history: Vec<(String, u8)> = conn
        .exec(
            "SELECT feedback_id, rating FROM feedback_events WHERE course_id = ?",
            ("E2E-R",),
        )
        .await
        .unwrap();
    history.sort();
    let id = |answer: &Value| answer["feedback_id"].as_str().unwrap().to_owned();
    let mut expected = vec![(id(&first), 5), (id(&later), 2)];
    expected.sort();
    assert_eq!(
        history, expected,
        "one row for the key, one for the later submission"
    );
    let current: Option<String> = conn
        .exec_first(
            "SELECT feedback_id FROM current_responses WHERE course_id = ?",
            ("E2E-R",),
        )
        .await
        .unwrap();
    assert_eq!(
        current,
        Some(id(&later)),
        "the retry did not bring the 5 back"
    );
    let stats = shared::mysql::read_stats(&mut conn, "E2E-R").await.unwrap();
    assert_eq!((stats.responses, stats.rating_sum), (1, 2));
    drop(conn);
    pool.disconnect().await.unwrap();

    a.stop().await;
    b.stop().await;
    aggregator.stop().await;
}
