//! The three services together, each on a free port inside the test, as the
//! end-to-end and OpenAPI tests run them.

use std::path::Path;

use crate::{aggregator, ingest, query, unique_name, Running};

/// An ingest producing to `topic`, spooling in `spool`, limits off.
pub async fn start_ingest(topic: &str, spool: &Path) -> Running {
    ingest::start(ingest::config(topic, spool.into())).await
}

/// An aggregator on `topic` into `mysql_url` and `redis_url`, in a group of its own.
pub async fn start_aggregator(topic: &str, mysql_url: &str, redis_url: &str) -> Running {
    let group = unique_name("fbtest-e2e");
    aggregator::start(aggregator::config(topic, &group, mysql_url, redis_url)).await
}

/// A query over `mysql_url` and `redis_url`, without pre-warm, its hashes
/// living as long as the aggregator's.
pub async fn start_query(mysql_url: &str, redis_url: &str) -> Running {
    query::start(::query::Config {
        cache_ttl_secs: 3600,
        ..query::config(mysql_url, redis_url)
    })
    .await
}
