//! The aggregator as its tests drive it: a scenario of their own (topic,
//! MySQL database, Redis database), aggregators in-process or as child
//! processes (for kill -9), a random workload, and the counting rule computed
//! independently of the aggregator's code, to compare with.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command};
use std::time::Duration;

use ::aggregator::{Application, Config};
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::domain::{Comment, CourseId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;

use crate::{
    eventually, free_port, fresh_mysql_database, fresh_redis_database, fresh_topic, kafka_brokers,
    unique_name, Running,
};

/// A test configuration: `topic` read by consumer `group` into `mysql_url`
/// and `redis_url`, small batches, reconciling every 500 ms.
pub fn config(topic: &str, group: &str, mysql_url: &str, redis_url: &str) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        brokers: kafka_brokers(),
        topic: topic.into(),
        group: group.into(),
        redis_url: redis_url.into(),
        // Several comma-separated URLs (a test cluster's) are a cluster anyway.
        redis_cluster: false,
        mysql_url: mysql_url.into(),
        batch_size: 100,
        linger: Duration::from_millis(50),
        lanes: 3,
        cache_ttl_secs: 3600,
        reconcile_interval: Duration::from_millis(500),
        reconcile_window: Duration::from_secs(600),
    }
}

/// Builds an aggregator with `config` and runs it until stopped.
pub async fn start(config: Config) -> Running {
    let app = Application::build(config)
        .await
        .expect("the aggregator builds");
    Running::spawn("aggregator", app.port(), |shutdown| app.run_until(shutdown))
}

/// The resources one test owns.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub topic: String,
    pub group: String,
    pub mysql_url: String,
    pub redis_url: String,
}

impl Scenario {
    /// A fresh topic, consumer group, MySQL database and Redis database.
    pub async fn new() -> Self {
        let mysql_url = fresh_mysql_database()
            .await
            .expect("a MySQL database (is scripts/infra.sh up?)");
        let redis_url = fresh_redis_database().await.expect("a Redis database");
        Self::with(mysql_url, redis_url).await
    }

    /// A fresh topic and group over the given MySQL and Redis.
    pub async fn with(mysql_url: String, redis_url: String) -> Self {
        Self {
            topic: fresh_topic().await.expect("a topic"),
            group: unique_name("fbtest-aggregator"),
            mysql_url,
            redis_url,
        }
    }

    pub fn config(&self) -> Config {
        config(&self.topic, &self.group, &self.mysql_url, &self.redis_url)
    }

    /// The environment a child aggregator process gets.
    fn env(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("FEEDBACK_AGGREGATOR_ADDR", format!("127.0.0.1:{port}")),
            ("FEEDBACK_KAFKA_BROKERS", kafka_brokers()),
            ("FEEDBACK_KAFKA_TOPIC", self.topic.clone()),
            ("FEEDBACK_CONSUMER_GROUP", self.group.clone()),
            ("FEEDBACK_REDIS_URL", self.redis_url.clone()),
            ("FEEDBACK_MYSQL_URL", self.mysql_url.clone()),
            ("FEEDBACK_RECONCILE_INTERVAL_MS", "500".into()),
            ("RUST_LOG", "warn,aggregator=debug".into()),
        ]
    }

    /// Starts the real binary (so it can be killed with SIGKILL): `binary`
    /// is its path, `env!("CARGO_BIN_EXE_aggregator")` in the aggregator's tests.
    pub fn spawn_process(&self, binary: &str) -> AggregatorProcess {
        self.spawn_process_with(binary, &[])
    }

    /// [`Scenario::spawn_process`] with `env` added (or overriding).
    pub fn spawn_process_with(&self, binary: &str, env: &[(&str, &str)]) -> AggregatorProcess {
        let port = free_port();
        // Its log, kept for a post-mortem when a test fails.
        let log = crate::temp_root().join(format!("{}-{port}.log", self.group));
        let file = std::fs::File::create(&log).expect("creating the aggregator's log");
        eprintln!("aggregator on port {port} logs to {}", log.display());
        let child = Command::new(binary)
            .envs(self.env(port))
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("a log handle"))
            .stderr(file)
            .spawn()
            .expect("starting the aggregator binary");
        AggregatorProcess { child, port, log }
    }

    /// Starts an aggregator inside the test.
    pub async fn spawn(&self) -> TestAggregator {
        TestAggregator::spawn(self.config()).await
    }

    pub async fn mysql(&self) -> mysql_async::Pool {
        mysql_async::Pool::new(self.mysql_url.as_str())
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to Redis")
    }
}

