//! Comments and their CSV export against the real MariaDB.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use feedback_tests::error_of;
use feedback_tests::query::{admin, config, fresh_stores, Response, TestQuery};
use mysql_async::prelude::Queryable;
use reqwest::StatusCode;
use serde_json::Value;

/// `n` responses of `course`, three to a timestamp so the feedback_id tie-break matters.
fn responses(n: usize, prefix: &str) -> Vec<Response> {
    (0..n)
        .map(|i| {
            let at = format!(
                "2026-11-{:02} {:02}:{:02}:00.250000",
                1 + i / 600,
                (i / 3 / 60) % 24,
                (i / 3) % 60
            );
            Response::new(
                &format!("{prefix}-{i}"),
                1 + (i % 5) as u8,
                Some(&format!("{prefix} comment {i}")),
                &at,
            )
        })
        .collect()
}

/// Newest first: submitted_at, then feedback_id, both descending.
fn newest_first(rows: &[Response]) -> Vec<String> {
    let mut sorted: Vec<&Response> = rows.iter().collect();
    sorted
        .sort_by(|a, b| (&b.submitted_at, &b.feedback_id).cmp(&(&a.submitted_at, &a.feedback_id)));
    sorted.iter().map(|r| r.feedback_id.clone()).collect()
}

#[tokio::test]
async fn paging_with_the_cursor_yields_every_current_response_exactly_once_newest_first() {
    let query = TestQuery::spawn().await;
    let rows = responses(237, "page");
    query.seed().responses("PAGED", &rows).await;
    // Every third student also has an earlier, superseded submission in the
    // history, timed among the others' current ones: never listed.
    let superseded: Vec<Response> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(i, r)| Response {
            feedback_id: ulid::Ulid::new().to_string(),
            comment: Some(format!("superseded {i}")),
            submitted_at: rows[i.saturating_sub(7)].submitted_at.clone(),
            ..r.clone()
        })
        .collect();
    query.seed().history("PAGED", &superseded).await;
    query
        .seed()
        .responses("OTHER", &responses(20, "other"))
        .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/courses/PAGED/feedback?limit=50".to_owned(),
            Some(c) => format!("/v1/courses/PAGED/feedback?limit=50&cursor={c}"),
        };
        let response = query.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        for r in &rows {
            assert!(!text.contains(&r.student_key), "a student_key leaked");
        }
        let page: Value = serde_json::from_str(&text).unwrap();
        let items = page["items"].as_array().unwrap();
        for item in items {
            let keys: HashSet<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                HashSet::from([
                    "feedback_id",
                    "rating",
                    "comment",
                    "submitted_at",
                    "flagged"
                ])
            );
            seen.push(item["feedback_id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 50);
                cursor = Some(next.to_owned());
            }
            None => {
                assert_eq!(items.len(), 37);
                break;
            }
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(
        seen,
        newest_first(&rows),
        "every current response once, newest first, no superseded one"
    );
    // A cursor belongs to its course: PAGED's, sent for OTHER, is refused
    // rather than answered with OTHER's rows older than that time.
    let first = query.json("/v1/courses/PAGED/feedback?limit=50").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let response = query
        .get(&format!("/v1/courses/OTHER/feedback?cursor={cursor}"))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(response).await["code"], "invalid_cursor");
    query.shutdown().await;
}

#[tokio::test]
async fn items_carry_rating_comment_and_rfc3339_time_and_the_default_page_is_50() {
    let query = TestQuery::spawn().await;
    let mut rows = responses(60, "d");
    rows[0] = Response::new("first", 4, None, "2026-12-24 18:30:05.000042");
    query.seed().responses("DEFAULT", &rows).await;
    let page = query.json("/v1/courses/DEFAULT/feedback").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 50);
    assert!(page["next_cursor"].is_string());
    assert_eq!(items[0]["feedback_id"], rows[0].feedback_id.as_str());
    assert_eq!(items[0]["rating"], 4);
    assert!(items[0]["comment"].is_null());
    assert_eq!(items[0]["submitted_at"], "2026-12-24T18:30:05.000042Z");

    let empty = query.json("/v1/courses/NOBODY/feedback").await;
    assert_eq!(
        empty,
        serde_json::json!({"items": [], "next_cursor": null, "withheld": false})
    );
    query.shutdown().await;
}

