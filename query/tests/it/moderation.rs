//! Moderation against the real MariaDB, on seeded rows: hidden comments
//! leave the listing and its pages stay exact, the queue and the log page
//! newest first, and every refusal is the contract's.

use std::time::Duration;

use feedback_tests::error_of;
use feedback_tests::query::{admin, Response, TestQuery};
use feedback_tests::token;
use mysql_async::prelude::Queryable;
use reqwest::StatusCode;
use serde_json::Value;
use shared::auth::Role;

/// `n` responses of `course`, one a minute, the newest last.
fn responses(n: usize, prefix: &str) -> Vec<Response> {
    (0..n)
        .map(|i| {
            Response::new(
                &format!("{prefix}-{i}"),
                1 + (i % 5) as u8,
                Some(&format!("{prefix} comment {i}")),
                &format!("2026-11-02 10:{i:02}:00.500000"),
            )
        })
        .collect()
}

/// POSTs `path` with `token`.
async fn post(query: &TestQuery, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = query.client.post(format!("{}{path}", query.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("query answers")
}

/// Every page of `path` (which has a `?`), `limit` at a time: each page's
/// items, and whether each page but the last had a cursor.
async fn every_page(query: &TestQuery, path: &str, limit: u32) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            None => format!("{path}&limit={limit}"),
            Some(c) => format!("{path}&limit={limit}&cursor={c}"),
        };
        let page = query.json(&url).await;
        pages.push(page["items"].as_array().unwrap().clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging does not end");
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["feedback_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn hidden_comments_leave_the_listing_and_csv_with_pages_still_exact() {
    let query = TestQuery::spawn().await;
    let rows = responses(7, "hide");
    query.seed().responses("HIDE1", &rows).await;
    let newest_first: Vec<String> = rows.iter().rev().map(|r| r.feedback_id.clone()).collect();
    let hidden = [&newest_first[1], &newest_first[2], &newest_first[5]];
    for id in hidden {
        let response = post(&query, &format!("/v1/feedback/{id}/hide"), Some(&admin())).await;
        assert_eq!(response.status(), StatusCode::OK);
        let state: Value = response.json().await.unwrap();
        assert_eq!(state["hidden"], true, "{state}");
        assert_eq!(state["flagged"], false, "{state}");
        assert_eq!(state["course_id"], "HIDE1", "{state}");
    }
    let visible: Vec<String> = newest_first
        .iter()
        .filter(|id| !hidden.contains(id))
        .cloned()
        .collect();

    // Pages of two hold two visible items each, none repeated or missed.
    let pages = every_page(&query, "/v1/courses/HIDE1/feedback?x=", 2).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2], "{pages:?}");
    let listed: Vec<String> = pages.iter().flat_map(|p| ids(p)).collect();
    assert_eq!(listed, visible);
    for item in pages.iter().flatten() {
        assert_eq!(item["flagged"], false, "{item}");
        assert!(item.get("hidden").is_none(), "{item}");
    }

    // An admin asking for them sees all seven, the hidden ones marked.
    let all = every_page(&query, "/v1/courses/HIDE1/feedback?include_hidden=true", 3).await;
    let all: Vec<Value> = all.into_iter().flatten().collect();
    assert_eq!(ids(&all), newest_first);
    for item in &all {
        let id = item["feedback_id"].as_str().unwrap().to_owned();
        let marked = item.get("hidden") == Some(&Value::Bool(true));
        assert_eq!(marked, hidden.contains(&&id), "{item}");
    }

    let csv = query
        .get("/v1/courses/HIDE1/feedback.csv")
        .await
        .text()
        .await
        .unwrap();
    for id in &newest_first {
        assert_eq!(
            csv.contains(id.as_str()),
            visible.contains(id),
            "{id}: {csv}"
        );
    }

    // Unhidden, it is listed again, at its place.
    let response = post(
        &query,
        &format!("/v1/feedback/{}/unhide", newest_first[2]),
        Some(&admin()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = query.json("/v1/courses/HIDE1/feedback?limit=3").await;
    assert_eq!(
        ids(page["items"].as_array().unwrap()),
        [0, 2, 3].map(|i| newest_first[i].clone())
    );
    query.shutdown().await;
}

#[tokio::test]
async fn the_queue_lists_flagged_current_comments_not_yet_reviewed_newest_first_in_pages() {
    let query = TestQuery::spawn().await;
    let rows = responses(5, "queue");
    query.seed().responses("QUEUE1", &rows).await;
    // A flagged submission its student replaced: no longer shown anywhere.
    let superseded = Response {
        feedback_id: ulid::Ulid::new().to_string(),
        submitted_at: "2026-11-01 09:00:00".into(),
        ..rows[0].clone()
    };
    query
        .seed()
        .history("QUEUE1", std::slice::from_ref(&superseded))
        .await;
    let mut conn = query.seed().pool.get_conn().await.unwrap();
    for r in rows.iter().chain([&superseded]) {
        conn.exec_drop(
            "INSERT INTO comment_moderation (feedback_id, course_id, submitted_at, flagged, hidden, updated_at)
             VALUES (?, 'QUEUE1', ?, 1, 0, NOW(6))",
            (&r.feedback_id, &r.submitted_at),
        )
        .await
        .unwrap();
    }
    let newest_first: Vec<String> = rows.iter().rev().map(|r| r.feedback_id.clone()).collect();

    let pages = every_page(&query, "/v1/moderation?x=", 2).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1], "{pages:?}");
    let queued: Vec<Value> = pages.into_iter().flatten().collect();
    assert_eq!(ids(&queued), newest_first);
    assert_eq!(queued[0]["course_id"], "QUEUE1");
    assert_eq!(queued[0]["comment"], "queue comment 4");
    assert_eq!(queued[0]["submitted_at"], "2026-11-02T10:04:00.500000Z");
    // The listing says which comments are flagged.
    let page = query.json("/v1/courses/QUEUE1/feedback").await;
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["flagged"] == true));

    // Either action marks it reviewed: it leaves the queue.
    for (action, id) in [("hide", &newest_first[0]), ("unhide", &newest_first[3])] {
        let response = post(
            &query,
            &format!("/v1/feedback/{id}/{action}"),
            Some(&admin()),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{action}");
        let state: Value = response.json().await.unwrap();
        assert_eq!(state["flagged"], true, "{state}");
        assert!(state["reviewed_at"].is_string(), "{state}");
    }
    let queued = query.json("/v1/moderation").await;
    assert_eq!(
        ids(queued["items"].as_array().unwrap()),
        [1, 2, 4].map(|i| newest_first[i].clone())
    );

    // The queue's plan: the queue index, newest first, without a sort.
    conn.query_drop("ANALYZE TABLE comment_moderation")
        .await
        .unwrap();
    let plan: Vec<mysql_async::Row> = conn
        .exec(
            format!("EXPLAIN {}", ::query::moderation::queue_sql(true)),
            (
                "2026-11-02 10:00:00",
                "2026-11-02 10:00:00",
                "01JC0000000000000000000000",
                51,
            ),
        )
        .await
        .unwrap();
    let key: Option<String> = plan[0].get("key");
    let extra: Option<String> = plan[0].get("Extra");
    assert_eq!(key.as_deref(), Some("idx_moderation_queue"), "{plan:?}");
    assert!(!extra.unwrap_or_default().contains("filesort"), "{plan:?}");
    query.shutdown().await;
}

