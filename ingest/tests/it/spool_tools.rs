//! `ingest spool status|verify|export|replay` on the spool a stopped ingest
//! left behind: made by an in-process ingest whose broker is an address where
//! nothing listens, then read and replayed by the binary.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use feedback_tests::ingest::{all_seen, config, first_copies_per_course, TestIngest};
use feedback_tests::{consume_until, fresh_topic, kafka_brokers, student, temp_dir};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Runs `ingest spool <args> --dir <dir>`.
fn tool(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ingest"))
        .arg("spool")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("running the ingest binary")
}

/// As [`tool`], once the directory's last user let go of sled's lock.
async fn tool_when_free(dir: &Path, args: &[&str]) -> Output {
    for _ in 0..100 {
        let output = tool(dir, args);
        if !stderr(&output).contains("in use by a running ingest") {
            return output;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the spool in {} was not released", dir.display())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Posts `count` submissions to an ingest that can only spool them, stops
/// it, and returns the spool's directory and each course's feedback ids in
/// the order posted.
async fn a_stopped_ingests_spool(
    count: usize,
) -> (std::path::PathBuf, HashMap<String, Vec<String>>) {
    let dir = temp_dir("spool");
    let mut config = config("never-created", dir.clone());
    config.brokers = "127.0.0.1:1".into();
    let ingest = TestIngest::spawn_with(config).await;
    let mut posted: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..count {
        let course = format!("TOOLS-{}", i % 2);
        let response = ingest
            .post(
                &student(&format!("tools-{i}")),
                &json!({"course_id": course, "rating": 1 + i % 5}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "spooled");
        let id = answer["feedback_id"].as_str().unwrap().to_owned();
        posted.entry(course).or_default().push(id);
    }
    let locked = tool(&dir, &["status"]);
    assert!(!locked.status.success(), "{}", stdout(&locked));
    assert!(
        stderr(&locked).contains("stop ingest first, or use its /readyz"),
        "{}",
        stderr(&locked)
    );
    ingest.shutdown().await;
    (dir, posted)
}

/// Writes bytes that are no record into the tree of records moved aside.
async fn move_aside_garbage(dir: &Path) {
    for _ in 0..100 {
        if let Ok(db) = sled::open(dir) {
            let aside = db.open_tree("spool-unreadable").unwrap();
            aside
                .insert(1000u64.to_be_bytes(), &[0u8, 9, b'x'][..])
                .unwrap();
            db.flush().unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the spool in {} was not released", dir.display())
}

#[tokio::test]
async fn the_spool_tools_report_export_and_replay_a_stopped_ingests_spool_in_order() {
    let (dir, posted) = a_stopped_ingests_spool(6).await;

    let status = tool_when_free(&dir, &["status"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(text.contains("waiting: 6 records"), "{text}");
    assert!(text.contains("oldest submitted_at: "), "{text}");
    assert!(text.contains("moved aside as unreadable: 0"), "{text}");

    let verify = tool_when_free(&dir, &["verify"]).await;
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("good: 6, bad: 0"));

    let export = tool_when_free(&dir, &["export"]).await;
    assert!(export.status.success(), "{}", stderr(&export));
    let mut exported: HashMap<String, Vec<String>> = HashMap::new();
    for line in stdout(&export).lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["key"], line["event"]["course_id"]);
        assert!(line["headers"]["x-request-id"].is_string(), "{line}");
        exported
            .entry(line["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(line["event"]["feedback_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(exported, posted);

    move_aside_garbage(&dir).await;
    let status = tool_when_free(&dir, &["status"]).await;
    assert!(stdout(&status).contains("moved aside as unreadable: 1"));
    let verify = tool_when_free(&dir, &["verify"]).await;
    assert_eq!(verify.status.code(), Some(1));
    let text = stdout(&verify);
    assert!(text.contains("good: 6, bad: 1"), "{text}");
    assert!(
        text.contains("seq 1000 (moved aside): the key at byte 0 runs past the end"),
        "{text}"
    );
    let export = tool_when_free(&dir, &["export", "--unreadable"]).await;
    let lines: Vec<Value> = stdout(&export)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["seq"], 1000);
    assert_eq!(lines[0]["bytes_base64"], "AAl4");
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .contains("runs past the end"));

    let topic = fresh_topic().await.unwrap();
    let target = ["--brokers", &kafka_brokers(), "--topic", &topic];
    let refused = tool_when_free(&dir, &[&["replay", "--unreadable"][..], &target].concat()).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("cannot be replayed"),
        "{}",
        stderr(&refused)
    );

    let dry = tool_when_free(&dir, &[&["replay"][..], &target].concat()).await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    let text = stdout(&dry);
    assert!(text.contains("dry run: would produce 6 records"), "{text}");
    assert!(
        text.contains("1 records moved aside as unreadable are not replayed"),
        "{text}"
    );
    let status = tool_when_free(&dir, &["status"]).await;
    assert!(
        stdout(&status).contains("waiting: 6 records"),
        "the dry run kept them"
    );

    let apply = tool_when_free(&dir, &[&["replay", "--apply"][..], &target].concat()).await;
    assert!(apply.status.success(), "{}", stderr(&apply));
    assert!(
        stdout(&apply).contains("produced 6 records"),
        "{}",
        stdout(&apply)
    );
    let ids = posted.values().flatten().cloned().collect();
    let messages = consume_until(&topic, Duration::from_secs(30), all_seen(&ids))
        .await
        .unwrap();
    assert_eq!(first_copies_per_course(&messages), posted);
    let status = tool_when_free(&dir, &["status"]).await;
    let text = stdout(&status);
    assert!(text.contains("waiting: 0 records"), "{text}");
    assert!(text.contains("moved aside as unreadable: 1"), "{text}");
}

#[test]
fn every_spool_tool_explains_itself_and_replay_says_it_is_a_dry_run_by_default() {
    for command in ["status", "verify", "export", "replay"] {
        let help = Command::new(env!("CARGO_BIN_EXE_ingest"))
            .args(["spool", command, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success(), "{command}");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--dir"),
            "{command}"
        );
    }
    let help = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(["spool", "replay", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("dry run"));
}

#[test]
fn a_missing_spool_directory_is_an_error_not_a_new_spool() {
    let dir = temp_dir("spool").join("mistyped");
    let output = tool(&dir, &["status"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no spool in"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.exists());
}
