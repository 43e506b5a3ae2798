//! End to end: students' submissions through ingest, Kafka, the aggregator,
//! MySQL and Redis to query's answers, the three services running in this
//! test on a topic, database and Redis db of their own. Invariants 1 and 2:
//! every 202 counted once by the counting rule, and query = Redis = MySQL.

use std::collections::BTreeMap;
use std::time::Duration;

use feedback_tests::{
    eventually, fresh_mysql_database, fresh_redis_database, fresh_topic, kafka_brokers, student,
    temp_dir, token, unique_name, JWT_SECRET,
};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};
use shared::auth::Role;

/// A service running in the test until `stop`.
struct Running {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the service task")
            .expect("a clean stop");
    }
}

/// Runs `run_until` of a built service on a task; `port` is where it listens.
fn run<F>(port: u16, run_until: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F) -> Running
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel();
    Running {
        url: format!("http://127.0.0.1:{port}"),
        stop,
        task: tokio::spawn(run_until(stopped)),
    }
}

async fn start_ingest(topic: &str, spool: &std::path::Path) -> Running {
    let config = ingest::Config {
        addr: "127.0.0.1:0".into(),
        brokers: kafka_brokers(),
        topic: topic.into(),
        spool_dir: spool.into(),
        spool_max_bytes: 64 * 1024 * 1024,
        jwt_secret: JWT_SECRET.into(),
        student_key_secret: ingest::config::derive_student_key_secret(JWT_SECRET),
        rate_limit_student_per_min: 0,
        rate_limit_ip_per_min: 0,
        sensitive_words_file: None,
        sensitive_policy: ingest::filter::Policy::Mask,
        delivery_timeout: Duration::from_secs(5),
        idempotency_ttl: Duration::from_secs(86_400),
    };
    let app = ingest::Application::build(config)
        .await
        .expect("ingest builds");
    run(app.port(), |stopped| {
        app.run_until(async move {
            let _ = stopped.await;
        })
    })
}

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

    let aggregator = aggregator::Application::build(aggregator::Config {
        addr: "127.0.0.1:0".into(),
        brokers: kafka_brokers(),
        topic: topic.clone(),
        group: unique_name("fbtest-e2e"),
        redis_url: redis_url.clone(),
        mysql_url: mysql_url.clone(),
        batch_size: 100,
        linger: Duration::from_millis(50),
        lanes: 3,
        cache_ttl_secs: 3600,
        reconcile_interval: Duration::from_millis(500),
        reconcile_window: Duration::from_secs(600),
    })
    .await
    .expect("the aggregator builds");
    let aggregator = run(aggregator.port(), |stopped| {
        aggregator.run_until(async move {
            let _ = stopped.await;
        })
    });
    let query = query::Application::build(query::Config {
        addr: "127.0.0.1:0".into(),
        redis_url: redis_url.clone(),
        mysql_url: mysql_url.clone(),
        mysql_read_url: None,
        jwt_secret: JWT_SECRET.into(),
        cache_ttl_secs: 3600,
        prewarm_courses: 0,
        redis_timeout: Duration::from_millis(250),
        mysql_timeout: Duration::from_secs(3),
    })
    .await
    .expect("query builds");
    let query = run(query.port(), |stopped| {
        query.run_until(async move {
            let _ = stopped.await;
        })
    });
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
        let hash = shared::cache::read(&mut redis, course)
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
        let row = shared::db::read_stats(&mut conn, course).await.unwrap();
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
            assert_eq!(fields, ["comment", "feedback_id", "rating", "submitted_at"]);
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
