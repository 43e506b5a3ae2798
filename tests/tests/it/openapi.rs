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
    // ingest and query (`/v1/catalog`: its GET only)
    "/oidc.js",
    "/v1/catalog",
    // query
    "/v1/courses",
    "/v1/courses/{course_id}/stats",
    "/v1/courses/{course_id}/feedback",
    "/v1/courses/{course_id}/feedback.csv",
    "/v1/courses/{course_id}/trend",
    "/v1/courses/{course_id}",
    "/v1/moderation",
    "/v1/moderation/log",
    "/v1/feedback/{feedback_id}/hide",
    "/v1/feedback/{feedback_id}/unhide",
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
        let concrete = path
            .replace("{course_id}", "CS101")
            .replace("{feedback_id}", "01KAZ3G6Y5W4N8Q2R7T9V0X1YZ");
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

/// How deep `line` is indented.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines of the block the line `header` opens in `lines`: those after
/// it up to the next one indented no deeper (blank lines kept).
fn block<'a>(lines: &[&'a str], header: &str) -> Vec<&'a str> {
    let start = lines
        .iter()
        .position(|line| line.trim_end() == header)
        .unwrap_or_else(|| panic!("no line {header:?} in the document"));
    lines[start + 1..]
        .iter()
        .copied()
        .take_while(|line| line.trim().is_empty() || indent(line) > indent(header))
        .collect()
}

/// The keys of the mapping in `lines` indented exactly `depth`.
fn keys_at(lines: &[&str], depth: usize) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|line| indent(line) == depth && !line.trim_start().starts_with(['#', '-']))
        .filter_map(|line| line.trim().strip_suffix(':'))
        .map(|key| key.trim_matches('"').to_owned())
        .collect()
}

/// The properties a schema of `components.schemas` names.
fn schema_properties(text: &str, schema: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = text.lines().collect();
    let schema = block(&lines, &format!("    {schema}:"));
    keys_at(&block(&schema, "      properties:"), 8)
}

/// `components.parameters`' query parameter named `name`.
fn query_parameter<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().collect();
    let components = block(&lines, "components:");
    let parameters = block(&components, "  parameters:");
    keys_at(&parameters, 4)
        .into_iter()
        .map(|key| block(&parameters, &format!("    {key}:")))
        .find(|parameter| {
            parameter.contains(&format!("      name: {name}").as_str())
                && parameter.contains(&"      in: query")
        })
        .unwrap_or_else(|| panic!("no query parameter {name} in components.parameters"))
}

/// The example lines of the answer `path` `method` gives with `status`,
/// inline or the `components.responses` entry it refers to.
fn answer_examples<'a>(text: &'a str, path: &str, method: &str, status: u16) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().collect();
    let operation = block(
        &block(&lines, &format!("  {path}:")),
        &format!("    {method}:"),
    );
    let answer = block(&operation, &format!("        \"{status}\":"));
    let answer = match answer
        .first()
        .and_then(|line| line.trim().strip_prefix("$ref: \"#/components/responses/"))
    {
        Some(name) => {
            let components = block(&lines, "components:");
            block(
                &block(&components, "  responses:"),
                &format!("    {}:", name.trim_end_matches('"')),
            )
        }
        None => answer,
    };
    answer
        .into_iter()
        .filter(|line| line.trim_start().starts_with("value: {error:"))
        .collect()
}

/// Ingest, the aggregator and query on fresh resources of their own.
async fn three_services() -> [(&'static str, Running); 3] {
    let topic = feedback_tests::fresh_topic().await.expect("a topic");
    let mysql_url = feedback_tests::fresh_mysql_database().await.expect("MySQL");
    let redis_url = feedback_tests::fresh_redis_database().await.expect("Redis");
    let spool = feedback_tests::temp_dir("openapi-spool");
    [
        ("IngestChecks", start_ingest(&topic, &spool).await),
        (
            "AggregatorChecks",
            start_aggregator(&topic, &mysql_url, &redis_url).await,
        ),
        ("QueryChecks", start_query(&mysql_url, &redis_url).await),
    ]
}

/// Every check a service's `/readyz` reports is a property of its schema
/// in the document, and the reverse (the schemas admit no other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_reports_the_readiness_checks_its_schema_documents() {
    let text = document();
    let client = reqwest::Client::new();
    for (schema, service) in three_services().await {
        let body: serde_json::Value = client
            .get(format!("{}/readyz", service.url))
            .send()
            .await
            .expect("an answer")
            .json()
            .await
            .expect("a JSON body");
        let reported: BTreeSet<String> = body["checks"]
            .as_object()
            .unwrap_or_else(|| panic!("{body}"))
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            reported,
            schema_properties(&text, schema),
            "{schema}: the reported checks (left) against the documented ones: {body}"
        );
        service.stop().await;
    }
}

