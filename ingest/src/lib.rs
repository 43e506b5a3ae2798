//! Ingest: takes students' feedback over HTTP and produces it to Kafka.
//!
//! Flow of one submission (`feedback.rs`, which also holds the `202`
//! reply): rate limits (`limits.rs`, per client address as `client_addr.rs`
//! finds it), the student's JWT (`shared::auth`), parsing into
//! `CourseId`/`Rating`/`Comment`, the sensitive-word policy (`filter.rs`), the
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

pub mod client_addr;
pub mod config;
pub mod feedback;
pub mod filter;
pub mod idempotency;
pub mod limits;
pub mod pipeline;
pub mod record;
pub mod spool;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use config::Config;
use filter::{Policy, SensitiveFilter};
use idempotency::Idempotency;
use limits::Limits;
use pipeline::{Pipeline, PipelineConfig};
use shared::auth::JwtKeys;
use spool::Spool;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub keys: Arc<JwtKeys>,
    /// The HMAC key that turns a JWT subject into a `student_key`.
    pub student_key_secret: Arc<[u8]>,
    pub limits: Arc<Limits>,
    /// Whose `X-Forwarded-For` names the client for the per-IP limit.
    pub trusted_proxies: Arc<client_addr::TrustedProxies>,
    pub filter: Arc<SensitiveFilter>,
    pub policy: Policy,
    pub pipeline: Arc<Pipeline>,
    pub idempotency: Arc<Idempotency>,
}

/// A built ingest: listener bound, spool open, producer created.
pub struct Application {
    listener: TcpListener,
    state: AppState,
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
        let state = AppState {
            keys: Arc::new(JwtKeys::new(config.jwt_secret.as_bytes())?),
            student_key_secret: config.student_key_secret.clone().into(),
            limits,
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            filter: Arc::new(filter),
            policy: config.sensitive_policy,
            pipeline,
            idempotency,
        };
        let listener = shared::http::bind(&config.addr).await?;
        Ok(Self { listener, state })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` completes; then stops accepting, finishes
    /// in-flight requests, flushes the producer and the spool, and returns
    /// within about 10 s.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self { listener, state } = self;
        tracing::info!(addr = %listener.local_addr()?, topic = state.pipeline.topic(), "ingest listening");
        let pipeline = state.pipeline.clone();
        spawn_topic_creation(
            state.pipeline.brokers().to_owned(),
            state.pipeline.topic().to_owned(),
        );

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let drainer = tokio::spawn(pipeline.clone().drain(stopped(stop_rx.clone())));
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let server = shared::http::serve(listener, router(state), signal);
        tokio::select! {
            result = server => result?,
            _ = async { stopped(stop_rx).await; tokio::time::sleep(Duration::from_secs(6)).await } => {
                tracing::warn!("in-flight requests still open after 6 s: closing them");
            }
        }
        let _ = drainer.await;
        pipeline.close(Duration::from_secs(2)).await;
        tracing::info!("ingest stopped");
        Ok(())
    }
}

/// Ingest's counters, shown at 0 from the start rather than at their first increment.
fn show_counters() {
    shared::metrics::show_counters(&[
        ("ingest_idempotent_replays_total", &[]),
        ("ingest_producer_renewals_total", &[]),
        ("ingest_rate_limited_total", &[("limit", "student")]),
        ("ingest_rate_limited_total", &[("limit", "address")]),
        ("ingest_sensitive_total", &[("action", "masked")]),
        ("ingest_sensitive_total", &[("action", "rejected")]),
        ("ingest_spool_full_total", &[]),
        ("ingest_spool_replayed_total", &[]),
        ("ingest_spool_unreadable_total", &[]),
    ]);
}

/// Creates the topic (6 partitions) once Kafka answers; ingest serves (and
/// spools) meanwhile. With the configured brokers (it read the environment's),
/// and holding nothing of the service (it held the spool open after a stop).
fn spawn_topic_creation(brokers: String, topic: String) {
    tokio::spawn(async move {
        loop {
            match shared::kafka::ensure_topic(
                &brokers,
                &topic,
                shared::kafka::PARTITIONS,
                Some(shared::kafka::EVENTS_RETENTION),
            )
            .await
            {
                Ok(()) => break,
                Err(err) => tracing::warn!(%err, "topic not ensured yet; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
}

pub fn router(state: AppState) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let routes = Router::new()
        .route(
            "/v1/feedback",
            post(feedback::submit).fallback(shared::http::method_not_allowed),
        )
        .route("/", get(form))
        .route("/readyz", get(readyz))
        .merge(shared::http::health_routes());
    // The fallbacks before the layers: a 404 or 405 gets the request id, the metrics and the trace too.
    shared::http::fallbacks(routes)
        .layer(DefaultBodyLimit::disable())
        .layer(shared::http::catch_panic())
        .layer(axum::middleware::from_fn(shared::http::track_metrics))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn(shared::http::sanitize_request_id))
        .with_state(state)
}

async fn form() -> Html<&'static str> {
    Html(include_str!("form.html"))
}

/// 200 while a submission can be taken (Kafka, or room in the spool); each part's state.
async fn readyz(State(state): State<AppState>) -> Response {
    let pipeline = &state.pipeline;
    let breaker = pipeline.breaker.state();
    let spool = &pipeline.spool;
    let ready = pipeline.breaker.is_closed() || spool.has_capacity();
    shared::http::readiness(
        ready,
        serde_json::json!({
            "kafka": { "breaker": breaker.as_str(), "up": breaker == shared::breaker::State::Closed },
            "spool": {
                "depth": spool.depth(),
                "bytes": spool.bytes(),
                "max_bytes": spool.max_bytes(),
                "has_capacity": spool.has_capacity(),
            },
        }),
    )
    .into_response()
}
