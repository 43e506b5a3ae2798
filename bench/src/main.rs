//! `feedback-bench`: the load-generating and measuring half of `scripts/bench.sh`.
//!
//! Each subcommand does one measurement (or one preparation) against the real
//! stack and prints its results on stdout as `key=value` lines, which
//! bench.sh parses into its table; progress bars and notes go to stderr.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Value};
use rand::Rng;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use shared::auth::{JwtKeys, Role};
use shared::domain::{Comment, CourseId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;

mod floor;
mod soak;

// jemalloc, as the services have: the Kafka floor must allocate as ingest does.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(about = "Benchmark helper for scripts/bench.sh (key=value lines on stdout)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print COUNT signed tokens, one per line, each for its own subject.
    Tokens {
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, value_enum, default_value_t = RoleArg::Student)]
        role: RoleArg,
        #[arg(long, env = "FEEDBACK_JWT_SECRET", hide_env_values = true)]
        secret: String,
        /// Seconds until the tokens expire.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Produce COUNT events to TOPIC as fast as Kafka takes them.
    Prefill {
        #[arg(long, env = "FEEDBACK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 200)]
        courses: usize,
        #[arg(long, default_value_t = 20_000)]
        students: usize,
    },
    /// MariaDB's own rate for multi-row INSERTs into a table shaped like feedback_events.
    InsertCeiling {
        #[arg(long)]
        mysql_url: String,
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Connections inserting at once, each its share of the rows.
        #[arg(long, default_value_t = 1)]
        connections: usize,
    },
    /// Wait until the aggregator recorded COUNT offsets of TOPIC; its rate from its first progress.
    Drain {
        #[arg(long)]
        mysql_url: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: i64,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Produce-to-visible-in-Redis latency at a fixed produce rate.
    Freshness {
        #[arg(long, env = "FEEDBACK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        mysql_url: String,
        #[arg(long)]
        redis_url: String,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 50)]
        courses: usize,
        /// How long to wait for the last events after producing stops.
        #[arg(long, default_value_t = 30)]
        grace_secs: u64,
    },
    /// GET requests at a fixed rate, open loop (wrk2's model): each answer
    /// timed from when its request was due, so a wait for a free connection
    /// counts; also timed from when it was sent.
    Rate {
        /// Scheme, host and port, e.g. http://127.0.0.1:18082
        #[arg(long)]
        url: String,
        /// Paths to request, in turn (repeat the flag).
        #[arg(long = "path", required = true)]
        paths: Vec<String>,
        /// Sent as `Authorization: Bearer TOKEN`.
        #[arg(long)]
        token: Option<String>,
        /// Requests per second.
        #[arg(long)]
        rate: u64,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds at the same rate before them, not measured.
        #[arg(long, default_value_t = 1)]
        warmup_secs: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Requests are released a slot of this many microseconds at a time.
        #[arg(long, default_value_t = 500)]
        slot_us: u64,
    },
    /// Serve HTTP on ADDR: each POST /v1/feedback produces one event to TOPIC
    /// as ingest does (the same bytes, the same producer settings) and is
    /// answered 202 once Kafka acknowledged it; nothing else. Ingest's limit.
    KafkaFloor {
        #[arg(long, env = "FEEDBACK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "127.0.0.1:18090")]
        addr: String,
    },
    /// Messages in TOPIC (the sum of its partitions' high watermarks).
    TopicCount {
        #[arg(long, env = "FEEDBACK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
    },
    /// Steady submissions over the ingest replicas while scripts/soak.sh
    /// injects faults (told on stdin), then exact counts; see docs/soak.md.
    Soak(soak::Args),
    /// Delete the bench's topics (missing ones are fine), and with `--prefix`
    /// every topic whose name starts with it (scripts/test.sh: `fbtest-`).
    DeleteTopics {
        #[arg(long, env = "FEEDBACK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        prefix: Option<String>,
        topics: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Student,
    Admin,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tokens {
            count,
            role,
            secret,
            ttl_secs,
        } => tokens(count, role, &secret, ttl_secs),
        Command::Prefill {
            brokers,
            topic,
            count,
            courses,
            students,
        } => prefill(&brokers, &topic, count, courses, students).await,
        Command::InsertCeiling {
            connections,
            mysql_url,
            rows,
            batch,
        } => insert_ceiling(&mysql_url, rows, batch, connections).await,
        Command::Drain {
            mysql_url,
            topic,
            count,
            timeout_secs,
        } => drain(&mysql_url, &topic, count, Duration::from_secs(timeout_secs)).await,
        Command::Freshness {
            brokers,
            topic,
            mysql_url,
            redis_url,
            rate,
            seconds,
            courses,
            grace_secs,
        } => {
            let plan = FreshPlan {
                rate,
                duration: Duration::from_secs(seconds),
                courses,
                grace: Duration::from_secs(grace_secs),
            };
            freshness(&brokers, &topic, &mysql_url, &redis_url, plan).await
        }
        Command::Rate {
            url,
            paths,
            token,
            rate,
            seconds,
            warmup_secs,
            connections,
            slot_us,
        } => {
            let plan = RatePlan {
                url,
                paths,
                token,
                rate,
                warmup: Duration::from_secs(warmup_secs),
                duration: Duration::from_secs(seconds),
                connections,
                slot: Duration::from_micros(slot_us.max(1)),
            };
            // Its own thread and a one-thread runtime: the load generator
            // shares the cores with what it measures, so it should take as
            // little of them as it can.
            tokio::task::spawn_blocking(move || rate_load(plan)).await?
        }
        Command::KafkaFloor {
            brokers,
            topic,
            addr,
        } => tokio::task::spawn_blocking(move || floor::run(&brokers, &topic, &addr)).await?,
        Command::TopicCount { brokers, topic } => topic_count(&brokers, &topic),
        Command::Soak(args) => {
            if !soak::run(args).await? {
                // The report is out; the status tells the script the checks failed.
                std::process::exit(1);
            }
            Ok(())
        }
        Command::DeleteTopics {
            brokers,
            prefix,
            topics,
        } => delete_topics(&brokers, prefix.as_deref(), topics).await,
    }
}