/// An aggregator running inside the test process (dropped, it shuts down).
pub struct TestAggregator {
    /// Where it listens.
    pub url: String,
    running: Running,
}

impl TestAggregator {
    pub async fn spawn(config: Config) -> Self {
        let running = start(config).await;
        Self {
            url: running.url.clone(),
            running,
        }
    }

    /// Graceful shutdown; fails the test when it errs or takes over 10 s.
    pub async fn shutdown(self) {
        self.running.stop_within(Duration::from_secs(10)).await;
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("{}/readyz", self.url))
            .await
            .expect("readyz answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("metrics answers")
            .text()
            .await
            .unwrap_or_default()
    }
}

/// An aggregator binary running as a child process.
pub struct AggregatorProcess {
    child: Child,
    pub port: u16,
    /// The file its standard output and error go to.
    pub log: std::path::PathBuf,
}

impl AggregatorProcess {
    /// SIGKILL: no shutdown, no leaving the group, whatever was in flight is lost.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the graceful path, which must end in a clean exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("waiting for the aggregator");
        assert!(status.success(), "SIGTERM is a clean exit: {status}");
    }
}

impl Drop for AggregatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Random submissions: `students` students rating `courses` courses, many
/// resubmitting, with `submitted_at` spread over an hour so that arrival
/// order and submission order disagree, and some exact-time ties.
pub fn random_events(
    seed: u64,
    count: usize,
    courses: usize,
    students: usize,
) -> Vec<FeedbackSubmitted> {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = shared::event::now_micros() - time::Duration::hours(2);
    (0..count)
        .map(|i| {
            let course =
                CourseId::parse(format!("CS{:03}", rng.random_range(0..courses))).expect("valid");
            let student = StudentKey::derive(
                b"test",
                &format!("student-{}", rng.random_range(0..students)),
            );
            let rating = Rating::parse(rng.random_range(1..=5)).expect("valid");
            let comment = (i % 3 != 0)
                .then(|| Comment::parse(format!("评论 {i}, \"quoted\"")).expect("valid"));
            let mut event = FeedbackSubmitted::new(course, student, rating, comment);
            // Whole seconds from a small range: ties happen, and order is scrambled.
            event.submitted_at = base + time::Duration::seconds(rng.random_range(0..3600));
            event
        })
        .collect()
}

/// Produces `events` keyed by course (as ingest does); waits for every acknowledgement.
pub async fn produce(topic: &str, events: &[FeedbackSubmitted]) {
    let payloads: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.course_id.to_string(), e.to_json()))
        .collect();
    produce_raw(topic, &payloads).await;
}

/// Produces raw (key, payload) pairs in order.
pub async fn produce_raw(topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = shared::kafka::client_config(&kafka_brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Up to what the broker takes (1 MiB and a little): a test sends one
        // poison message near that size.
        .set("message.max.bytes", "1048000")
        .create()
        .expect("a producer");
    let sends = messages.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.expect("Kafka acknowledges");
    }
}

/// A course's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbers {
    pub responses: i64,
    pub rating_sum: i64,
    pub distribution: [i64; 5],
}

