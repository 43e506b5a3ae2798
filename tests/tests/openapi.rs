//! Keeps `schemas/openapi.yaml` in step with the routers: every route of
//! ingest, query and the aggregator is a path of the document, and the
//! document names no other. (scripts/test.sh validates the document itself
//! against the OpenAPI 3.1 schema with openapi-spec-validator.)

use std::collections::BTreeSet;
use std::path::Path;

/// Every route the three routers serve: ingest/src/lib.rs `router()`,
/// query/src/lib.rs `router()`, aggregator/src/lib.rs `run_until`, and
/// `shared::http::health_routes()` (`/healthz`, `/metrics`) merged into each.
const ROUTES: &[&str] = &[
    // ingest
    "/v1/feedback",
    "/",
    // query
    "/v1/courses",
    "/v1/courses/{course_id}/stats",
    "/v1/courses/{course_id}/feedback",
    "/v1/courses/{course_id}/feedback.csv",
    "/v1/courses/{course_id}/trend",
    "/admin",
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
