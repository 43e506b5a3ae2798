//! `GET /v1/courses/{course_id}/feedback?limit=&cursor=`: a course's current
//! responses, newest first, in pages.
//!
//! Keyset pagination on `(submitted_at, feedback_id)`, the order of the
//! history's index `idx_events_course_submitted (course_id, submitted_at)`
//! (InnoDB appends the primary key, `feedback_id`), so each page is a backward
//! range scan of that index from the cursor, joined to `current_responses` by
//! primary key to keep only current responses: no OFFSET, no sort, and a page
//! costs the same at row 10 or row 10 million. A page steps over the
//! course's superseded submissions in its range (each a key lookup); the
//! current-response table keeps no listing index of its own, which would
//! cost the aggregator a second index write for every counted rating.
//! The row comparison is written out (`a < x OR (a = x AND b < y)`) because
//! MariaDB and MySQL both turn that form into an index range.
//!
//! The cursor is opaque to clients: base64url of `{submitted_at µs}:{feedback_id}`
//! of the last row shown. No student identifier appears in any answer.

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mysql_async::prelude::Queryable;
use serde::Serialize;
use shared::auth::Admin;
use shared::http::ApiError;

use crate::params::{self, Params};
use crate::{time_fmt, AppState};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// `1000-01-01 00:00:00` and `9999-12-31 23:59:59.999999` UTC, in
/// microseconds since the epoch.
const DATETIME_FIRST_MICROS: i64 = -30_610_224_000_000_000;
const DATETIME_LAST_MICROS: i64 = 253_402_300_799_999_999;

/// Where a page starts: just after (older than) this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub submitted_at_micros: i64,
    pub feedback_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.submitted_at_micros, self.feedback_id))
    }

    pub fn decode(raw: &str) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::bad_request("invalid_cursor", "cursor is not one this service issued")
                .with_field("cursor")
        };
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
        let submitted_at_micros: i64 = micros.parse().map_err(|_| invalid())?;
        // Within DATETIME's years 1000 to 9999, as every stored row is.
        if !(DATETIME_FIRST_MICROS..=DATETIME_LAST_MICROS).contains(&submitted_at_micros) {
            return Err(invalid());
        }
        let id_ok = id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok {
            return Err(invalid());
        }
        Ok(Self {
            submitted_at_micros,
            feedback_id: id.to_owned(),
        })
    }
}

/// One current response as admins see it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub feedback_id: String,
    pub rating: u8,
    pub comment: Option<String>,
    pub submitted_at: String,
    #[serde(skip)]
    pub submitted_at_micros: i64,
}

impl Item {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            submitted_at_micros: self.submitted_at_micros,
            feedback_id: self.feedback_id.clone(),
        }
    }
}

/// The statement for a page: a cursor adds the keyset condition. Binds
/// `course_id`, then (with a cursor) `submitted_at` twice and `feedback_id`,
/// then the limit.
///
/// The history's index `(course_id, submitted_at)` holds the primary key
/// `feedback_id` as well, so scanning it backwards from the cursor yields
/// `(submitted_at, feedback_id)` descending without a sort. Each entry is kept
/// when `current_responses` names it as its student's current response (a
/// primary-key lookup), so a superseded submission is stepped over.
pub fn page_sql(with_cursor: bool) -> String {
    format!(
        "SELECT e.feedback_id, e.rating, e.comment, {}
         FROM feedback_events e FORCE INDEX (idx_events_course_submitted)
         STRAIGHT_JOIN current_responses c
           ON c.course_id = e.course_id AND c.student_key = e.student_key AND c.feedback_id = e.feedback_id
         WHERE e.course_id = ? {}
         ORDER BY e.submitted_at DESC, e.feedback_id DESC LIMIT ?",
        shared::db::micros("e.submitted_at"),
        if with_cursor {
            "AND (e.submitted_at < ? OR (e.submitted_at = ? AND e.feedback_id < ?))"
        } else {
            ""
        }
    )
}

/// Up to `limit` current responses of `course_id` older than `after`, newest first.
pub async fn page<Q: Queryable>(
    conn: &mut Q,
    course_id: &str,
    after: Option<&Cursor>,
    limit: u32,
) -> mysql_async::Result<Vec<Item>> {
    let rows: Vec<(String, u8, Option<String>, i64)> = match after {
        None => conn.exec(page_sql(false), (course_id, limit)).await?,
        Some(cursor) => {
            let at = shared::db::datetime(shared::db::from_micros(cursor.submitted_at_micros));
            conn.exec(
                page_sql(true),
                (course_id, &at, &at, &cursor.feedback_id, limit),
            )
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(feedback_id, rating, comment, micros)| Item {
            feedback_id,
            rating,
            comment,
            submitted_at: time_fmt::rfc3339(micros),
            submitted_at_micros: micros,
        })
        .collect())
}

#[derive(Debug, Serialize)]
pub struct PageBody {
    pub items: Vec<Item>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<PageBody>, ApiError> {
    let course = params::course_id(path)?;
    let params = Params::parse(query)?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = params.get("cursor").map(Cursor::decode).transpose()?;
    let db = &state.db;
    // One row beyond the page says whether another page follows.
    let mut items = db
        .within(async {
            let mut conn = db.conn().await?;
            Ok(page(&mut conn, course.as_str(), after.as_ref(), limit + 1).await?)
        })
        .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| last.cursor().encode())
    } else {
        None
    };
    Ok(Json(PageBody { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_400_on_the_cursor_field() {
        let cursor = Cursor {
            submitted_at_micros: 1_793_527_200_123_456,
            feedback_id: "01JC0000000000000000000000".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for edge in [DATETIME_FIRST_MICROS, DATETIME_LAST_MICROS] {
            let cursor = Cursor {
                submitted_at_micros: edge,
                ..cursor.clone()
            };
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
            assert_eq!(
                shared::db::from_micros(edge).year(),
                if edge < 0 { 1000 } else { 9999 }
            );
        }
        let forged = |text: &str| URL_SAFE_NO_PAD.encode(text);
        for bad in [
            "".to_owned(),
            "!!!".to_owned(),
            forged("no-colon"),
            forged("12:short"),
            forged("x:01JC0000000000000000000000"),
            forged("1:01JC00000000000000000000'; --"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, b':']),
            // Outside DATETIME: the year 10000, and one before the year 1000.
            forged("253402300800000000:01JC0000000000000000000000"),
            forged("-30610224000000001:01JC0000000000000000000000"),
            forged("-9223372036854775808:01JC0000000000000000000000"),
        ] {
            let err = Cursor::decode(&bad).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.field, Some("cursor"));
        }
    }
}
