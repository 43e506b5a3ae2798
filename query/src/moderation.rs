//! Moderation, admins only: the queue of flagged comments not yet reviewed,
//! hiding and unhiding a comment, and the audit log of those actions.
//!
//! A comment is flagged by ingest (its filter masked words of it); the
//! aggregator writes the `comment_moderation` row in the transaction that
//! appends the event. An admin's action is a direct write here, to the
//! primary, not an event through Kafka: one transaction sets the comment's
//! state and appends its `moderation_log` row, so the log cannot disagree
//! with the state, and the listings, which read MySQL, show it at once.
//! Ratings and the counting rule never read the moderation state: a hidden
//! comment's rating still counts. (docs/architecture.md says why it is not
//! an event.)
//!
//! The queue pages along `idx_moderation_queue (flagged, reviewed_at,
//! submitted_at)` newest first, keyset on `(submitted_at, feedback_id)` as
//! the comment pages are; the log on its `id`, newest first. Both cursors
//! are tagged like the comment pages' (`comments::CursorKey`), each for its
//! own list.

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use serde::Serialize;
use shared::domain::FeedbackId;
use shared::http::ApiError;
use shared::mysql::{datetime, micros};

use crate::access::{Admin, Reader};
use crate::comments::Cursor;
use crate::params::Params;
use crate::{time_fmt, AppState};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// What the queue's and the log's cursors are signed for: names with a
/// space, which no course id holds, so no cursor of one list is taken by
/// another.
const QUEUE_SCOPE: &str = "moderation queue";
const LOG_SCOPE: &str = "moderation log";

/// `include_hidden` of a comment listing: `true` or `false`, absent or
/// empty meaning `false`; anything else is 422. Only an admin may ask for
/// hidden comments (403 `forbidden` otherwise).
pub fn include_hidden(params: &Params, reader: &Reader) -> Result<bool, ApiError> {
    let include = match params.get("include_hidden") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_value",
                "include_hidden must be true or false",
            )
            .with_field("include_hidden"))
        }
    };
    if include && !reader.reads_all() {
        return Err(ApiError::forbidden(
            "include_hidden=true needs the admin role",
        ));
    }
    Ok(include)
}

/// A cursor of `scope` this service issued; 400 `invalid_cursor` otherwise.
fn decode<T>(
    state: &AppState,
    scope: &str,
    raw: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ApiError> {
    state
        .cursors
        .verify(scope, raw)
        .as_deref()
        .and_then(parse)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor is not one this service issued for this list",
            )
            .with_field("cursor")
        })
}

/// One flagged comment waiting for review.
#[derive(Debug, Serialize)]
pub struct QueueItem {
    pub feedback_id: String,
    pub course_id: String,
    pub comment: Option<String>,
    pub submitted_at: String,
}

