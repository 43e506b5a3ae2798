//! Query as its tests drive it: in-process on port 0 with a MySQL database
//! and a Redis database of its own, seeded with SQL (no aggregator needed),
//! or its router alone.

use std::sync::Arc;
use std::time::Duration;

use ::query::stats_cache::Stats;
use ::query::{Application, Config};
use mysql_async::prelude::Queryable;
use serde_json::Value;
use shared::auth::Role;
use shared::mysql::StatsRow;

use crate::{fresh_mysql_database, fresh_redis_database, token, Oneshot, Running, JWT_SECRET};

/// A query running inside the test.
pub struct TestQuery {
    /// Where it listens.
    pub url: String,
    pub client: reqwest::Client,
    pub mysql_url: String,
    pub redis_url: String,
    /// The service's stats layer, for its counters.
    pub stats: Arc<Stats>,
    running: Running,
}

/// A test configuration: no pre-warm (tests decide what is cached), a 1000 s TTL.
pub fn config(mysql_url: &str, redis_url: &str) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        redis_url: redis_url.into(),
        // Several comma-separated URLs (a test cluster's) are a cluster anyway.
        redis_cluster: false,
        mysql_url: mysql_url.into(),
        mysql_read_url: None,
        auth: shared::auth::Settings::shared_secret(JWT_SECRET),
        cache_ttl_secs: 1000,
        prewarm_courses: 0,
        redis_timeout: Duration::from_millis(250),
        mysql_timeout: Duration::from_secs(3),
        export_stall: Duration::from_secs(60),
        min_responses: 5,
    }
}

/// A fresh MySQL database with the schema, and a fresh Redis database.
pub async fn fresh_stores() -> (String, String) {
    let mysql_url = fresh_mysql_database()
        .await
        .expect("a MySQL database (is scripts/infra.sh up?)");
    shared::mysql::migrate(&mysql_url)
        .await
        .expect("migrations");
    let redis_url = fresh_redis_database()
        .await
        .expect("a Redis database (is scripts/infra.sh up?)");
    (mysql_url, redis_url)
}

impl TestQuery {
    pub async fn spawn() -> Self {
        let (mysql_url, redis_url) = fresh_stores().await;
        Self::spawn_with(config(&mysql_url, &redis_url)).await
    }

    /// A query on a fresh MySQL database and on `redis_url` (a private Redis).
    pub async fn spawn_on_redis(redis_url: &str) -> Self {
        let (mysql_url, _) = fresh_stores().await;
        Self::spawn_with(config(&mysql_url, redis_url)).await
    }

    pub async fn spawn_with(config: Config) -> Self {
        let mysql_url = config.mysql_url.clone();
        let redis_url = config.redis_url.clone();
        let app = Application::build(config).await.expect("query builds");
        let stats = app.state().stats.clone();
        let running = run(app);
        Self {
            url: running.url.clone(),
            client: reqwest::Client::new(),
            mysql_url,
            redis_url,
            stats,
            running,
        }
    }

    /// GET `path` with `token` (none when `None`).
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("query answers")
    }

    /// GET `path` as an admin.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_as(path, Some(&admin())).await
    }

    /// GET `path` as an admin, expecting 200 and JSON.
    pub async fn json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        let status = response.status();
        let body = response.text().await.expect("a body");
        assert_eq!(status, reqwest::StatusCode::OK, "GET {path}: {body}");
        serde_json::from_str(&body).expect("a JSON body")
    }

    pub async fn stats_of(&self, course: &str) -> Value {
        self.json(&format!("/v1/courses/{course}/stats")).await
    }

    /// Asks for a course's stats until `done` holds for them (within
    /// `limit`), and returns those; `what` names the wait in the error.
    pub async fn stats_when(
        &self,
        course: &str,
        limit: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let done = &done;
        crate::eventually(limit, what, || async move {
            let stats = self.stats_of(course).await;
            Ok(done(&stats).then_some(stats))
        })
        .await
    }

    /// A Redis connection to the service's database.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis")
    }

    pub fn seed(&self) -> Seed {
        Seed::new(&self.mysql_url)
    }

    /// Triggers graceful shutdown and waits for it.
    pub async fn shutdown(self) {
        self.running.stop().await;
    }
}

/// Builds a query with `config` and runs it until stopped.
pub async fn start(config: Config) -> Running {
    run(Application::build(config).await.expect("query builds"))
}

/// Runs a built query until stopped.
fn run(app: Application) -> Running {
    Running::spawn("query", app.port(), |shutdown| app.run_until(shutdown))
}

