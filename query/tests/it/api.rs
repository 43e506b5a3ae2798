//! The HTTP surface: the auth matrix on every admin route, the course list,
//! the contract's error format, the pages and probes that need no token.

use feedback_tests::error_of;
use feedback_tests::query::{admin, TestQuery};
use feedback_tests::{token, JWT_SECRET};
use reqwest::StatusCode;
use shared::auth::{Claims, Role};

const ADMIN_ROUTES: [&str; 5] = [
    "/v1/courses/CS101/stats",
    "/v1/courses/CS101/feedback",
    "/v1/courses/CS101/feedback.csv",
    "/v1/courses/CS101/trend",
    "/v1/courses",
];

fn signed(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn admin_routes_take_admins_only_401_for_missing_expired_or_bad_tokens_and_403_for_students()
{
    let query = TestQuery::spawn().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = signed(
        &serde_json::to_value(Claims {
            sub: "root".into(),
            role: Role::Admin,
            exp: (now - 120) as u64,
        })
        .unwrap(),
        JWT_SECRET,
    );
    let forged = signed(
        &serde_json::json!({"sub": "root", "role": "admin", "exp": now + 600}),
        "another-secret-another-secret-0123456789",
    );
    let no_exp = signed(
        &serde_json::json!({"sub": "root", "role": "admin"}),
        JWT_SECRET,
    );
    for path in ADMIN_ROUTES {
        for (token, status) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("garbage".to_owned()), StatusCode::UNAUTHORIZED),
            (Some(expired.clone()), StatusCode::UNAUTHORIZED),
            (Some(forged.clone()), StatusCode::UNAUTHORIZED),
            (Some(no_exp.clone()), StatusCode::UNAUTHORIZED),
            (Some(token("s-1", Role::Student)), StatusCode::FORBIDDEN),
        ] {
            let response = query.get_as(path, token.as_deref()).await;
            assert_eq!(response.status(), status, "{path} with {token:?}");
            let code = if status == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "invalid_token"
            };
            assert_eq!(error_of(response).await["code"], code, "{path}");
        }
        assert_eq!(
            query.get_as(path, Some(&admin())).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    let basic = query
        .client
        .get(format!("{}/v1/courses", query.url))
        .header("authorization", "Basic cm9vdDpyb290")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    // Authentication comes before parameters: a student learns nothing about them.
    let response = query
        .get_as(
            "/v1/courses/%E8%AF%BE/stats?limit=x",
            Some(&token("s-1", Role::Student)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    query.shutdown().await;
}

/// An instructor the catalog lists for no course owns none: each course is
/// a clear 403 and the list is empty, however much feedback there is.
#[tokio::test]
async fn an_instructor_reads_no_course_yet_and_is_told_so() {
    let query = TestQuery::spawn().await;
    query.seed().stats("CS101", [0, 0, 0, 5, 0], 5).await;
    let instructor = token("ivan", Role::Instructor);
    for path in &ADMIN_ROUTES[..4] {
        let response = query.get_as(path, Some(&instructor)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let error = error_of(response).await;
        assert_eq!(error["code"], "not_your_course", "{path}");
        assert!(
            error["message"].as_str().unwrap().contains("CS101"),
            "{error}"
        );
    }
    let list = query.get_as("/v1/courses", Some(&instructor)).await;
    assert_eq!(list.status(), StatusCode::OK);
    assert_eq!(
        list.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"items": []})
    );
    // The admin sees the course the instructor does not.
    assert_eq!(
        query.json("/v1/courses").await["items"][0]["course_id"],
        "CS101"
    );
    query.shutdown().await;
}

/// API answers stay out of caches and are never sniffed into pages.
#[tokio::test]
async fn api_answers_are_no_store_and_nosniff() {
    let query = feedback_tests::query::router().await;
    for (path, token) in [
        ("/v1/courses/CS101/stats", None),
        ("/v1/courses/%20/stats", Some(admin())),
        ("/nowhere", None),
    ] {
        let response = query.get_as(path, token.as_deref()).await;
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
    }
}

#[tokio::test]
async fn the_course_list_puts_the_most_responses_first() {
    let query = TestQuery::spawn().await;
    let seed = query.seed();
    seed.stats("MID", [0, 0, 0, 5, 0], 5).await;
    seed.stats("TOP-B", [0, 0, 0, 0, 9], 9).await;
    seed.stats("TOP-A", [9, 0, 0, 0, 0], 9).await;
    seed.stats("LOW", [0, 1, 0, 0, 0], 1).await;
    let list = query.json("/v1/courses").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["course_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["TOP-A", "TOP-B", "MID", "LOW"]);
    assert_eq!(
        list["items"][0],
        serde_json::json!({"course_id": "TOP-A", "title": null, "responses": 9, "average": 1.0, "withheld": false, "updated_at": "2026-11-01T10:00:00.123456Z"})
    );
    let two = query.json("/v1/courses?limit=2").await;
    assert_eq!(two["items"].as_array().unwrap().len(), 2);
    for (path, status, code) in [
        ("/v1/courses?limit=0", 422, "invalid_value"),
        ("/v1/courses?limit=201", 422, "invalid_value"),
        ("/v1/courses?limit=%20", 400, "invalid_type"),
    ] {
        let response = query.get(path).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        let error = error_of(response).await;
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some(code), Some("limit"))
        );
    }
    query.shutdown().await;
}