// ------------------------------------------------------------------ tokens --

fn tokens(count: usize, role: RoleArg, secret: &str, ttl_secs: u64) -> anyhow::Result<()> {
    let keys = JwtKeys::new(secret.as_bytes())?;
    let (role, prefix) = match role {
        RoleArg::Student => (Role::Student, "bench-student"),
        RoleArg::Admin => (Role::Admin, "bench-admin"),
    };
    let mut out = String::with_capacity(count * 200);
    for i in 0..count {
        out.push_str(&keys.mint(&format!("{prefix}-{i}"), role, ttl_secs));
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

// ----------------------------------------------------------------- helpers --

/// `key=value` on stdout, the only thing bench.sh reads.
fn report(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("    {msg:<10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// The value at quantile `q` (0..=1) of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn course_id(prefix: &str, i: usize) -> anyhow::Result<CourseId> {
    CourseId::parse(format!("{prefix}{i:04}")).map_err(|e| anyhow::anyhow!("course id: {e:?}"))
}

/// An event as ingest would write it, for a student pseudonym derived from `subject`.
fn event(course: &CourseId, student: StudentKey, rating: i64) -> anyhow::Result<Vec<u8>> {
    let rating = Rating::parse(rating).map_err(|e| anyhow::anyhow!("rating: {e:?}"))?;
    let comment = Comment::parse("bench: clear lectures, 作业有点多").ok();
    Ok(FeedbackSubmitted::new(course.clone(), student, rating, comment).to_json())
}

/// Counts failed deliveries, so a bench that lost events says so instead of reporting a rate.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn producer(brokers: &str, linger_ms: u32) -> anyhow::Result<ThreadedProducer<Deliveries>> {
    shared::kafka::client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", "30000")
        .create_with_context(Deliveries::default())
        .context("creating the Kafka producer")
}

/// Sends one message, waiting while librdkafka's queue is full.
fn send(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    loop {
        let record = BaseRecord::to(topic).key(key).payload(payload);
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((err, _)) => return Err(err).context("producing"),
        }
    }
}

fn flush(producer: &ThreadedProducer<Deliveries>) -> anyhow::Result<()> {
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} messages were not delivered");
    Ok(())
}

// ----------------------------------------------------------------- prefill --

