//! Settings come from environment variables (the contract's table); these
//! helpers read them with defaults and clear errors at start-up.

use std::str::FromStr;

use anyhow::Context;

/// The variable's value, or `None` when unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value, or `default`.
pub fn var_or(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_owned())
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parse_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={raw:?} is not valid: {e}")),
    }
}

/// `FEEDBACK_CACHE_TTL_SECS` (default 86400, 0 = no expiry, at most 10
/// years): the TTL of the course hashes query and the aggregator fill.
pub fn cache_ttl_secs() -> anyhow::Result<u64> {
    let ttl: u64 = parse_or("FEEDBACK_CACHE_TTL_SECS", 86_400)?;
    anyhow::ensure!(
        ttl <= 315_360_000,
        "FEEDBACK_CACHE_TTL_SECS must be at most 315360000 (10 years; 0 means no expiry)"
    );
    Ok(ttl)
}

/// `FEEDBACK_JWT_SECRET`: required by ingest and query, at least 32 bytes.
pub fn jwt_secret() -> anyhow::Result<String> {
    let secret = var("FEEDBACK_JWT_SECRET")
        .context("FEEDBACK_JWT_SECRET is not set: refusing to start without a JWT secret")?;
    anyhow::ensure!(
        secret.len() >= crate::auth::MIN_SECRET_LEN,
        "FEEDBACK_JWT_SECRET must be at least {} bytes",
        crate::auth::MIN_SECRET_LEN
    );
    Ok(secret)
}

pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_KAFKA_TOPIC: &str = "feedback-events";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/feedback";

pub fn kafka_brokers() -> String {
    var_or("FEEDBACK_KAFKA_BROKERS", DEFAULT_KAFKA_BROKERS)
}

pub fn kafka_topic() -> String {
    var_or("FEEDBACK_KAFKA_TOPIC", DEFAULT_KAFKA_TOPIC)
}

pub fn redis_url() -> String {
    var_or("FEEDBACK_REDIS_URL", DEFAULT_REDIS_URL)
}

pub fn mysql_url() -> String {
    var_or("FEEDBACK_MYSQL_URL", DEFAULT_MYSQL_URL)
}