/// The router alone: none of these answers reads a store.
#[tokio::test]
async fn bad_course_ids_unknown_paths_and_wrong_methods_answer_in_the_contract_format() {
    let query = feedback_tests::query::router().await;
    let long = format!("/v1/courses/{}/stats", "x".repeat(65));
    for path in [
        "/v1/courses/%E8%AF%BE%E7%A8%8B/stats",
        "/v1/courses/CS%20101/stats",
        long.as_str(),
    ] {
        let response = query.get_as(path, Some(&admin())).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}"
        );
        let error = error_of(response).await;
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some("invalid_value"), Some("course_id"))
        );
    }
    let response = query.get_as("/v1/nothing", Some(&admin())).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        response.headers().contains_key("x-request-id"),
        "the 404 passes the service's layers too"
    );
    assert_eq!(error_of(response).await["code"], "not_found");
    // Any token is a method: one the metrics do not know is labelled `other`,
    // so that made-up methods cannot add series to /metrics without end.
    let made_up = reqwest::Method::from_bytes(b"ZZTOPMETHOD").unwrap();
    let response = query
        .send(
            query
                .client
                .request(made_up, format!("{}/healthz", query.url)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let metrics = query.get_as("/metrics", None).await.text().await.unwrap();
    assert!(!metrics.contains("ZZTOPMETHOD"), "{metrics}");
    feedback_tests::assert_every_metric_has_help(&metrics);
    assert!(
        metrics.contains(r#"http_requests_total{route="/healthz",method="other",status="405"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="unmatched",method="GET",status="404""#),
        "the 404 counts in the metrics: {metrics}"
    );
    let response = query
        .send(
            query
                .client
                .post(format!("{}/v1/courses/CS101/stats", query.url))
                .bearer_auth(admin()),
        )
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    assert_eq!(error_of(response).await["code"], "method_not_allowed");
    // The pages and probes too, with the contract's body rather than an empty one.
    for path in ["/admin", "/healthz", "/readyz", "/metrics"] {
        let response = query
            .send(query.client.post(format!("{}{path}", query.url)))
            .await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(response.headers()["allow"], "GET,HEAD", "{path}");
        assert!(
            response.headers().contains_key("x-request-id"),
            "{path}: the 405 passes the service's layers too"
        );
        assert_eq!(error_of(response).await["code"], "method_not_allowed");
    }
}

/// The dashboard needs no token to load; it runs its own files only.
#[tokio::test]
async fn the_dashboard_is_served_without_a_token_and_loads_nothing_from_outside() {
    let query = TestQuery::spawn().await;
    feedback_tests::assert_page_is_served_self_contained(
        &query.url,
        "/admin",
        &serde_json::json!({"mode": "secret"}),
        &["/admin.css", "/admin.js", "/oidc.js"],
        &[
            "课程反馈管理",
            "Course feedback admin",
            "<svg",
            "feedback.csv",
            "next_cursor",
            "not_your_course",
        ],
    )
    .await;
    query.shutdown().await;
}

#[tokio::test]
async fn probes_and_metrics_need_no_token_and_count_hits_misses_and_routes() {
    let query = TestQuery::spawn().await;
    query.seed().stats("M1", [1, 1, 1, 1, 1], 1).await;
    // The sum of a metric's series whose line contains `filter`. Metrics are
    // process-wide, so the checks below are on what this test added.
    let sum = |page: &str, name: &str, filter: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = query.get_as("/metrics", None).await.text().await.unwrap();
    assert_eq!(query.stats_of("M1").await["source"], "database");
    assert_eq!(query.stats_of("M1").await["source"], "cache");
    assert_eq!(
        query.get_as("/healthz", None).await.status(),
        StatusCode::OK
    );
    let ready =
        feedback_tests::eventually(std::time::Duration::from_secs(10), "readyz", || async {
            let response = query.get_as("/readyz", None).await;
            Ok((response.status() == StatusCode::OK).then_some(()))
        })
        .await;
    assert!(ready.is_ok());
    let metrics = query.get_as("/metrics", None).await.text().await.unwrap();
    for needle in [
        "query_cache_hits_total",
        "query_cache_misses_total",
        "query_mysql_loads_total",
        "query_cache_fills_total{outcome=\"unreachable\"}",
        "http_requests_total{route=\"/v1/courses/{course_id}/stats\"",
        "http_request_duration_seconds_bucket{route=\"/v1/courses/{course_id}/stats\"",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}");
    }
    let added = |name: &str, filter: &str| sum(&metrics, name, filter) - sum(&before, name, filter);
    assert!(
        added("query_cache_misses_total", "") >= 1.0,
        "the miss counted"
    );
    assert!(
        added("query_cache_hits_total", "") >= 1.0,
        "the hit counted"
    );
    assert!(
        added(
            "http_requests_total",
            "route=\"/v1/courses/{course_id}/stats\""
        ) >= 2.0,
        "both requests counted under their route"
    );
    query.shutdown().await;
}