async fn prefill(
    brokers: &str,
    topic: &str,
    count: u64,
    courses: usize,
    students: usize,
) -> anyhow::Result<()> {
    shared::kafka::ensure_events_topic(brokers, topic).await?;
    let courses: Vec<CourseId> = (0..courses.max(1))
        .map(|i| course_id("BENCH-C", i))
        .collect::<anyhow::Result<_>>()?;
    // HMACs computed once: deriving one per event would make the generator the bottleneck.
    let students: Vec<StudentKey> = (0..students.max(1))
        .map(|j| StudentKey::derive(b"feedback-bench", &format!("student-{j}")))
        .collect();
    let topic = topic.to_owned();
    let brokers = brokers.to_owned();
    // librdkafka calls block (queue full): off the async runtime.
    tokio::task::spawn_blocking(move || produce_all(&brokers, &topic, count, &courses, &students))
        .await
        .context("the prefill thread")?
}

fn produce_all(
    brokers: &str,
    topic: &str,
    count: u64,
    courses: &[CourseId],
    students: &[StudentKey],
) -> anyhow::Result<()> {
    let producer = producer(brokers, 20)?;
    let bar = progress(count, "prefill");
    let mut rng = rand::rng();
    let started = Instant::now();
    for n in 0..count {
        let course = &courses[rng.random_range(0..courses.len())];
        let student = students[rng.random_range(0..students.len())].clone();
        let payload = event(course, student, rng.random_range(1..=5))?;
        send(&producer, topic, course.as_str(), &payload)?;
        if n % 1000 == 0 {
            bar.set_position(n);
        }
    }
    flush(&producer)?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    report("produced", count);
    report("seconds", format!("{seconds:.2}"));
    report("rate", format!("{:.0}", count as f64 / seconds));
    Ok(())
}

// ----------------------------------------------------------- insert ceiling --

const CEILING_TABLE: &str = "bench_insert_ceiling";

/// Rows like the aggregator's history rows, made before the clock starts.
fn ceiling_rows(rows: usize) -> Vec<Vec<Value>> {
    let mut rng = rand::rng();
    let at = shared::mysql::datetime(shared::event::now_micros());
    (0..rows)
        .map(|n| {
            vec![
                Value::from(ulid::Ulid::new().to_string()),
                Value::from(format!("BENCH-C{:04}", rng.random_range(0..200))),
                Value::from(StudentKey::derive(b"ceiling", &n.to_string()).as_str()),
                Value::from(rng.random_range(1u8..=5)),
                Value::from("bench: clear lectures, 作业有点多"),
                Value::from(at.as_str()),
                Value::from((n % 6) as i32),
                Value::from(n as i64),
            ]
        })
        .collect()
}

async fn insert_ceiling(
    url: &str,
    rows: usize,
    batch: usize,
    connections: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        batch > 0 && rows > 0 && connections > 0,
        "rows, batch and connections must be positive"
    );
    shared::mysql::migrate(url).await?;
    let pool = shared::mysql::pool(url)?;
    let mut conn = pool.get_conn().await.context("connecting to MySQL")?;
    conn.query_drop(format!("DROP TABLE IF EXISTS {CEILING_TABLE}"))
        .await?;
    conn.query_drop(format!("CREATE TABLE {CEILING_TABLE} LIKE feedback_events"))
        .await?;
    let data = ceiling_rows(rows);
    // Each connection takes every n-th batch, so all write one table at once.
    let batches: Vec<Vec<Vec<Value>>> = data.chunks(batch).map(<[_]>::to_vec).collect();
    let mut shares: Vec<Vec<Vec<Vec<Value>>>> = vec![Vec::new(); connections];
    for (n, chunk) in batches.into_iter().enumerate() {
        shares[n % connections].push(chunk);
    }
    let mut conns = vec![conn];
    for _ in 1..connections {
        conns.push(pool.get_conn().await.context("connecting to MySQL")?);
    }
    let bar = progress(rows as u64, "insert");
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(shares)
        .map(|(mut conn, share)| {
            let bar = bar.clone();
            tokio::spawn(async move {
                for chunk in &share {
                    insert_batch(&mut conn, chunk).await?;
                    bar.inc(chunk.len() as u64);
                }
                anyhow::Ok(conn)
            })
        })
        .collect();
    let mut conns = Vec::new();
    for task in tasks {
        conns.push(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    conns[0]
        .query_drop(format!("DROP TABLE {CEILING_TABLE}"))
        .await?;
    drop(conns);
    pool.disconnect().await?;
    report("rows", rows);
    report("batch", batch);
    report("connections", connections);
    report("seconds", format!("{seconds:.2}"));
    report("rate", format!("{:.0}", rows as f64 / seconds));
    Ok(())
}

/// One transaction, one multi-row INSERT: the same shape as the aggregator's history write.
async fn insert_batch(conn: &mut mysql_async::Conn, chunk: &[Vec<Value>]) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO {CEILING_TABLE}
           (feedback_id, course_id, student_key, rating, comment, submitted_at, kafka_partition, kafka_offset)
         VALUES {}",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
    );
    let params: Vec<Value> = chunk.iter().flatten().cloned().collect();
    let mut tx = conn.start_transaction(Default::default()).await?;
    tx.exec_drop(sql, Params::Positional(params)).await?;
    tx.commit().await?;
    Ok(())
}

