//! `feedback-bench soak`: the load and the judge of `scripts/soak.sh`.
//!
//! It sends submissions at a fixed rate over the ingest replicas, each under
//! an `Idempotency-Key` of its own, and retries one (same key, same body,
//! the other replica) until it has a definitive answer, as a careful client
//! would; so a submission is counted once however often it had to be sent.
//! From the answers it keeps its own tally by the contract's counting rule,
//! and it polls query's stats and MySQL's `course_stats` to tell when the
//! pipeline has caught up with it.
//!
//! The script says on stdin when a fault begins and ends (`kill NAME`,
//! `restart NAME`, `up NAME`) and when to stop (`end`). The soak then waits
//! for every submission's answer and for the pipeline to settle, checks the
//! counts exactly and prints its report on stdout; progress goes to stderr.
//! Exit status 1 when a check failed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use shared::auth::{JwtKeys, Role};
use tokio::io::AsyncBufReadExt;

/// The course ids the soak rates; it reads no other.
const COURSE_PREFIX: &str = "SOAK-C";
/// Comments: none, English, Chinese.
const COMMENTS: [Option<&str>; 4] = [
    None,
    Some("soak: clear lectures"),
    Some("讲得很清楚，作业有点多"),
    Some("the labs were fine"),
];
/// How long one submission may take: ingest answers within its Kafka
/// delivery timeout plus a spool write, far less than this.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// One stats read; query answers from MySQL within its own 3 s budget.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a poll waits after its reads before judging them, so an answer
/// that already counts a submission whose 202 was still on its way to the
/// soak is judged against a tally that has it.
const JUDGE_DELAY: Duration = Duration::from_millis(300);
/// How far back each course's tally keeps its states (a poll needs the last
/// few seconds).
const HISTORY: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// An ingest replica's base URL (repeat the flag; submissions take turns).
    #[arg(long = "ingest", required = true)]
    ingest: Vec<String>,
    /// Query's base URL.
    #[arg(long)]
    query: String,
    #[arg(long)]
    mysql_url: String,
    /// Signs the students' and the admin's tokens (shared-secret mode).
    #[arg(long, env = "FEEDBACK_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// Submissions per second (first tries; retries come on top).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 2000)]
    students: u32,
    #[arg(long, default_value_t = 40)]
    courses: u32,
    /// Percent of accepted submissions sent again, same key and body, to
    /// another replica, which must answer the same feedback_id.
    #[arg(long, default_value_t = 5)]
    replica_retry_pct: u8,
    /// How often the pipeline's numbers are compared with the tally.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// The pipeline is in step when every course's numbers, in query and in
    /// MySQL, are a state the tally had at most this long ago (under steady
    /// load a few submissions are always on their way through).
    #[arg(long, default_value_t = 1000)]
    in_step_ms: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
    /// After `end`: how long submissions still being retried may take.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
    /// After `end` and the last answer: how long the pipeline may take to settle.
    #[arg(long, default_value_t = 180)]
    settle_secs: u64,
    /// Tokens live this long (the services refuse more than a day).
    #[arg(long, default_value_t = 86_000)]
    token_ttl_secs: u64,
    /// Distinguishes this run's Idempotency-Keys and student names.
    #[arg(long, default_value = "soak")]
    run: String,
}

// ------------------------------------------------------------------ tally --

/// One course's numbers by the counting rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stats {
    responses: i64,
    rating_sum: i64,
    distribution: [i64; 5],
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.distribution;
        write!(
            f,
            "{} responses, sum {}, [{} {} {} {} {}]",
            self.responses, self.rating_sum, d[0], d[1], d[2], d[3], d[4]
        )
    }
}

/// What the soak was told: every accepted submission, by the counting rule.
///
/// A student's submissions for one course are sent one after another (the
/// next only once the previous one has its definitive answer), so ingest
/// stamps them in that order and the latest accepted one is the one the
/// rule keeps: the tally needs no `submitted_at`.
struct Tally {
    /// (student, course) → the current rating.
    current: HashMap<(u32, u32), u8>,
    /// Pairs with a submission still unanswered.
    busy: HashSet<(u32, u32)>,
    /// Every feedback_id answered 202, once each.
    accepted_ids: HashSet<String>,
    /// Per course: its states over the last [`HISTORY`], oldest first, so a
    /// poll can be matched against any state it may have seen.
    history: Vec<VecDeque<(Instant, Stats)>>,
}

impl Tally {
    fn new(courses: u32, start: Instant) -> Self {
        Self {
            current: HashMap::new(),
            busy: HashSet::new(),
            accepted_ids: HashSet::new(),
            history: (0..courses)
                .map(|_| VecDeque::from([(start, Stats::default())]))
                .collect(),
        }
    }

