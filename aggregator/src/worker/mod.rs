//! The batch loop: a router and `FEEDBACK_SINK_LANES` lanes.
//!
//! The router (`router.rs`) reads the consumer and hands each message to the
//! lane of its partition (`partition % lanes`). Each lane (`lane.rs`)
//! collects up to `FEEDBACK_BATCH_SIZE` messages or waits
//! `FEEDBACK_BATCH_LINGER_MS`, then commits them in one MySQL transaction
//! (`sink/`), queues the deltas for Redis (`redis_view.rs`, applied in order
//! by one task while the lane goes on) and records the offsets for Kafka
//! (advisory, committed at most once a second: `advisory.rs`). Lanes run
//! concurrently; a partition always belongs to the same lane, so its
//! transactions commit in offset order, and lanes never share a course (the
//! topic is keyed by course).
//!
//! Flow control: while a lane holds 1 MiB, the router stops taking messages
//! (librdkafka's own bounded queue holds the rest). While MySQL is down, or
//! a dead letter cannot be written, the whole assignment is paused instead
//! and the router keeps polling, so the group keeps this member however long
//! the outage lasts. An event MySQL refuses for good pauses nothing: the
//! lane sets it aside (`commit.rs`) and goes on.
//!
//! A revocation travels down every lane's queue in order with the messages,
//! so a lane drops exactly what it buffered for the revoked partitions before
//! it sees anything of the next assignment (whose owner restarts from MySQL's
//! offsets).

mod advisory;
mod commit;
mod lane;
mod router;

use std::sync::Arc;

pub(crate) use advisory::AdvisoryCommits;
pub(crate) use router::run;

use crate::config::Config;
use crate::consumer::AggregatorConsumer;
use crate::dlq::DeadLetters;
use crate::health::Health;
use crate::redis_view::RedisView;

/// What the router and the lanes work with.
pub(crate) struct Worker {
    /// Batch size, linger, lane count and the topic.
    pub config: Config,
    /// Read by the router; the advisory commits go through it too.
    pub consumer: AggregatorConsumer,
    /// Where the lanes commit their batches.
    pub pool: mysql_async::Pool,
    /// Where the lanes' deltas go after each commit.
    pub redis: Arc<RedisView>,
    /// Where the lanes send poison messages.
    pub dead_letters: DeadLetters,
    /// Failing lanes and the assignment's size, for `/readyz` (and the
    /// router's pause).
    pub health: Arc<Health>,
    /// The offsets waiting to be committed to Kafka.
    pub advisory: AdvisoryCommits,
}
