//! The three services run inside a test, each on a free port, until stopped.
#![allow(dead_code)]

use std::time::Duration;

use feedback_tests::{kafka_brokers, unique_name, JWT_SECRET};

/// A service running in the test until `stop`.
pub struct Running {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the service task")
            .expect("a clean stop");
    }
}

/// Runs `run_until` of a built service on a task; `port` is where it listens.
pub fn run<F>(port: u16, run_until: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F) -> Running
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel();
    Running {
        url: format!("http://127.0.0.1:{port}"),
        stop,
        task: tokio::spawn(run_until(stopped)),
    }
}

/// An ingest producing to `topic`, spooling in `spool`, limits off.
pub async fn start_ingest(topic: &str, spool: &std::path::Path) -> Running {
    let config = ingest::Config {
        addr: "127.0.0.1:0".into(),
        brokers: kafka_brokers(),
        topic: topic.into(),
        spool_dir: spool.into(),
        spool_max_bytes: 64 * 1024 * 1024,
        jwt_secret: JWT_SECRET.into(),
        student_key_secret: ingest::config::derive_student_key_secret(JWT_SECRET),
        rate_limit_student_per_min: 0,
        rate_limit_ip_per_min: 0,
        trusted_proxies: Default::default(),
        sensitive_words_file: None,
        sensitive_policy: ingest::filter::Policy::Mask,
        delivery_timeout: Duration::from_secs(5),
        idempotency_ttl: Duration::from_secs(86_400),
    };
    let app = ingest::Application::build(config)
        .await
        .expect("ingest builds");
    run(app.port(), |stopped| {
        app.run_until(async move {
            let _ = stopped.await;
        })
    })
}

/// An aggregator on `topic` into `mysql_url` and `redis_url`, in a group of its own.
pub async fn start_aggregator(topic: &str, mysql_url: &str, redis_url: &str) -> Running {
    let aggregator = aggregator::Application::build(aggregator::Config {
        addr: "127.0.0.1:0".into(),
        brokers: kafka_brokers(),
        topic: topic.into(),
        group: unique_name("fbtest-e2e"),
        redis_url: redis_url.into(),
        mysql_url: mysql_url.into(),
        batch_size: 100,
        linger: Duration::from_millis(50),
        lanes: 3,
        cache_ttl_secs: 3600,
        reconcile_interval: Duration::from_millis(500),
        reconcile_window: Duration::from_secs(600),
    })
    .await
    .expect("the aggregator builds");
    run(aggregator.port(), |stopped| {
        aggregator.run_until(async move {
            let _ = stopped.await;
        })
    })
}

/// A query over `mysql_url` and `redis_url`, without pre-warm.
pub async fn start_query(mysql_url: &str, redis_url: &str) -> Running {
    let query = query::Application::build(query::Config {
        addr: "127.0.0.1:0".into(),
        redis_url: redis_url.into(),
        mysql_url: mysql_url.into(),
        mysql_read_url: None,
        jwt_secret: JWT_SECRET.into(),
        cache_ttl_secs: 3600,
        prewarm_courses: 0,
        redis_timeout: Duration::from_millis(250),
        mysql_timeout: Duration::from_secs(3),
        export_stall: Duration::from_secs(60),
    })
    .await
    .expect("query builds");
    run(query.port(), |stopped| {
        query.run_until(async move {
            let _ = stopped.await;
        })
    })
}
