//! Ingest: takes students' feedback over HTTP and produces it to Kafka.
//!
//! Flow of one submission (`feedback.rs`, which also holds the `202`
//! reply): rate limits (`limits.rs`, per client address as `client_addr.rs`
//! finds it), the student's JWT (`shared::auth`), parsing into
//! `CourseId`/`Rating`/`Comment`, with `FEEDBACK_CATALOG=closed` the course
//! looked up in the catalog held in memory (`catalog.rs`, read from MySQL in
//! the background), the sensitive-word policy (`filter.rs`), the
//! optional `Idempotency-Key` (`idempotency.rs`), then the event becomes one
//! `KafkaRecord` (`record.rs`) and `pipeline.rs` produces it to Kafka keyed by
//! `course_id`, answering `202 accepted` once the broker acknowledged.
//! Settings come from the environment (`config.rs`).
//!
//! Failure modes: when Kafka is down the circuit breaker (`shared::breaker`) opens
//! and the record goes to the sled disk spool (`spool.rs`), synced before the
//! `202 spooled` answer by a single writer that shares one sync among
//! concurrent requests (`spool/writer.rs`); a drainer replays the spool in
//! order when Kafka answers again, and on start after a crash. A full spool
//! answers 503 with `Retry-After`: nothing accepted is dropped. The
//! idempotency entries live in the same database, reached only through
//! `spool/idempotency_entries.rs`, so they survive a restart too.
//!
//! A closed catalog keeps the courses it last read while MySQL is down, and
//! across restarts through its copy in the spool's database; only one never
//! read answers 503 (and `/readyz` says so). In either mode ingest also
//! answers `GET /v1/catalog` from it, as query does, for the form it serves.
//!
//! Records that no longer decode are moved aside, not replayed.
//! `ingest spool status|verify|export|replay` (`spool_tools.rs`, through
//! `spool/files.rs`) let an operator look at a stopped ingest's spool, the
//! moved-aside records included, and replay it by hand.

pub mod catalog;
pub mod client_addr;
pub mod config;
pub mod feedback;
pub mod filter;
pub mod idempotency;
pub mod limits;
pub mod pipeline;
pub mod record;
pub mod spool;
pub mod spool_tools;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use shared::shutdown::Stop;
use tokio::net::TcpListener;

use catalog::{Catalog, Refresher};
pub use config::Config;
use filter::{Policy, SensitiveFilter};
use idempotency::Idempotency;
use limits::Limits;
use pipeline::{Pipeline, PipelineConfig};
use shared::auth::Authenticator;
use shared::http::pages::{self, Page};
use shared::metrics::names;
use spool::Spool;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub auth: Authenticator,
    /// The student form, with how to sign in filled in.
    pub form: Arc<Page>,
    /// The HMAC key that turns a JWT subject into a `student_key`.
    pub student_key_secret: Arc<[u8]>,
    pub limits: Arc<Limits>,
    /// Whose `X-Forwarded-For` names the client for the per-IP limit.
    pub trusted_proxies: Arc<client_addr::TrustedProxies>,
    pub filter: Arc<SensitiveFilter>,
    pub policy: Policy,
    pub pipeline: Arc<Pipeline>,
    pub idempotency: Arc<Idempotency>,
    /// The courses a submission may name (every valid one when open).
    pub catalog: Arc<Catalog>,
}

