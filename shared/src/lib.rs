//! What two or more feedback services share.
//!
//! The pipeline is `ingest` (HTTP → Kafka, or the disk spool while Kafka is
//! down) → Kafka topic `feedback-events` → `aggregator` (MySQL, then Redis) →
//! `query` (Redis, falling back to MySQL). This crate holds only the pieces that
//! more than one of those services needs:
//!
//! - [`domain`]: parsed input types (`CourseId`, `Rating`, `Comment`, ...): an
//!   invalid value cannot exist past the edge that parsed it.
//! - [`event`]: the `feedback.submitted` v1 event, as `schemas/feedback-submitted.v1.json` describes it.
//! - [`auth`]: HS256 JWT verification and minting (students and admins).
//! - [`http`]: the contract's error body, the layers and fallbacks every
//!   router gets, and the health routes; [`server`] serves such a router.
//! - [`mysql`] and [`redis_hash`]: the MySQL schema and the Redis course hash
//!   with its version-guarded Lua scripts, written by the aggregator and read
//!   by query; [`redis_conn`]: one Redis server or a Redis Cluster, behind one
//!   connection type.
//! - [`breaker`]: the circuit breaker in front of Kafka (ingest) and Redis (query).
//! - [`metrics`]: the recorder, and every metric's name with its HELP text.
//! - [`shutdown`]: the signal, and the `Stop` every task of a service waits on.
//! - [`trace`]: the request id and W3C `traceparent` a submission carries
//!   from ingest's HTTP request through Kafka to the aggregator's log.
//! - [`env`](mod@env), [`telemetry`], [`kafka`]: start-up plumbing.

pub mod auth;
pub mod breaker;
pub mod domain;
pub mod env;
pub mod event;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod mysql;
pub mod redis_conn;
pub mod redis_hash;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
