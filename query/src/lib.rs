//! Query: serves course statistics, comments, trends and CSV to admins, from
//! Redis when it can and MySQL when it must.
//!
//! Layout, following one request:
//!
//! - `lib.rs` (here): the router with every service's layers
//!   (`shared::http::with_service_layers`: request id, trace span, metrics by
//!   matched route, the contract's 404/405/500), `/readyz`, start-up and
//!   graceful shutdown.
//! - `params.rs`: path and query parameters into the contract's 400/422
//!   (the `{course_id}` segment by the `CoursePath` extractor).
//!   Every `/v1` read takes an instructor's or an admin's JWT first
//!   (`access.rs`: an instructor reads the courses the catalog lists them
//!   for, withheld below `FEEDBACK_MIN_RESPONSES`).
//! - `stats.rs` → `stats_cache.rs` → `redis_guard.rs`: stats from the Redis hash
//!   `feedback:course:{<course_id>}` (one HMGET); on a miss from MySQL's
//!   `course_stats`, filling Redis with the version-guarded fill and a
//!   jittered TTL; concurrent misses share one MySQL read.
//! - `comments.rs` (keyset pages of current responses, along the history's
//!   `(course_id, submitted_at)` index), `export.rs` (the same
//!   as streamed CSV), `trend.rs` (per day or week), `courses.rs` (most responses first).
//! - `moderation.rs`: admins' queue of flagged comments, hide and unhide
//!   (written to the primary with their audit row), and the audit log.
//! - `read_model.rs`: the MySQL tables these read (a replica when one is
//!   set), every read under a time budget; a failed one answers 503.
//! - `warm.rs`: the pre-warm at start and `query rebuild-cache`.
//! - `catalog/`: the course catalog, written by admins (`PUT
//!   /v1/courses/{course_id}`, a CSV to `POST /v1/catalog`), listed publicly
//!   (`GET /v1/catalog`), and held in memory, refreshed every 2 s.
//! - `admin.html`: the dashboard at `/admin`, self-contained.
//!
//! Failure modes:
//!
//! - Redis down or slow: calls time out after 250 ms, three failures open a
//!   circuit breaker, and stats come from MySQL (`source: database`, the right
//!   numbers) without waiting on Redis; one request probes after a cool-down
//!   and closes the breaker when Redis answers. `/readyz` stays 200 and says so.
//! - MySQL down: cached stats are still served; everything else answers 503
//!   with `Retry-After`, and `/readyz` is 503. Query starts without MySQL and
//!   runs its migrations and pre-warm once MySQL answers.
//! - A read replica (`FEEDBACK_MYSQL_READ_URL`) that lags may fill Redis with
//!   a slightly older version; the aggregator's next delta for that course
//!   finds the gap and deletes the hash, so it heals on the next change.

pub mod access;
pub mod catalog;
pub mod comments;
pub mod config;
pub mod courses;
pub mod export;
pub mod moderation;
pub mod params;
pub mod read_model;
pub mod redis_guard;
pub mod stats;
pub mod stats_cache;
pub mod time_fmt;
pub mod tracking;
pub mod trend;
pub mod warm;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use shared::auth::Authenticator;
use shared::breaker::State as BreakerState;
use shared::http::pages::{self, Page};
use shared::metrics::names;
use tokio::net::TcpListener;

pub use config::Config;
use read_model::Db;
use redis_guard::GuardedRedis;
use stats_cache::{Stats, Ttl};

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub auth: Authenticator,
    /// The dashboard, with how to sign in filled in.
    pub dashboard: Arc<Page>,
    /// Stats: Redis first, MySQL behind it.
    pub stats: Arc<Stats>,
    /// The read pool (a replica when configured).
    pub db: Db,
    /// The primary, for what query writes (moderation actions); the read
    /// pool itself when no replica is set.
    pub primary: Db,
    /// Set once the migrations ran: until then MySQL cannot answer queries.
    pub migrated: Arc<AtomicBool>,
    /// How long a CSV export waits for a client that stopped reading.
    pub export_stall: Duration,
    /// Signs the comment pages' cursors.
    pub cursors: Arc<comments::CursorKey>,
    /// The course catalog in memory: titles, enrolment, who teaches what.
    pub catalog: Arc<catalog::Catalog>,
    /// `FEEDBACK_MIN_RESPONSES`: instructors' anonymity threshold.
    pub min_responses: u32,
}

/// The time budget of a catalog write (an import of thousands of courses
/// is one transaction) and of a catalog load.
const CATALOG_BUDGET: Duration = Duration::from_secs(30);