#[derive(Debug, Serialize)]
pub struct QueuePage {
    pub items: Vec<QueueItem>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The queue's page statement: flagged, not reviewed, newest first, along
/// `idx_moderation_queue`; each entry joined to its event (for the comment)
/// and kept only while it is its student's current response, as the
/// listings show only those. Binds (with a cursor) `submitted_at` twice and
/// `feedback_id`, then the limit.
pub fn queue_sql(with_cursor: bool) -> String {
    format!(
        "SELECT m.feedback_id, m.course_id, e.comment, {}
         FROM comment_moderation m FORCE INDEX (idx_moderation_queue)
         STRAIGHT_JOIN feedback_events e ON e.feedback_id = m.feedback_id
         STRAIGHT_JOIN current_responses c
           ON c.course_id = e.course_id AND c.student_key = e.student_key AND c.feedback_id = e.feedback_id
         WHERE m.flagged = 1 AND m.reviewed_at IS NULL {}
         ORDER BY m.submitted_at DESC, m.feedback_id DESC LIMIT ?",
        micros("m.submitted_at"),
        if with_cursor {
            "AND (m.submitted_at < ? OR (m.submitted_at = ? AND m.feedback_id < ?))"
        } else {
            ""
        }
    )
}

/// `GET /v1/moderation?limit=&cursor=`.
pub async fn queue(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<QueuePage>, ApiError> {
    let params = Params::parse(query)?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = params
        .get("cursor")
        .map(|raw| decode(&state, QUEUE_SCOPE, raw, Cursor::parse))
        .transpose()?;
    let db = &state.db;
    // One row beyond the page says whether another page follows.
    let rows: Vec<(String, String, Option<String>, i64)> = db
        .within(async {
            let mut conn = db.conn().await?;
            Ok(match &after {
                None => conn.exec(queue_sql(false), (limit + 1,)).await?,
                Some(cursor) => {
                    let at = datetime(shared::mysql::from_micros(cursor.submitted_at_micros));
                    conn.exec(queue_sql(true), (&at, &at, &cursor.feedback_id, limit + 1))
                        .await?
                }
            })
        })
        .await?;
    let more = rows.len() > limit as usize;
    let mut last = None;
    let items: Vec<QueueItem> = rows
        .into_iter()
        .take(limit as usize)
        .map(|(feedback_id, course_id, comment, at)| {
            last = Some(Cursor {
                submitted_at_micros: at,
                feedback_id: feedback_id.clone(),
            });
            QueueItem {
                feedback_id,
                course_id,
                comment,
                submitted_at: time_fmt::rfc3339(at),
            }
        })
        .collect();
    let next_cursor = last
        .filter(|_| more)
        .map(|cursor| state.cursors.sign(QUEUE_SCOPE, &cursor.text()));
    Ok(Json(QueuePage { items, next_cursor }))
}

/// One admin action, as the log shows it.
#[derive(Debug, Serialize)]
pub struct LogItem {
    pub sub: String,
    pub feedback_id: String,
    pub action: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct LogPage {
    pub items: Vec<LogItem>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/moderation/log?limit=&cursor=`: newest first, paged, as the log
/// only grows.
pub async fn log(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    let params = Params::parse(query)?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let before = params
        .get("cursor")
        .map(|raw| {
            decode(&state, LOG_SCOPE, raw, |text| {
                text.parse::<i64>().ok().filter(|id| *id > 0)
            })
        })
        .transpose()?;
    let at = micros("at");
    let db = &state.db;
    let rows: Vec<(i64, String, String, String, i64)> = db
        .within(async {
            let mut conn = db.conn().await?;
            Ok(match before {
                None => {
                    conn.exec(
                        format!(
                            "SELECT id, sub, feedback_id, action, {at} FROM moderation_log
                             ORDER BY id DESC LIMIT ?"
                        ),
                        (limit + 1,),
                    )
                    .await?
                }
                Some(id) => {
                    conn.exec(
                        format!(
                            "SELECT id, sub, feedback_id, action, {at} FROM moderation_log
                             WHERE id < ? ORDER BY id DESC LIMIT ?"
                        ),
                        (id, limit + 1),
                    )
                    .await?
                }
            })
        })
        .await?;
    let more = rows.len() > limit as usize;
    let mut last = None;
    let items: Vec<LogItem> = rows
        .into_iter()
        .take(limit as usize)
        .map(|(id, sub, feedback_id, action, at)| {
            last = Some(id);
            LogItem {
                sub,
                feedback_id,
                action,
                at: time_fmt::rfc3339(at),
            }
        })
        .collect();
    let next_cursor = last
        .filter(|_| more)
        .map(|id| state.cursors.sign(LOG_SCOPE, &id.to_string()));
    Ok(Json(LogPage { items, next_cursor }))
}

/// A comment's moderation state after an action.
#[derive(Debug, Serialize)]
pub struct Moderated {
    pub feedback_id: String,
    pub course_id: String,
    pub flagged: bool,
    pub hidden: bool,
    /// When an admin first acted on it.
    pub reviewed_at: String,
}

/// The `{feedback_id}` path segment, parsed: 400 `invalid_path` when it is
/// not UTF-8, 422 `invalid_value` when it is no feedback id.
pub struct FeedbackPath(pub FeedbackId);

impl<S: Send + Sync> FromRequestParts<S> for FeedbackPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let path: Result<Path<String>, PathRejection> =
            Path::from_request_parts(parts, state).await;
        let Path(raw) = path.map_err(|_| {
            ApiError::bad_request(
                "invalid_path",
                "the feedback_id in the path is not valid UTF-8",
            )
            .with_field("feedback_id")
        })?;
        FeedbackId::parse(&raw)
            .map(FeedbackPath)
            .map_err(|e| ApiError::unprocessable("invalid_value", e.0).with_field("feedback_id"))
    }
}

/// `POST /v1/feedback/{feedback_id}/hide`.
pub async fn hide(
    State(state): State<AppState>,
    Admin(admin): Admin,
    FeedbackPath(id): FeedbackPath,
) -> Result<Json<Moderated>, ApiError> {
    act(&state, &admin.sub, &id, Action::Hide).await
}

/// `POST /v1/feedback/{feedback_id}/unhide`.
pub async fn unhide(
    State(state): State<AppState>,
    Admin(admin): Admin,
    FeedbackPath(id): FeedbackPath,
) -> Result<Json<Moderated>, ApiError> {
    act(&state, &admin.sub, &id, Action::Unhide).await
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Hide,
    Unhide,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Hide => "hide",
            Action::Unhide => "unhide",
        }
    }
}

/// Sets the comment's state and appends the log row in one transaction on
/// the primary; 404 when no event has that id (not yet aggregated, or none).
/// The upsert locks the comment's row first, so two admins acting on it at
/// once are ordered alike in the state and in the log.
async fn act(
    state: &AppState,
    sub: &str,
    id: &FeedbackId,
    action: Action,
) -> Result<Json<Moderated>, ApiError> {
    let id = id.to_string();
    let now = datetime(shared::event::now_micros());
    let hidden = matches!(action, Action::Hide);
    let db = &state.primary;
    let done = db
        .within(async {
            let mut conn = db.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let event: Option<(String, i64)> = tx
                .exec_first(
                    format!(
                        "SELECT course_id, {} FROM feedback_events WHERE feedback_id = ?",
                        micros("submitted_at")
                    ),
                    (&id,),
                )
                .await?;
            let Some((course_id, submitted_at)) = event else {
                tx.rollback().await?;
                return Ok(None);
            };
            let submitted_at = datetime(shared::mysql::from_micros(submitted_at));
            tx.exec_drop(
                "INSERT INTO comment_moderation
                       (feedback_id, course_id, submitted_at, flagged, hidden, reviewed_at, updated_at)
                     VALUES (?, ?, ?, 0, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE hidden = ?, reviewed_at = COALESCE(reviewed_at, ?),
                       updated_at = ?",
                (
                    &id,
                    &course_id,
                    &submitted_at,
                    hidden,
                    &now,
                    &now,
                    hidden,
                    &now,
                    &now,
                ),
            )
            .await?;
            tx.exec_drop(
                "INSERT INTO moderation_log (sub, feedback_id, action, at) VALUES (?, ?, ?, ?)",
                (sub, &id, action.as_str(), &now),
            )
            .await?;
            let row: Option<(u8, u8, i64)> = tx
                .exec_first(
                    format!(
                        "SELECT flagged, hidden, {} FROM comment_moderation WHERE feedback_id = ?",
                        micros("reviewed_at")
                    ),
                    (&id,),
                )
                .await?;
            tx.commit().await?;
            Ok(row.map(|(flagged, hidden, reviewed)| Moderated {
                feedback_id: id.clone(),
                course_id,
                flagged: flagged != 0,
                hidden: hidden != 0,
                reviewed_at: time_fmt::rfc3339(reviewed),
            }))
        })
        .await?;
    match done {
        Some(done) => {
            tracing::info!(feedback_id = %done.feedback_id, action = action.as_str(), sub, "moderation action");
            Ok(Json(done))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no feedback {id} has been received"),
        )
        .with_field("feedback_id")),
    }
}