    fn accept(&mut self, student: u32, course: u32, rating: u8, feedback_id: String) {
        self.accepted_ids.insert(feedback_id);
        let history = &mut self.history[course as usize];
        let mut stats = history.back().map(|s| s.1).unwrap_or_default();
        let r = i64::from(rating);
        match self.current.insert((student, course), rating) {
            None => stats.responses += 1,
            Some(previous) => {
                stats.rating_sum -= i64::from(previous);
                stats.distribution[usize::from(previous) - 1] -= 1;
            }
        }
        stats.rating_sum += r;
        stats.distribution[usize::from(rating) - 1] += 1;
        let now = Instant::now();
        history.push_back((now, stats));
        // Keep the newest state older than the horizon: it is the state at the horizon.
        while history.len() > 1 && history[1].0 + HISTORY < now {
            history.pop_front();
        }
    }

    fn latest(&self, course: u32) -> Stats {
        self.history[course as usize]
            .back()
            .map(|s| s.1)
            .unwrap_or_default()
    }

    /// How far `seen` is behind the tally as of `from`: zero when it is the
    /// state current at `from` or one set after it (up to `to`, the end of
    /// the poll); else how long before `from` the newest state equal to it
    /// was replaced. `None` when no state of the last [`HISTORY`] is equal:
    /// wrong numbers, or older still.
    fn lag(&self, course: u32, seen: &Stats, from: Instant, to: Instant) -> Option<Duration> {
        // Newest first; `replaced` is when the state after the one at hand was set.
        let mut replaced: Option<Instant> = None;
        for (at, stats) in self.history[course as usize].iter().rev() {
            if *at <= to && stats == seen {
                return Some(
                    replaced.map_or(Duration::ZERO, |r| from.saturating_duration_since(r)),
                );
            }
            replaced = Some(*at);
        }
        None
    }
}

// --------------------------------------------------------------- counters --

/// Answers to submissions, by kind. Cumulative; a fault's share is the
/// difference between two snapshots.
#[derive(Clone, Default)]
struct Counts {
    /// 503 with `Retry-After`: the contract's answer when neither Kafka nor
    /// the spool can take a submission.
    documented_503: u64,
    /// Every other 5xx, by status.
    other_5xx: BTreeMap<u16, u64>,
    /// No answer: refused, reset or timed out connections.
    transport: u64,
    /// 429 and 409, both with `Retry-After`, retried.
    rate_limited: u64,
    in_use: u64,
    /// Other 4xx to a valid submission, by status: a bug.
    refused: BTreeMap<u16, u64>,
}

impl Counts {
    fn other_5xx_total(&self) -> u64 {
        self.other_5xx.values().sum()
    }

