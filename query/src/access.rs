//! Who may read what. Every `/v1` read takes an instructor or an admin
//! ([`Reader`]); an admin reads every course, an instructor the courses
//! whose catalog entry lists their `sub` (403 `not_your_course` elsewhere).
//! Catalog writes take an admin ([`Admin`]).
//!
//! For an instructor, a course with fewer current responses than
//! `FEEDBACK_MIN_RESPONSES` is withheld ([`Reader::withheld`]): its numbers,
//! comments and trend are not shown, so no single student's rating or
//! comment can be read off a small course. Admins are never withheld.
//!
//! Ownership comes from the catalog snapshot in memory (`catalog.rs`), so a
//! read costs no MySQL query to decide it; the responses count for the
//! threshold comes from the stats cache.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use shared::auth::{Principal, Role};
use shared::domain::CourseId;
use shared::http::ApiError;

use crate::catalog::Snapshot;
use crate::AppState;

/// A verified instructor or admin: 401 `invalid_token` without a valid
/// token, 403 `forbidden` for a student or a token without a role.
pub struct Reader {
    pub principal: Principal,
    /// The catalog an instructor's reads are checked against, taken once
    /// per request so every check of the request sees the same one; `None`
    /// for an admin, who needs none.
    catalog: Option<Arc<Snapshot>>,
    /// `FEEDBACK_MIN_RESPONSES`.
    min_responses: u32,
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = state
            .auth
            .require(&parts.headers, &[Role::Instructor, Role::Admin])
            .await?;
        let catalog = if principal.role == Some(Role::Admin) {
            None
        } else {
            // Without a catalog, ownership is unknown: 503 rather than a 403
            // that would be wrong once MySQL answers.
            Some(state.catalog.loaded().await?)
        };
        Ok(Reader {
            principal,
            catalog,
            min_responses: state.min_responses,
        })
    }
}

impl Reader {
    /// Whether this reader sees every course.
    pub fn reads_all(&self) -> bool {
        self.principal.role == Some(Role::Admin)
    }

    /// 403 `not_your_course` unless this reader may read `course_id`.
    pub fn may_read(&self, course_id: &str) -> Result<(), ApiError> {
        match &self.catalog {
            None if self.reads_all() => Ok(()),
            Some(catalog) if catalog.teaches(&self.principal.sub, course_id) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_your_course",
                format!("course {course_id} is not among the courses you teach"),
            )),
        }
    }

    /// The courses an instructor teaches (`None` for an admin: every course).
    pub fn courses(&self) -> Option<Vec<String>> {
        let catalog = self.catalog.as_ref()?;
        Some(catalog.courses_of(&self.principal.sub))
    }

    /// Whether a course with `responses` current responses is withheld from this reader.
    pub fn withholds(&self, responses: i64) -> bool {
        !self.reads_all() && self.min_responses > 1 && responses < i64::from(self.min_responses)
    }

    /// Whether `course` is withheld from this reader, reading its responses
    /// count from the stats cache only when the answer depends on it.
    pub async fn withheld(&self, state: &AppState, course: &CourseId) -> Result<bool, ApiError> {
        if self.reads_all() || self.min_responses <= 1 {
            return Ok(false);
        }
        let (row, _) = state.stats.get(course).await?;
        Ok(self.withholds(row.responses))
    }
}

/// A verified admin: 401 `invalid_token` without a valid token, 403
/// `forbidden` for any other role.
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth
            .require(&parts.headers, &[Role::Admin])
            .await
            .map(Admin)
    }
}
