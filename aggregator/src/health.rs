//! Readiness: what the lanes and the router report, and `/readyz`, which
//! reads it and asks MySQL and Redis themselves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::redis_view::RedisView;

/// What `/readyz` reports.
#[derive(Default)]
pub(crate) struct Health {
    /// Lanes retrying a commit because MySQL is unreachable.
    failing_lanes: AtomicUsize,
    /// Dead letters the DLQ has refused so far, their batches waiting.
    dead_letters_waiting: AtomicUsize,
    /// Partitions assigned to this member (0 between a revocation and the
    /// next assignment).
    assigned: AtomicUsize,
}

impl Health {
    /// Whether no lane is retrying a commit.
    pub(crate) fn sink_up(&self) -> bool {
        self.failing_lanes.load(Ordering::Relaxed) == 0
    }

    /// Whether a lane waits for MySQL or the DLQ (the router then pauses
    /// the assignment).
    pub(crate) fn stalled(&self) -> bool {
        !self.sink_up() || self.dead_letters_waiting.load(Ordering::Relaxed) > 0
    }

    /// A dead letter could not be written; its batch waits and tries again.
    pub(crate) fn dead_letter_waiting(&self) {
        self.dead_letters_waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// A waiting dead letter was written at last, or gave up at shutdown.
    pub(crate) fn dead_letter_stopped_waiting(&self) {
        self.dead_letters_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// A lane's commit failed on an unreachable MySQL; it retries.
    pub(crate) fn lane_failing(&self) {
        self.failing_lanes.fetch_add(1, Ordering::Relaxed);
    }

    /// A failing lane committed at last, or gave up at shutdown.
    pub(crate) fn lane_stopped_failing(&self) {
        self.failing_lanes.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions, Ordering::Relaxed);
    }
}

/// What `/readyz` looks at.
#[derive(Clone)]
pub(crate) struct Probes {
    pub(crate) health: Arc<Health>,
    pub(crate) redis: Arc<RedisView>,
    pub(crate) pool: mysql_async::Pool,
}

/// The aggregator's HTTP routes: `/readyz`, and the health and metrics
/// routes every service has, with every service's layers.
pub(crate) fn app(probes: Probes) -> Router {
    let routes = Router::new()
        .route("/readyz", get(readyz))
        .merge(shared::http::health_routes());
    shared::http::with_service_layers(routes).with_state(probes)
}

/// How long `/readyz` waits for MySQL to answer a ping.
const MYSQL_PROBE: Duration = Duration::from_secs(1);

/// 200 while the sink can commit: no lane is retrying a commit, MySQL
/// answers a ping (so an idle aggregator reports a MySQL outage too), and
/// no dead letter waits for the DLQ.
async fn readyz(State(probes): State<Probes>) -> Response {
    let (health, redis) = (&probes.health, &probes.redis);
    let lanes_retrying = health.failing_lanes.load(Ordering::Relaxed);
    let dead_letters_waiting = health.dead_letters_waiting.load(Ordering::Relaxed);
    // In a task of its own: a ping cut off by the timeout would leave its
    // connection with an unread answer; the task finishes it instead.
    let pool = probes.pool.clone();
    // (Bounded too, so probes during a long outage do not pile up.)
    let ping = tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
        use mysql_async::prelude::Queryable;
        pool.get_conn().await?.ping().await
    }));
    let answers = tokio::time::timeout(MYSQL_PROBE, ping)
        .await
        .is_ok_and(|joined| joined.is_ok_and(|bounded| bounded.is_ok_and(|p| p.is_ok())));
    let sink_up = health.sink_up() && answers;
    shared::http::readiness(
        sink_up && dead_letters_waiting == 0,
        serde_json::json!({
            "mysql": { "up": sink_up, "answers": answers, "lanes_retrying": lanes_retrying },
            "dlq": { "up": dead_letters_waiting == 0, "waiting": dead_letters_waiting },
            "redis": { "up": redis.is_up(), "courses_to_repair": redis.dirty_count() },
            "kafka": { "assigned_partitions": health.assigned.load(Ordering::Relaxed) },
        }),
    )
}
