//! The catalog against the real MariaDB: entries put one at a time and
//! imported by CSV (all or nothing), the public list, instructors reading
//! only their courses, the anonymity threshold on every read path, and the
//! statistics the catalog completes (title, enrolment, response rate,
//! median, spread), also on a second replica.

use std::time::Duration;

use feedback_tests::query::{admin, config, fresh_stores, Response, TestQuery};
use feedback_tests::{error_of, eventually, token};
use mysql_async::prelude::Queryable;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::auth::Role;

const HEADER: &str = "course_id,title,term,enrolled,instructors\n";

fn instructor(sub: &str) -> String {
    token(sub, Role::Instructor)
}

async fn put(query: &TestQuery, course: &str, body: &Value) -> reqwest::Response {
    query
        .client
        .put(format!("{}/v1/courses/{course}", query.url))
        .bearer_auth(admin())
        .json(body)
        .send()
        .await
        .expect("query answers")
}

async fn put_ok(query: &TestQuery, course: &str, body: Value) -> Value {
    let response = put(query, course, &body).await;
    assert_eq!(response.status(), StatusCode::OK, "PUT {course}");
    response.json().await.expect("a JSON entry")
}

async fn import(query: &TestQuery, csv: &str) -> reqwest::Response {
    query
        .client
        .post(format!("{}/v1/catalog", query.url))
        .bearer_auth(admin())
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .expect("query answers")
}

