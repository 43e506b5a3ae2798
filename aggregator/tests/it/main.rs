//! The aggregator's integration tests, in one binary (one link): all of them
//! but the Kafka outage, which has a binary of its own (`kafka_outage.rs`) so
//! that no test here sees the shared broker go away. The faults here strike
//! private Redis and MariaDB servers, or the aggregator itself.

mod exactly_once;
mod faults;
mod ops;
mod quarantine;
mod trace;

/// The aggregator binary, for the tests that kill it with SIGKILL.
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_aggregator");
