//! `GET /v1/courses?limit=`: the courses with the most responses, from
//! `course_stats` (ties by `course_id`, so the order is stable), each with
//! its catalog title. An admin sees every course; an instructor the courses
//! they teach (with zeros for one nobody rated yet), each below the
//! anonymity threshold withheld: no average.

use std::collections::HashMap;

use crate::access::Reader;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use mysql_async::prelude::Queryable;
use serde::Serialize;
use shared::http::ApiError;

use crate::params::Params;
use crate::read_model::Unavailable;
use crate::stats::average;
use crate::{time_fmt, AppState};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// Courses per statement of an instructor's list.
const IDS_PER_QUERY: usize = 500;

#[derive(Debug, Serialize)]
pub struct Course {
    pub course_id: String,
    /// `null` when the course is not in the catalog.
    pub title: Option<String>,
    pub responses: i64,
    /// `null` without responses, or when withheld.
    pub average: Option<f64>,
    pub withheld: bool,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CoursesBody {
    pub items: Vec<Course>,
}

/// `(course_id, responses, rating_sum, updated_at µs)`.
type Row = (String, i64, i64, i64);

pub async fn list(
    State(state): State<AppState>,
    reader: Reader,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<CoursesBody>, ApiError> {
    let limit = Params::parse(query)?.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let rows = match reader.courses() {
        None => most_responses(&state, limit).await?,
        Some(taught) => taught_by(&state, taught, limit).await?,
    };
    let catalog = state.catalog.loaded().await.ok();
    let items = rows
        .into_iter()
        .map(|(course_id, responses, rating_sum, updated)| {
            let withheld = reader.withholds(responses);
            let title = catalog
                .as_ref()
                .and_then(|c| c.course(&course_id))
                .map(|c| c.title.clone());
            Course {
                title,
                responses,
                average: average(rating_sum, responses).filter(|_| !withheld),
                withheld,
                updated_at: time_fmt::micros_or_null(updated),
                course_id,
            }
        })
        .collect();
    Ok(Json(CoursesBody { items }))
}

/// Every course, most responses first.
async fn most_responses(state: &AppState, limit: u32) -> Result<Vec<Row>, Unavailable> {
    let db = &state.db;
    let sql = format!(
        "SELECT course_id, responses, rating_sum, {} FROM course_stats
         ORDER BY responses DESC, course_id LIMIT ?",
        shared::mysql::micros("updated_at")
    );
    db.within(async {
        let mut conn = db.conn().await?;
        Ok(conn.exec(sql, (limit,)).await?)
    })
    .await
}

/// The courses `taught`, in the same order; one not yet rated counts zero.
async fn taught_by(
    state: &AppState,
    taught: Vec<String>,
    limit: u32,
) -> Result<Vec<Row>, Unavailable> {
    if taught.is_empty() {
        return Ok(Vec::new());
    }
    let db = &state.db;
    let found: Vec<Row> = db
        .within(async {
            let mut conn = db.conn().await?;
            let mut found = Vec::new();
            for ids in taught.chunks(IDS_PER_QUERY) {
                let sql = format!(
                    "SELECT course_id, responses, rating_sum, {} FROM course_stats
                     WHERE course_id IN ({})",
                    shared::mysql::micros("updated_at"),
                    shared::mysql::placeholders(ids.len())
                );
                let rows: Vec<Row> = conn.exec(sql, ids.to_vec()).await?;
                found.extend(rows);
            }
            anyhow::Ok(found)
        })
        .await?;
    let mut by_id: HashMap<String, Row> =
        found.into_iter().map(|row| (row.0.clone(), row)).collect();
    let mut rows: Vec<Row> = taught
        .into_iter()
        .map(|id| by_id.remove(&id).unwrap_or((id, 0, 0, 0)))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(limit as usize);
    Ok(rows)
}
