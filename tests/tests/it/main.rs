//! The tests of the three services together, and of the stack under them,
//! in one binary: the end-to-end run, the servers of `scripts/infra.sh`
//! answering, `schemas/openapi.yaml` against the routers, and the
//! aggregator and query on a real Redis Cluster.

mod end_to_end;
mod identity;
mod infrastructure;
mod moderation;
mod openapi;
mod redis_cluster;