/// A built query service: listener bound, pools created (nothing connected yet).
pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: Config,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        shared::metrics::install();
        shared::metrics::show_counters(&[
            (names::QUERY_CACHE_FILLS_TOTAL, &[("outcome", "written")]),
            (names::QUERY_CACHE_FILLS_TOTAL, &[("outcome", "refused")]),
            (
                names::QUERY_CACHE_FILLS_TOTAL,
                &[("outcome", "unreachable")],
            ),
        ]);
        let auth = Authenticator::new(&config.auth)?;
        let db = Db::new(config.read_url(), config.mysql_timeout)?;
        let primary = match config.mysql_read_url {
            Some(_) => Db::new(&config.mysql_url, config.mysql_timeout)?,
            None => db.clone(),
        };
        let redis_target =
            shared::redis_conn::Target::parse(&config.redis_url, config.redis_cluster)?;
        let redis = Arc::new(GuardedRedis::connect(&redis_target, config.redis_timeout)?);
        let tracking = tracking::Tracking::new(&redis_target, config.redis_timeout)?;
        let stats = Arc::new(Stats::new(
            redis,
            tracking,
            db.clone(),
            Ttl(config.cache_ttl_secs),
        ));
        let state = AppState {
            // The dashboard names the threshold when it withholds a course.
            dashboard: Arc::new(Page::new(
                &include_str!("admin.html").replace(
                    "{{FEEDBACK_MIN_RESPONSES}}",
                    &config.min_responses.to_string(),
                ),
                &auth,
            )),
            auth,
            stats,
            db,
            catalog: Arc::new(catalog::Catalog::new(primary.with_timeout(CATALOG_BUDGET))),
            min_responses: config.min_responses,
            primary,
            migrated: Arc::new(AtomicBool::new(false)),
            export_stall: config.export_stall,
            cursors: Arc::new(comments::CursorKey::new()),
        };
        let listener = shared::http::bind(&config.addr).await?;
        Ok(Self {
            listener,
            state,
            config,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state (tests read the stats counters from it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            config,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, "query listening");
        let own_primary = config.mysql_read_url.is_some();
        let start_up = tokio::spawn(prepare(state.clone(), config));
        let catalog = tokio::spawn(state.catalog.clone().keep_fresh(state.migrated.clone()));
        // A thread per core, each serving its connections (see `serve_on_threads`).
        let threads = shared::http::ConnectionThreads::start(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )?;
        let result =
            shared::http::serve_on_threads(listener, router(state.clone()), shutdown, &threads)
                .await;
        start_up.abort();
        catalog.abort();
        // Before the threads stop: some of the pool's connections are theirs.
        let _ = tokio::time::timeout(Duration::from_secs(2), state.db.pool().clone().disconnect())
            .await;
        if own_primary {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                state.primary.pool().clone().disconnect(),
            )
            .await;
        }
        drop(threads);
        tracing::info!("query stopped");
        Ok(result?)
    }
}

/// In the background: the migrations (retried until MySQL answers), then the pre-warm.
async fn prepare(state: AppState, config: Config) {
    let mut wait = Duration::from_millis(500);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            shared::mysql::migrate(&config.mysql_url),
        )
        .await
        {
            Ok(Ok(())) => break,
            Ok(Err(err)) => {
                tracing::warn!(err = format!("{err:#}"), "migrations not run yet; retrying")
            }
            Err(_) => tracing::warn!("migrations timed out; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
    // Loaded before query says it is ready: until then an instructor's read
    // cannot be decided (503). On failure, the refresh loop tries again.
    if let Err(err) = state.catalog.refresh(true).await {
        tracing::warn!(%err, "catalog not loaded yet; retrying");
    }
    state.migrated.store(true, Ordering::Release);
    if config.prewarm_courses == 0 {
        return;
    }
    // Again every 5 s until a pass finds Redis answering: with Redis down at
    // start, the first pass writes nothing.
    loop {
        match warm::prewarm(&state.stats, &state.db, config.prewarm_courses).await {
            Ok(written) if state.stats.redis.healthy() => {
                tracing::info!(written, "pre-warm done");
                return;
            }
            Ok(_) => tracing::warn!("pre-warm could not reach Redis; trying again in 5 s"),
            Err(err) => tracing::warn!(%err, "pre-warm could not read MySQL; trying again in 5 s"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/v1/courses", get(courses::list))
        .route("/v1/courses/{course_id}", put(catalog::routes::put))
        .route(
            "/v1/catalog",
            get(catalog::routes::list).post(catalog::routes::import),
        )
        .route("/v1/courses/{course_id}/stats", get(stats::stats))
        .route("/v1/courses/{course_id}/feedback", get(comments::list))
        .route("/v1/courses/{course_id}/feedback.csv", get(export::csv))
        .route("/v1/courses/{course_id}/trend", get(trend::trend))
        .route("/v1/moderation", get(moderation::queue))
        .route("/v1/moderation/log", get(moderation::log))
        .route("/v1/feedback/{feedback_id}/hide", post(moderation::hide))
        .route(
            "/v1/feedback/{feedback_id}/unhide",
            post(moderation::unhide),
        )
        .route("/admin", get(admin))
        .route(
            "/admin.js",
            get(|| async { pages::script(include_str!("admin.js")) }),
        )
        .route(
            "/admin.css",
            get(|| async { pages::style(include_str!("admin.css")) }),
        )
        .route("/oidc.js", get(|| async { pages::script(pages::OIDC_JS) }))
        .route("/readyz", get(readyz))
        .merge(shared::http::health_routes());
    shared::http::with_service_layers(routes).with_state(state)
}

/// The dashboard for instructors and admins (its API calls carry the token).
async fn admin(State(state): State<AppState>) -> Response {
    state.dashboard.response()
}

/// 200 while query can answer correctly (MySQL up); Redis being down is a
/// degradation reported in the body, not unreadiness.
async fn readyz(State(state): State<AppState>) -> Response {
    let migrated = state.migrated.load(Ordering::Acquire);
    let mysql_up = migrated && state.db.ping().await;
    let guard = &state.stats.redis;
    // A PING through the breaker: it also lets the breaker notice Redis coming back.
    let ping = guard
        .call(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
        .await;
    let breaker = guard.state();
    shared::http::readiness(
        mysql_up,
        serde_json::json!({
            "mysql": { "up": mysql_up, "migrated": migrated },
            "redis": {
                "up": ping.is_ok() && breaker == BreakerState::Closed,
                "breaker": breaker.as_str(),
            },
            // Shown, not required: held keys keep working while the provider is down.
            "identity": state.auth.readiness(),
        }),
    )
}
