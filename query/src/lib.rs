//! Serves per-course statistics to admins from Redis, falling back to MySQL.
//!
//! This is the service's skeleton: health, readiness and metrics routes and
//! graceful shutdown. Its pipeline work is built on top of it.

use std::future::Future;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

/// Settings from the environment (the contract's table).
#[derive(Debug, Clone)]
pub struct Config {
    /// `FEEDBACK_QUERY_ADDR`
    pub addr: String,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            addr: shared::config::var_or("FEEDBACK_QUERY_ADDR", "127.0.0.1:8082"),
        })
    }
}

/// A built service: its listener is bound, so `port` is known before it runs.
pub struct Application {
    listener: TcpListener,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        shared::metrics::install();
        let listener = shared::http::bind(&config.addr).await?;
        Ok(Self { listener })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = ?self.listener.local_addr()?, "query listening");
        let app = Router::new().merge(shared::http::health_routes()).route(
            "/readyz",
            get(|| async { shared::http::readiness(true, serde_json::json!({})) }),
        );
        shared::http::serve(self.listener, app, shutdown).await?;
        tracing::info!("query stopped");
        Ok(())
    }
}
