//! Rate limits (governor, keyed GCRA): one per student and one per client IP,
//! each a number of requests per minute with a burst of the same size. Zero
//! turns a limit off. Keys of idle clients are pruned on a timer.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use shared::http::ApiError;
use shared::metrics::names;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One keyed limit, or none when configured as 0.
pub struct Limit<K: Hash + Eq + Clone> {
    limiter: Option<Keyed<K>>,
    per_minute: u32,
    /// Names the limit in the 429 message.
    what: &'static str,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    pub fn per_minute(per_minute: u32, what: &'static str) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| {
            RateLimiter::dashmap(Quota::per_minute(n))
                .with_middleware::<StateInformationMiddleware>()
        });
        Self {
            limiter,
            per_minute,
            what,
        }
    }

    /// Takes one request from `key`'s allowance, or answers 429.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.check_key(key) {
            Ok(_) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                metrics::counter!(names::INGEST_RATE_LIMITED_TOTAL, "limit" => self.what)
                    .increment(1);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "too many submissions from this {}: at most {} a minute; retry in {retry_after} s",
                        self.what, self.per_minute
                    ),
                )
                .with_header(axum::http::header::RETRY_AFTER, retry_after)
                .with_header(HeaderName::from_static("x-ratelimit-limit"), self.per_minute)
                .with_header(HeaderName::from_static("x-ratelimit-remaining"), 0)
                .with_header(HeaderName::from_static("x-ratelimit-reset"), retry_after))
            }
        }
    }

    /// Forgets keys whose allowance is full again.
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn tracked_keys(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The two limits ingest applies.
pub struct Limits {
    pub per_student: Limit<String>,
    pub per_ip: Limit<IpAddr>,
}

impl Limits {
    pub fn new(student_per_minute: u32, ip_per_minute: u32) -> Arc<Self> {
        Arc::new(Self {
            per_student: Limit::per_minute(student_per_minute, "student"),
            per_ip: Limit::per_minute(ip_per_minute, "address"),
        })
    }

    /// Prunes idle keys every `period` for as long as the limits live.
    pub fn spawn_pruner(self: &Arc<Self>, period: Duration) {
        let limits = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(limits) = limits.upgrade() else {
                    break;
                };
                limits.per_student.prune();
                limits.per_ip.prune();
                metrics::gauge!(names::INGEST_RATE_LIMIT_KEYS, "limit" => "student")
                    .set(limits.per_student.tracked_keys() as f64);
                metrics::gauge!(names::INGEST_RATE_LIMIT_KEYS, "limit" => "address")
                    .set(limits.per_ip.tracked_keys() as f64);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_passes_and_the_next_gets_429_with_headers() {
        let limit = Limit::per_minute(3, "student");
        let alice = "alice".to_owned();
        for _ in 0..3 {
            limit.check(&alice).unwrap();
        }
        let err = limit.check(&alice).unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "rate_limited");
        let header = |name: &str| {
            err.headers
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(header("x-ratelimit-limit"), "3");
        assert_eq!(header("x-ratelimit-remaining"), "0");
        let retry: u64 = header("retry-after").parse().unwrap();
        assert!(
            (1..=20).contains(&retry),
            "one request comes back every 20 s, got {retry}"
        );
        assert_eq!(header("x-ratelimit-reset").parse::<u64>().unwrap(), retry);
        // Another key has its own allowance.
        limit.check(&"bob".to_owned()).unwrap();
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limit = Limit::per_minute(0, "address");
        for _ in 0..1000 {
            limit.check(&"x".to_owned()).unwrap();
        }
        assert_eq!(limit.tracked_keys(), 0);
    }
}