async fn public_catalog(query: &TestQuery) -> Value {
    let response = query.get_as("/v1/catalog", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// GET `path` as `token`, expecting 200 and JSON.
async fn json_as(query: &TestQuery, path: &str, token: &str) -> Value {
    let response = query.get_as(path, Some(token)).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `n` current responses of `course`, its stats row to match.
async fn seed_course(query: &TestQuery, course: &str, distribution: [i64; 5]) {
    let seed = query.seed();
    seed.stats(course, distribution, 1).await;
    let mut rows = Vec::new();
    for (rating, count) in (1u8..).zip(distribution) {
        for i in 0..count {
            let at = format!("2026-11-0{rating} 10:00:0{}", i % 10);
            let student = format!("{course}-{rating}-{i}");
            rows.push(Response::new(&student, rating, Some("fine"), &at));
        }
    }
    seed.responses(course, &rows).await;
}

#[tokio::test]
async fn an_admin_puts_a_course_and_the_public_catalog_lists_it_without_enrolment() {
    let query = TestQuery::spawn().await;
    let entry = put_ok(
        &query,
        "CS101",
        json!({"title": "数据结构", "term": "2026F", "enrolled": 40, "instructors": ["wang", "li", "li"]}),
    )
    .await;
    assert_eq!(entry["course_id"], "CS101");
    assert_eq!(entry["title"], "数据结构");
    assert_eq!(entry["enrolled"], 40);
    assert_eq!(entry["instructors"], json!(["li", "wang"]));
    let first_at = entry["updated_at"].as_str().unwrap().to_owned();
    put_ok(&query, "AA1", json!({"title": "First"})).await;

    assert_eq!(
        public_catalog(&query).await,
        json!({"courses": [
            {"course_id": "AA1", "title": "First", "term": null},
            {"course_id": "CS101", "title": "数据结构", "term": "2026F"},
        ]})
    );

    // A second PUT replaces the entry whole, instructors as a set, and moves `updated_at`.
    let again = put_ok(
        &query,
        "CS101",
        json!({"title": "DS", "instructors": ["zhao"]}),
    )
    .await;
    assert!(again["updated_at"].as_str().unwrap() > first_at.as_str());
    let mut conn = mysql_async::Conn::from_url(&query.mysql_url).await.unwrap();
    let subs: Vec<String> = conn
        .query("SELECT sub FROM course_instructors WHERE course_id = 'CS101'")
        .await
        .unwrap();
    assert_eq!(subs, ["zhao"]);
    let row: Option<(String, Option<String>, Option<u32>)> = conn
        .query_first("SELECT title, term, enrolled FROM courses WHERE course_id = 'CS101'")
        .await
        .unwrap();
    assert_eq!(row, Some(("DS".into(), None, None)));

    // Refusals, each in the contract's format.
    for (course, body, status, code) in [
        (
            ".x",
            json!({"title": "T"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
        ),
        (
            "CS1",
            json!({"title": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
        ),
        (
            "CS1",
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
        ),
        (
            "CS1",
            json!({"title": "T", "enrolled": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
        ),
        (
            "CS1",
            json!({"title": 3}),
            StatusCode::BAD_REQUEST,
            "invalid_type",
        ),
    ] {
        let response = put(&query, course, &body).await;
        assert_eq!(response.status(), status, "{course} {body}");
        assert_eq!(error_of(response).await["code"], code, "{course} {body}");
    }
    let as_instructor = query
        .client
        .put(format!("{}/v1/courses/CS1", query.url))
        .bearer_auth(instructor("li"))
        .json(&json!({"title": "T"}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_instructor.status(), StatusCode::FORBIDDEN);
    let not_json = query
        .client
        .put(format!("{}/v1/courses/CS1", query.url))
        .bearer_auth(admin())
        .body(r#"{"title": "T"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    query.shutdown().await;
}

#[tokio::test]
async fn a_csv_import_with_a_bad_row_at_line_3_is_422_naming_it_and_applies_nothing() {
    let query = TestQuery::spawn().await;
    put_ok(
        &query,
        "KEEP",
        json!({"title": "Kept", "instructors": ["li"]}),
    )
    .await;

    let bad = format!("{HEADER}NEW1,One,2026F,30,li\nKEEP,Changed,,many,\nNEW2,Two,,,\n");
    let response = import(&query, &bad).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error = error_of(response).await;
    assert!(
        error["message"].as_str().unwrap().contains("line 3"),
        "{error}"
    );
    assert_eq!(
        public_catalog(&query).await,
        json!({"courses": [{"course_id": "KEEP", "title": "Kept", "term": null}]}),
        "nothing applied"
    );

    let good = format!(
        "\u{FEFF}{HEADER}NEW1,One,2026F,30,li; wang\r\nKEEP,\"Kept, renamed\",,,\r\nNEW2,Two,,,\r\n"
    );
    let response = import(&query, &good).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"upserted": 3})
    );
    let courses = public_catalog(&query).await["courses"].clone();
    let ids: Vec<&str> = courses
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["course_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["KEEP", "NEW1", "NEW2"]);
    assert_eq!(courses[0]["title"], "Kept, renamed");
    // KEEP's row named no instructor: li no longer teaches it, but NEW1.
    let li = instructor("li");
    let list = json_as(&query, "/v1/courses", &li).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["items"][0]["course_id"], "NEW1");

    let wrong_type = query
        .client
        .post(format!("{}/v1/catalog", query.url))
        .bearer_auth(admin())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!("{HEADER}{}", "X,".repeat(600_000));
    let too_large = import(&query, &huge).await;
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(too_large).await["code"], "payload_too_large");
    query.shutdown().await;
}

#[tokio::test]
async fn an_instructor_reads_only_the_courses_the_catalog_lists_them_for() {
    let query = TestQuery::spawn().await;
    seed_course(&query, "CS101", [0, 1, 2, 2, 1]).await;
    seed_course(&query, "CS102", [0, 0, 3, 3, 0]).await;
    put_ok(
        &query,
        "CS101",
        json!({"title": "Intro", "instructors": ["li"]}),
    )
    .await;
    put_ok(
        &query,
        "CS103",
        json!({"title": "New", "instructors": ["li"]}),
    )
    .await;
    put_ok(
        &query,
        "CS102",
        json!({"title": "Other", "instructors": ["wang"]}),
    )
    .await;
    let li = instructor("li");

    for path in [
        "/v1/courses/CS101/stats",
        "/v1/courses/CS101/feedback",
        "/v1/courses/CS101/feedback.csv",
        "/v1/courses/CS101/trend?from=2026-11-01&to=2026-11-30",
    ] {
        let response = query.get_as(path, Some(&li)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let other = path.replace("CS101", "CS102");
        let response = query.get_as(&other, Some(&li)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{other}");
        assert_eq!(
            error_of(response).await["code"],
            "not_your_course",
            "{other}"
        );
    }
    let stats = json_as(&query, "/v1/courses/CS101/stats", &li).await;
    assert_eq!(
        (stats["withheld"].clone(), stats["responses"].clone()),
        (json!(false), json!(6))
    );
    let feedback = json_as(&query, "/v1/courses/CS101/feedback", &li).await;
    assert_eq!(feedback["items"].as_array().unwrap().len(), 6);

    // Theirs only, the one nobody rated yet with zeros.
    let list = json_as(&query, "/v1/courses", &li).await;
    let items: Vec<(String, i64)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["course_id"].as_str().unwrap().to_owned(),
                c["responses"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(items, [("CS101".to_owned(), 6), ("CS103".to_owned(), 0)]);
    assert_eq!(list["items"][0]["title"], "Intro");
    let admin_list = query.json("/v1/courses").await;
    assert_eq!(
        admin_list["items"].as_array().unwrap().len(),
        2,
        "courses with stats"
    );

    // Someone the catalog never names owns nothing.
    let nobody = instructor("zhao");
    assert_eq!(
        json_as(&query, "/v1/courses", &nobody).await,
        json!({"items": []})
    );
    let response = query.get_as("/v1/courses/CS101/stats", Some(&nobody)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    query.shutdown().await;
}

#[tokio::test]
async fn below_the_threshold_an_instructor_gets_withheld_on_every_path_and_an_admin_never() {
    let query = TestQuery::spawn().await;
    seed_course(&query, "SMALL", [0, 0, 1, 2, 1]).await;
    seed_course(&query, "FIVE", [1, 0, 1, 2, 1]).await;
    for course in ["SMALL", "FIVE"] {
        put_ok(
            &query,
            course,
            json!({"title": course, "enrolled": 20, "instructors": ["li"]}),
        )
        .await;
    }
    let li = instructor("li");

    let stats = json_as(&query, "/v1/courses/SMALL/stats", &li).await;
    assert_eq!(stats["withheld"], true);
    assert_eq!(stats["responses"], 4);
    assert_eq!(stats["enrolled"], 20);
    assert_eq!(stats["title"], "SMALL");
    for field in [
        "rating_sum",
        "average",
        "median",
        "stddev",
        "distribution",
        "response_rate",
    ] {
        assert_eq!(stats[field], Value::Null, "{field}: {stats}");
    }
    let page = json_as(&query, "/v1/courses/SMALL/feedback?limit=1", &li).await;
    assert_eq!(
        page,
        json!({"items": [], "next_cursor": null, "withheld": true})
    );
    let csv = query
        .get_as("/v1/courses/SMALL/feedback.csv", Some(&li))
        .await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(
        csv.text().await.unwrap(),
        "\u{FEFF}feedback_id,rating,comment,submitted_at\r\n"
    );
    let trend = json_as(
        &query,
        "/v1/courses/SMALL/trend?from=2026-11-01&to=2026-11-30",
        &li,
    )
    .await;
    assert_eq!(trend["points"], json!([]));
    assert_eq!(trend["withheld"], true);
    let list = json_as(&query, "/v1/courses", &li).await;
    let small = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["course_id"] == "SMALL")
        .unwrap()
        .clone();
    assert_eq!(
        (small["average"].clone(), small["withheld"].clone()),
        (Value::Null, json!(true))
    );

    // At the threshold, shown.
    let five = json_as(&query, "/v1/courses/FIVE/stats", &li).await;
    assert_eq!(five["withheld"], false);
    assert_eq!(five["rating_sum"], 17);
    let page = json_as(&query, "/v1/courses/FIVE/feedback", &li).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);

    // An admin: never withheld.
    let stats = query.stats_of("SMALL").await;
    assert_eq!(stats["withheld"], false);
    assert_eq!(stats["rating_sum"], 16);
    assert_eq!(stats["response_rate"], 0.2);
    let page = query.json("/v1/courses/SMALL/feedback").await;
    assert_eq!(
        (
            page["items"].as_array().unwrap().len(),
            page["withheld"].clone()
        ),
        (4, json!(false))
    );
    let trend = query
        .json("/v1/courses/SMALL/trend?from=2026-11-01&to=2026-11-30")
        .await;
    assert_eq!(
        (
            trend["points"].as_array().unwrap().len(),
            trend["withheld"].clone()
        ),
        (30, json!(false))
    );
    let csv = query
        .get("/v1/courses/SMALL/feedback.csv")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 5);
    query.shutdown().await;
}

#[tokio::test]
async fn median_stddev_and_response_rate_are_exact_for_a_known_distribution() {
    let query = TestQuery::spawn().await;
    // Even: ratings 1, 2, 3, 4.
    query.seed().stats("EVEN", [1, 1, 1, 1, 0], 1).await;
    // Odd: 1, 1, 3, 5, 5.
    query.seed().stats("ODD", [2, 0, 1, 0, 2], 1).await;
    put_ok(&query, "EVEN", json!({"title": "Even", "enrolled": 8})).await;
    put_ok(&query, "ODD", json!({"title": "Odd", "enrolled": 0})).await;

    let even = query.stats_of("EVEN").await;
    assert_eq!(even["median"], 2.5);
    assert_eq!(even["stddev"].as_f64().unwrap(), 1.25f64.sqrt());
    assert_eq!(even["response_rate"], 0.5);
    assert_eq!(even["enrolled"], 8);
    let odd = query.stats_of("ODD").await;
    assert_eq!(odd["median"], 3.0);
    // Mean 3; squared deviations 4+4+0+4+4 = 16 over 5.
    assert_eq!(odd["stddev"].as_f64().unwrap(), 3.2f64.sqrt());
    assert_eq!(odd["response_rate"], Value::Null, "enrolled 0");
    // The second read is the cache's, with the same figures.
    let again = query.stats_of("EVEN").await;
    assert_eq!(again["source"], "cache");
    assert_eq!(
        (again["median"].clone(), again["stddev"].clone()),
        (even["median"].clone(), even["stddev"].clone())
    );
    let unknown = query.stats_of("NOWHERE").await;
    for field in ["title", "median", "stddev", "enrolled", "response_rate"] {
        assert_eq!(unknown[field], Value::Null, "{field}");
    }
    query.shutdown().await;
}

#[tokio::test]
async fn a_put_on_one_replica_shows_on_another_within_a_few_seconds() {
    let (mysql_url, redis_url) = fresh_stores().await;
    let first = TestQuery::spawn_with(config(&mysql_url, &redis_url)).await;
    let second = TestQuery::spawn_with(config(&mysql_url, &redis_url)).await;
    first.seed().stats("CS101", [0, 0, 2, 2, 2], 1).await;
    let li = instructor("li");
    let before = second.stats_of("CS101").await;
    assert_eq!(
        (before["title"].clone(), before["enrolled"].clone()),
        (Value::Null, Value::Null)
    );
    let response = second.get_as("/v1/courses/CS101/stats", Some(&li)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    put_ok(
        &first,
        "CS101",
        json!({"title": "Intro", "enrolled": 12, "instructors": ["li"]}),
    )
    .await;
    let started = std::time::Instant::now();
    let stats = second
        .stats_when(
            "CS101",
            Duration::from_secs(5),
            "the title on the second replica",
            |s| s["title"] == "Intro",
        )
        .await
        .unwrap();
    assert_eq!(
        (stats["enrolled"].clone(), stats["response_rate"].clone()),
        (json!(12), json!(0.5))
    );
    eventually(
        Duration::from_secs(5),
        "li's course on the second replica",
        || async {
            let response = second.get_as("/v1/courses/CS101/stats", Some(&li)).await;
            Ok((response.status() == StatusCode::OK).then_some(()))
        },
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    first.shutdown().await;
    second.shutdown().await;
}
