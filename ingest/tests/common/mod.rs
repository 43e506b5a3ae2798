//! Spawns an ingest in-process on port 0 with a topic and spool of its own.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use feedback_tests::{fresh_topic, kafka_brokers, temp_dir, JWT_SECRET};
use ingest::filter::Policy;
use ingest::{Application, Config};

pub struct TestIngest {
    pub url: String,
    pub topic: String,
    pub spool_dir: PathBuf,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn config(topic: &str, spool_dir: PathBuf) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        brokers: kafka_brokers(),
        topic: topic.into(),
        spool_dir,
        spool_max_bytes: 64 * 1024 * 1024,
        jwt_secret: JWT_SECRET.into(),
        student_key_secret: ingest::config::derive_student_key_secret(JWT_SECRET),
        rate_limit_student_per_min: 0,
        rate_limit_ip_per_min: 0,
        trusted_proxies: Default::default(),
        sensitive_words_file: None,
        sensitive_policy: Policy::Mask,
        delivery_timeout: Duration::from_secs(5),
        idempotency_ttl: Duration::from_secs(86_400),
    }
}

impl TestIngest {
    /// An ingest with a fresh topic and spool, limits off, policy `mask`.
    pub async fn spawn() -> Self {
        let topic = fresh_topic()
            .await
            .expect("creating a topic (is scripts/infra.sh up?)");
        Self::spawn_with(config(&topic, temp_dir("spool"))).await
    }

    pub async fn spawn_with(config: Config) -> Self {
        let topic = config.topic.clone();
        let spool_dir = config.spool_dir.clone();
        let app = Application::build(config).await.expect("ingest builds");
        let url = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            topic,
            spool_dir,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Posts `body` as a student with `token`.
    pub async fn post(&self, token: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/feedback", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("ingest answers")
    }

    /// `/readyz`'s body (whatever its status).
    pub async fn readyz(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .client
            .get(format!("{}/readyz", self.url))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Triggers graceful shutdown and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("ingest task")
                .expect("ingest stops cleanly");
        }
    }
}
