//! `GET /v1/courses/{course_id}/stats`: a course's numbers, from Redis or MySQL
//! (`stats_cache.rs` decides), in the contract's shape.

use crate::access::Reader;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use shared::http::ApiError;
use shared::mysql::StatsRow;

use crate::params::CoursePath;
use crate::stats_cache::Source;
use crate::{time_fmt, AppState};

#[derive(Debug, Serialize)]
pub struct StatsBody {
    pub course_id: String,
    pub responses: i64,
    pub rating_sum: i64,
    /// `null` when there are no responses.
    pub average: Option<f64>,
    pub distribution: Distribution,
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
    pub fn new(course_id: String, row: &StatsRow, source: Source) -> Self {
        let [one, two, three, four, five] = row.distribution;
        Self {
            course_id,
            responses: row.responses,
            rating_sum: row.rating_sum,
            average: average(row.rating_sum, row.responses),
            distribution: Distribution {
                one,
                two,
                three,
                four,
                five,
            },
            updated_at: time_fmt::micros_or_null(row.updated_at_micros),
            source: source.as_str(),
        }
    }
}

/// The mean rating, `None` without responses.
pub fn average(rating_sum: i64, responses: i64) -> Option<f64> {
    (responses > 0).then(|| rating_sum as f64 / responses as f64)
}

pub async fn stats(
    State(state): State<AppState>,
    reader: Reader,
    CoursePath(course): CoursePath,
) -> Result<Json<StatsBody>, ApiError> {
    reader.may_read(course.as_str())?;
    let (row, source) = state.stats.get(&course).await?;
    Ok(Json(StatsBody::new(course.into(), &row, source)))
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
        let body =
            serde_json::to_value(StatsBody::new("CS101".into(), &row, Source::Cache)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "course_id": "CS101", "responses": 4, "rating_sum": 15, "average": 3.75,
                "distribution": {"1": 0, "2": 0, "3": 1, "4": 3, "5": 0},
                "updated_at": "2026-11-01T10:00:00.123456Z", "source": "cache"
            })
        );
        let never = StatsBody::new("NEW".into(), &StatsRow::default(), Source::Database);
        let never = serde_json::to_value(never).unwrap();
        assert_eq!(never["average"], serde_json::Value::Null);
        assert_eq!(never["updated_at"], serde_json::Value::Null);
        assert_eq!(never["responses"], 0);
    }
}