/// The counting rule applied to everything produced, written here from the
/// contract's words (not with the aggregator's code): per (course, student)
/// the latest `submitted_at` wins, ties to the larger `feedback_id`; copies count once.
pub fn expected(events: &[FeedbackSubmitted]) -> BTreeMap<String, Numbers> {
    let mut winners: HashMap<(String, String), &FeedbackSubmitted> = HashMap::new();
    for event in events {
        let key = (
            event.course_id.to_string(),
            event.student_key.as_str().to_owned(),
        );
        let replaces = winners.get(&key).is_none_or(|held| {
            (event.submitted_at, event.feedback_id.to_string())
                > (held.submitted_at, held.feedback_id.to_string())
        });
        if replaces {
            winners.insert(key, event);
        }
    }
    let mut out: BTreeMap<String, Numbers> = BTreeMap::new();
    for ((course, _), event) in winners {
        let numbers = out.entry(course).or_default();
        let rating = i64::from(event.rating.get());
        numbers.responses += 1;
        numbers.rating_sum += rating;
        numbers.distribution[(rating - 1) as usize] += 1;
    }
    out
}

/// course_id, responses, rating_sum, rating_1..rating_5, version.
type StatsColumns = (String, i64, i64, i64, i64, i64, i64, i64, i64);

/// MySQL's numbers and versions per course.
pub async fn mysql_stats(mysql_url: &str) -> anyhow::Result<BTreeMap<String, (Numbers, i64)>> {
    let pool = mysql_async::Pool::new(mysql_url);
    let mut conn = pool.get_conn().await?;
    let rows: Vec<StatsColumns> = conn
        .query(
            "SELECT course_id, responses, rating_sum, rating_1, rating_2, rating_3, rating_4, rating_5, version
             FROM course_stats",
        )
        .await?;
    drop(conn);
    pool.disconnect().await?;
    Ok(rows
        .into_iter()
        .map(|(course, n, sum, r1, r2, r3, r4, r5, version)| {
            (
                course,
                (
                    Numbers {
                        responses: n,
                        rating_sum: sum,
                        distribution: [r1, r2, r3, r4, r5],
                    },
                    version,
                ),
            )
        })
        .collect())
}

/// Waits until MySQL's numbers equal `expected` (courses with zero responses aside).
pub async fn wait_for_mysql(
    mysql_url: &str,
    expected: &BTreeMap<String, Numbers>,
    limit: Duration,
) {
    let result = eventually(limit, "MySQL to equal the counting rule", || async {
        let stats = match mysql_stats(mysql_url).await {
            Ok(stats) => stats,
            Err(_) => return Ok(None), // The table may not exist yet.
        };
        let numbers: BTreeMap<String, Numbers> = stats
            .into_iter()
            .filter(|(_, (n, _))| n.responses > 0)
            .map(|(course, (n, _))| (course, n))
            .collect();
        Ok((&numbers == expected).then_some(()))
    })
    .await;
    if let Err(err) = result {
        let actual = mysql_stats(mysql_url).await.unwrap_or_default();
        panic!("{err}\nexpected: {expected:#?}\nMySQL: {actual:#?}");
    }
}

/// Waits until MySQL equals the counting rule over `events`, then checks the
/// history and current rows agree with it too.
pub async fn assert_counted(mysql_url: &str, events: &[FeedbackSubmitted], limit: Duration) {
    wait_for_mysql(mysql_url, &expected(events), limit).await;
    assert_mysql_consistent(mysql_url, events).await;
}

/// Produces `more` after `events`, waits until MySQL counts all of them,
/// then until every Redis hash present equals MySQL; returns how many are present.
pub async fn produce_more_and_settle(
    scenario: &Scenario,
    events: &[FeedbackSubmitted],
    more: &[FeedbackSubmitted],
    redis_limit: Duration,
) -> usize {
    produce(&scenario.topic, more).await;
    let all: Vec<_> = events.iter().chain(more).cloned().collect();
    assert_counted(&scenario.mysql_url, &all, Duration::from_secs(60)).await;
    wait_for_redis_to_match(scenario, redis_limit).await
}

