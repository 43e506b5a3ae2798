//! `GET /v1/courses/{course_id}/trend?bucket=day|week&from=YYYY-MM-DD&to=YYYY-MM-DD`:
//! the count and average of a course's current ratings per day or ISO week
//! (weeks start on Monday), in UTC.
//!
//! `from` and `to` are inclusive days; by default the last 30 days up to
//! today. Every bucket of the range is listed, empty ones with `count: 0`
//! and `average: null`, so a chart needs no gap filling. Only rows whose
//! `submitted_at` lies in the range count, so the first and last week may be
//! partial. Grouping happens in MySQL with portable SQL (MariaDB and MySQL 8.4)
//! over the `(course_id, submitted_at, …)` index range.

use std::collections::HashMap;

use crate::access::Reader;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use mysql_async::prelude::Queryable;
use serde::Serialize;
use shared::http::ApiError;
use time::{Date, Duration, OffsetDateTime};

use crate::params::{CoursePath, Params};
use crate::stats::average;
use crate::AppState;

/// The longest range: a year, leap day included.
pub const MAX_DAYS: i64 = 366;
/// The default range in days, today included.
pub const DEFAULT_DAYS: i64 = 30;
/// The days `from` and `to` may name: MySQL's `DATETIME` starts at
/// 1000-01-01 and ends on 9999-12-31, and a range ends at the midnight after
/// `to`, which must exist (9999-12-31 is also the `time` crate's last day).
pub const FIRST_DAY: Date = time::macros::date!(1000 - 01 - 01);
pub const LAST_DAY: Date = time::macros::date!(9999 - 12 - 30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Day,
    Week,
}

impl Bucket {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        match raw {
            None | Some("day") => Ok(Bucket::Day),
            Some("week") => Ok(Bucket::Week),
            Some(_) => Err(
                ApiError::unprocessable("invalid_value", "bucket must be day or week")
                    .with_field("bucket"),
            ),
        }
    }

    /// SQL for the bucket's first day as `YYYY-MM-DD`.
    fn sql(self) -> &'static str {
        match self {
            Bucket::Day => "DATE_FORMAT(submitted_at, '%Y-%m-%d')",
            Bucket::Week => {
                "DATE_FORMAT(DATE_SUB(DATE(submitted_at), INTERVAL WEEKDAY(submitted_at) DAY), '%Y-%m-%d')"
            }
        }
    }

    /// The first day of the bucket holding `day`.
    fn start_of(self, day: Date) -> Date {
        match self {
            Bucket::Day => day,
            Bucket::Week => {
                day - Duration::days(i64::from(day.weekday().number_days_from_monday()))
            }
        }
    }

    fn step(self) -> Duration {
        match self {
            Bucket::Day => Duration::days(1),
            Bucket::Week => Duration::weeks(1),
        }
    }
}

/// A parsed trend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub bucket: Bucket,
    pub from: Date,
    pub to: Date,
}

impl Range {
    pub fn parse(params: &Params, today: Date) -> Result<Self, ApiError> {
        let bucket = Bucket::parse(params.get("bucket"))?;
        let to = date(params, "to")?.unwrap_or(today);
        let from =
            date(params, "from")?.unwrap_or((to - Duration::days(DEFAULT_DAYS - 1)).max(FIRST_DAY));
        if from > to {
            return Err(
                ApiError::unprocessable("invalid_value", "from must not be after to")
                    .with_field("from"),
            );
        }
        if (to - from).whole_days() >= MAX_DAYS {
            return Err(ApiError::unprocessable(
                "invalid_value",
                format!("the range may span at most {MAX_DAYS} days"),
            )
            .with_field("from"));
        }
        Ok(Self { bucket, from, to })
    }

    /// The first day of every bucket in the range.
    pub fn starts(&self) -> Vec<Date> {
        let mut starts = Vec::new();
        let mut start = self.bucket.start_of(self.from);
        while start <= self.to {
            starts.push(start);
            match start.checked_add(self.bucket.step()) {
                Some(next) => start = next,
                None => break,
            }
        }
        starts
    }
}

fn date(params: &Params, field: &'static str) -> Result<Option<Date>, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    params
        .get(field)
        .map(|raw| {
            Date::parse(raw.trim(), &format)
                .ok()
                .filter(|day| (FIRST_DAY..=LAST_DAY).contains(day))
                .ok_or_else(|| {
                    ApiError::unprocessable(
                        "invalid_value",
                        format!(
                            "{field} must be a date, YYYY-MM-DD, from {FIRST_DAY} to {LAST_DAY}"
                        ),
                    )
                    .with_field(field)
                })
        })
        .transpose()
}