/// A built ingest: listener bound, spool open, producer created.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Reads the catalog from MySQL while ingest runs (none only when an
    /// open ingest's `FEEDBACK_MYSQL_URL` cannot be used at all).
    refresher: Option<Refresher>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        shared::metrics::install();
        show_counters();
        let filter = match &config.sensitive_words_file {
            Some(path) => SensitiveFilter::from_file(path)?,
            None => SensitiveFilter::from_words(config::DEFAULT_WORDS.lines())?,
        };
        let spool = Spool::open_waiting(
            &config.spool_dir,
            config.spool_max_bytes,
            Duration::from_secs(10),
        )
        .await?;
        let pipeline = Pipeline::new(
            PipelineConfig {
                brokers: config.brokers.clone(),
                topic: config.topic.clone(),
                delivery_timeout: config.delivery_timeout,
                drain_batch: 500,
            },
            spool.clone(),
        )?;
        let limits = Limits::new(
            config.rate_limit_student_per_min,
            config.rate_limit_ip_per_min,
        );
        limits.spawn_pruner(Duration::from_secs(60));
        let idempotency = Arc::new(Idempotency::new(
            spool.idempotency_entries(),
            config.idempotency_ttl,
        ));
        idempotency.spawn_pruner(Duration::from_secs(600));
        let (catalog, refresher) = load_catalog(&config.catalog, &spool).await?;
        let auth = Authenticator::new(&config.auth)?;
        let state = AppState {
            form: Arc::new(Page::new(include_str!("form.html"), &auth)),
            auth,
            student_key_secret: config.student_key_secret.clone().into(),
            limits,
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            filter: Arc::new(filter),
            policy: config.sensitive_policy,
            pipeline,
            idempotency,
            catalog,
        };
        let listener = shared::http::bind(&config.addr).await?;
        Ok(Self {
            listener,
            state,
            refresher,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state (tests drive the router with it, without a socket).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes; then stops accepting, finishes
    /// in-flight requests, flushes the producer and the spool, and returns
    /// within about 10 s.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            refresher,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, topic = state.pipeline.topic(), "ingest listening");
        let pipeline = state.pipeline.clone();
        spawn_topic_creation(
            state.pipeline.brokers().to_owned(),
            state.pipeline.topic().to_owned(),
        );

        let stop = Stop::new();
        let drainer = tokio::spawn(pipeline.clone().drain(stop.wait()));
        let refresher = refresher.map(|refresher| tokio::spawn(refresher.run(stop.wait())));
        // A store that cannot be opened again stops ingest as a signal
        // would, and the exit code tells the supervisor to restart it.
        let store = pipeline.spool.health().clone();
        let gave_up = Arc::new(std::sync::OnceLock::new());
        let stopping = {
            let gave_up = gave_up.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    reason = store.gave_up() => { let _ = gave_up.set(reason); }
                }
            }
        };
        let server = shared::http::serve(listener, router(state), stop.trigger_on(stopping));
        tokio::select! {
            result = server => result?,
            _ = async { stop.wait().await; tokio::time::sleep(Duration::from_secs(6)).await } => {
                tracing::warn!("in-flight requests still open after 6 s: closing them");
            }
        }
        let _ = drainer.await;
        if let Some(refresher) = refresher {
            let _ = refresher.await;
        }
        pipeline.close(Duration::from_secs(2)).await;
        if let Some(reason) = gave_up.get() {
            anyhow::bail!("{reason}: stopping for the supervisor to restart ingest");
        }
        tracing::info!("ingest stopped");
        Ok(())
    }
}

/// The catalog and its refresher, in either mode: the copy on disk is
/// loaded before ingest serves, so a restart while MySQL is down still
/// knows the courses (to check, when closed; to list, always).
async fn load_catalog(
    settings: &catalog::Settings,
    spool: &Spool,
) -> anyhow::Result<(Arc<Catalog>, Option<Refresher>)> {
    let open = settings.mode == catalog::Mode::Open;
    let copy = spool.catalog_copy();
    let saved = match copy.load().await {
        Ok(saved) => saved,
        Err(err) => {
            tracing::warn!(%err, "the catalog's copy on disk could not be read; waiting for MySQL");
            None
        }
    };
    match &saved {
        Some(saved) => {
            tracing::info!(courses = saved.courses.len(), learned_at = %saved.learned_at, "catalog loaded from disk")
        }
        None if open => {
            tracing::info!("no catalog on disk: the course list is empty until a read from MySQL")
        }
        None => {
            tracing::info!("no catalog on disk: submissions wait for the first read from MySQL")
        }
    }
    let catalog = Arc::new(Catalog::new(settings.mode, saved));
    match Refresher::new(catalog.clone(), &settings.mysql_url, copy, settings.refresh) {
        Ok(refresher) => Ok((catalog, Some(refresher))),
        // Open, the list is a convenience: a URL that cannot work leaves it
        // as on disk rather than stopping ingest (closed mode checked the
        // URL when it read the settings).
        Err(err) if open => {
            let error = format!("{err:#}");
            tracing::warn!(%error, "FEEDBACK_MYSQL_URL is not usable: the course list is not read from MySQL");
            catalog.failed(error);
            Ok((catalog, None))
        }
        Err(err) => Err(err),
    }
}

