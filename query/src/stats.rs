//! `GET /v1/courses/{course_id}/stats`: a course's numbers, from Redis or MySQL
//! (`stats_cache.rs` decides), in the contract's shape. The median and the
//! standard deviation come from the distribution, so they are exact under
//! the counting rule and cost the cache path nothing; the title and the
//! enrolment come from the catalog in memory.

use crate::access::Reader;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use shared::http::ApiError;
use shared::mysql::StatsRow;

use crate::catalog::Course;
use crate::params::CoursePath;
use crate::stats_cache::Source;
use crate::{time_fmt, AppState};

#[derive(Debug, Serialize)]
pub struct StatsBody {
    pub course_id: String,
    /// `null` when the course is not in the catalog.
    pub title: Option<String>,
    pub responses: i64,
    /// This and the figures after it are `null` when withheld.
    pub rating_sum: Option<i64>,
    /// `null` when there are no responses.
    pub average: Option<f64>,
    pub median: Option<f64>,
    /// Population standard deviation.
    pub stddev: Option<f64>,
    pub distribution: Option<Distribution>,
    /// `null` when unknown.
    pub enrolled: Option<u32>,
    /// `responses / enrolled`; `null` when enrolment is unknown or 0.
    pub response_rate: Option<f64>,
    pub withheld: bool,
    /// RFC 3339 UTC; `null` for a course never seen.
    pub updated_at: Option<String>,
    pub source: &'static str,
}

/// Counts of ratings 1 to 5, keyed `"1"` to `"5"`.
#[derive(Debug, Serialize)]
pub struct Distribution {
    #[serde(rename = "1")]
    one: i64,
    #[serde(rename = "2")]
    two: i64,
    #[serde(rename = "3")]
    three: i64,
    #[serde(rename = "4")]
    four: i64,
    #[serde(rename = "5")]
    five: i64,
}

impl StatsBody {
    /// The answer for `row`; `withheld` keeps only `responses` and `enrolled`
    /// of the figures.
    pub fn new(
        course_id: String,
        row: &StatsRow,
        source: Source,
        course: Option<&Course>,
        withheld: bool,
    ) -> Self {
        let [one, two, three, four, five] = row.distribution;
        let enrolled = course.and_then(|c| c.enrolled);
        let sum = if withheld { None } else { Some(row.rating_sum) };
        let shown = |value: Option<f64>| value.filter(|_| !withheld);
        Self {
            course_id,
            title: course.map(|c| c.title.clone()),
            responses: row.responses,
            rating_sum: sum,
            average: shown(average(row.rating_sum, row.responses)),
            median: shown(median(&row.distribution)),
            stddev: shown(stddev(&row.distribution)),
            distribution: (!withheld).then_some(Distribution {
                one,
                two,
                three,
                four,
                five,
            }),
            enrolled,
            response_rate: shown(response_rate(row.responses, enrolled)),
            withheld,
            updated_at: time_fmt::micros_or_null(row.updated_at_micros),
            source: source.as_str(),
        }
    }
}

/// The mean rating, `None` without responses.
pub fn average(rating_sum: i64, responses: i64) -> Option<f64> {
    (responses > 0).then(|| rating_sum as f64 / responses as f64)
}

/// The `k`-th smallest rating (from 1) of `distribution`.
fn kth(distribution: &[i64; 5], k: i64) -> i64 {
    let mut seen = 0;
    for (rating, count) in (1..).zip(distribution) {
        seen += count;
        if seen >= k {
            return rating;
        }
    }
    5
}

/// The median rating; of an even count, the mean of the two middle ones.
pub fn median(distribution: &[i64; 5]) -> Option<f64> {
    let n: i64 = distribution.iter().sum();
    if n <= 0 {
        return None;
    }
    let low = kth(distribution, (n + 1) / 2);
    let high = kth(distribution, n / 2 + 1);
    Some(if n % 2 == 1 {
        low as f64
    } else {
        (low + high) as f64 / 2.0
    })
}

/// The population standard deviation, the square root of the variance
/// `(n·Σr² − (Σr)²) / n²`: the sums are whole numbers (in 128 bits, so no
/// count overflows them), so the variance is one correctly rounded division,
/// as an exact computation (Python's `statistics.pstdev`) rounds it.
pub fn stddev(distribution: &[i64; 5]) -> Option<f64> {
    let (mut n, mut sum, mut squares) = (0i128, 0i128, 0i128);
    for (rating, count) in (1i128..).zip(distribution) {
        let count = i128::from(*count);
        n += count;
        sum += rating * count;
        squares += rating * rating * count;
    }
    (n > 0).then(|| ((n * squares - sum * sum) as f64 / (n * n) as f64).sqrt())
}

