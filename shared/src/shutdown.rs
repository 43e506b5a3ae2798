//! Shutdown: what starts it ([`signal`], Ctrl-C or SIGTERM) and how it
//! reaches every task of a service ([`Stop`]). Services take shutdown as an
//! `impl Future`, so `main` passes [`signal`] and a test passes its own; the
//! service turns it into a [`Stop`] that its tasks each wait on.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// One service's stop: triggered once, seen by every clone, before or after
/// they start waiting.
///
/// A watch channel rather than a `Notify`: a task that starts waiting after
/// the trigger still sees it, and a loop can check it between steps
/// ([`Stop::is_triggered`]) without waiting.
#[derive(Debug, Clone)]
pub struct Stop {
    /// `true` once triggered; shared by every clone, so a trigger through
    /// any of them reaches all.
    sender: Arc<watch::Sender<bool>>,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    pub fn new() -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Stops every task waiting on this stop or any clone of it.
    pub fn trigger(&self) {
        // `send_replace`, not `send`: it stores the value even while no one is
        // subscribed, so a later `wait` still sees it.
        self.sender.send_replace(true);
    }

    /// Whether [`Stop::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    /// Completes once triggered (at once if it already was). Owns what it
    /// needs, so it can be handed to a task or a server as its shutdown.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut triggered = self.sender.subscribe();
        async move {
            // Fails only once every `Stop` is gone: nothing can trigger it
            // any more, so that ends the wait as well.
            let _ = triggered.wait_for(|stopped| *stopped).await;
        }
    }

    /// Waits for `shutdown`, then triggers this stop.
    pub fn trigger_on(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let stop = self.clone();
        async move {
            shutdown.await;
            stop.trigger();
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger_even_one_that_waits_after_it() {
        let stop = Stop::new();
        let clone = stop.clone();
        let early = tokio::spawn(clone.wait());
        assert!(!stop.is_triggered());
        stop.trigger();
        early.await.unwrap();
        assert!(clone.is_triggered());
        // Nobody was waiting any more; a wait begun now completes all the same.
        clone.wait().await;
    }

    #[tokio::test]
    async fn trigger_on_fires_when_its_shutdown_completes() {
        let stop = Stop::new();
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let waiting = tokio::spawn(stop.wait());
        let trigger = tokio::spawn(stop.trigger_on(async {
            let _ = fired.await;
        }));
        tokio::task::yield_now().await;
        assert!(!stop.is_triggered() && !waiting.is_finished());
        fire.send(()).unwrap();
        trigger.await.unwrap();
        waiting.await.unwrap();
        assert!(stop.is_triggered());
    }

    #[tokio::test]
    async fn a_wait_ends_when_every_stop_is_gone() {
        let stop = Stop::new();
        let waiting = stop.wait();
        drop(stop);
        waiting.await;
    }
}
