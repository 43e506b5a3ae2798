//! `FEEDBACK_CATALOG`: a closed ingest takes only the courses of the catalog
//! in the real MariaDB, learns a new one within the contract's 30 s, keeps
//! the catalog it knew through a restart with MySQL unreachable; an open
//! one takes any valid course. In either mode ingest lists the catalog at
//! `GET /v1/catalog` as query does, from MySQL when it can, from its copy on
//! disk when it cannot, and empty (still ready) when it never could.

use std::time::Duration;

use feedback_tests::ingest::{config, TestIngest};
use feedback_tests::{error_of, eventually, fresh_mysql_database, fresh_topic, student, temp_dir};
use ingest::catalog::{Mode, Settings};
use mysql_async::prelude::Queryable;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A MySQL database of the test's own, migrated as query does it, its
/// catalog listing `courses`.
async fn catalog_database(courses: &[&str]) -> String {
    let url = fresh_mysql_database().await.expect("a MySQL database");
    shared::mysql::migrate(&url).await.expect("the migrations");
    for course in courses {
        add_course(&url, course).await;
    }
    url
}

async fn add_course(url: &str, course_id: &str) {
    execute(
        url,
        "INSERT INTO courses (course_id, title, updated_at) VALUES (?, ?, UTC_TIMESTAMP(6))",
        (course_id, format!("Course {course_id}")),
    )
    .await;
}

async fn execute(url: &str, sql: &str, params: impl Into<mysql_async::Params> + Send) {
    let pool = mysql_async::Pool::new(url);
    let mut conn = pool.get_conn().await.expect("connecting to MySQL");
    conn.exec_drop(sql, params).await.expect("the statement");
    drop(conn);
    pool.disconnect().await.expect("disconnecting");
}

/// A closed ingest reading `mysql_url` every `refresh`, with `spool` (a fresh one when `None`).
async fn closed_ingest(
    mysql_url: &str,
    refresh: Duration,
    spool: Option<std::path::PathBuf>,
) -> TestIngest {
    ingest_in(Mode::Closed, mysql_url, refresh, spool).await
}

async fn ingest_in(
    mode: Mode,
    mysql_url: &str,
    refresh: Duration,
    spool: Option<std::path::PathBuf>,
) -> TestIngest {
    let topic = fresh_topic().await.expect("a topic");
    let mut config = config(&topic, spool.unwrap_or_else(|| temp_dir("catalog-spool")));
    config.catalog = Settings {
        mode,
        mysql_url: mysql_url.to_owned(),
        refresh,
    };
    TestIngest::spawn_with(config).await
}

/// Port 1: nothing listens, as when MySQL is down.
const UNREACHABLE: &str = "mysql://root@127.0.0.1:1/feedback";

/// `GET /v1/catalog` on `ingest`: its `Access-Control-Allow-Origin` and body.
async fn listed(ingest: &TestIngest) -> (Option<String>, Value) {
    let response = ingest
        .client
        .get(format!("{}/v1/catalog", ingest.url))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "as query's"
    );
    let origin = response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned());
    (origin, response.json().await.expect("a JSON body"))
}

async fn assert_ready(ingest: &TestIngest) {
    let ready = ingest
        .client
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "MySQL down is no cause of unreadiness"
    );
}

/// `/readyz`'s `checks.catalog` once `ready` holds of it.
async fn catalog_check(ingest: &TestIngest, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), what, || async {
        let check = ingest.readyz().await?["checks"]["catalog"].clone();
        Ok(ready(&check).then_some(check))
    })
    .await
    .unwrap()
}

async fn submit(ingest: &TestIngest, course_id: &str) -> reqwest::Response {
    ingest
        .post(
            &student("catalog-student"),
            &json!({"course_id": course_id, "rating": 4}),
        )
        .await
}

async fn assert_unknown(ingest: &TestIngest, course_id: &str) {
    let response = submit(ingest, course_id).await;
    assert_eq!(
        response.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "{course_id}"
    );
    let error = error_of(response).await;
    assert_eq!(error["code"], "unknown_course", "{course_id}: {error}");
    assert_eq!(error["field"], "course_id", "{course_id}: {error}");
}