// ------------------------------------------------------------------- drain --

/// The aggregator's recorded progress on `topic`; `None` before its tables exist.
async fn recorded(pool: &Pool, topic: &str) -> Option<i64> {
    let mut conn = pool.get_conn().await.ok()?;
    let sum: Option<Option<i64>> = conn
        .exec_first(
            "SELECT CAST(SUM(next_offset) AS SIGNED) FROM consumer_offsets WHERE topic = ?",
            (topic,),
        )
        .await
        .ok()?;
    Some(sum.flatten().unwrap_or(0))
}

async fn drain(url: &str, topic: &str, count: i64, limit: Duration) -> anyhow::Result<()> {
    let pool = shared::mysql::pool(url)?;
    let bar = progress(count as u64, "aggregate");
    let called = Instant::now();
    // (time, offsets) of the first sample with progress: group join and start-up are excluded.
    let mut first: Option<(Instant, i64)> = None;
    let done = loop {
        let now = Instant::now();
        anyhow::ensure!(
            now - called < limit,
            "the aggregator recorded {} of {count} offsets within {limit:?}",
            bar.position()
        );
        let sum = recorded(&pool, topic).await.unwrap_or(0);
        bar.set_position(sum.max(0) as u64);
        if sum > 0 && first.is_none() {
            first = Some((now, sum));
        }
        if sum >= count {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    bar.finish_and_clear();
    pool.disconnect().await?;
    let (start, already) = first.context("no progress was recorded")?;
    let seconds = (done - start).as_secs_f64();
    anyhow::ensure!(
        seconds > 0.0 && count > already,
        "the aggregator finished before the first sample: use a larger --count"
    );
    report("events", count - already);
    report("seconds", format!("{seconds:.2}"));
    report(
        "startup_seconds",
        format!("{:.2}", (start - called).as_secs_f64()),
    );
    report("rate", format!("{:.0}", (count - already) as f64 / seconds));
    Ok(())
}

// --------------------------------------------------------------- freshness --

struct FreshPlan {
    rate: u64,
    duration: Duration,
    courses: usize,
    grace: Duration,
}

/// When each event was handed to the producer, per course, in produce order.
type SentLog = Arc<Mutex<Vec<Vec<Instant>>>>;

async fn freshness(
    brokers: &str,
    topic: &str,
    mysql_url: &str,
    redis_url: &str,
    plan: FreshPlan,
) -> anyhow::Result<()> {
    // A run-unique prefix: the courses are new, so every event adds a response.
    let run = ulid::Ulid::new().to_string();
    let prefix = format!("FRESH-{}-C", &run[run.len() - 8..]);
    let courses: Vec<CourseId> = (0..plan.courses.max(1))
        .map(|i| course_id(&prefix, i))
        .collect::<anyhow::Result<_>>()?;
    let client = redis::Client::open(redis_url).context("the Redis URL")?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let base = fill_hashes(mysql_url, &mut redis, &courses).await?;

    let sent: SentLog = Arc::new(Mutex::new(vec![Vec::new(); courses.len()]));
    let total = plan.rate * plan.duration.as_secs_f64() as u64;
    let producing = {
        let (brokers, topic, courses, sent) = (
            brokers.to_owned(),
            topic.to_owned(),
            courses.clone(),
            sent.clone(),
        );
        let (rate, duration) = (plan.rate, plan.duration);
        tokio::task::spawn_blocking(move || {
            produce_paced(&brokers, &topic, &courses, rate, duration, &sent)
        })
    };
    let watch = Watch {
        courses: &courses,
        base: &base,
        sent: &sent,
        total,
    };
    let seen = watch.poll(&mut redis, plan.duration + plan.grace).await;
    let (achieved, produced) = producing.await.context("the producer thread")??;
    report_freshness(seen?, produced, achieved);
    Ok(())
}

/// Fills each course's hash from MySQL (version 0 for a new course) so the
/// aggregator's deltas apply; returns each hash's `responses` before the run.
async fn fill_hashes(
    mysql_url: &str,
    redis: &mut redis::aio::MultiplexedConnection,
    courses: &[CourseId],
) -> anyhow::Result<Vec<i64>> {
    let pool = shared::mysql::pool(mysql_url)?;
    let mut conn = pool.get_conn().await.context("connecting to MySQL")?;
    let scripts = shared::redis_hash::Scripts::new();
    let mut base = Vec::with_capacity(courses.len());
    for course in courses {
        let stats = shared::mysql::read_stats(&mut conn, course.as_str()).await?;
        scripts
            .fill(redis, course.as_str(), &stats, 3600)
            .await
            .context("filling a course hash")?;
        let row = shared::redis_hash::read(redis, course.as_str())
            .await?
            .with_context(|| format!("{course}: no hash after the fill"))?;
        base.push(row.responses);
    }
    drop(conn);
    pool.disconnect().await?;
    Ok(base)
}

/// Produces at `rate` per second for `duration`, round-robin over the courses,
/// each event from a new student. Returns (achieved rate, events produced).
fn produce_paced(
    brokers: &str,
    topic: &str,
    courses: &[CourseId],
    rate: u64,
    duration: Duration,
    sent: &SentLog,
) -> anyhow::Result<(f64, u64)> {
    let producer = producer(brokers, 2)?;
    warm_up(&producer, topic, &courses[0])?;
    let total = rate * duration.as_secs_f64() as u64;
    let started = Instant::now();
    let mut n = 0u64;
    while n < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while n < due {
            let c = (n % courses.len() as u64) as usize;
            let student = StudentKey::derive(b"feedback-bench-fresh", &format!("{n}"));
            let payload = event(&courses[c], student, 1 + (n % 5) as i64)?;
            // The clock starts when the event is handed over, as ingest hands it over.
            let at = Instant::now();
            send(&producer, topic, courses[c].as_str(), &payload)?;
            lock(sent)[c].push(at);
            n += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let achieved = n as f64 / started.elapsed().as_secs_f64();
    flush(&producer)?;
    Ok((achieved, n))
}

/// Connects the producer and learns the partition leaders before the clock
/// starts (else the first events wait for that and look slow): one event for
/// a course nobody watches, flushed.
fn warm_up(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    watched: &CourseId,
) -> anyhow::Result<()> {
    let course = CourseId::parse(format!("{watched}-WARM"))
        .map_err(|e| anyhow::anyhow!("course id: {e:?}"))?;
    let student = StudentKey::derive(b"feedback-bench-fresh", "warm-up");
    send(
        producer,
        topic,
        course.as_str(),
        &event(&course, student, 3)?,
    )?;
    flush(producer)
}

fn lock(sent: &SentLog) -> std::sync::MutexGuard<'_, Vec<Vec<Instant>>> {
    // A poisoned lock means the other side panicked; its data is still usable.
    sent.lock().unwrap_or_else(|e| e.into_inner())
}

struct Watch<'a> {
    courses: &'a [CourseId],
    base: &'a [i64],
    sent: &'a SentLog,
    total: u64,
}

impl Watch<'_> {
    /// Polls every course's `responses` every 2 ms; an event is visible once
    /// its course's count reaches its ordinal.
    async fn poll(
        &self,
        redis: &mut redis::aio::MultiplexedConnection,
        limit: Duration,
    ) -> anyhow::Result<Seen> {
        let keys: Vec<String> = self
            .courses
            .iter()
            .map(|c| shared::redis_hash::course_key(c.as_str()))
            .collect();
        let mut seen = vec![0usize; keys.len()];
        let mut latencies = Vec::with_capacity(self.total as usize);
        let bar = progress(self.total, "visible");
        let started = Instant::now();
        let mut backlog = None;
        while (latencies.len() as u64) < self.total && started.elapsed() < limit {
            let counts = responses(redis, &keys).await?;
            let sent = self.record(&counts, Instant::now(), &mut seen, &mut latencies);
            if sent == self.total && backlog.is_none() {
                backlog = Some(self.total - latencies.len() as u64);
            }
            bar.set_position(latencies.len() as u64);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bar.finish_and_clear();
        Ok(Seen {
            latencies,
            backlog: backlog.unwrap_or(self.total),
        })
    }

    /// Turns one poll's counts into the latencies of the events they reveal;
    /// returns how many events were produced so far.
    fn record(
        &self,
        counts: &[Option<i64>],
        now: Instant,
        seen: &mut [usize],
        latencies: &mut Vec<f64>,
    ) -> u64 {
        let sent = lock(self.sent);
        for (c, count) in counts.iter().enumerate() {
            // A missing hash (deleted on a gap) shows nothing until refilled.
            let visible = count
                .map_or(0, |n| (n - self.base[c]).max(0) as usize)
                .min(sent[c].len());
            for at in &sent[c][seen[c].min(visible)..visible] {
                latencies.push((now - *at).as_secs_f64() * 1000.0);
            }
            seen[c] = seen[c].max(visible);
        }
        sent.iter().map(|times| times.len() as u64).sum()
    }
}

/// What the watcher saw.
struct Seen {
    /// Produce-to-visible of every event seen, in ms, in the order seen.
    latencies: Vec<f64>,
    /// Events produced but not yet visible when the last one was produced:
    /// a backlog that grew during the run means the aggregator fell behind.
    backlog: u64,
}

/// One pipelined round trip: `responses` of every course hash.
async fn responses(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> anyhow::Result<Vec<Option<i64>>> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("HMGET").arg(key).arg("responses");
    }
    let rows: Vec<Vec<Option<i64>>> = pipe.query_async(redis).await.context("polling Redis")?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().next().flatten())
        .collect())
}