#[tokio::test]
async fn a_cursor_query_is_an_index_range_scan_without_a_sort() {
    let query = TestQuery::spawn().await;
    query
        .seed()
        .responses("PLAN", &responses(400, "plan"))
        .await;
    query
        .seed()
        .responses("PLAN2", &responses(400, "plan2"))
        .await;
    let mut conn = query.seed().pool.get_conn().await.unwrap();
    conn.query_drop("ANALYZE TABLE current_responses")
        .await
        .unwrap();
    conn.query_drop("ANALYZE TABLE feedback_events")
        .await
        .unwrap();
    let plan: Vec<mysql_async::Row> = conn
        .exec(
            format!("EXPLAIN {}", ::query::comments::page_sql(true, false)),
            (
                "PLAN",
                "2026-11-01 01:00:00",
                "2026-11-01 01:00:00",
                "01JC0000000000000000000000",
                51,
            ),
        )
        .await
        .unwrap();
    let key: Option<String> = plan[0].get("key");
    let extra: Option<String> = plan[0].get("Extra");
    assert_eq!(
        key.as_deref(),
        Some("idx_events_course_submitted"),
        "{extra:?}"
    );
    let current_key: Option<String> = plan[1].get("key");
    assert_eq!(current_key.as_deref(), Some("PRIMARY"), "{plan:?}");
    // The moderation state: a primary-key lookup per entry, after the others.
    let moderation: (Option<String>, Option<String>) = (plan[2].get("table"), plan[2].get("key"));
    assert_eq!(
        (moderation.0.as_deref(), moderation.1.as_deref()),
        (Some("m"), Some("PRIMARY")),
        "{plan:?}"
    );
    assert!(!extra.unwrap_or_default().contains("filesort"));
    query.shutdown().await;
}

#[tokio::test]
async fn csv_round_trips_chinese_comments_with_commas_quotes_and_newlines() {
    let query = TestQuery::spawn().await;
    let tricky = [
        Some("讲得很好, 但是作业太多"),
        Some("老师说：\"多练习\"，我同意"),
        Some("第一行\n第二行, 带逗号"),
        Some("Windows 换行\r\n第二行"),
        Some("emoji 👍 and a trailing quote\""),
        None,
    ];
    let mut rows: Vec<Response> = tricky
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Response::new(
                &format!("t{i}"),
                1 + i as u8 % 5,
                *c,
                &format!("2026-12-01 0{i}:00:00"),
            )
        })
        .collect();
    rows.extend(responses(1200, "bulk")); // three database pages
    query.seed().responses("CSV101", &rows).await;

    let response = query.get("/v1/courses/CSV101/feedback.csv").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"CSV101-feedback.csv\""
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(&bytes[..3], b"\xEF\xBB\xBF", "a UTF-8 BOM first");

    let mut reader = csv::ReaderBuilder::new().from_reader(&bytes[3..]);
    assert_eq!(
        reader.headers().unwrap(),
        vec!["feedback_id", "rating", "comment", "submitted_at"]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), rows.len());
    let ids: Vec<String> = records.iter().map(|r| r[0].to_owned()).collect();
    assert_eq!(
        ids,
        newest_first(&rows),
        "same order as the JSON pages, each row once"
    );
    let by_id: HashMap<&str, &csv::StringRecord> = records.iter().map(|r| (&r[0], r)).collect();
    for row in &rows {
        let record = by_id[row.feedback_id.as_str()];
        assert_eq!(&record[1], row.rating.to_string());
        assert_eq!(&record[2], row.comment.as_deref().unwrap_or(""));
    }
    assert_eq!(
        &by_id[rows[0].feedback_id.as_str()][3],
        "2026-12-01T00:00:00Z"
    );
    query.shutdown().await;
}

