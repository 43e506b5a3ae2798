//! Who may read what. Every `/v1` read takes an instructor or an admin
//! ([`Reader`]); an admin reads every course, an instructor the courses
//! whose catalog entry lists them. Until the catalog exists an instructor
//! owns none: each course answers a clear 403 `not_your_course` and the
//! course list is empty, rather than statistics of courses they do not teach.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use shared::auth::{Principal, Role};
use shared::http::ApiError;

use crate::AppState;

/// A verified instructor or admin: 401 `invalid_token` without a valid
/// token, 403 `forbidden` for a student or a token without a role.
pub struct Reader(pub Principal);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth
            .require(&parts.headers, &[Role::Instructor, Role::Admin])
            .await
            .map(Reader)
    }
}

impl Reader {
    /// Whether this reader sees every course.
    pub fn reads_all(&self) -> bool {
        self.0.role == Some(Role::Admin)
    }

    /// 403 `not_your_course` unless this reader may read `course_id`.
    pub fn may_read(&self, course_id: &str) -> Result<(), ApiError> {
        if self.reads_all() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_your_course",
            format!("course {course_id} is not among the courses you teach"),
        ))
    }
}