fn report_freshness(seen: Seen, produced: u64, achieved: f64) {
    let mut latencies = seen.latencies;
    latencies.sort_by(f64::total_cmp);
    report("backlog_at_end", seen.backlog);
    report("produced", produced);
    report("visible", latencies.len());
    report("produce_rate", format!("{achieved:.0}"));
    report("p50_ms", format!("{:.1}", quantile(&latencies, 0.50)));
    report("p99_ms", format!("{:.1}", quantile(&latencies, 0.99)));
    report(
        "max_ms",
        format!("{:.1}", latencies.last().copied().unwrap_or(f64::NAN)),
    );
}

// -------------------------------------------------------------------- rate --

struct RatePlan {
    url: String,
    paths: Vec<String>,
    token: Option<String>,
    rate: u64,
    warmup: Duration,
    duration: Duration,
    connections: usize,
    slot: Duration,
}

/// What the requests of one connection saw.
#[derive(Default)]
struct Answers {
    /// Due to answered, and sent to answered, in ms.
    from_due: Vec<f64>,
    from_sent: Vec<f64>,
    /// Answered 200 (the others answered are `from_due.len()` less these).
    ok: u64,
    errors: u64,
    /// Requests of the warm-up taken (sent, not counted).
    warmup: u64,
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

fn rate_load(plan: RatePlan) -> anyhow::Result<()> {
    anyhow::ensure!(
        plan.rate > 0 && plan.connections > 0,
        "--rate and --connections must be positive"
    );
    let uri: hyper::Uri = plan.url.parse().context("--url")?;
    let authority = uri
        .authority()
        .context("--url needs a host and port")?
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(tokio::sync::Mutex::new(rx));
    let header = |v: String| hyper::header::HeaderValue::from_str(&v).context("a header value");
    let host = header(authority.clone())?;
    let auth = plan
        .token
        .map(|t| header(format!("Bearer {t}")))
        .transpose()?;
    let paths: Arc<[hyper::Uri]> = plan
        .paths
        .iter()
        .map(|p| p.parse().with_context(|| format!("path {p}")))
        .collect::<anyhow::Result<_>>()?;
    let warmup = plan.warmup;
    let released = (plan.rate as f64 * (warmup + plan.duration).as_secs_f64()) as u64;
    let (cpu, answers, mut late) = runtime.block_on(async {
        let mut senders = Vec::with_capacity(plan.connections);
        for _ in 0..plan.connections {
            senders.push(connect(&authority).await?);
        }
        let started = Instant::now();
        let cpu_before = own_cpu_seconds();
        let workers: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(i, sender)| {
                let conn = Conn {
                    sender,
                    authority: authority.clone(),
                    host: host.clone(),
                    auth: auth.clone(),
                    paths: paths.clone(),
                    next: i,
                    measure_from: started + warmup,
                };
                tokio::spawn(conn.serve(queue.clone()))
            })
            .collect();
        let (rate, slot) = (plan.rate, plan.slot);
        let pacer = std::thread::spawn(move || pace(&tx, started, rate, slot, released));
        let deadline = warmup + plan.duration + Duration::from_secs(30);
        let mut answers = Vec::with_capacity(workers.len());
        for worker in workers {
            match tokio::time::timeout_at((started + deadline).into(), worker).await {
                Ok(joined) => answers.push(joined?),
                Err(_) => {
                    eprintln!("    a connection still had no answer {deadline:?} after the start")
                }
            }
        }
        let late = pacer
            .join()
            .map_err(|_| anyhow::anyhow!("the pacer panicked"))?;
        // What the generator took of the cores it shares with what it measures.
        let cpu = own_cpu_seconds()
            .zip(cpu_before)
            .map(|(after, before)| (after - before) / started.elapsed().as_secs_f64());
        anyhow::Ok((cpu, answers, late))
    })?;
    let elapsed = plan.duration.as_secs_f64();
    let mut all = Answers::default();
    for a in answers {
        all.from_due.extend(a.from_due);
        all.from_sent.extend(a.from_sent);
        all.ok += a.ok;
        all.errors += a.errors;
        all.warmup += a.warmup;
    }
    let answered = all.from_due.len() as u64;
    all.from_due.sort_by(f64::total_cmp);
    all.from_sent.sort_by(f64::total_cmp);
    report("rps", format!("{:.0}", answered as f64 / elapsed));
    report("p50_ms", format!("{:.3}", quantile(&all.from_due, 0.50)));
    report("p99_ms", format!("{:.3}", quantile(&all.from_due, 0.99)));
    report("p999_ms", format!("{:.3}", quantile(&all.from_due, 0.999)));
    report("max_ms", format!("{:.3}", quantile(&all.from_due, 1.0)));
    report(
        "sent_p50_ms",
        format!("{:.3}", quantile(&all.from_sent, 0.50)),
    );
    report(
        "sent_p99_ms",
        format!("{:.3}", quantile(&all.from_sent, 0.99)),
    );
    report("ok", all.ok);
    report("total", answered);
    // Requests that failed, and those no connection took at all.
    let untaken = released.saturating_sub(all.warmup + answered + all.errors);
    report("errors", all.errors + untaken);
    // The measured slots only (one per slot, from the start).
    let mut late = late.split_off(
        ((warmup.as_secs_f64() / plan.slot.as_secs_f64()).ceil() as usize).min(late.len()),
    );
    late.sort_by(f64::total_cmp);
    report("pacer_late_p99_ms", format!("{:.3}", quantile(&late, 0.99)));
    report("pacer_late_max_ms", format!("{:.3}", quantile(&late, 1.0)));
    if let Some(share) = cpu {
        report("generator_cpu_pct", format!("{:.0}", share * 100.0));
    }
    Ok(())
}

