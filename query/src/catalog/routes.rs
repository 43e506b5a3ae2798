//! The catalog's routes: `PUT /v1/courses/{course_id}` and `POST
//! /v1/catalog` (admins) write it, `GET /v1/catalog` (no token: the
//! student form lists it) reads this replica's snapshot.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use shared::domain::CourseId;
use shared::http::body::{read_limited, require_media_type};
use shared::http::ApiError;

use super::entry::Entry;
use super::{import, store};
use crate::access::Admin;
use crate::params::CoursePath;
use crate::{time_fmt, AppState};

/// The largest `PUT` body: the longest entry the API document allows, 100
/// instructors of 255 characters each written as JSON escapes, fits.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// The largest CSV import (some 10,000 courses of a line each).
pub const MAX_IMPORT_BYTES: usize = 1024 * 1024;

/// An entry as written.
#[derive(Debug, Serialize)]
pub struct EntryBody {
    pub course_id: String,
    #[serde(flatten)]
    pub entry: Entry,
    pub updated_at: String,
}

pub async fn put(
    State(state): State<AppState>,
    _admin: Admin,
    CoursePath(course): CoursePath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EntryBody>, ApiError> {
    // A course an admin adds is one a student may submit for: ingest's rule.
    let course = CourseId::parse_new(course.as_str())
        .map_err(|e| ApiError::unprocessable("invalid_value", e.0).with_field("course_id"))?;
    require_media_type(&headers, "application/json")?;
    let bytes = read_limited(&headers, body, MAX_ENTRY_BYTES).await?;
    let entry = Entry::from_json(&bytes)?;
    let written = [(course, entry)];
    let at = store::upsert(state.catalog.db(), &written).await?;
    state.catalog.refreshed_after_write().await;
    let [(course, entry)] = written;
    Ok(Json(EntryBody {
        course_id: course.into(),
        entry,
        updated_at: time_fmt::rfc3339(at),
    }))
}

#[derive(Debug, Serialize)]
pub struct ImportBody {
    pub upserted: usize,
}

pub async fn import(
    State(state): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportBody>, ApiError> {
    require_media_type(&headers, "text/csv")?;
    let bytes = read_limited(&headers, body, MAX_IMPORT_BYTES).await?;
    let rows = import::parse(&bytes)?;
    if !rows.is_empty() {
        store::upsert(state.catalog.db(), &rows).await?;
        state.catalog.refreshed_after_write().await;
    }
    Ok(Json(ImportBody {
        upserted: rows.len(),
    }))
}

#[derive(Debug, Serialize)]
pub struct PublicCourse<'a> {
    pub course_id: &'a str,
    pub title: &'a str,
    pub term: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct PublicCatalog<'a> {
    pub courses: Vec<PublicCourse<'a>>,
}

/// Public: titles and terms only (no enrolment, no instructors), from
/// memory. Any origin may read it, so a form served elsewhere can.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = state.catalog.loaded().await?;
    let courses = snapshot
        .courses()
        .map(|(course_id, course)| PublicCourse {
            course_id,
            title: &course.title,
            term: course.term.as_deref(),
        })
        .collect();
    Ok((
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        Json(PublicCatalog { courses }),
    )
        .into_response())
}
