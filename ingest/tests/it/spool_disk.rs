//! The spool on a real disk that fills up or goes away: a small tmpfs
//! mounted for each test. A full disk answers 503 (with `Retry-After`) while
//! Kafka is down too, and `/readyz` says why; once there is room the store
//! opens again and nothing it accepted is lost; with Kafka up, submissions
//! keep being taken; a store that cannot be opened again stops ingest with
//! an error for its supervisor. Mounting needs root (CI runs as root).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use feedback_tests::ingest::all_seen;
use feedback_tests::{
    consume_until, eventually, free_port, fresh_topic, student, temp_dir, JWT_SECRET,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::spool::wait_healthy;

/// A tmpfs of its own, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
    mounted: bool,
}

impl SmallDisk {
    fn mount(kib: u64) -> Self {
        let dir = temp_dir("small-disk");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={kib}k"))
            .arg("tmpfs")
            .arg(&dir));
        Self { dir, mounted: true }
    }

    /// The spool's directory on it.
    fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// More room, as an operator would make it (the files stay).
    fn grow(&self, kib: u64) {
        run(Command::new("mount")
            .arg("-o")
            .arg(format!("remount,size={kib}k"))
            .arg(&self.dir));
    }

    /// The volume goes away under a running ingest (lazily: its open files
    /// stay usable, the path shows the empty directory beneath).
    fn vanish(&mut self) {
        run(Command::new("umount").arg("-l").arg(&self.dir));
        self.mounted = false;
    }

    /// Fills what is left with a file, for the next write to fail.
    fn fill(&self) -> PathBuf {
        let filler = self.dir.join("filler");
        // dd stops with "No space left on device": that is the point.
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=64k", "status=none"])
            .stderr(Stdio::null())
            .status();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn run(command: &mut Command) {
    let status = command.status().expect("running mount");
    assert!(
        status.success(),
        "{command:?} failed: these tests mount a small tmpfs, which needs root"
    );
}

fn spawn_ingest(port: u16, brokers: &str, topic: &str, spool: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env("FEEDBACK_INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("FEEDBACK_KAFKA_BROKERS", brokers)
        .env("FEEDBACK_KAFKA_TOPIC", topic)
        .env("FEEDBACK_SPOOL_DIR", spool)
        // The disk runs out long before this cap.
        .env("FEEDBACK_SPOOL_MAX_BYTES", (1u64 << 34).to_string())
        .env("FEEDBACK_JWT_SECRET", JWT_SECRET)
        .env("FEEDBACK_RATE_LIMIT_STUDENT_PER_MIN", "0")
        .env("FEEDBACK_RATE_LIMIT_IP_PER_MIN", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the ingest binary")
}

struct Ingest {
    port: u16,
    client: reqwest::Client,
}

impl Ingest {
    async fn post(&self, i: usize, key: Option<&str>) -> reqwest::Response {
        // Long comments fill the disk in a few hundred submissions.
        let comment = format!("{i} {}", "words to fill a small disk ".repeat(70));
        let mut request = self
            .client
            .post(format!("http://127.0.0.1:{}/v1/feedback", self.port))
            .bearer_auth(student(&format!("disk-{i}")))
            .json(&json!({"course_id": format!("DISK-{}", i % 4), "rating": 1 + i % 5, "comment": comment}));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.expect("ingest answers")
    }

    async fn ready(&self) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("http://127.0.0.1:{}/readyz", self.port))
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not on /metrics"))
    }

    /// Submits until the disk is full: the ids accepted, and the first 503.
    async fn fill_until_refused(&self) -> (Vec<String>, reqwest::Response) {
        let mut accepted = Vec::new();
        for i in 0..20_000 {
            let response = self.post(i, Some(&format!("fill-{i}"))).await;
            match response.status() {
                StatusCode::ACCEPTED => {
                    let answer: Value = response.json().await.unwrap();
                    assert_eq!(answer["status"], "spooled");
                    accepted.push(answer["feedback_id"].as_str().unwrap().to_owned());
                }
                StatusCode::SERVICE_UNAVAILABLE => return (accepted, response),
                other => panic!("submission {i}: {other} {}", response.text().await.unwrap()),
            }
        }
        panic!("the small disk never filled")
    }
}

async fn start(port: u16) -> Ingest {
    let ingest = Ingest {
        port,
        client: reqwest::Client::new(),
    };
    wait_healthy(&ingest.client, port).await;
    ingest
}

#[tokio::test]
async fn a_full_disk_refuses_with_503_then_the_store_reopens_and_nothing_taken_is_lost() {
    let disk = SmallDisk::mount(4 * 1024);
    let topic = fresh_topic().await.unwrap();
    let port = free_port();
    // Nothing listens at this broker address: every submission spools.
    let mut child = spawn_ingest(port, "127.0.0.1:1", &topic, &disk.spool());
    let ingest = start(port).await;

    let (mut accepted, refused) = ingest.fill_until_refused().await;
    assert!(accepted.len() > 100, "only {} spooled", accepted.len());
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        feedback_tests::error_of(refused).await["code"],
        "unavailable"
    );
    let (status, ready) = ingest.ready().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    let store = &ready["checks"]["spool"]["store"];
    assert_eq!(store["up"], false, "{ready}");
    assert_eq!(ready["checks"]["spool"]["has_capacity"], false, "{ready}");
    assert!(
        store["last_error"].as_str().unwrap().contains("space"),
        "{ready}"
    );
    assert!(ingest.metric("ingest_spool_store_errors_total").await >= 1.0);
    assert_eq!(ingest.metric("ingest_spool_store_up").await, 0.0);

    // The operator makes room: the store opens again by itself.
    disk.grow(64 * 1024);
    eventually(
        Duration::from_secs(40),
        "the store to open again",
        || async {
            let (status, ready) = ingest.ready().await;
            Ok((status == StatusCode::OK).then_some(ready))
        },
    )
    .await
    .unwrap();
    let (_, ready) = ingest.ready().await;
    assert!(
        ready["checks"]["spool"]["store"]["reopens"].as_u64() >= Some(1),
        "{ready}"
    );
    assert_eq!(ingest.metric("ingest_spool_store_up").await, 1.0);
    for i in 30_000..30_005 {
        let response = ingest.post(i, None).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let answer: Value = response.json().await.unwrap();
        accepted.push(answer["feedback_id"].as_str().unwrap().to_owned());
    }

    // Restarted with Kafka, it delivers every submission it took.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_ingest(
        port,
        &feedback_tests::kafka_brokers(),
        &topic,
        &disk.spool(),
    );
    let ids: HashSet<String> = accepted.into_iter().collect();
    let delivered = consume_until(&topic, Duration::from_secs(90), all_seen(&ids)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    delivered.unwrap();
}