/// This process's user and system CPU time so far, from /proc/self/stat
/// (fields 14 and 15, in USER_HZ ticks: 100 per second on Linux).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Releases `total` requests at `rate` per second from `start`, a slot at a
/// time: every request due within a slot is released at its start and timed
/// from it. A pacer that wakes late is charged for it (its requests are due
/// all the same), the slot's length is not; and the pacer sleeps once per
/// slot rather than once per request, since on these shared cores every
/// wake-up of the generator is CPU the measured service does not get.
///
/// Returns how late it released each slot, in ms: the part of the latencies
/// that is the generator's own thread waiting for a core.
fn pace(
    tx: &tokio::sync::mpsc::UnboundedSender<Instant>,
    start: Instant,
    rate: u64,
    slot: Duration,
    total: u64,
) -> Vec<f64> {
    let mut late = Vec::new();
    let mut released = 0u64;
    let mut n = 0u32;
    while released < total {
        let at = start + slot * n;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        late.push(at.elapsed().as_secs_f64() * 1000.0);
        // Requests 0..=floor(elapsed * rate) are due by now.
        let due = ((slot * n).as_secs_f64() * rate as f64) as u64 + 1;
        while released < due.min(total) {
            if tx.send(at).is_err() {
                return late;
            }
            released += 1;
        }
        n += 1;
    }
    late
}

