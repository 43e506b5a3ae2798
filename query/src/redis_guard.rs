//! Redis behind a circuit breaker (`shared::breaker`).
//!
//! Every Redis call goes through [`GuardedRedis::call`]: a failed or
//! timed-out call counts against the breaker; once it is open, calls fail at
//! once (the caller answers from MySQL) instead of each paying the timeout.
//! When the cool-down ends one call, and only one, probes Redis; its outcome
//! closes or re-opens the breaker.
//!
//! The hot path (breaker closed, last call fine) reads one atomic flag and
//! never takes the breaker's lock.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::RedisResult;
use shared::breaker::{Breaker, State};
use shared::metrics::names;
use shared::redis_conn::{Connection, Target};

/// Redis was not asked (breaker open) or did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Redis unavailable")]
pub struct Unreachable;

pub struct GuardedRedis {
    /// Multiplexed and self-reconnecting (a single server or a cluster);
    /// cloned per call (cheap).
    conn: Connection,
    breaker: Breaker,
    /// True while the breaker is closed and the last call succeeded: lets the
    /// hot path skip the breaker's mutex.
    healthy: AtomicBool,
    /// Set while one caller probes a breaker that is not closed, so a burst of
    /// requests at the end of a cool-down sends one probe, not hundreds.
    probing: AtomicBool,
    /// One call's budget (on top of the connection's own timeouts).
    timeout: Duration,
}

impl GuardedRedis {
    /// A lazy connection to `target` (Redis need not be up yet).
    pub fn connect(target: &Target, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            conn: shared::redis_conn::connect(target, timeout)?,
            breaker: Breaker::new("Redis", names::QUERY_REDIS_BREAKER_STATE),
            healthy: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            timeout,
        })
    }

    /// True while the breaker is closed and the last call succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The breaker's state, for `/readyz`.
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// Runs `op` on a connection unless the breaker holds it back.
    pub async fn call<T, Fut>(&self, op: impl FnOnce(Connection) -> Fut) -> Result<T, Unreachable>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let _probe = if self.healthy.load(Ordering::Acquire) {
            None
        } else {
            Some(self.admit()?)
        };
        match tokio::time::timeout(self.timeout, op(self.conn.clone())).await {
            Ok(Ok(value)) => {
                if !self.healthy.load(Ordering::Acquire) {
                    self.breaker.record_success();
                    self.healthy.store(true, Ordering::Release);
                }
                Ok(value)
            }
            Ok(Err(err)) => {
                self.fail(&err);
                Err(Unreachable)
            }
            Err(_) => {
                self.fail(&"timed out");
                Err(Unreachable)
            }
        }
    }

    /// Lets a call through when the breaker is closed, or when it is this
    /// caller's turn to probe.
    fn admit(&self) -> Result<ProbeTurn<'_>, Unreachable> {
        if self.breaker.state() == State::Closed {
            return Ok(ProbeTurn(None));
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return Err(Unreachable);
        }
        let turn = ProbeTurn(Some(&self.probing));
        if self.breaker.try_probe() {
            Ok(turn)
        } else {
            Err(Unreachable)
        }
    }

    fn fail(&self, cause: &dyn std::fmt::Display) {
        self.healthy.store(false, Ordering::Release);
        self.breaker.record_failure();
        tracing::debug!(%cause, "Redis call failed");
    }
}

/// Releases the probing turn however the probe ends (even if its request is cancelled).
struct ProbeTurn<'a>(Option<&'a AtomicBool>);

impl Drop for ProbeTurn<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard on a port nothing listens on: every real call fails fast.
    fn dead() -> GuardedRedis {
        let target = Target::Single("redis://127.0.0.1:1/0".into());
        GuardedRedis::connect(&target, Duration::from_millis(100)).unwrap()
    }

    async fn failing(_: Connection) -> RedisResult<()> {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "injected failure",
        )))
    }

    async fn succeeding(_: Connection) -> RedisResult<()> {
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn three_failures_open_the_breaker_and_then_calls_are_not_even_tried() {
        let redis = dead();
        for _ in 0..3 {
            assert_eq!(redis.call(failing).await, Err(Unreachable));
        }
        assert_eq!(redis.state(), State::Open);
        let tried = AtomicBool::new(false);
        let result = redis
            .call(|_| async {
                tried.store(true, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert_eq!(result, Err(Unreachable));
        assert!(!tried.load(Ordering::SeqCst), "an open breaker skips Redis");
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_down_one_probe_goes_through_and_its_success_closes_the_breaker() {
        let redis = dead();
        for _ in 0..3 {
            let _ = redis.call(failing).await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;

        // A probe in flight holds the turn: a concurrent call falls back at once.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let probe = redis.call(|_| async move {
            let _ = released.await;
            Ok(())
        });
        tokio::pin!(probe);
        assert!(futures::poll!(probe.as_mut()).is_pending());
        assert_eq!(redis.state(), State::HalfOpen);
        assert_eq!(redis.call(succeeding).await, Err(Unreachable));
        release.send(()).unwrap();
        assert_eq!(probe.await, Ok(()));

        assert_eq!(redis.state(), State::Closed);
        assert_eq!(redis.call(succeeding).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_the_breaker() {
        let redis = dead();
        for _ in 0..3 {
            let _ = redis.call(failing).await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(redis.call(failing).await, Err(Unreachable));
        assert_eq!(redis.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_times_out_and_counts_as_a_failure() {
        let redis = dead();
        let hung = |_| std::future::pending::<RedisResult<()>>();
        assert_eq!(redis.call(hung).await, Err(Unreachable));
        assert!(!redis.healthy.load(Ordering::SeqCst));
    }
}