/// Query takes an empty parameter as an absent one (`?limit=` is the
/// default limit); the document says so with `allowEmptyValue`, so that a
/// client or fuzzer reading its schemas (an integer, an enum, a date) does
/// not take the empty value for an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_query_takes_empty_are_documented_as_allowed_empty() {
    let text = document();
    // Migrated before query starts, so that its first answers are not 503.
    let (mysql_url, redis_url) = feedback_tests::query::fresh_stores().await;
    let query = start_query(&mysql_url, &redis_url).await;
    let client = reqwest::Client::new();
    let admin = feedback_tests::token("fuzz-admin", shared::auth::Role::Admin);
    let get = |url: String| {
        let request = client.get(url).bearer_auth(&admin);
        async move {
            let response = request.send().await.expect("an answer");
            let status = response.status();
            let body: serde_json::Value = response.json().await.expect("a JSON body");
            (status, body)
        }
    };
    for (path, parameter) in [
        ("/v1/courses", "limit"),
        ("/v1/courses/CS101/feedback", "limit"),
        ("/v1/courses/CS101/feedback", "cursor"),
        ("/v1/courses/CS101/trend", "bucket"),
        ("/v1/courses/CS101/trend", "from"),
        ("/v1/courses/CS101/trend", "to"),
        ("/v1/courses/CS101/feedback", "include_hidden"),
        ("/v1/moderation", "limit"),
        ("/v1/moderation", "cursor"),
        ("/v1/moderation/log", "cursor"),
    ] {
        let absent = get(format!("{}{path}", query.url)).await;
        let empty = get(format!("{}{path}?{parameter}=", query.url)).await;
        assert_eq!(absent.0, reqwest::StatusCode::OK, "{path}: {}", absent.1);
        assert_eq!(empty, absent, "{path}?{parameter}=");
        assert!(
            query_parameter(&text, parameter).contains(&"      allowEmptyValue: true"),
            "{path}?{parameter}= is taken as absent, but the document does not allow it empty"
        );
    }
    query.stop().await;
}

/// Requests that match the document's schemas and are refused all the
/// same, for what no schema can state (a cursor the service did not issue,
/// a trend range it does not serve): each refusal, with its code and field,
/// is among the examples of that operation's answer with that status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_no_schema_can_state_are_documented_for_their_operation() {
    let text = document();
    // Migrated before query starts, so that its first answers are not 503.
    let (mysql_url, redis_url) = feedback_tests::query::fresh_stores().await;
    let query = start_query(&mysql_url, &redis_url).await;
    let client = reqwest::Client::new();
    let admin = feedback_tests::token("fuzz-admin", shared::auth::Role::Admin);
    let feedback = "/v1/courses/{course_id}/feedback";
    let trend = "/v1/courses/{course_id}/trend";
    for (path, query_string, status, code, field) in [
        (
            "/v1/moderation",
            "cursor=bm90LWlzc3VlZA",
            400,
            "invalid_cursor",
            "cursor",
        ),
        (
            "/v1/moderation/log",
            "cursor=bm90LWlzc3VlZA",
            400,
            "invalid_cursor",
            "cursor",
        ),
        // Base64url, as the service's own are, but never issued.
        (
            feedback,
            "cursor=bm90LWlzc3VlZA",
            400,
            "invalid_cursor",
            "cursor",
        ),
        (trend, "from=2000-01-01", 422, "invalid_value", "from"),
        (
            trend,
            "from=2026-11-10&to=2026-11-09",
            422,
            "invalid_value",
            "from",
        ),
        (
            trend,
            "from=2025-01-01&to=2026-11-09",
            422,
            "invalid_value",
            "from",
        ),
        (trend, "to=0999-12-31", 422, "invalid_value", "to"),
    ] {
        let url = format!(
            "{}{}?{query_string}",
            query.url,
            path.replace("{course_id}", "CS101")
        );
        let response = client
            .get(url)
            .bearer_auth(&admin)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status().as_u16(), status, "{path}?{query_string}");
        let error = feedback_tests::error_of(response).await;
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some(code), Some(field)),
            "{path}?{query_string}: {error}"
        );
        let documented = answer_examples(&text, path, "get", status);
        assert!(
            documented
                .iter()
                .any(|example| example.contains(&format!("code: {code},"))
                    && example.contains(&format!("field: {field}}}"))),
            "GET {path}?{query_string} is {status} {code} on {field}, not among the document's \
             examples of that answer: {documented:#?}"
        );
    }
    query.stop().await;
}