/// Ingest's counters, shown at 0 from the start rather than at their first increment.
fn show_counters() {
    shared::metrics::show_counters(&[
        (names::INGEST_IDEMPOTENT_REPLAYS_TOTAL, &[]),
        (names::INGEST_PRODUCER_RENEWALS_TOTAL, &[]),
        (names::INGEST_RATE_LIMITED_TOTAL, &[("limit", "student")]),
        (names::INGEST_RATE_LIMITED_TOTAL, &[("limit", "address")]),
        (names::INGEST_SENSITIVE_TOTAL, &[("action", "masked")]),
        (names::INGEST_SENSITIVE_TOTAL, &[("action", "rejected")]),
        (names::INGEST_SPOOL_FULL_TOTAL, &[]),
        (names::INGEST_SPOOL_REPLAYED_TOTAL, &[]),
        (names::INGEST_SPOOL_UNREADABLE_TOTAL, &[]),
    ]);
}

/// Creates the topic (6 partitions) once Kafka answers; ingest serves (and
/// spools) meanwhile. With the configured brokers (it read the environment's),
/// and holding nothing of the service (it held the spool open after a stop).
fn spawn_topic_creation(brokers: String, topic: String) {
    tokio::spawn(async move {
        loop {
            match shared::kafka::ensure_events_topic(&brokers, &topic).await {
                Ok(()) => break,
                Err(err) => tracing::warn!(%err, "topic not ensured yet; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
}

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/v1/feedback", post(feedback::submit))
        .route("/", get(form))
        .route(
            "/form.js",
            get(|| async { pages::script(include_str!("form.js")) }),
        )
        .route(
            "/form.css",
            get(|| async { pages::style(include_str!("form.css")) }),
        )
        .route("/oidc.js", get(|| async { pages::script(pages::OIDC_JS) }))
        .route("/v1/catalog", get(catalog_list))
        .route("/readyz", get(readyz))
        .merge(shared::http::health_routes())
        // The submission reads its body itself, within its own size and time limits.
        .layer(DefaultBodyLimit::disable());
    // Behind one `Arc`: axum clones the state for every request (the
    // route's handler and the `State` extractor), one count instead of one
    // per field.
    shared::http::with_service_layers(routes).with_state(Arc::new(state))
}

async fn form(State(state): State<Arc<AppState>>) -> Response {
    state.form.response()
}

/// `GET /v1/catalog`, no token: query's answer, from ingest's own catalog,
/// so the form lists the courses when ingest is reached without the front
/// door (which sends this path to query).
async fn catalog_list(State(state): State<Arc<AppState>>) -> Response {
    state.catalog.public_list()
}

/// 200 while a submission can be taken (Kafka, or room in the spool; and
/// with a closed catalog, one read at least once); each part's state.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let pipeline = &state.pipeline;
    let breaker = pipeline.breaker.state();
    let spool = &pipeline.spool;
    let (catalog_ready, catalog) = state.catalog.readiness();
    let ready = (pipeline.breaker.is_closed() || spool.has_capacity()) && catalog_ready;
    let store = spool.health();
    let failure = store.last_failure();
    shared::http::readiness(
        ready,
        serde_json::json!({
            "kafka": { "breaker": breaker.as_str(), "up": breaker == shared::breaker::State::Closed },
            "spool": {
                "depth": spool.depth(),
                "bytes": spool.bytes(),
                "max_bytes": spool.max_bytes(),
                "entry_bytes": spool.entry_bytes(),
                "disk_bytes": spool.disk_bytes(),
                "has_capacity": spool.has_capacity(),
                "store": {
                    "up": store.is_up(),
                    "stalled": store.is_stalled(),
                    "reopens": store.reopens(),
                    "last_error": failure.as_ref().map(|(error, _)| error),
                    "last_error_at": failure.and_then(|(_, at)| at.format(&time::format_description::well_known::Rfc3339).ok()),
                },
            },
            // Shown, not required: held keys keep working while the
            // provider is down, and a replica taken out for it would only
            // turn a partial outage into a whole one.
            "identity": state.auth.readiness(),
            "catalog": catalog,
        }),
    )
    .into_response()
}
