//! A service built inside the test and run on a task of its own, the way the
//! three services' `main` runs them, until the test stops it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What a service's `run_until` waits on: it completes at [`Running::stop`],
/// or when the [`Running`] is dropped.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service running in the test process.
pub struct Running {
    /// `http://127.0.0.1:PORT`, where it listens.
    pub url: String,
    /// The service's name, for the failure messages.
    name: &'static str,
    /// Completes the service's [`Shutdown`]; dropping it does too, so a
    /// test that ends without stopping a service still shuts it down.
    stop: tokio::sync::oneshot::Sender<()>,
    /// The service's `run_until`.
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Runs `run_until` of service `name`, built and listening on `port`,
    /// on a task: `Running::spawn("query", app.port(), |shutdown| app.run_until(shutdown))`.
    pub fn spawn<F>(name: &'static str, port: u16, run_until: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            name,
            stop,
            task: tokio::spawn(run_until(shutdown)),
        }
    }

    /// Graceful shutdown; fails the test unless the service stops cleanly.
    pub async fn stop(self) {
        let Self {
            name, stop, task, ..
        } = self;
        let _ = stop.send(());
        task.await
            .unwrap_or_else(|err| panic!("the {name} task: {err}"))
            .unwrap_or_else(|err| panic!("{name} stops cleanly: {err:#}"));
    }

    /// [`Running::stop`], failing the test when it takes over `limit`.
    pub async fn stop_within(self, limit: Duration) {
        let name = self.name;
        tokio::time::timeout(limit, self.stop())
            .await
            .unwrap_or_else(|_| panic!("{name} stops within {limit:?}"));
    }
}
