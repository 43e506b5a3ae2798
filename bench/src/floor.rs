//! `feedback-bench kafka-floor`: ingest's limit on this machine. An HTTP
//! server with one handler that does what a submission must do and nothing
//! else: read the body, produce one event of the same bytes as ingest's (the
//! event JSON keyed by its course, an `x-request-id` header) with ingest's
//! producer settings (`shared::kafka::submission_producer_config`), wait for
//! the broker's acknowledgement, answer 202 with ingest's body. No token,
//! no parsing of the body, no policy, no idempotency, no rate limits, no
//! access log: what ingest does above this is what the ratio measures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::domain::{Comment, CourseId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;

/// Ingest's `FEEDBACK_KAFKA_DELIVERY_TIMEOUT_MS` default.
const DELIVERY_TIMEOUT: Duration = Duration::from_millis(5000);

/// The courses and students the events rotate over, as scripts/bench/submit.lua sends them.
const COURSES: usize = 50;
const STUDENTS: usize = 2000;

struct Floor {
    producer: FutureProducer,
    topic: String,
    courses: Vec<CourseId>,
    students: Vec<StudentKey>,
    sent: AtomicU64,
}

/// Serves on `addr` until SIGTERM or Ctrl-C, on a runtime like ingest's
/// (tokio's default: a worker per core).
pub fn run(brokers: &str, topic: &str, addr: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(serve(brokers, topic, addr))
}

async fn serve(brokers: &str, topic: &str, addr: &str) -> anyhow::Result<()> {
    shared::kafka::ensure_events_topic(brokers, topic).await?;
    let producer: FutureProducer =
        shared::kafka::submission_producer_config(brokers, DELIVERY_TIMEOUT)
            .create()
            .context("creating the Kafka producer")?;
    let courses = (0..COURSES)
        .map(|i| CourseId::parse(format!("BENCH-I{i:03}")))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("course id: {e:?}"))?;
    // Made once: deriving a student's key is ingest's work, not the floor's.
    let students = (0..STUDENTS)
        .map(|i| StudentKey::derive(b"kafka-floor", &format!("bench-student-{i}")))
        .collect();
    let floor = Arc::new(Floor {
        producer,
        topic: topic.to_owned(),
        courses,
        students,
        sent: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/feedback", post(submit))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(floor);
    let listener = shared::http::bind(addr).await?;
    eprintln!("kafka-floor listening on {addr}, producing to {topic}");
    shared::http::serve(listener, app, shared::shutdown::signal()).await?;
    Ok(())
}

async fn submit(
    State(floor): State<Arc<Floor>>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), StatusCode> {
    let n = floor.sent.fetch_add(1, Ordering::Relaxed) as usize;
    // The size of wrk's comments, so the payload is as long as ingest's.
    let comment = Comment::parse(format!("wrk load {n}: clear lectures")).ok();
    let rating =
        Rating::parse((n % 5 + 1) as i64).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let event = FeedbackSubmitted::new(
        floor.courses[n % COURSES].clone(),
        floor.students[n % STUDENTS].clone(),
        rating,
        comment,
    );
    let payload = event.to_json();
    drop(body);
    let request_id = uuid::Uuid::new_v4().to_string();
    let record = FutureRecord::to(&floor.topic)
        .key(event.course_id.as_str())
        .payload(&payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: shared::trace::REQUEST_ID,
            value: Some(request_id.as_bytes()),
        }));
    let delivery = floor
        .producer
        .send_result(record)
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    match delivery.await {
        Ok(Ok(_)) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "feedback_id": event.feedback_id.to_string(),
                "status": "accepted",
                "flagged": false,
            })),
        )),
        _ => Err(StatusCode::SERVICE_UNAVAILABLE),
    }
}
