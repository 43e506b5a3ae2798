//! Trend buckets against the real MariaDB: per day and per ISO week, in UTC.

use feedback_tests::error_of;
use feedback_tests::query::{Response, TestQuery};
use serde_json::{json, Value};

async fn seeded() -> TestQuery {
    let query = TestQuery::spawn().await;
    let rows = [
        ("a", 5, "2026-11-01 23:59:59.999999"), // Sunday: week of 10-26
        ("b", 5, "2026-11-02 08:00:00"),        // Monday
        ("c", 3, "2026-11-02 23:59:59.999999"),
        ("d", 4, "2026-11-04 00:00:00"), // Wednesday
        ("e", 2, "2026-11-08 12:00:00"), // Sunday
        ("f", 1, "2026-11-09 00:00:00"), // Monday: the next week
        ("g", 5, "2026-11-16 00:00:00"), // outside the ranges below
    ];
    let rows: Vec<Response> = rows
        .iter()
        .map(|(s, r, at)| Response::new(s, *r, None, at))
        .collect();
    query.seed().responses("TREND", &rows).await;
    query
        .seed()
        .responses(
            "OTHER",
            &[Response::new("z", 1, None, "2026-11-02 09:00:00")],
        )
        .await;
    query
}

fn point(start: &str, count: i64, average: Option<f64>) -> Value {
    json!({"start": start, "count": count, "average": average})
}

#[tokio::test]
async fn daily_buckets_count_and_average_each_utc_day_and_list_empty_days() {
    let query = seeded().await;
    let trend = query
        .json("/v1/courses/TREND/trend?bucket=day&from=2026-11-01&to=2026-11-09")
        .await;
    assert_eq!(trend["course_id"], "TREND");
    assert_eq!(trend["bucket"], "day");
    assert_eq!(
        (trend["from"].as_str(), trend["to"].as_str()),
        (Some("2026-11-01"), Some("2026-11-09"))
    );
    assert_eq!(
        trend["points"],
        json!([
            point("2026-11-01", 1, Some(5.0)),
            point("2026-11-02", 2, Some(4.0)),
            point("2026-11-03", 0, None),
            point("2026-11-04", 1, Some(4.0)),
            point("2026-11-05", 0, None),
            point("2026-11-06", 0, None),
            point("2026-11-07", 0, None),
            point("2026-11-08", 1, Some(2.0)),
            point("2026-11-09", 1, Some(1.0)),
        ])
    );
    query.shutdown().await;
}

#[tokio::test]
async fn weekly_buckets_start_on_monday() {
    let query = seeded().await;
    let trend = query
        .json("/v1/courses/TREND/trend?bucket=week&from=2026-11-02&to=2026-11-15")
        .await;
    assert_eq!(trend["bucket"], "week");
    assert_eq!(
        trend["points"],
        json!([
            point("2026-11-02", 4, Some(3.5)),
            point("2026-11-09", 1, Some(1.0))
        ])
    );
    // A range starting mid-week: the bucket is labelled by its Monday, counting only days in range.
    let trend = query
        .json("/v1/courses/TREND/trend?bucket=week&from=2026-11-01&to=2026-11-03")
        .await;
    assert_eq!(
        trend["points"],
        json!([
            point("2026-10-26", 1, Some(5.0)),
            point("2026-11-02", 2, Some(4.0))
        ])
    );
    query.shutdown().await;
}

#[tokio::test]
async fn the_default_is_the_last_30_days_by_day() {
    let query = seeded().await;
    let mut trend = query.json("/v1/courses/TREND/trend").await;
    let mut today = time::OffsetDateTime::now_utc().date();
    if trend["to"] != today.to_string() {
        // Midnight UTC passed between the request and the clock reading: ask again.
        trend = query.json("/v1/courses/TREND/trend").await;
        today = time::OffsetDateTime::now_utc().date();
    }
    assert_eq!(trend["bucket"], "day");
    assert_eq!(trend["to"], today.to_string());
    assert_eq!(
        trend["from"],
        (today - time::Duration::days(29)).to_string()
    );
    let points = trend["points"].as_array().unwrap();
    assert_eq!(points.len(), 30);
    assert_eq!(points[29]["start"], today.to_string());
    query.shutdown().await;
}

#[tokio::test]
async fn bad_buckets_dates_and_ranges_are_422_naming_the_field() {
    let query = seeded().await;
    for (params, field) in [
        ("bucket=month", "bucket"),
        ("from=2026-02-30", "from"),
        ("to=11/09/2026", "to"),
        ("from=2026-11-10&to=2026-11-09", "from"),
        ("from=2024-01-01&to=2026-11-09", "from"),
        // Past MySQL's DATETIME range (this one used to drop the connection).
        ("to=9999-12-31", "to"),
        ("from=0999-12-31&to=1000-01-02", "from"),
    ] {
        let response = query
            .get(&format!("/v1/courses/TREND/trend?{params}"))
            .await;
        assert_eq!(response.status().as_u16(), 422, "{params}");
        let error = error_of(response).await;
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some("invalid_value"), Some(field)),
            "{params}"
        );
    }
    // The last days allowed: MySQL is asked up to 9999-12-31 00:00.
    let last = query
        .json("/v1/courses/TREND/trend?bucket=week&from=9999-12-20&to=9999-12-30")
        .await;
    assert_eq!(last["points"].as_array().map(Vec::len), Some(2), "{last}");
    query.shutdown().await;
}
