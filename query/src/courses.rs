//! `GET /v1/courses?limit=`: the courses with the most responses, from
//! `course_stats` (ties by `course_id`, so the order is stable).

use std::collections::HashMap;

use crate::access::Reader;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use mysql_async::prelude::Queryable;
use serde::Serialize;
use shared::http::ApiError;

use crate::params::Params;
use crate::stats::average;
use crate::{time_fmt, AppState};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

#[derive(Debug, Serialize)]
pub struct Course {
    pub course_id: String,
    pub responses: i64,
    pub average: Option<f64>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CoursesBody {
    pub items: Vec<Course>,
}

pub async fn list(
    State(state): State<AppState>,
    reader: Reader,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<CoursesBody>, ApiError> {
    let limit = Params::parse(query)?.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    if !reader.reads_all() {
        // An instructor's courses come from the catalog; until it exists,
        // they own none.
        return Ok(Json(CoursesBody { items: Vec::new() }));
    }
    let db = &state.db;
    let sql = format!(
        "SELECT course_id, responses, rating_sum, {} FROM course_stats
         ORDER BY responses DESC, course_id LIMIT ?",
        shared::mysql::micros("updated_at")
    );
    let rows: Vec<(String, i64, i64, i64)> = db
        .within(async {
            let mut conn = db.conn().await?;
            Ok(conn.exec(sql, (limit,)).await?)
        })
        .await?;
    let items = rows
        .into_iter()
        .map(|(course_id, responses, rating_sum, updated)| Course {
            course_id,
            responses,
            average: average(rating_sum, responses),
            updated_at: time_fmt::micros_or_null(updated),
        })
        .collect();
    Ok(Json(CoursesBody { items }))
}
