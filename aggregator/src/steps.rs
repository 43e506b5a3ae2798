//! Where a batch's time goes: each step is timed into
//! `aggregator_batch_step_seconds{step}`, so that the statements, the commit
//! and Redis after it can be read off `/metrics`; the benchmark prints the
//! means beside its ceiling.

use std::time::Instant;

use shared::metrics::names;

/// A stopwatch over a batch's steps.
pub(crate) struct Steps {
    /// When the previous lap ended (or the stopwatch started).
    last: Instant,
}

impl Steps {
    pub(crate) fn start() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    /// Records the time since the previous lap (or the start) as `step`.
    pub(crate) fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        metrics::histogram!(names::AGGREGATOR_BATCH_STEP_SECONDS, "step" => step)
            .record((now - self.last).as_secs_f64());
        self.last = now;
    }
}