/// Query's router alone, for the answers it gives without reading a store:
/// its Redis and MySQL are addresses where nothing listens (it connects to
/// neither before a request needs it).
pub async fn router() -> Oneshot {
    let config = config("mysql://root@127.0.0.1:1/none", "redis://127.0.0.1:1/0");
    let app = Application::build(config).await.expect("query builds");
    Oneshot::new(::query::router(app.state().clone()))
}

/// An admin token.
pub fn admin() -> String {
    token("root", Role::Admin)
}

/// Writes rows the way the aggregator would have.
pub struct Seed {
    pub pool: mysql_async::Pool,
}

/// One current response to seed.
#[derive(Debug, Clone)]
pub struct Response {
    pub feedback_id: String,
    pub student_key: String,
    pub rating: u8,
    pub comment: Option<String>,
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC.
    pub submitted_at: String,
}

impl Response {
    pub fn new(student: &str, rating: u8, comment: Option<&str>, submitted_at: &str) -> Self {
        Self {
            feedback_id: ulid::Ulid::new().to_string(),
            student_key: shared::domain::StudentKey::derive(b"seed", student)
                .as_str()
                .to_owned(),
            rating,
            comment: comment.map(Into::into),
            submitted_at: submitted_at.into(),
        }
    }
}

impl Seed {
    pub fn new(mysql_url: &str) -> Self {
        Self {
            pool: mysql_async::Pool::new(mysql_url),
        }
    }

    /// Sets a course's `course_stats` row.
    pub async fn stats(&self, course: &str, distribution: [i64; 5], version: i64) -> StatsRow {
        let responses: i64 = distribution.iter().sum();
        let rating_sum: i64 = distribution
            .iter()
            .enumerate()
            .map(|(i, n)| (i as i64 + 1) * n)
            .sum();
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.exec_drop(
            "REPLACE INTO course_stats (course_id, responses, rating_sum, rating_1, rating_2,
                rating_3, rating_4, rating_5, version, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '2026-11-01 10:00:00.123456')",
            (
                course,
                responses,
                rating_sum,
                distribution[0],
                distribution[1],
                distribution[2],
                distribution[3],
                distribution[4],
                version,
            ),
        )
        .await
        .unwrap();
        StatsRow {
            responses,
            rating_sum,
            distribution,
            version,
            updated_at_micros: 1_793_527_200_123_456,
        }
    }

    /// Inserts current responses of `course`: each in the history
    /// (`feedback_events`, with its comment) and as its student's current
    /// response (`current_responses`, which has no comment).
    pub async fn responses(&self, course: &str, rows: &[Response]) {
        self.history(course, rows).await;
        self.insert(false, course, rows).await;
    }

    /// Inserts submissions of `course` into the history only: superseded
    /// ones, whose students' current responses are others.
    pub async fn history(&self, course: &str, rows: &[Response]) {
        self.insert(true, course, rows).await;
    }

    /// Inserts `rows` into the history or `current_responses`, 500 per
    /// statement; the history's rows have a comment and a position in the
    /// topic (partition 0, offset 0).
    async fn insert(&self, history: bool, course: &str, rows: &[Response]) {
        let (table, columns, row) = if history {
            (
                "feedback_events",
                "course_id, student_key, feedback_id, rating, submitted_at, comment, kafka_partition, kafka_offset",
                "(?, ?, ?, ?, ?, ?, 0, 0)",
            )
        } else {
            (
                "current_responses",
                "course_id, student_key, feedback_id, rating, submitted_at",
                "(?, ?, ?, ?, ?)",
            )
        };
        let mut conn = self.pool.get_conn().await.unwrap();
        for chunk in rows.chunks(500) {
            let values = vec![row; chunk.len()].join(", ");
            let mut params: Vec<mysql_async::Value> = Vec::new();
            for r in chunk {
                params.push(course.into());
                params.push(r.student_key.as_str().into());
                params.push(r.feedback_id.as_str().into());
                params.push(r.rating.into());
                params.push(r.submitted_at.as_str().into());
                if history {
                    params.push(r.comment.clone().into());
                }
            }
            conn.exec_drop(
                format!("INSERT INTO {table} ({columns}) VALUES {values}"),
                params,
            )
            .await
            .unwrap();
        }
    }
}

/// The `(responses, rating_sum, distribution 1..5)` of a stats answer.
pub fn figures(stats: &Value) -> (i64, i64, [i64; 5]) {
    let d = &stats["distribution"];
    let n = |k: &str| d[k].as_i64().expect("a count");
    (
        stats["responses"].as_i64().unwrap(),
        stats["rating_sum"].as_i64().unwrap(),
        [n("1"), n("2"), n("3"), n("4"), n("5")],
    )
}

/// The figures of a seeded row, for comparing with [`figures`].
pub fn expected(row: &StatsRow) -> (i64, i64, [i64; 5]) {
    (row.responses, row.rating_sum, row.distribution)
}