async fn connect(authority: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One keep-alive connection, taking due requests from the shared queue.
struct Conn {
    sender: Sender,
    authority: String,
    host: hyper::header::HeaderValue,
    auth: Option<hyper::header::HeaderValue>,
    paths: Arc<[hyper::Uri]>,
    next: usize,
    /// Requests due before this are the warm-up: sent, not counted.
    measure_from: Instant,
}

impl Conn {
    async fn serve(
        mut self,
        queue: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>,
    ) -> Answers {
        let mut answers = Answers::default();
        loop {
            let Some(due) = queue.lock().await.recv().await else {
                return answers;
            };
            let sent = Instant::now();
            let result = self.get().await;
            let done = Instant::now();
            if due < self.measure_from {
                answers.warmup += 1;
            } else {
                match &result {
                    Ok(status) => {
                        answers.from_due.push((done - due).as_secs_f64() * 1000.0);
                        answers.from_sent.push((done - sent).as_secs_f64() * 1000.0);
                        answers.ok += u64::from(*status == hyper::StatusCode::OK);
                    }
                    Err(e) => {
                        answers.errors += 1;
                        eprintln!("    request failed: {e:#}");
                    }
                }
            }
            if result.is_err() {
                match connect(&self.authority).await {
                    Ok(sender) => self.sender = sender,
                    // The other connections take the rest.
                    Err(_) => return answers,
                }
            }
        }
    }

    async fn get(&mut self) -> anyhow::Result<hyper::StatusCode> {
        use http_body_util::BodyExt;
        let path = self.paths[self.next % self.paths.len()].clone();
        self.next += 1;
        let mut request = hyper::Request::get(path).body(http_body_util::Empty::new())?;
        let headers = request.headers_mut();
        headers.insert(hyper::header::HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            headers.insert(hyper::header::AUTHORIZATION, auth.clone());
        }
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }
}

// ------------------------------------------------------------------ topics --

fn topic_count(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = shared::kafka::client_config(brokers)
        .set("group.id", "feedback-bench-watermarks")
        .create()
        .context("creating a Kafka client")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("metadata of {topic}"))?;
    let mut total = 0;
    let mut per_partition = HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            per_partition.insert(p.id(), high - low);
            total += high - low;
        }
    }
    report("partitions", per_partition.len());
    report("messages", total);
    Ok(())
}