/// Asserts the rest of MySQL agrees: one history row per distinct event, one
/// current row per counted (course, student), stats equal to the current rows.
pub async fn assert_mysql_consistent(mysql_url: &str, events: &[FeedbackSubmitted]) {
    let distinct: std::collections::HashSet<String> =
        events.iter().map(|e| e.feedback_id.to_string()).collect();
    let pool = mysql_async::Pool::new(mysql_url);
    let mut conn = pool.get_conn().await.expect("MySQL");
    let history: i64 = conn
        .query_first("SELECT COUNT(*) FROM feedback_events")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        history as usize,
        distinct.len(),
        "one history row per distinct feedback_id"
    );
    let mismatched: Vec<(String, i64, i64)> = conn
        .query(
            "SELECT s.course_id, s.responses, COUNT(c.course_id)
             FROM course_stats s LEFT JOIN current_responses c ON c.course_id = s.course_id
             GROUP BY s.course_id, s.responses, s.rating_sum
             HAVING s.responses <> COUNT(c.course_id) OR s.rating_sum <> COALESCE(SUM(c.rating), 0)",
        )
        .await
        .unwrap();
    assert!(
        mismatched.is_empty(),
        "course_stats disagrees with current_responses: {mismatched:?}"
    );
    drop(conn);
    pool.disconnect().await.unwrap();
}

/// Waits until every course hash present in Redis equals MySQL (numbers and
/// version); returns how many were present.
pub async fn wait_for_redis_to_match(scenario: &Scenario, limit: Duration) -> usize {
    let result = eventually(limit, "Redis to equal MySQL", || async {
        let mysql = mysql_stats(&scenario.mysql_url).await?;
        // As the services connect: a single server or a cluster.
        let target = shared::redis_conn::Target::parse(&scenario.redis_url, false)?;
        let mut redis = shared::redis_conn::connect(&target, Duration::from_secs(2))?;
        let mut present = 0;
        for (course, (numbers, version)) in &mysql {
            if let Some(hash) = shared::redis_hash::read(&mut redis, course).await? {
                let cached = Numbers {
                    responses: hash.responses,
                    rating_sum: hash.rating_sum,
                    distribution: hash.distribution,
                };
                if (&cached, hash.version) != (numbers, *version) {
                    return Ok(None);
                }
                present += 1;
            }
        }
        Ok(Some(present))
    })
    .await;
    result.expect("Redis converges on MySQL")
}

/// Fills every course's hash from MySQL the way query does on a miss.
pub async fn fill_all(scenario: &Scenario) -> usize {
    let pool = scenario.mysql().await;
    let mut conn = pool.get_conn().await.expect("MySQL");
    let courses: Vec<String> = conn
        .query("SELECT course_id FROM course_stats")
        .await
        .expect("courses");
    let scripts = shared::redis_hash::Scripts::new();
    let mut redis = scenario.redis().await;
    let mut written = 0;
    for course in courses {
        let stats = shared::mysql::read_stats(&mut conn, &course)
            .await
            .expect("stats");
        if scripts
            .fill(&mut redis, &course, &stats, 3600)
            .await
            .expect("fill")
        {
            written += 1;
        }
    }
    written
}

/// A metric's value from a Prometheus text page (summed over labels).
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of the next offsets MySQL records for `scenario`'s topic: how
/// many messages the aggregators have committed.
pub async fn committed(scenario: &Scenario) -> anyhow::Result<i64> {
    let pool = mysql_async::Pool::new(scenario.mysql_url.as_str());
    let sum: Option<i64> = pool
        .get_conn()
        .await?
        .exec_first(
            "SELECT CAST(COALESCE(SUM(next_offset), 0) AS SIGNED) FROM consumer_offsets WHERE topic = ?",
            (&scenario.topic,),
        )
        .await?;
    pool.disconnect().await?;
    Ok(sum.unwrap_or(0))
}

/// Waits until the aggregators have committed more than `than` messages.
pub async fn committed_past(scenario: &Scenario, than: i64) -> i64 {
    eventually(
        Duration::from_secs(60),
        "the running aggregator to commit",
        || async { Ok(Some(committed(scenario).await?).filter(|n| *n > than)) },
    )
    .await
    .unwrap()
}