#[derive(Debug, Serialize)]
pub struct Point {
    /// The bucket's first day.
    pub start: String,
    pub count: i64,
    pub average: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct TrendBody {
    pub course_id: String,
    pub bucket: Bucket,
    pub from: String,
    pub to: String,
    /// Empty when withheld.
    pub points: Vec<Point>,
    /// Below the anonymity threshold for this instructor: no buckets.
    pub withheld: bool,
}

pub async fn trend(
    State(state): State<AppState>,
    reader: Reader,
    CoursePath(course): CoursePath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<TrendBody>, ApiError> {
    reader.may_read(course.as_str())?;
    let range = Range::parse(&Params::parse(query)?, OffsetDateTime::now_utc().date())?;
    if reader.withheld(&state, &course).await? {
        return Ok(Json(TrendBody {
            course_id: course.into(),
            bucket: range.bucket,
            from: range.from.to_string(),
            to: range.to.to_string(),
            points: Vec::new(),
            withheld: true,
        }));
    }
    let db = &state.db;
    let sql = format!(
        "SELECT {} AS bucket, COUNT(*), CAST(SUM(rating) AS SIGNED) FROM current_responses
         WHERE course_id = ? AND submitted_at >= ? AND submitted_at < ?
         GROUP BY bucket",
        range.bucket.sql()
    );
    let midnight = |day: Date| shared::mysql::datetime(day.midnight().assume_utc());
    let rows: Vec<(String, i64, i64)> = db
        .within(async {
            let mut conn = db.conn().await?;
            // `to` is at most LAST_DAY, so the day after it exists.
            let until = range.to.next_day().unwrap_or(Date::MAX);
            let bounds = (midnight(range.from), midnight(until));
            Ok(conn
                .exec(sql, (course.as_str(), bounds.0, bounds.1))
                .await?)
        })
        .await?;
    let found: HashMap<String, (i64, i64)> =
        rows.into_iter().map(|(d, n, sum)| (d, (n, sum))).collect();
    let points = range
        .starts()
        .into_iter()
        .map(|start| {
            let start = start.to_string();
            let (count, sum) = found.get(&start).copied().unwrap_or((0, 0));
            Point {
                average: average(sum, count),
                count,
                start,
            }
        })
        .collect();
    Ok(Json(TrendBody {
        course_id: course.into(),
        bucket: range.bucket,
        from: range.from.to_string(),
        to: range.to.to_string(),
        points,
        withheld: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::parse(Ok(Query(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )))
        .unwrap()
    }

    #[test]
    fn the_default_range_is_the_last_30_days_by_day() {
        let range = Range::parse(&params(&[]), date!(2026 - 11 - 30)).unwrap();
        assert_eq!(
            range,
            Range {
                bucket: Bucket::Day,
                from: date!(2026 - 11 - 01),
                to: date!(2026 - 11 - 30)
            }
        );
        assert_eq!(range.starts().len(), 30);
    }

    #[test]
    fn weeks_start_on_monday_and_cover_the_range() {
        // 2026-11-04 is a Wednesday; 2026-11-16 a Monday.
        let p = params(&[
            ("bucket", "week"),
            ("from", "2026-11-04"),
            ("to", "2026-11-16"),
        ]);
        let range = Range::parse(&p, date!(2026 - 12 - 01)).unwrap();
        assert_eq!(
            range.starts(),
            vec![
                date!(2026 - 11 - 02),
                date!(2026 - 11 - 09),
                date!(2026 - 11 - 16)
            ]
        );
    }

    #[test]
    fn bad_buckets_dates_and_ranges_are_422_naming_the_field() {
        let today = date!(2026 - 11 - 30);
        for (pairs, field) in [
            (vec![("bucket", "month")], "bucket"),
            (vec![("from", "2026-13-01")], "from"),
            (vec![("to", "yesterday")], "to"),
            (vec![("from", "2026-11-10"), ("to", "2026-11-09")], "from"),
            (vec![("from", "2025-11-29"), ("to", "2026-11-30")], "from"),
            (vec![("to", "9999-12-31")], "to"),
            (vec![("from", "0999-12-31"), ("to", "1000-01-02")], "from"),
            (vec![("to", "-0001-01-01")], "to"),
        ] {
            let err = Range::parse(&params(&pairs), today).unwrap_err();
            assert_eq!(
                err.status,
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "{pairs:?}"
            );
            assert_eq!(err.field, Some(field), "{pairs:?}");
        }
        let year = params(&[("from", "2025-11-30"), ("to", "2026-11-30")]);
        assert_eq!(Range::parse(&year, today).unwrap().starts().len(), 366);
    }

    #[test]
    fn the_first_and_last_days_allowed_make_ranges_without_overflow() {
        let today = date!(2026 - 11 - 30);
        // 9999-12-27 is a Monday: the next week would start after time's last day.
        let last = params(&[
            ("bucket", "week"),
            ("from", "9999-12-20"),
            ("to", "9999-12-30"),
        ]);
        let range = Range::parse(&last, today).unwrap();
        assert_eq!(
            range.starts(),
            vec![date!(9999 - 12 - 20), date!(9999 - 12 - 27)]
        );
        // The default `from` stops at the first day allowed.
        let first = Range::parse(&params(&[("to", "1000-01-05")]), today).unwrap();
        assert_eq!((first.from, first.starts().len()), (FIRST_DAY, 5));
        let weeks = params(&[
            ("bucket", "week"),
            ("from", "1000-01-01"),
            ("to", "1000-01-01"),
        ]);
        // 1000-01-01 was a Wednesday; its week starts two days before it.
        assert_eq!(
            Range::parse(&weeks, today).unwrap().starts(),
            vec![date!(0999 - 12 - 30)]
        );
    }
}