#[tokio::test]
async fn with_the_store_failed_and_kafka_up_submissions_are_still_taken() {
    let disk = SmallDisk::mount(4 * 1024);
    let topic = fresh_topic().await.unwrap();
    let port = free_port();
    let mut child = spawn_ingest(
        port,
        &feedback_tests::kafka_brokers(),
        &topic,
        &disk.spool(),
    );
    let ingest = start(port).await;
    let filler = disk.fill();

    // Each keyed submission writes an idempotency entry: one of them meets
    // the full disk, and the store fails. None is refused.
    let mut accepted = HashSet::new();
    for i in 0..200 {
        let response = ingest.post(i, Some(&format!("up-{i}"))).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "submission {i}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "accepted");
        accepted.insert(answer["feedback_id"].as_str().unwrap().to_owned());
    }
    assert!(ingest.metric("ingest_spool_store_errors_total").await >= 1.0);
    let (status, ready) = ingest.ready().await;
    assert_eq!(status, StatusCode::OK, "Kafka takes submissions: {ready}");
    assert_eq!(ready["checks"]["spool"]["store"]["up"], false, "{ready}");

    std::fs::remove_file(filler).unwrap();
    eventually(
        Duration::from_secs(40),
        "the store to open again",
        || async {
            let (_, ready) = ingest.ready().await;
            Ok((ready["checks"]["spool"]["store"]["up"] == true).then_some(()))
        },
    )
    .await
    .unwrap();
    let delivered = consume_until(&topic, Duration::from_secs(60), all_seen(&accepted)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    delivered.unwrap();
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_again_stops_ingest_with_an_error() {
    let mut disk = SmallDisk::mount(4 * 1024);
    let port = free_port();
    let mut child = spawn_ingest(port, "127.0.0.1:1", "never-created", &disk.spool());
    let ingest = start(port).await;
    ingest.fill_until_refused().await;
    // The volume is gone: what the path shows now holds no spool, and the
    // store must not make an empty one there.
    disk.vanish();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "ingest did not exit");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!exited.success(), "{exited:?}");
    assert!(
        !disk.spool().join("db").exists(),
        "no empty spool was made where the volume was"
    );
}
