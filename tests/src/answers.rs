//! Checks on what a service answers: the contract's error body, its metrics
//! page, and its refusal to start without a proper JWT secret.

use std::time::Duration;

/// The `error` object of a contract error body, checking the content type.
pub async fn error_of(response: reqwest::Response) -> serde_json::Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "error content type {content_type:?}"
    );
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    body["error"].clone()
}

/// Asserts that every metric in a `/metrics` text has HELP text and a type,
/// so an operator reading the endpoint (or Grafana) sees what each means.
pub fn assert_every_metric_has_help(text: &str) {
    let help: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!typed.is_empty(), "no metrics: {text}");
    let missing: Vec<&&str> = typed.iter().filter(|name| !help.contains(*name)).collect();
    assert!(missing.is_empty(), "metrics without HELP: {missing:?}");
}

/// Asserts that service `binary`, with `env`, exits naming
/// `FEEDBACK_JWT_SECRET` when the variable is unset and when it is shorter
/// than 32 bytes (the contract: such a service refuses to start).
pub async fn assert_refuses_to_start_without_a_jwt_secret(binary: &str, env: &[(&str, String)]) {
    for secret in [None, Some("too-short-secret")] {
        let mut command = tokio::process::Command::new(binary);
        command
            .env_remove("FEEDBACK_JWT_SECRET")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(secret) = secret {
            command.env("FEEDBACK_JWT_SECRET", secret);
        }
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("it exits")
            .expect("the binary runs");
        assert!(!output.status.success(), "{secret:?}: it started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("FEEDBACK_JWT_SECRET"),
            "{secret:?}: {stderr}"
        );
    }
}
