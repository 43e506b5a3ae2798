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

/// Asserts that service `binary`, started with `env` and without any of
/// the auth variables not in it, exits at once with a message naming
/// `variable`.
pub async fn assert_refuses_to_start_naming(binary: &str, env: &[(&str, String)], variable: &str) {
    let mut command = tokio::process::Command::new(binary);
    for name in [
        "FEEDBACK_JWT_SECRET",
        "FEEDBACK_OIDC_ISSUER",
        "FEEDBACK_OIDC_AUDIENCE",
        "FEEDBACK_OIDC_CLIENT_ID",
        "FEEDBACK_STUDENT_KEY_SECRET",
        "FEEDBACK_JWT_MAX_TTL_SECS",
    ] {
        command.env_remove(name);
    }
    command
        .env("RUST_LOG", "error")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("it exits")
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{env:?}: it started");
    assert!(stderr.contains(variable), "{env:?}: {stderr}");
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

/// Asserts that the page at `url` + `path` is served as the contract asks:
/// HTML under a policy that runs this origin's files only and forbids
/// framing, its sign-in settings (`auth`, the `feedback-auth` meta tag) in,
/// every script, style and link on the same origin (`assets`, each served
/// with its type), and `texts` found in the page or its assets.
pub async fn assert_page_is_served_self_contained(
    url: &str,
    path: &str,
    auth: &serde_json::Value,
    assets: &[&str],
    texts: &[&str],
) {
    let client = reqwest::Client::new();
    let page = client.get(format!("{url}{path}")).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let headers = page.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "style-src 'self';",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{path}: no {directive:?} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{path}: {csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    let escaped = auth.to_string().replace('"', "&quot;");
    assert!(
        html.contains(&format!(
            "<meta name=\"feedback-auth\" content=\"{escaped}\">"
        )),
        "{path}: the sign-in settings {auth} are not in the page"
    );
    assert!(
        !html.contains("<style") && !html.contains("style=\""),
        "{path}: inline style"
    );
    assert!(
        !html.contains("onclick=") && !html.contains("onsubmit="),
        "{path}: inline handler"
    );
    let mut referenced: Vec<&str> = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            let target = &part[..part.find('"').unwrap()];
            assert!(
                (target.starts_with('/') && !target.starts_with("//"))
                    || target.starts_with("data:"),
                "{path}: {attribute}{target}\" is not on this origin"
            );
            if target.starts_with('/') {
                referenced.push(target);
            }
        }
    }
    let mut everything = html.clone();
    for asset in assets {
        assert!(
            referenced.contains(asset) || *asset == "/oidc.js",
            "{path} does not load {asset}"
        );
        let response = client.get(format!("{url}{asset}")).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{asset}");
        let kind = if asset.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{asset}"
        );
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{asset}"
        );
        everything.push_str(&response.text().await.unwrap());
    }
    for needle in texts {
        assert!(
            everything.contains(needle),
            "{path} and its assets lack {needle:?}"
        );
    }
    // Credentials live in sessionStorage or memory only: what is kept
    // across tabs and restarts is the language and, on the form, the ids of
    // the courses a user rated from this browser (`RATED_KEY`), no token.
    for kept in everything.split("localStorage.setItem(").skip(1) {
        assert!(
            kept.starts_with("\"feedback.lang\"")
                || (kept.starts_with("RATED_KEY + ")
                    && everything.contains("const RATED_KEY = \"feedback.form.rated.\";")),
            "{path}: localStorage.setItem({})",
            &kept[..40.min(kept.len())]
        );
    }
    assert!(
        everything.contains("sessionStorage"),
        "{path}: no sessionStorage"
    );
}