    fn minus(&self, earlier: &Counts) -> Counts {
        let diff = |a: &BTreeMap<u16, u64>, b: &BTreeMap<u16, u64>| {
            a.iter()
                .map(|(k, v)| (*k, v - b.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        Counts {
            documented_503: self.documented_503 - earlier.documented_503,
            other_5xx: diff(&self.other_5xx, &earlier.other_5xx),
            transport: self.transport - earlier.transport,
            rate_limited: self.rate_limited - earlier.rate_limited,
            in_use: self.in_use - earlier.in_use,
            refused: diff(&self.refused, &earlier.refused),
        }
    }
}

fn by_status(map: &BTreeMap<u16, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    let total: u64 = map.values().sum();
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// One fault as the script announced it.
struct Fault {
    name: String,
    killed: Instant,
    restarted: Option<Instant>,
    up: Option<Instant>,
    /// The first poll after the restart that found the pipeline in step.
    converged: Option<Instant>,
    /// The largest lag seen from the kill until back in step, and whether
    /// some polls could not tell one (a read failed, or numbers matched no
    /// recent state).
    worst_lag: Duration,
    unjudged: bool,
    at_kill: Counts,
}

/// The last poll's verdict.
#[derive(Clone, Default)]
struct Poll {
    /// The largest lag over the courses, query's answers and MySQL's rows.
    worst: Duration,
    /// Courses whose query answer, or MySQL row, matched no recent state.
    off_query: usize,
    off_mysql: usize,
    /// Stats reads that failed (a status other than 200, or no answer).
    query_errors: usize,
    mysql_error: Option<String>,
    /// When the poll began.
    at: Option<Instant>,
    last_in_step: Option<Instant>,
}

impl Poll {
    /// The pipeline's lag behind the tally; `None` when a read failed or a
    /// course matched no recent state.
    fn lag(&self) -> Option<Duration> {
        (self.off_query == 0
            && self.off_mysql == 0
            && self.query_errors == 0
            && self.mysql_error.is_none())
        .then_some(self.worst)
    }
}

struct Soak {
    args: Args,
    start: Instant,
    http: reqwest::Client,
    students: Vec<String>,
    admin: String,
    tally: Mutex<Tally>,
    counts: Mutex<Counts>,
    faults: Mutex<Vec<Fault>>,
    poll: Mutex<Poll>,
    mysql: mysql_async::Pool,
    sent: AtomicU64,
    attempts: AtomicU64,
    accepted: AtomicU64,
    spooled: AtomicU64,
    in_flight: AtomicU64,
    skipped: AtomicU64,
    replica_retries: AtomicU64,
    replica_same: AtomicU64,
    replica_mismatch: AtomicU64,
    query_5xx: AtomicU64,
    stopping: AtomicBool,
}

/// A poisoned lock only means a task panicked while holding it; the data is plain counters.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.rate > 0 && args.students > 0 && args.courses > 0,
        "--rate, --students and --courses must be positive"
    );
    let keys = JwtKeys::new(args.secret.as_bytes())?;
    let students = (0..args.students)
        .map(|i| {
            keys.mint(
                &format!("{}-student-{i}", args.run),
                Role::Student,
                args.token_ttl_secs,
            )
        })
        .collect();
    let admin = keys.mint(
        &format!("{}-admin", args.run),
        Role::Admin,
        args.token_ttl_secs,
    );
    let http = reqwest::Client::builder()
        // Below ingest's 10 s keep-alive limit, so the soak seldom sends on
        // a connection the server is closing.
        .pool_idle_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("the HTTP client")?;
    let mysql = shared::mysql::pool(&args.mysql_url)?;
    let start = Instant::now();
    let soak = Arc::new(Soak {
        tally: Mutex::new(Tally::new(args.courses, start)),
        args,
        start,
        http,
        students,
        admin,
        counts: Mutex::default(),
        faults: Mutex::default(),
        poll: Mutex::default(),
        mysql,
        sent: AtomicU64::new(0),
        attempts: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        spooled: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        replica_retries: AtomicU64::new(0),
        replica_same: AtomicU64::new(0),
        replica_mismatch: AtomicU64::new(0),
        query_5xx: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    });
    eprintln!(
        "soak: {}/s over {} ingest replicas, {} students, {} courses; waiting for `end` on stdin",
        soak.args.rate,
        soak.args.ingest.len(),
        soak.args.students,
        soak.args.courses
    );
    let pacer = tokio::spawn(pace(soak.clone()));
    let poller = tokio::spawn(poll_loop(soak.clone()));
    let progress = tokio::spawn(progress_loop(soak.clone()));
    control(&soak).await?;

    // The end: no new submissions; the ones still retrying finish.
    soak.stopping.store(true, Ordering::SeqCst);
    pacer.await?;
    let ended = Instant::now();
    eprintln!(
        "soak: load stopped at {}s; waiting for {} submissions still unanswered",
        secs(ended - soak.start),
        soak.in_flight.load(Ordering::SeqCst)
    );
    let drain_limit = Duration::from_secs(soak.args.drain_secs);
    while soak.in_flight.load(Ordering::SeqCst) > 0 && ended.elapsed() < drain_limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unresolved = soak.in_flight.load(Ordering::SeqCst);
    let answered = Instant::now();
    // Settled: a poll that started after the last answer and found every course in step.
    let settle_limit = Duration::from_secs(soak.args.settle_secs);
    let settled = loop {
        let p = lock(&soak.poll).clone();
        // Nothing changes the tally any more, so a lag of zero means equal.
        if let (Some(at), Some(Duration::ZERO)) = (p.at, p.lag()) {
            if at > answered {
                break Some(at - answered);
            }
        }
        if answered.elapsed() > settle_limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    poller.abort();
    progress.abort();
    let ok = report(&soak, ended, unresolved, settled).await;
    soak.mysql.clone().disconnect().await.ok();
    Ok(ok)
}

/// Reads the script's lines until `end` (or the end of stdin).
async fn control(soak: &Soak) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let (Some(verb), name) = (words.next(), words.next().unwrap_or("").to_owned()) else {
            continue;
        };
        let now = Instant::now();
        let mut faults = lock(&soak.faults);
        let last = faults.iter_mut().rev().find(|f| f.name == name);
        match (verb, last) {
            ("end", _) => return Ok(()),
            ("kill", _) => {
                let at_kill = lock(&soak.counts).clone();
                faults.push(Fault {
                    name,
                    killed: now,
                    restarted: None,
                    up: None,
                    converged: None,
                    worst_lag: Duration::ZERO,
                    unjudged: false,
                    at_kill,
                });
            }
            ("restart", Some(f)) => f.restarted = Some(now),
            ("up", Some(f)) => f.up = Some(now),
            _ => eprintln!("soak: ignored the line {line:?}"),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------- load --

async fn pace(soak: Arc<Soak>) {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let period = Duration::from_secs_f64(1.0 / soak.args.rate as f64);
    let mut ticks = tokio::time::interval(period);
    // Late ticks are sent at once, so the rate holds over any second.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n: u64 = 0;
    while !soak.stopping.load(Ordering::SeqCst) {
        ticks.tick().await;
        let pair = {
            let mut tally = lock(&soak.tally);
            let free = (0..20).find_map(|_| {
                let pair = (
                    rng.random_range(0..soak.args.students),
                    rng.random_range(0..soak.args.courses),
                );
                (!tally.busy.contains(&pair)).then_some(pair)
            });
            if let Some(pair) = free {
                tally.busy.insert(pair);
            }
            free
        };
        let Some((student, course)) = pair else {
            soak.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let submission = Submission {
            n,
            student,
            course,
            rating: rng.random_range(1..=5),
            comment: COMMENTS[rng.random_range(0..COMMENTS.len())],
            replica: (n as usize) % soak.args.ingest.len(),
            replica_retry: rng.random_range(0..100u8) < soak.args.replica_retry_pct,
        };
        n += 1;
        soak.sent.fetch_add(1, Ordering::Relaxed);
        soak.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(submit(soak.clone(), submission));
    }
}

struct Submission {
    n: u64,
    student: u32,
    course: u32,
    rating: u8,
    comment: Option<&'static str>,
    /// The replica tried first; retries take the next one.
    replica: usize,
    /// Whether to send it again to another replica once accepted.
    replica_retry: bool,
}

/// What one try got.
enum Answer {
    Accepted {
        feedback_id: String,
        spooled: bool,
    },
    /// Try again after this long (503 or 429 with `Retry-After`, 409, a
    /// 5xx, no answer).
    Retry(Duration),
    /// Refused for good: a 4xx the soak's valid submissions should never get.
    Refused,
}

/// Sends one submission until it has a definitive answer, then tallies it.
async fn submit(soak: Arc<Soak>, s: Submission) {
    let key = format!("{}-{}", soak.args.run, s.n);
    let body = serde_json::json!({
        "course_id": format!("{COURSE_PREFIX}{:03}", s.course),
        "rating": s.rating,
        "comment": s.comment,
    })
    .to_string();
    let replicas = soak.args.ingest.len();
    let mut replica = s.replica;
    let mut backoff = Duration::from_millis(100);
    let outcome = loop {
        match try_submit(&soak, replica, s.student, &key, &body).await {
            Answer::Accepted {
                feedback_id,
                spooled,
            } => break Some(feedback_id).map(|id| (id, spooled)),
            Answer::Refused => break None,
            Answer::Retry(after) => {
                // A transport error or 5xx retries sooner the first times.
                let wait = if after.is_zero() {
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    w
                } else {
                    after
                };
                tokio::time::sleep(wait).await;
                replica = (replica + 1) % replicas;
            }
        }
    };
    if let Some((feedback_id, spooled)) = outcome {
        soak.accepted.fetch_add(1, Ordering::Relaxed);
        if spooled {
            soak.spooled.fetch_add(1, Ordering::Relaxed);
        }
        // Tallied at once: the pipeline may count it before the retry below is answered.
        lock(&soak.tally).accept(s.student, s.course, s.rating, feedback_id.clone());
        if s.replica_retry && replicas > 1 {
            replica_retry(
                &soak,
                (replica + 1) % replicas,
                s.student,
                &key,
                &body,
                &feedback_id,
            )
            .await;
        }
    }
    lock(&soak.tally).busy.remove(&(s.student, s.course));
    soak.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// The same key and body on another replica, which never saw the key: the
/// same feedback_id must come back (one history row, counted once).
async fn replica_retry(
    soak: &Soak,
    replica: usize,
    student: u32,
    key: &str,
    body: &str,
    feedback_id: &str,
) {
    if let Answer::Accepted {
        feedback_id: id, ..
    } = try_submit(soak, replica, student, key, body).await
    {
        soak.replica_retries.fetch_add(1, Ordering::Relaxed);
        if id == feedback_id {
            soak.replica_same.fetch_add(1, Ordering::Relaxed);
        } else {
            soak.replica_mismatch.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: key {key} answered {feedback_id}, and {id} on another replica");
        }
    }
}

async fn try_submit(soak: &Soak, replica: usize, student: u32, key: &str, body: &str) -> Answer {
    soak.attempts.fetch_add(1, Ordering::Relaxed);
    let url = format!("{}/v1/feedback", soak.args.ingest[replica]);
    let sent = soak
        .http
        .post(url)
        .bearer_auth(&soak.students[student as usize])
        .header("Idempotency-Key", key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .timeout(SUBMIT_TIMEOUT)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(_) => {
            lock(&soak.counts).transport += 1;
            return Answer::Retry(Duration::ZERO);
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.clamp(1, 60)));
    let text = response.text().await;
    match status {
        StatusCode::ACCEPTED => {
            let parsed = text
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            let id = parsed
                .as_ref()
                .and_then(|v| v["feedback_id"].as_str())
                .map(str::to_owned);
            match id {
                Some(feedback_id) => Answer::Accepted {
                    feedback_id,
                    spooled: parsed.as_ref().and_then(|v| v["status"].as_str()) == Some("spooled"),
                },
                // The body was cut off: the answer is unknown, so ask again.
                None => {
                    lock(&soak.counts).transport += 1;
                    Answer::Retry(Duration::ZERO)
                }
            }
        }
        StatusCode::SERVICE_UNAVAILABLE if retry_after.is_some() => {
            lock(&soak.counts).documented_503 += 1;
            Answer::Retry(retry_after.unwrap_or_default())
        }
        StatusCode::TOO_MANY_REQUESTS => {
            lock(&soak.counts).rate_limited += 1;
            Answer::Retry(retry_after.unwrap_or(Duration::from_secs(1)))
        }
        StatusCode::CONFLICT => {
            lock(&soak.counts).in_use += 1;
            Answer::Retry(retry_after.unwrap_or(Duration::from_secs(1)))
        }
        s if s.is_server_error() => {
            *lock(&soak.counts).other_5xx.entry(s.as_u16()).or_default() += 1;
            eprintln!(
                "soak: key {key}: {s} from {}: {}",
                soak.args.ingest[replica],
                text.unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
            Answer::Retry(Duration::from_secs(1))
        }
        s => {
            *lock(&soak.counts).refused.entry(s.as_u16()).or_default() += 1;
            eprintln!(
                "soak: key {key}: {s}: {}",
                text.unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
            Answer::Refused
        }
    }
}

// ---------------------------------------------------------------- polling --

/// What the pipeline showed in one poll, per course.
struct Seen {
    query: Vec<Result<Stats, String>>,
    mysql: Result<HashMap<String, Stats>, String>,
    sources: HashMap<String, usize>,
}

async fn poll_loop(soak: Arc<Soak>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(soak.args.poll_ms.max(50)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let from = Instant::now();
        let seen = read_pipeline(&soak).await;
        let read = Instant::now();
        tokio::time::sleep(JUDGE_DELAY).await;
        judge(&soak, &seen, from, read + JUDGE_DELAY);
    }
}

async fn read_pipeline(soak: &Arc<Soak>) -> Seen {
    let mut reads = tokio::task::JoinSet::new();
    for course in 0..soak.args.courses {
        let soak = soak.clone();
        reads.spawn(async move { (course, query_stats(&soak, course).await) });
    }
    let mysql = tokio::time::timeout(READ_TIMEOUT, mysql_stats(&soak.mysql))
        .await
        .map_err(|_| "no answer within 5 s".to_owned())
        .and_then(|r| r.map_err(|e| format!("{e:#}")));
    let mut query = vec![Err("not read".to_owned()); soak.args.courses as usize];
    let mut sources = HashMap::new();
    while let Some(joined) = reads.join_next().await {
        if let Ok((course, answer)) = joined {
            query[course as usize] = answer.map(|(stats, source)| {
                *sources.entry(source).or_default() += 1;
                stats
            });
        }
    }
    Seen {
        query,
        mysql,
        sources,
    }
}

async fn query_stats(soak: &Soak, course: u32) -> Result<(Stats, String), String> {
    let url = format!(
        "{}/v1/courses/{COURSE_PREFIX}{course:03}/stats",
        soak.args.query
    );
    let response = soak
        .http
        .get(url)
        .bearer_auth(&soak.admin)
        .timeout(READ_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    if status.is_server_error() {
        soak.query_5xx.fetch_add(1, Ordering::Relaxed);
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{status}: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {body}"));
    }
    let int = |v: &serde_json::Value| v.as_i64().ok_or_else(|| format!("not a number: {body}"));
    let mut distribution = [0; 5];
    for (i, d) in distribution.iter_mut().enumerate() {
        *d = int(&body["distribution"][(i + 1).to_string()])?;
    }
    let stats = Stats {
        responses: int(&body["responses"])?,
        rating_sum: int(&body["rating_sum"])?,
        distribution,
    };
    let source = body["source"].as_str().unwrap_or("?").to_owned();
    Ok((stats, source))
}

type StatsTuple = (String, i64, i64, i64, i64, i64, i64, i64);

async fn mysql_stats(pool: &mysql_async::Pool) -> anyhow::Result<HashMap<String, Stats>> {
    let rows: Vec<StatsTuple> = pool
        .get_conn()
        .await?
        .exec(
            "SELECT course_id, responses, rating_sum, rating_1, rating_2, rating_3, rating_4, rating_5
             FROM course_stats WHERE course_id LIKE ?",
            (format!("{COURSE_PREFIX}%"),),
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|(course, responses, rating_sum, r1, r2, r3, r4, r5)| {
            let stats = Stats {
                responses,
                rating_sum,
                distribution: [r1, r2, r3, r4, r5],
            };
            (course, stats)
        })
        .collect())
}

fn course_name(course: u32) -> String {
    format!("{COURSE_PREFIX}{course:03}")
}

/// Compares one poll with the tally; records when the pipeline is in step.
fn judge(soak: &Soak, seen: &Seen, from: Instant, to: Instant) {
    let tally = lock(&soak.tally);
    let mut poll = Poll {
        mysql_error: seen.mysql.as_ref().err().cloned(),
        at: Some(from),
        ..Poll::default()
    };
    for course in 0..soak.args.courses {
        match &seen.query[course as usize] {
            Ok(stats) => match tally.lag(course, stats, from, to) {
                Some(lag) => poll.worst = poll.worst.max(lag),
                None => poll.off_query += 1,
            },
            Err(_) => poll.query_errors += 1,
        }
        if let Ok(rows) = &seen.mysql {
            let row = rows.get(&course_name(course)).copied().unwrap_or_default();
            match tally.lag(course, &row, from, to) {
                Some(lag) => poll.worst = poll.worst.max(lag),
                None => poll.off_mysql += 1,
            }
        }
    }
    drop(tally);
    let lag = poll.lag();
    let in_step = lag.is_some_and(|l| l <= Duration::from_millis(soak.args.in_step_ms));
    let mut last = lock(&soak.poll);
    poll.last_in_step = if in_step {
        Some(from)
    } else {
        last.last_in_step
    };
    for fault in lock(&soak.faults).iter_mut() {
        if fault.converged.is_some() || from < fault.killed {
            continue;
        }
        match lag {
            Some(l) => fault.worst_lag = fault.worst_lag.max(l),
            None => fault.unjudged = true,
        }
        if in_step && fault.restarted.is_some_and(|r| from >= r) {
            fault.converged = Some(from);
        }
    }
    *last = poll;
}

// --------------------------------------------------------------- progress --

async fn progress_loop(soak: Arc<Soak>) {
    let every = Duration::from_secs(soak.args.progress_secs.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let c = lock(&soak.counts).clone();
        let p = lock(&soak.poll).clone();
        let pipeline = match p.lag() {
            Some(lag) if lag <= Duration::from_millis(soak.args.in_step_ms) => {
                format!("in step (lag {} s)", secs(lag))
            }
            lag => {
                let mut why = Vec::new();
                if let Some(lag) = lag {
                    why.push(format!("behind by {} s", secs(lag)));
                } else if p.off_query + p.off_mysql > 0 {
                    why.push(format!("behind by {} s or more", secs(p.worst)));
                }
                if p.off_query > 0 {
                    why.push(format!("query off on {}", p.off_query));
                }
                if p.off_mysql > 0 {
                    why.push(format!("MySQL off on {}", p.off_mysql));
                }
                if p.query_errors > 0 {
                    why.push(format!("query failed {}", p.query_errors));
                }
                if let Some(e) = &p.mysql_error {
                    why.push(format!("MySQL: {}", e.chars().take(60).collect::<String>()));
                }
                let since = p
                    .last_in_step
                    .map(|t| format!("; last in step {} s ago", secs(t.elapsed())))
                    .unwrap_or_default();
                format!("{}{since}", why.join(", "))
            }
        };
        eprintln!(
            "[soak {:>6}s] sent {} accepted {} (spooled {}) | 503 {} other 5xx {} no answer {} | in flight {} | {}",
            secs(soak.start.elapsed()),
            soak.sent.load(Ordering::Relaxed),
            soak.accepted.load(Ordering::Relaxed),
            soak.spooled.load(Ordering::Relaxed),
            c.documented_503,
            c.other_5xx_total(),
            c.transport,
            soak.in_flight.load(Ordering::Relaxed),
            pipeline,
        );
    }
}

// ----------------------------------------------------------------- report --

/// The final checks, exact, once the pipeline settled.
struct Final {
    lines: Vec<String>,
    ok: bool,
}

impl Final {
    fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        self.ok &= ok;
        self.lines.push(format!(
            "  {} {what}: {detail}",
            if ok { "ok  " } else { "FAIL" }
        ));
    }
}

async fn report(
    soak: &Arc<Soak>,
    ended: Instant,
    unresolved: u64,
    settled: Option<Duration>,
) -> bool {
    let counts = lock(&soak.counts).clone();
    let mut out = String::new();
    let elapsed = ended - soak.start;
    let accepted = soak.accepted.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "\nLoad: {} submissions in {}s ({:.1}/s; {} tries), {accepted} accepted, {} of them spooled; \
         {} skipped (every pair picked was busy)",
        soak.sent.load(Ordering::Relaxed),
        secs(elapsed),
        soak.sent.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        soak.attempts.load(Ordering::Relaxed),
        soak.spooled.load(Ordering::Relaxed),
        soak.skipped.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "Retries to another replica after a 202: {}, same feedback_id {}, another id {}",
        soak.replica_retries.load(Ordering::Relaxed),
        soak.replica_same.load(Ordering::Relaxed),
        soak.replica_mismatch.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "Query stats reads answered 5xx (a dependency down): {}",
        soak.query_5xx.load(Ordering::Relaxed)
    );

    // The faults, each with what happened until the next one (or the end).
    let faults: Vec<Fault> = std::mem::take(&mut *lock(&soak.faults));
    let mut rows = vec![[
        "fault".to_owned(),
        "at s".to_owned(),
        "down s".to_owned(),
        "start-up s".to_owned(),
        "in step after restart s".to_owned(),
        "worst lag s".to_owned(),
        "503 (documented)".to_owned(),
        "other 5xx".to_owned(),
        "no answer".to_owned(),
    ]];
    let window = |from: &Counts, to: &Counts| to.minus(from);
    let first_kill = faults
        .first()
        .map(|f| f.at_kill.clone())
        .unwrap_or_else(|| counts.clone());
    let steady = window(&Counts::default(), &first_kill);
    rows.push([
        "(before the first)".into(),
        "0".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        steady.documented_503.to_string(),
        by_status(&steady.other_5xx),
        steady.transport.to_string(),
    ]);
    let mut not_converged = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        let next = faults
            .get(i + 1)
            .map(|n| n.at_kill.clone())
            .unwrap_or_else(|| counts.clone());
        let w = window(&f.at_kill, &next);
        let converge = match (f.restarted, f.converged) {
            (Some(r), Some(c)) => secs(c.saturating_duration_since(r)),
            (Some(_), None) => {
                not_converged.push(f.name.clone());
                "never".into()
            }
            _ => "-".into(),
        };
        rows.push([
            f.name.clone(),
            secs(f.killed - soak.start),
            f.restarted
                .map(|r| secs(r - f.killed))
                .unwrap_or("-".into()),
            match (f.restarted, f.up) {
                (Some(r), Some(u)) => secs(u - r),
                _ => "-".into(),
            },
            converge,
            format!("{}{}", secs(f.worst_lag), if f.unjudged { "+" } else { "" }),
            w.documented_503.to_string(),
            by_status(&w.other_5xx),
            w.transport.to_string(),
        ]);
    }
    let _ = writeln!(
        out,
        "\nFaults (503, 5xx and unanswered tries counted until the next fault):"
    );
    out.push_str(&table(&rows));

    // The exact checks.
    let mut fin = Final {
        lines: Vec::new(),
        ok: true,
    };
    fin.check(
        "every submission answered",
        unresolved == 0,
        format!(
            "{unresolved} unanswered (the soak waits {} s at most)",
            soak.args.drain_secs
        ),
    );
    fin.check(
        "pipeline settled",
        settled.is_some(),
        match settled {
            Some(d) => format!("in step {}s after the last answer", secs(d)),
            None => format!("not in step within {}s", soak.args.settle_secs),
        },
    );
    fin.check(
        "no 5xx to submissions but documented 503s",
        counts.other_5xx.is_empty(),
        format!(
            "{} documented 503, other 5xx {}",
            counts.documented_503,
            by_status(&counts.other_5xx)
        ),
    );
    fin.check(
        "no other refusal of a valid submission",
        counts.refused.is_empty(),
        format!(
            "4xx {} (429 {} and 409 {} retried)",
            by_status(&counts.refused),
            counts.rate_limited,
            counts.in_use
        ),
    );
    fin.check(
        "a retry on another replica gets the same feedback_id",
        soak.replica_mismatch.load(Ordering::Relaxed) == 0,
        format!(
            "{} of {}",
            soak.replica_same.load(Ordering::Relaxed),
            soak.replica_retries.load(Ordering::Relaxed)
        ),
    );
    exact_checks(soak, &mut fin).await;
    let _ = writeln!(out, "\nChecks:");
    for line in &fin.lines {
        let _ = writeln!(out, "{line}");
    }
    if !not_converged.is_empty() {
        let _ = writeln!(
            out,
            "  note: never in step after the restart of {} (only the final settle counts)",
            not_converged.join(", ")
        );
    }
    print!("{out}");
    fin.ok
}

/// Query, MySQL's `course_stats`, its `current_responses` and its history,
/// each against the tally, exactly.
async fn exact_checks(soak: &Arc<Soak>, fin: &mut Final) {
    let seen = read_pipeline(soak).await;
    let (expected, ids) = {
        let tally = lock(&soak.tally);
        let expected: Vec<Stats> = (0..soak.args.courses).map(|c| tally.latest(c)).collect();
        (expected, tally.accepted_ids.clone())
    };
    let total: i64 = expected.iter().map(|s| s.responses).sum();
    let mut query_off = Vec::new();
    for (course, want) in expected.iter().enumerate() {
        match &seen.query[course] {
            Ok(got) if got == want => {}
            Ok(got) => query_off.push(format!(
                "{}: query {got}, tally {want}",
                course_name(course as u32)
            )),
            Err(e) => query_off.push(format!("{}: {e}", course_name(course as u32))),
        }
    }
    let sources: Vec<String> = seen
        .sources
        .iter()
        .map(|(k, v)| format!("{v} from {k}"))
        .collect();
    fin.check(
        "query stats = tally, every course",
        query_off.is_empty(),
        if query_off.is_empty() {
            format!(
                "{} courses, {total} responses ({})",
                expected.len(),
                sources.join(", ")
            )
        } else {
            query_off.join("; ")
        },
    );
    match &seen.mysql {
        Ok(rows) => {
            let off: Vec<String> = expected
                .iter()
                .enumerate()
                .filter_map(|(course, want)| {
                    let got = rows
                        .get(&course_name(course as u32))
                        .copied()
                        .unwrap_or_default();
                    (got != *want).then(|| {
                        format!("{}: MySQL {got}, tally {want}", course_name(course as u32))
                    })
                })
                .collect();
            fin.check(
                "MySQL course_stats = tally",
                off.is_empty(),
                if off.is_empty() {
                    "every course".into()
                } else {
                    off.join("; ")
                },
            );
        }
        Err(e) => fin.check("MySQL course_stats = tally", false, e),
    }
    match mysql_rows(&soak.mysql).await {
        Ok((current, history)) => {
            let off: Vec<String> = expected
                .iter()
                .enumerate()
                .filter_map(|(course, want)| {
                    let got = current
                        .get(&course_name(course as u32))
                        .copied()
                        .unwrap_or((0, 0));
                    (got != (want.responses, want.rating_sum)).then(|| {
                        format!(
                            "{}: {} rows, sum {}; tally {want}",
                            course_name(course as u32),
                            got.0,
                            got.1
                        )
                    })
                })
                .collect();
            fin.check(
                "MySQL current_responses = tally",
                off.is_empty(),
                if off.is_empty() {
                    "every course".into()
                } else {
                    off.join("; ")
                },
            );
            let missing = ids.iter().filter(|id| !history.contains(*id)).count();
            let extra = history.iter().filter(|id| !ids.contains(*id)).count();
            fin.check(
                "one history row per accepted feedback_id",
                missing == 0 && extra == 0,
                format!(
                    "{} rows, {} ids accepted; {missing} missing, {extra} never answered 202",
                    history.len(),
                    ids.len()
                ),
            );
        }
        Err(e) => fin.check(
            "MySQL current_responses and history",
            false,
            format!("{e:#}"),
        ),
    }
}

type Current = HashMap<String, (i64, i64)>;

async fn mysql_rows(pool: &mysql_async::Pool) -> anyhow::Result<(Current, HashSet<String>)> {
    let mut conn = tokio::time::timeout(READ_TIMEOUT, pool.get_conn())
        .await
        .context("no MySQL connection within 5 s")??;
    let like = format!("{COURSE_PREFIX}%");
    let current: Vec<(String, i64, i64)> = conn
        .exec(
            "SELECT course_id, COUNT(*), CAST(COALESCE(SUM(rating), 0) AS SIGNED)
             FROM current_responses WHERE course_id LIKE ? GROUP BY course_id",
            (&like,),
        )
        .await?;
    let history: Vec<String> = conn
        .exec(
            "SELECT feedback_id FROM feedback_events WHERE course_id LIKE ?",
            (&like,),
        )
        .await?;
    Ok((
        current.into_iter().map(|(c, n, s)| (c, (n, s))).collect(),
        history.into_iter().collect(),
    ))
}

/// Rows of cells as an aligned plain-text table, the first row its header.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", cells.join(" | ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "  {}", rule.join("-|-"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_follows_the_counting_rule() {
        let start = Instant::now();
        let mut tally = Tally::new(2, start);
        tally.accept(1, 0, 4, "a".into());
        tally.accept(2, 0, 2, "b".into());
        // Student 1 replaces their rating: still two responses.
        tally.accept(1, 0, 5, "c".into());
        let s = tally.latest(0);
        assert_eq!(s.responses, 2);
        assert_eq!(s.rating_sum, 7);
        assert_eq!(s.distribution, [0, 1, 0, 0, 1]);
        assert_eq!(tally.latest(1), Stats::default());
        assert_eq!(tally.accepted_ids.len(), 3);
    }

    #[test]
    fn a_poll_is_as_far_behind_as_the_state_it_saw() {
        let start = Instant::now();
        let mut tally = Tally::new(1, start);
        std::thread::sleep(Duration::from_millis(2));
        tally.accept(1, 0, 4, "a".into());
        let first = tally.history[0][1].0;
        let one = tally.latest(0);
        std::thread::sleep(Duration::from_millis(2));
        tally.accept(2, 0, 3, "b".into());
        let second = tally.history[0][2].0;
        let two = tally.latest(0);
        let later = Instant::now() + Duration::from_millis(10);
        // The current state, or one set after the poll began: no lag.
        assert_eq!(tally.lag(0, &two, later, later), Some(Duration::ZERO));
        assert_eq!(tally.lag(0, &two, first, later), Some(Duration::ZERO));
        // A replaced state lags by how long ago it was replaced.
        assert_eq!(tally.lag(0, &one, later, later), Some(later - second));
        assert_eq!(
            tally.lag(0, &Stats::default(), later, later),
            Some(later - first)
        );
        // A state set after the poll ended cannot have been seen by it.
        assert_eq!(tally.lag(0, &two, first, first), None);
        // Numbers the tally never had.
        let wrong = Stats {
            responses: 9,
            ..Stats::default()
        };
        assert_eq!(tally.lag(0, &wrong, later, later), None);
    }
}
