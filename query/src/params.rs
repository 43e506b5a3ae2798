//! Path and query parameters, parsed into the contract's errors: a value of
//! the wrong shape is 400, a value out of range is 422, both naming the field.
//! (`course_id` in a path is 422 `invalid_value`, as in ingest's body.)

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use shared::domain::CourseId;
use shared::http::ApiError;

/// The query string's parameters (the last of repeated ones wins).
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(
        query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ) -> Result<Self, ApiError> {
        query
            .map(|Query(map)| Self(map))
            .map_err(|_| ApiError::bad_request("invalid_query", "the query string is malformed"))
    }

    /// A parameter's value; an empty one counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `limit`: an integer from 1 to `max`, `default` when absent.
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        let Some(raw) = self.get("limit") else {
            return Ok(default);
        };
        let limit: i64 = raw.trim().parse().map_err(|_| {
            ApiError::bad_request("invalid_type", "limit must be an integer").with_field("limit")
        })?;
        if (1..=i64::from(max)).contains(&limit) {
            Ok(limit as u32)
        } else {
            Err(
                ApiError::unprocessable("invalid_value", format!("limit must be from 1 to {max}"))
                    .with_field("limit"),
            )
        }
    }
}

/// The `{course_id}` path segment, parsed: a handler that takes one never
/// sees an invalid course id, and one that cannot be had is the contract's
/// error (400 `invalid_path` when the segment is not UTF-8, 422
/// `invalid_value` when it is no course id), naming the field.
#[derive(Debug, Clone)]
pub struct CoursePath(pub CourseId);

impl<S: Send + Sync> FromRequestParts<S> for CoursePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let path = Path::<String>::from_request_parts(parts, state).await;
        course_id(path).map(CoursePath)
    }
}

/// The `{course_id}` segment as axum extracted it, into a [`CourseId`].
fn course_id(path: Result<Path<String>, PathRejection>) -> Result<CourseId, ApiError> {
    let Path(raw) = path.map_err(|_| {
        ApiError::bad_request(
            "invalid_path",
            "the course_id in the path is not valid UTF-8",
        )
        .with_field("course_id")
    })?;
    CourseId::parse(raw)
        .map_err(|e| ApiError::unprocessable("invalid_value", e.0).with_field("course_id"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn limits_default_parse_and_are_bounded() {
        assert_eq!(params(&[]).limit(50, 200).unwrap(), 50);
        assert_eq!(params(&[("limit", "")]).limit(50, 200).unwrap(), 50);
        assert_eq!(params(&[("limit", "1")]).limit(50, 200).unwrap(), 1);
        assert_eq!(params(&[("limit", "200")]).limit(50, 200).unwrap(), 200);
        for (raw, status) in [
            ("0", StatusCode::UNPROCESSABLE_ENTITY),
            ("201", StatusCode::UNPROCESSABLE_ENTITY),
            ("-5", StatusCode::UNPROCESSABLE_ENTITY),
            ("99999999999999999999", StatusCode::BAD_REQUEST),
            ("ten", StatusCode::BAD_REQUEST),
            ("2.5", StatusCode::BAD_REQUEST),
        ] {
            let err = params(&[("limit", raw)]).limit(50, 200).unwrap_err();
            assert_eq!((err.status, err.field), (status, Some("limit")), "{raw}");
        }
    }

    #[tokio::test]
    async fn a_course_path_is_parsed_or_refused_with_the_contracts_error() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;

        let app = axum::Router::new().route(
            "/v1/courses/{course_id}/stats",
            axum::routing::get(|CoursePath(course): CoursePath| async move { course.to_string() }),
        );
        let get = |path: &str| {
            let request = Request::get(path).body(Body::empty()).unwrap();
            app.clone().oneshot(request)
        };
        let response = get("/v1/courses/CS101/stats").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        for (path, status, code) in [
            (
                "/v1/courses/CS%20101/stats",
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
            ),
            (
                "/v1/courses/%FF/stats",
                StatusCode::BAD_REQUEST,
                "invalid_path",
            ),
        ] {
            let response = get(path).await.unwrap();
            assert_eq!(response.status(), status, "{path}");
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["error"]["code"], code, "{path}");
            assert_eq!(body["error"]["field"], "course_id", "{path}");
        }
    }
}