#[tokio::test]
async fn csv_cells_that_would_run_as_formulas_are_prefixed_with_a_quote() {
    let query = TestQuery::spawn().await;
    let rows = vec![Response::new(
        "f",
        2,
        Some("=HYPERLINK(\"x\",\"点我\")"),
        "2026-12-01 00:00:00",
    )];
    query.seed().responses("FORMULA", &rows).await;
    let text = query
        .get("/v1/courses/FORMULA/feedback.csv")
        .await
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(text.trim_start_matches('\u{FEFF}').as_bytes());
    let record = reader.records().next().unwrap().unwrap();
    assert_eq!(&record[2], "'=HYPERLINK(\"x\",\"点我\")");
    query.shutdown().await;
}

#[tokio::test]
async fn an_empty_course_exports_just_the_header() {
    let query = TestQuery::spawn().await;
    let text = query
        .get("/v1/courses/EMPTY/feedback.csv")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, "\u{FEFF}feedback_id,rating,comment,submitted_at\r\n");
    query.shutdown().await;
}

/// The router alone: the parameters are refused before any store is read.
#[tokio::test]
async fn bad_limits_and_cursors_are_refused_in_the_contract_format() {
    let query = feedback_tests::query::router().await;
    for (path, status, code, field) in [
        (
            "/v1/courses/C/feedback?limit=0",
            422,
            "invalid_value",
            "limit",
        ),
        (
            "/v1/courses/C/feedback?limit=201",
            422,
            "invalid_value",
            "limit",
        ),
        (
            "/v1/courses/C/feedback?limit=many",
            400,
            "invalid_type",
            "limit",
        ),
        (
            "/v1/courses/C/feedback?cursor=bm90LWEtY3Vyc29y",
            400,
            "invalid_cursor",
            "cursor",
        ),
        (
            "/v1/courses/C/feedback?cursor=%FF%FE",
            400,
            "invalid_cursor",
            "cursor",
        ),
        (
            "/v1/courses/%E8%AF%BE/feedback",
            422,
            "invalid_value",
            "course_id",
        ),
        (
            "/v1/courses/%E8%AF%BE/feedback.csv",
            422,
            "invalid_value",
            "course_id",
        ),
    ] {
        let response = query.get_as(path, Some(&admin())).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        let error = error_of(response).await;
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some(code), Some(field)),
            "{path}"
        );
    }
}