/// `responses / enrolled`; `None` when enrolment is unknown or 0.
pub fn response_rate(responses: i64, enrolled: Option<u32>) -> Option<f64> {
    enrolled
        .filter(|e| *e > 0)
        .map(|e| responses as f64 / f64::from(e))
}

pub async fn stats(
    State(state): State<AppState>,
    reader: Reader,
    CoursePath(course): CoursePath,
) -> Result<Json<StatsBody>, ApiError> {
    reader.may_read(course.as_str())?;
    let (row, source) = state.stats.get(&course).await?;
    // Without a catalog (MySQL down since start) the numbers still answer,
    // without a title.
    let catalog = state.catalog.loaded().await.ok();
    let entry = catalog.as_ref().and_then(|c| c.course(course.as_str()));
    let withheld = reader.withholds(row.responses);
    Ok(Json(StatsBody::new(
        course.into(),
        &row,
        source,
        entry,
        withheld,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_contracts_shape() {
        let row = StatsRow {
            responses: 4,
            rating_sum: 15,
            distribution: [0, 0, 1, 3, 0],
            version: 7,
            updated_at_micros: 1_793_527_200_123_456,
        };
        let course = Course {
            title: "Intro".into(),
            term: None,
            enrolled: Some(8),
        };
        let body = StatsBody::new("CS101".into(), &row, Source::Cache, Some(&course), false);
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            serde_json::json!({
                "course_id": "CS101", "title": "Intro", "responses": 4, "rating_sum": 15,
                "average": 3.75, "median": 4.0, "stddev": 0.1875f64.sqrt(),
                "distribution": {"1": 0, "2": 0, "3": 1, "4": 3, "5": 0},
                "enrolled": 8, "response_rate": 0.5, "withheld": false,
                "updated_at": "2026-11-01T10:00:00.123456Z", "source": "cache"
            })
        );
        let never = StatsBody::new(
            "NEW".into(),
            &StatsRow::default(),
            Source::Database,
            None,
            false,
        );
        let never = serde_json::to_value(never).unwrap();
        for field in [
            "title",
            "average",
            "median",
            "stddev",
            "enrolled",
            "response_rate",
            "updated_at",
        ] {
            assert_eq!(never[field], serde_json::Value::Null, "{field}");
        }
        assert_eq!(never["responses"], 0);
    }

    #[test]
    fn withheld_keeps_responses_and_enrolment_only() {
        let row = StatsRow {
            responses: 2,
            rating_sum: 9,
            distribution: [0, 0, 0, 1, 1],
            version: 2,
            updated_at_micros: 1,
        };
        let course = Course {
            title: "Small".into(),
            term: None,
            enrolled: Some(30),
        };
        let body = StatsBody::new("S".into(), &row, Source::Cache, Some(&course), true);
        let body = serde_json::to_value(body).unwrap();
        assert_eq!(
            (body["responses"].clone(), body["enrolled"].clone()),
            (2.into(), 30.into())
        );
        assert_eq!(body["withheld"], true);
        for field in [
            "rating_sum",
            "average",
            "median",
            "stddev",
            "distribution",
            "response_rate",
        ] {
            assert_eq!(body[field], serde_json::Value::Null, "{field}");
        }
    }

    #[test]
    fn median_and_stddev_come_exactly_from_the_distribution() {
        assert_eq!(median(&[0; 5]), None);
        assert_eq!(stddev(&[0; 5]), None);
        assert_eq!(median(&[1, 0, 0, 0, 0]), Some(1.0));
        assert_eq!(
            median(&[1, 0, 0, 0, 1]),
            Some(3.0),
            "even: the middle two's mean"
        );
        assert_eq!(median(&[1, 1, 0, 0, 0]), Some(1.5));
        assert_eq!(median(&[0, 0, 2, 1, 1]), Some(3.5));
        assert_eq!(median(&[2, 0, 1, 0, 2]), Some(3.0));
        assert_eq!(stddev(&[1, 0, 0, 0, 1]), Some(2.0));
        assert_eq!(stddev(&[0, 0, 7, 0, 0]), Some(0.0));
        assert_eq!(stddev(&[1, 1, 1, 1, 0]), Some(1.25f64.sqrt()));
        // No overflow at counts far beyond any course.
        let huge = [i64::MAX / 50; 5];
        assert_eq!(median(&[0, 0, i64::MAX / 10, 0, 0]), Some(3.0));
        assert!(stddev(&huge).unwrap().is_finite());
        assert_eq!(response_rate(3, Some(4)), Some(0.75));
        assert_eq!(response_rate(3, Some(0)), None);
        assert_eq!(response_rate(3, None), None);
    }
}
