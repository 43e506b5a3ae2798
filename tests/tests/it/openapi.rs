//! Keeps `schemas/openapi.yaml` in step with the routers: every route of
//! ingest, query and the aggregator is a path of the document, the document
//! names no other, and every operation it documents is answered (neither 404
//! nor 405) by the running services its `servers` name. (scripts/test.sh
//! validates the document itself against the OpenAPI 3.1 schema with
//! openapi-spec-validator.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use feedback_tests::stack::{start_aggregator, start_ingest, start_query};
use feedback_tests::Running;

/// Every route the three routers serve: ingest/src/lib.rs `router()`,
/// query/src/lib.rs `router()`, aggregator/src/lib.rs `run_until`, and
/// `shared::http::health_routes()` (`/healthz`, `/metrics`) merged into each.
const ROUTES: &[&str] = &[
    // ingest
    "/v1/feedback",
    "/",
    "/form.js",
    "/form.css",
    // ingest and query
    "/oidc.js",
    // query
    "/v1/courses",
    "/v1/courses/{course_id}/stats",
    "/v1/courses/{course_id}/feedback",
    "/v1/courses/{course_id}/feedback.csv",
    "/v1/courses/{course_id}/trend",
    "/admin",
    "/admin.js",
    "/admin.css",
    // all three
    "/healthz",
    "/readyz",
    "/metrics",
];

fn document() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/openapi.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// The keys of the top-level `paths:` mapping: its lines that start with two
/// spaces and a slash, up to the next top-level key.
fn documented_paths(text: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|line| *line != "paths:");
    assert_eq!(
        lines.next(),
        Some("paths:"),
        "the document has no top-level `paths:`"
    );
    lines
        .take_while(|line| line.is_empty() || line.starts_with(' ') || line.starts_with('#'))
        .filter(|line| line.starts_with("  /"))
        .map(|line| {
            let key = line.trim_end().strip_prefix("  ").unwrap_or(line);
            key.strip_suffix(':')
                .unwrap_or_else(|| panic!("a path line that is not `  /path:`: {line:?}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn every_route_is_a_path_of_the_document() {
    let text = document();
    let lines: BTreeSet<&str> = text.lines().collect();
    let missing: Vec<&str> = ROUTES
        .iter()
        .copied()
        .filter(|route| !lines.contains(format!("  {route}:").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from schemas/openapi.yaml's paths: {missing:?}"
    );
}

#[test]
fn the_document_lists_no_path_the_routers_do_not_serve() {
    let documented = documented_paths(&document());
    let routes: BTreeSet<&str> = ROUTES.iter().copied().collect();
    let extra: Vec<&String> = documented
        .iter()
        .filter(|path| !routes.contains(path.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "schemas/openapi.yaml lists paths no router serves: {extra:?}"
    );
    let unique: BTreeSet<&String> = documented.iter().collect();
    assert_eq!(
        unique.len(),
        documented.len(),
        "a path is listed twice: {documented:?}"
    );
    assert_eq!(unique.len(), ROUTES.len());
}

/// Each documented operation: path, method, and the ports of its `servers`
/// (a path's own list, or one it names with a YAML alias, `*name`).
fn operations(text: &str) -> Vec<(String, String, Vec<u16>)> {
    let mut out: Vec<(String, String, Vec<u16>)> = Vec::new();
    let mut path: Option<(String, Vec<u16>)> = None;
    let mut anchors: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    let mut anchor: Option<String> = None;
    let mut in_paths = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  /") {
            path = Some((
                format!("/{}", key.trim_end().trim_end_matches(':')),
                Vec::new(),
            ));
            anchor = None;
        } else if let Some(servers) = line.strip_prefix("    servers:") {
            let servers = servers.trim();
            anchor = servers.strip_prefix('&').map(str::to_owned);
            if let (Some((_, ports)), Some(alias)) = (path.as_mut(), servers.strip_prefix('*')) {
                ports.extend(anchors.get(alias).expect("an alias defined earlier"));
            }
        } else if let (Some((_, ports)), Some(url)) = (
            path.as_mut(),
            line.strip_prefix("      - url: http://127.0.0.1:"),
        ) {
            let port: u16 = url.trim().parse().expect("a port in a path's servers");
            ports.push(port);
            if let Some(name) = &anchor {
                anchors.entry(name.clone()).or_default().push(port);
            }
        } else if let Some(method) = line
            .strip_prefix("    ")
            .and_then(|l| l.strip_suffix(':'))
            .filter(|m| ["get", "post", "put", "delete", "patch", "head"].contains(m))
        {
            let (p, ports) = path.clone().expect("an operation under a path");
            out.push((p, method.to_owned(), ports));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_by_the_services_its_servers_name() {
    let operations = operations(&document());
    assert!(operations.len() >= ROUTES.len(), "{operations:?}");
    let topic = feedback_tests::fresh_topic().await.expect("a topic");
    let mysql_url = feedback_tests::fresh_mysql_database().await.expect("MySQL");
    let redis_url = feedback_tests::fresh_redis_database().await.expect("Redis");
    let spool = feedback_tests::temp_dir("openapi-spool");
    // The documented default ports, mapped to the services running here.
    let services: BTreeMap<u16, Running> = BTreeMap::from([
        (8080, start_ingest(&topic, &spool).await),
        (8081, start_aggregator(&topic, &mysql_url, &redis_url).await),
        (8082, start_query(&mysql_url, &redis_url).await),
    ]);
    let client = reqwest::Client::new();
    for (path, method, ports) in &operations {
        assert!(!ports.is_empty(), "{method} {path} names no server");
        let concrete = path.replace("{course_id}", "CS101");
        for port in ports {
            let service = &services[port];
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let status = client
                .request(method.clone(), format!("{}{concrete}", service.url))
                .send()
                .await
                .expect("an answer")
                .status();
            assert!(
                status != 404 && status != 405,
                "{method} {path} on :{port} answered {status}"
            );
        }
    }
    for (_, service) in services {
        service.stop().await;
    }
}
