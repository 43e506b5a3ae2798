//! Ingest's integration tests, in one binary (one link): all of them but the
//! Kafka outage, which has a binary of its own (`kafka_outage.rs`) so that no
//! test here sees the shared broker go away.

mod api;
mod catalog;
mod connections;
mod idempotency;
mod spool;
mod spool_disk;
mod spool_tools;
mod trace;