#[tokio::test]
async fn a_closed_catalog_refuses_an_unknown_course_with_422_and_takes_a_listed_one() {
    let mysql_url = catalog_database(&["CS101", "MA201"]).await;
    let ingest = closed_ingest(&mysql_url, Duration::from_millis(200), None).await;
    let check = catalog_check(&ingest, "the catalog read from MySQL", |c| {
        c["source"] == "mysql"
    })
    .await;
    assert_eq!(check["mode"], "closed");
    assert_eq!(check["courses"], 2);
    assert!(check["last_refresh"].is_string(), "{check}");
    assert!(check["last_error"].is_null(), "{check}");

    let taken = submit(&ingest, "CS101").await;
    assert_eq!(taken.status(), StatusCode::ACCEPTED);
    assert_unknown(&ingest, "NOPE999").await;
    // Ids compare in binary, as everywhere else.
    assert_unknown(&ingest, "cs101").await;

    // A course removed from the catalog is refused once ingest reads it.
    execute(
        &mysql_url,
        "DELETE FROM courses WHERE course_id = ?",
        ("MA201",),
    )
    .await;
    catalog_check(&ingest, "the removal read", |c| c["courses"] == 1).await;
    assert_unknown(&ingest, "MA201").await;

    let metrics = reqwest::get(format!("{}/metrics", ingest.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Names only: the recorder is the test process's, shared by every test.
    for name in [
        "ingest_catalog_courses",
        "ingest_catalog_refused_total{reason=\"unknown_course\"}",
        "ingest_catalog_refreshes_total{outcome=\"read\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    feedback_tests::assert_every_metric_has_help(&metrics);
    ingest.shutdown().await;
}

/// With the refresh ingest ships with, not a test's shorter one.
#[tokio::test]
async fn a_course_added_to_mysql_is_accepted_within_30_s() {
    let mysql_url = catalog_database(&["CS101"]).await;
    let ingest = closed_ingest(&mysql_url, ingest::catalog::REFRESH, None).await;
    catalog_check(&ingest, "the first read", |c| c["source"] == "mysql").await;
    assert_unknown(&ingest, "NEW301").await;

    add_course(&mysql_url, "NEW301").await;
    let added = tokio::time::Instant::now();
    eventually(Duration::from_secs(30), "NEW301 taken", || async {
        let response = submit(&ingest, "NEW301").await;
        Ok((response.status() == StatusCode::ACCEPTED).then_some(()))
    })
    .await
    .unwrap();
    assert!(added.elapsed() < Duration::from_secs(30));
    ingest.shutdown().await;
}

#[tokio::test]
async fn a_restarted_ingest_with_mysql_unreachable_still_knows_the_catalog_from_disk() {
    let mysql_url = catalog_database(&["CS101"]).await;
    let spool = temp_dir("catalog-restart-spool");
    let first = closed_ingest(&mysql_url, Duration::from_millis(200), Some(spool.clone())).await;
    let check = catalog_check(&first, "the first read", |c| c["source"] == "mysql").await;
    let learned_at = check["learned_at"].clone();
    first.shutdown().await;

    let again = closed_ingest(UNREACHABLE, Duration::from_millis(200), Some(spool)).await;
    let check = catalog_check(&again, "a failed read reported", |c| {
        c["last_error"].is_string()
    })
    .await;
    assert_eq!(check["source"], "disk", "{check}");
    assert_eq!(check["courses"], 1, "{check}");
    assert_eq!(check["learned_at"], learned_at, "{check}");
    assert!(check["last_refresh"].is_null(), "{check}");
    assert_ready(&again).await;

    assert_eq!(submit(&again, "CS101").await.status(), StatusCode::ACCEPTED);
    assert_unknown(&again, "MA201").await;
    again.shutdown().await;
}

#[tokio::test]
async fn a_closed_ingest_that_never_read_a_catalog_answers_503_and_is_not_ready() {
    let ingest = closed_ingest(UNREACHABLE, Duration::from_millis(200), None).await;
    catalog_check(&ingest, "a failed read reported", |c| {
        c["last_error"].is_string()
    })
    .await;
    let response = submit(&ingest, "CS101").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_of(response).await["code"], "catalog_unavailable");

    let ready = ingest
        .client
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["catalog"]["source"], "none", "{ready}");
    assert!(ready["checks"]["catalog"]["courses"].is_null(), "{ready}");
    ingest.shutdown().await;
}

#[tokio::test]
async fn an_open_catalog_takes_any_valid_course() {
    let ingest = TestIngest::spawn().await;
    for course in ["ANY-COURSE.1", "x9"] {
        assert_eq!(
            submit(&ingest, course).await.status(),
            StatusCode::ACCEPTED,
            "{course}"
        );
    }
    let ready = ingest.readyz().await.unwrap();
    assert_eq!(ready["checks"]["catalog"]["mode"], "open", "{ready}");
    ingest.shutdown().await;
}

/// The list the tests below insert, as query lists it: by id, in binary
/// order, every field present.
fn expected_list() -> Value {
    json!({"courses": [
        {"course_id": "CS101", "title": "数据结构", "term": "2026F"},
        {"course_id": "MA201", "title": "Linear algebra", "term": null},
    ]})
}

#[tokio::test]
async fn an_open_ingest_lists_the_catalog_inserted_in_mysql_with_titles_and_terms() {
    let mysql_url = catalog_database(&[]).await;
    let refresh = Duration::from_millis(500);
    let ingest = ingest_in(Mode::Open, &mysql_url, refresh, None).await;
    catalog_check(&ingest, "the first read", |c| c["source"] == "mysql").await;
    let (origin, body) = listed(&ingest).await;
    assert_eq!(body, json!({"courses": []}));
    assert_eq!(origin.as_deref(), Some("*"));

    execute(
        &mysql_url,
        "INSERT INTO courses (course_id, title, term, updated_at) VALUES
            ('MA201', 'Linear algebra', NULL, UTC_TIMESTAMP(6)),
            ('CS101', '数据结构', '2026F', UTC_TIMESTAMP(6))",
        (),
    )
    .await;
    // A round at most, plus the time one takes.
    eventually(Duration::from_secs(5), "the courses listed", || async {
        let (origin, body) = listed(&ingest).await;
        assert_eq!(origin.as_deref(), Some("*"));
        Ok((body == expected_list()).then_some(()))
    })
    .await
    .unwrap();

    // A title changed in place moves `updated_at`, so it is read too.
    execute(
        &mysql_url,
        "UPDATE courses SET title = 'Algebra', updated_at = UTC_TIMESTAMP(6) WHERE course_id = 'MA201'",
        (),
    )
    .await;
    eventually(Duration::from_secs(5), "the new title listed", || async {
        let (_, body) = listed(&ingest).await;
        Ok((body["courses"][1]["title"] == "Algebra").then_some(()))
    })
    .await
    .unwrap();

    let check = catalog_check(&ingest, "both courses held", |c| c["courses"] == 2).await;
    assert_eq!(check["mode"], "open", "{check}");
    assert_eq!(check["source"], "mysql", "{check}");
    assert!(check["last_error"].is_null(), "{check}");
    assert_ready(&ingest).await;
    ingest.shutdown().await;
}

#[tokio::test]
async fn an_open_ingest_restarted_with_mysql_unreachable_lists_the_catalog_from_disk() {
    let mysql_url = catalog_database(&[]).await;
    execute(
        &mysql_url,
        "INSERT INTO courses (course_id, title, term, updated_at) VALUES
            ('MA201', 'Linear algebra', NULL, UTC_TIMESTAMP(6)),
            ('CS101', '数据结构', '2026F', UTC_TIMESTAMP(6))",
        (),
    )
    .await;
    let spool = temp_dir("catalog-open-restart-spool");
    let refresh = Duration::from_millis(200);
    let first = ingest_in(Mode::Open, &mysql_url, refresh, Some(spool.clone())).await;
    catalog_check(&first, "the first read", |c| c["courses"] == 2).await;
    assert_eq!(listed(&first).await.1, expected_list());
    first.shutdown().await;

    let again = ingest_in(Mode::Open, UNREACHABLE, refresh, Some(spool)).await;
    let check = catalog_check(&again, "a failed read reported", |c| {
        c["last_error"].is_string()
    })
    .await;
    assert_eq!(check["source"], "disk", "{check}");
    let (origin, body) = listed(&again).await;
    assert_eq!(body, expected_list());
    assert_eq!(origin.as_deref(), Some("*"));
    assert_ready(&again).await;
    again.shutdown().await;
}

#[tokio::test]
async fn an_open_ingest_that_never_reached_mysql_lists_no_course_and_stays_ready() {
    let ingest = ingest_in(Mode::Open, UNREACHABLE, Duration::from_millis(200), None).await;
    // Several rounds failed: still ready, still an empty list.
    let check = catalog_check(&ingest, "a failed read reported", |c| {
        c["last_error"].is_string()
    })
    .await;
    assert_eq!(check["source"], "none", "{check}");
    assert!(check["courses"].is_null(), "{check}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (origin, body) = listed(&ingest).await;
    assert_eq!(body, json!({"courses": []}));
    assert_eq!(origin.as_deref(), Some("*"));
    assert_ready(&ingest).await;
    assert_eq!(
        submit(&ingest, "ANY-COURSE.1").await.status(),
        StatusCode::ACCEPTED
    );
    ingest.shutdown().await;
}

#[tokio::test]
async fn ingest_refuses_to_start_with_an_unknown_catalog_mode() {
    feedback_tests::assert_refuses_to_start_naming(
        env!("CARGO_BIN_EXE_ingest"),
        &[
            ("FEEDBACK_INGEST_ADDR", "127.0.0.1:0".into()),
            ("FEEDBACK_JWT_SECRET", feedback_tests::JWT_SECRET.into()),
            (
                "FEEDBACK_SPOOL_DIR",
                temp_dir("catalog-mode-spool").display().to_string(),
            ),
            ("FEEDBACK_CATALOG", "shut".into()),
        ],
        "FEEDBACK_CATALOG",
    )
    .await;
}
