//! Ingest as its tests drive it: in-process on port 0 with a topic and spool
//! of its own, or its router alone; and what its tests read back from Kafka.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use ::ingest::filter::Policy;
use ::ingest::{Application, Config};

use crate::{fresh_topic, kafka_brokers, temp_dir, Consumed, Oneshot, Running, JWT_SECRET};

/// A test configuration: `topic` and `spool_dir`, rate limits off, policy `mask`.
pub fn config(topic: &str, spool_dir: PathBuf) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        brokers: kafka_brokers(),
        topic: topic.into(),
        spool_dir,
        spool_max_bytes: 64 * 1024 * 1024,
        auth: shared::auth::Settings::shared_secret(JWT_SECRET),
        student_key_secret: ::ingest::config::derive_student_key_secret(JWT_SECRET),
        rate_limit_student_per_min: 0,
        rate_limit_ip_per_min: 0,
        trusted_proxies: Default::default(),
        sensitive_words_file: None,
        sensitive_policy: Policy::Mask,
        delivery_timeout: Duration::from_secs(5),
        idempotency_ttl: Duration::from_secs(86_400),
        catalog: Default::default(),
    }
}

/// Builds an ingest with `config` and runs it until stopped.
pub async fn start(config: Config) -> Running {
    let app = Application::build(config).await.expect("ingest builds");
    Running::spawn("ingest", app.port(), |shutdown| app.run_until(shutdown))
}

/// An ingest running inside the test.
pub struct TestIngest {
    /// Where it listens.
    pub url: String,
    pub topic: String,
    pub spool_dir: PathBuf,
    pub client: reqwest::Client,
    running: Running,
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
        let running = start(config).await;
        Self {
            url: running.url.clone(),
            topic,
            spool_dir,
            client: reqwest::Client::new(),
            running,
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
    pub async fn shutdown(self) {
        self.running.stop().await;
    }
}

/// Ingest's router alone, for the answers it gives before delivering
/// anything: its broker is an address where nothing listens, its spool fresh.
pub async fn router() -> Oneshot {
    let mut config = config("never-created", temp_dir("spool"));
    config.brokers = "127.0.0.1:1".into();
    let app = Application::build(config).await.expect("ingest builds");
    Oneshot::new(::ingest::router(app.state().clone()))
}

/// For each course, the feedback ids in the order their first copy sits in the topic.
pub fn first_copies_per_course(messages: &[Consumed]) -> HashMap<String, Vec<String>> {
    let mut seen = HashSet::new();
    let mut per_course: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_partition: Vec<&Consumed> = messages.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    for m in by_partition {
        let id = m.json()["feedback_id"].as_str().unwrap().to_owned();
        if seen.insert(id.clone()) {
            per_course.entry(m.key.clone()).or_default().push(id);
        }
    }
    per_course
}

/// A `consume_until` condition: every id of `expected` has been read.
pub fn all_seen(expected: &HashSet<String>) -> impl FnMut(&[Consumed]) -> bool + '_ {
    move |messages| {
        let seen: HashSet<String> = messages
            .iter()
            .map(|m| m.json()["feedback_id"].as_str().unwrap().to_owned())
            .collect();
        expected.is_subset(&seen)
    }
}