async fn delete_topics(
    brokers: &str,
    prefix: Option<&str>,
    mut topics: Vec<String>,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        shared::kafka::client_config(brokers)
            .create()
            .context("creating the Kafka admin client")?;
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .context("listing the topics")?;
        topics.extend(
            metadata
                .topics()
                .iter()
                .map(|t| t.name())
                .filter(|name| name.starts_with(prefix))
                .map(str::to_owned),
        );
    }
    // A few hundred at a time: one request for thousands of partitions can
    // outlast the operation timeout.
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for chunk in topics.chunks(200) {
        let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let results = admin
            .delete_topics(&names, &options)
            .await
            .context("deleting topics")?;
        for result in results {
            match result {
                Ok(name) => report("deleted", name),
                Err((name, RDKafkaErrorCode::UnknownTopicOrPartition)) => report("missing", name),
                Err((name, code)) => eprintln!("deleting {name}: {code}"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_releases_every_request_on_schedule() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        // 10,000/s for 50 ms in 1 ms slots: 500 requests, 10 per slot.
        let late = pace(&tx, start, 10_000, Duration::from_millis(1), 500);
        assert_eq!(late.len(), 51, "a lateness for each slot");
        let mut due = Vec::new();
        while let Ok(at) = rx.try_recv() {
            due.push(at);
        }
        assert_eq!(due.len(), 500);
        // Each is stamped with its slot's start: 1 at 0 ms (request 0), then 10 a slot.
        assert_eq!(due[0], start);
        assert_eq!(due[1], start + Duration::from_millis(1));
        assert_eq!(due[10], start + Duration::from_millis(1));
        assert_eq!(due[11], start + Duration::from_millis(2));
        assert!(due.windows(2).all(|w| w[0] <= w[1]));
        // Paced, not all at once: the last slot starts 50 ms in.
        assert_eq!(*due.last().unwrap(), start + Duration::from_millis(50));
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
