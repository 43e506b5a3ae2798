//! A circuit breaker in front of a dependency (Kafka for ingest, Redis for query).
//!
//! Closed: requests use the dependency. A run of failures (or the client
//! reporting the dependency down, [`Breaker::trip`]) opens it: requests then
//! take their fallback (ingest's spool, query's MySQL) instead of waiting on a
//! dead server. After a cool-down one caller probes: success closes the
//! breaker, failure opens it again for a longer cool-down, up to a ceiling.
//! Time is `tokio::time`, so tests drive it with `pause` and `advance`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Consecutive delivery failures that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
/// First cool-down; each failed probe doubles it up to [`MAX_COOL_DOWN`].
const MIN_COOL_DOWN: Duration = Duration::from_millis(500);
const MAX_COOL_DOWN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The breaker-state gauge's value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Delivery failures since the last success, while closed.
    failures: u32,
    /// When an open breaker may be probed.
    retry_at: Instant,
    /// The cool-down the next opening will use.
    cool_down: Duration,
}

#[derive(Debug)]
pub struct Breaker {
    /// The dependency's name, for logs ("Kafka", "Redis").
    name: &'static str,
    /// The gauge that shows the state (0 closed, 1 open, 2 half-open).
    gauge: &'static str,
    inner: Mutex<Inner>,
    /// Wakes requests waiting on a delivery when the breaker opens.
    opened: Notify,
}

impl Breaker {
    /// A closed breaker for dependency `name`, its state published on gauge `gauge`.
    pub fn new(name: &'static str, gauge: &'static str) -> Self {
        metrics::gauge!(gauge).set(State::Closed.gauge());
        Self {
            name,
            gauge,
            inner: Mutex::new(Inner {
                state: State::Closed,
                failures: 0,
                retry_at: Instant::now(),
                cool_down: MIN_COOL_DOWN,
            }),
            opened: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Completes the next time the breaker opens.
    pub fn opened(&self) -> tokio::sync::futures::Notified<'_> {
        self.opened.notified()
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Whether requests may produce directly (closed), rather than spool.
    pub fn is_closed(&self) -> bool {
        self.state() == State::Closed
    }

    /// A delivery succeeded.
    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.failures = 0;
        if inner.state != State::Closed {
            tracing::info!(dependency = self.name, "reachable again: breaker closed");
        }
        inner.state = State::Closed;
        inner.cool_down = MIN_COOL_DOWN;
        self.publish(State::Closed);
    }

    /// A delivery failed; enough of them in a row open the breaker. A
    /// failure reported while open is a call admitted before the opening
    /// that ended late: it says nothing new, so it neither re-opens the
    /// breaker nor doubles the cool-down.
    pub fn record_failure(&self) {
        let mut inner = self.lock();
        let reopen = match inner.state {
            State::Open => false,
            State::HalfOpen => true,
            State::Closed => {
                inner.failures += 1;
                inner.failures >= FAILURES_TO_OPEN
            }
        };
        if reopen {
            self.open(&mut inner);
            self.opened.notify_waiters();
        }
    }

    /// librdkafka says the cluster is unreachable: open at once.
    pub fn trip(&self) {
        let mut inner = self.lock();
        if inner.state == State::Closed {
            self.open(&mut inner);
            self.opened.notify_waiters();
        }
    }

    /// For the drainer: `true` when a probe is due now (the breaker becomes
    /// half-open), or when the breaker is closed. `false` while cooling down.
    pub fn try_probe(&self) -> bool {
        let mut inner = self.lock();
        match inner.state {
            State::Closed | State::HalfOpen => true,
            State::Open if Instant::now() >= inner.retry_at => {
                inner.state = State::HalfOpen;
                self.publish(State::HalfOpen);
                true
            }
            State::Open => false,
        }
    }

    /// How long until a probe is due (zero when due or closed).
    pub fn until_probe(&self) -> Duration {
        let inner = self.lock();
        match inner.state {
            State::Open => inner.retry_at.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }

    fn open(&self, inner: &mut Inner) {
        if inner.state == State::Closed {
            tracing::warn!(
                dependency = self.name,
                failures = inner.failures,
                "unavailable: breaker open"
            );
        }
        inner.state = State::Open;
        inner.retry_at = Instant::now() + inner.cool_down;
        inner.cool_down = (inner.cool_down * 2).min(MAX_COOL_DOWN);
        inner.failures = 0;
        self.publish(State::Open);
    }

    fn publish(&self, state: State) {
        metrics::gauge!(self.gauge).set(state.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_run_of_failures_opens_and_a_success_closes() {
        let breaker = Breaker::new("test", "test_breaker_state");
        breaker.record_failure();
        breaker.record_failure();
        assert_eq!(breaker.state(), State::Closed);
        breaker.record_failure();
        assert_eq!(breaker.state(), State::Open);
        assert!(!breaker.try_probe(), "no probe while cooling down");
        breaker.record_success();
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_failures_while_open_neither_reopen_nor_lengthen_the_cool_down() {
        let breaker = Breaker::new("test", "test_breaker_state");
        for _ in 0..3 {
            breaker.record_failure();
        }
        assert_eq!(breaker.until_probe(), MIN_COOL_DOWN);
        tokio::time::advance(Duration::from_millis(100)).await;
        // Calls admitted before the opening, timing out now.
        for _ in 0..9 {
            breaker.record_failure();
        }
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(
            breaker.until_probe(),
            MIN_COOL_DOWN - Duration::from_millis(100),
            "the first cool-down runs its course"
        );
        tokio::time::advance(MIN_COOL_DOWN).await;
        assert!(breaker.try_probe());
        breaker.record_failure();
        assert_eq!(
            breaker.until_probe(),
            MIN_COOL_DOWN * 2,
            "a failed probe doubles it once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_between_failures_resets_the_count() {
        let breaker = Breaker::new("test", "test_breaker_state");
        breaker.record_failure();
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        breaker.record_failure();
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_wait_for_a_cool_down_that_doubles_up_to_a_ceiling() {
        let breaker = Breaker::new("test", "test_breaker_state");
        breaker.trip();
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.until_probe(), MIN_COOL_DOWN);
        tokio::time::advance(MIN_COOL_DOWN - Duration::from_millis(1)).await;
        assert!(!breaker.try_probe());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(breaker.try_probe());
        assert_eq!(breaker.state(), State::HalfOpen);

        // A failed probe re-opens with twice the cool-down, and so on up to the ceiling.
        let mut expected = MIN_COOL_DOWN * 2;
        for _ in 0..6 {
            breaker.record_failure();
            assert_eq!(breaker.state(), State::Open);
            assert_eq!(breaker.until_probe(), expected);
            tokio::time::advance(expected).await;
            assert!(breaker.try_probe());
            expected = (expected * 2).min(MAX_COOL_DOWN);
        }
        assert_eq!(breaker.until_probe(), Duration::ZERO);
        breaker.record_success();
        breaker.trip();
        assert_eq!(
            breaker.until_probe(),
            MIN_COOL_DOWN,
            "success resets the cool-down"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn trip_on_an_open_breaker_does_not_push_the_probe_back() {
        let breaker = Breaker::new("test", "test_breaker_state");
        breaker.trip();
        tokio::time::advance(Duration::from_millis(400)).await;
        breaker.trip();
        assert_eq!(breaker.until_probe(), Duration::from_millis(100));
    }
}