#[tokio::test]
async fn migrating_a_database_of_an_earlier_version_drops_the_indexes_and_columns_it_no_longer_keeps(
) {
    let url = feedback_tests::fresh_mysql_database().await.unwrap();
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await.unwrap();
    // current_responses and course_stats as earlier versions created them.
    conn.query_drop(
        "CREATE TABLE current_responses (
            course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
            student_key CHAR(64) COLLATE utf8mb4_bin NOT NULL,
            feedback_id CHAR(26) COLLATE utf8mb4_bin NOT NULL,
            rating TINYINT UNSIGNED NOT NULL,
            comment TEXT NULL,
            submitted_at DATETIME(6) NOT NULL,
            PRIMARY KEY (course_id, student_key),
            INDEX idx_current_course_submitted (course_id, submitted_at, feedback_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    )
    .await
    .unwrap();
    conn.query_drop(
        "CREATE TABLE course_stats (
            course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
            responses BIGINT NOT NULL DEFAULT 0,
            rating_sum BIGINT NOT NULL DEFAULT 0,
            rating_1 BIGINT NOT NULL DEFAULT 0,
            rating_2 BIGINT NOT NULL DEFAULT 0,
            rating_3 BIGINT NOT NULL DEFAULT 0,
            rating_4 BIGINT NOT NULL DEFAULT 0,
            rating_5 BIGINT NOT NULL DEFAULT 0,
            version BIGINT NOT NULL DEFAULT 0,
            updated_at DATETIME(6) NOT NULL,
            PRIMARY KEY (course_id),
            INDEX idx_stats_responses (responses),
            INDEX idx_stats_updated (updated_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    )
    .await
    .unwrap();
    conn.query_drop(
        "INSERT INTO current_responses VALUES
           ('OLD1', REPEAT('a', 64), '01JC0000000000000000000000', 4, 'kept', '2026-11-01 10:00:00')",
    )
    .await
    .unwrap();
    const INDEXES: &str = "SELECT DISTINCT CONCAT(table_name, '.', index_name)
        FROM information_schema.statistics
        WHERE table_schema = DATABASE() AND table_name IN ('current_responses', 'course_stats')";
    let indexes =
        |names: &[&str]| -> HashSet<String> { names.iter().map(|n| n.to_string()).collect() };
    const COLUMNS: &str = "SELECT column_name FROM information_schema.columns
        WHERE table_schema = DATABASE() AND table_name = 'current_responses' ORDER BY ordinal_position";
    let columns: Vec<String> = conn.query(COLUMNS).await.unwrap();
    assert!(columns.iter().any(|c| c == "comment"), "{columns:?}");
    let found: HashSet<String> = conn.query(INDEXES).await.unwrap().into_iter().collect();
    assert_eq!(
        found,
        indexes(&[
            "current_responses.PRIMARY",
            "current_responses.idx_current_course_submitted",
            "course_stats.PRIMARY",
            "course_stats.idx_stats_responses",
            "course_stats.idx_stats_updated",
        ])
    );

    // Twice: the second run finds nothing to do. Concurrently too, as the
    // aggregator and query both migrate at start.
    let (a, b) = tokio::join!(shared::mysql::migrate(&url), shared::mysql::migrate(&url));
    a.unwrap();
    b.unwrap();
    shared::mysql::migrate(&url).await.unwrap();
    let found: HashSet<String> = conn.query(INDEXES).await.unwrap().into_iter().collect();
    assert_eq!(
        found,
        indexes(&["current_responses.PRIMARY", "course_stats.PRIMARY",])
    );
    // The history keeps the comments; the current rows no longer copy them.
    let columns: Vec<String> = conn.query(COLUMNS).await.unwrap();
    assert_eq!(
        columns,
        [
            "course_id",
            "student_key",
            "feedback_id",
            "rating",
            "submitted_at"
        ]
    );
    let kept: Vec<(String, u8)> = conn
        .query("SELECT course_id, rating FROM current_responses")
        .await
        .unwrap();
    assert_eq!(kept, [("OLD1".to_owned(), 4)], "the rows stay");
    drop(conn);
    pool.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_client_that_stops_reading_gets_a_cut_download_not_a_short_file() {
    let (mysql_url, redis_url) = fresh_stores().await;
    let mut settings = config(&mysql_url, &redis_url);
    settings.export_stall = Duration::from_secs(1);
    let query = TestQuery::spawn_with(settings).await;
    // About 120 MB of CSV: more than the socket and the export's queue hold,
    // so the export waits on the client.
    let comment = "很".repeat(2000);
    let rows: Vec<Response> = (0..20_000)
        .map(|i| {
            let at = format!(
                "2026-11-01 {:02}:{:02}:{:02}",
                i / 3600,
                (i / 60) % 60,
                i % 60
            );
            Response::new(&format!("s{i}"), 3, Some(&comment), &at)
        })
        .collect();
    query.seed().responses("HUGE", &rows).await;

    let mut response = query.get("/v1/courses/HUGE/feedback.csv").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = response.chunk().await.unwrap().unwrap().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ending = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break "the body ended as if whole",
            Err(_) => break "cut",
        }
    };
    assert_eq!(ending, "cut", "after {received} bytes of about 121 MB");
    assert!(received < 121_000_000, "{received} bytes");
    query.shutdown().await;
}