#[tokio::test]
async fn the_log_lists_every_action_with_its_admin_newest_first_in_pages() {
    let query = TestQuery::spawn().await;
    let rows = responses(2, "log");
    query.seed().responses("LOG1", &rows).await;
    let (a, b) = (&rows[0].feedback_id, &rows[1].feedback_id);
    let steps = [
        ("alice", a, "hide"),
        ("bob", b, "hide"),
        ("alice", a, "unhide"),
        ("bob", a, "hide"),
        ("carol", a, "hide"),
    ];
    for (sub, id, action) in steps {
        let admin = token(sub, Role::Admin);
        let response = post(&query, &format!("/v1/feedback/{id}/{action}"), Some(&admin)).await;
        assert_eq!(response.status(), StatusCode::OK, "{sub} {action}");
    }
    let pages = every_page(&query, "/v1/moderation/log?x=", 2).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1], "{pages:?}");
    let logged: Vec<(String, String, String)> = pages
        .iter()
        .flatten()
        .map(|i| {
            assert!(i["at"].as_str().unwrap().ends_with('Z'), "{i}");
            (
                i["sub"].as_str().unwrap().to_owned(),
                i["feedback_id"].as_str().unwrap().to_owned(),
                i["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = steps
        .iter()
        .rev()
        .map(|(sub, id, action)| (sub.to_string(), id.to_string(), action.to_string()))
        .collect();
    assert_eq!(logged, expected);
    // The state follows the last action: both hidden (one of them twice over).
    let page = query.json("/v1/courses/LOG1/feedback").await;
    assert_eq!(page["items"], serde_json::json!([]), "{page}");
    query.shutdown().await;
}

#[tokio::test]
async fn moderation_refuses_other_roles_unknown_ids_and_foreign_cursors() {
    let query = TestQuery::spawn().await;
    let rows = responses(1, "refuse");
    query.seed().responses("REFUSE1", &rows).await;
    let id = &rows[0].feedback_id;
    let instructor = token("prof", Role::Instructor);
    let student = token("stu", Role::Student);

    // Not an admin: 403; no token: 401. Nothing changed or logged.
    for who in [&instructor, &student] {
        for path in ["/v1/moderation", "/v1/moderation/log"] {
            let response = query.get_as(path, Some(who)).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
            assert_eq!(error_of(response).await["code"], "forbidden");
        }
        for action in ["hide", "unhide"] {
            let response = post(&query, &format!("/v1/feedback/{id}/{action}"), Some(who)).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{action}");
        }
    }
    let response = post(&query, &format!("/v1/feedback/{id}/hide"), None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = query.get_as("/v1/moderation", None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let log = query.json("/v1/moderation/log").await;
    assert_eq!(log["items"], serde_json::json!([]));

    // An id no event has: 404; one that is no id: 422 on the field.
    let response = post(
        &query,
        "/v1/feedback/01KAZ3G6Y5W4N8Q2R7T9V0X1YZ/hide",
        Some(&admin()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error = error_of(response).await;
    assert_eq!(
        (error["code"].as_str(), error["field"].as_str()),
        (Some("not_found"), Some("feedback_id"))
    );
    for bad in ["not-an-id", "01kaz3g6y5w4n8q2r7t9v0x1yz", "%FF"] {
        let response = post(
            &query,
            &format!("/v1/feedback/{bad}/unhide"),
            Some(&admin()),
        )
        .await;
        let status = response.status();
        let error = error_of(response).await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{bad}: {status}"
        );
        assert_eq!(error["field"], "feedback_id", "{bad}: {error}");
    }

    // include_hidden: true or false only, and true is an admin's.
    let response = query
        .get("/v1/courses/REFUSE1/feedback?include_hidden=yes")
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(response).await["field"], "include_hidden");
    // (An instructor's read waits for query's first catalog load: 503 until then.)
    let status = feedback_tests::eventually(Duration::from_secs(10), "the catalog loaded", || {
        let response = query.get_as(
            "/v1/courses/REFUSE1/feedback?include_hidden=true",
            Some(&instructor),
        );
        async move {
            let status = response.await.status();
            Ok((status != StatusCode::SERVICE_UNAVAILABLE).then_some(status))
        }
    })
    .await
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A cursor of another list (a course's page) or made up: 400.
    query
        .seed()
        .responses("REFUSE1", &responses(3, "more"))
        .await;
    let page = query.json("/v1/courses/REFUSE1/feedback?limit=1").await;
    let course_cursor = page["next_cursor"].as_str().unwrap().to_owned();
    for path in ["/v1/moderation", "/v1/moderation/log"] {
        for cursor in [course_cursor.as_str(), "bm90LWlzc3VlZA"] {
            let response = query.get(&format!("{path}?cursor={cursor}")).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
            let error = error_of(response).await;
            assert_eq!(
                (error["code"].as_str(), error["field"].as_str()),
                (Some("invalid_cursor"), Some("cursor"))
            );
        }
    }
    query.shutdown().await;
}
