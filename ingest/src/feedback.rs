//! `POST /v1/feedback`: a student's rating and comment, from the request to
//! Kafka or the spool.
//!
//! Order of checks: the token (401/403), the idempotency key's shape (400),
//! the client IP's rate limit (the peer, or behind a trusted proxy the
//! address it forwarded: `client_addr.rs`) and the student's, unless the
//! key was answered already, content type (415), body size (413, refused
//! from `Content-Length` before reading) and arrival (408), JSON (400),
//! fields (400 wrong type, 422 missing or out of range); then a key
//! answered already gives that answer again, to the same submission only
//! (422 `idempotency_key_reused` for another); then the sensitive-word
//! policy (422 or masked), the idempotency key's reservation, delivery. A
//! request without a valid token is answered 401 before the rate limits
//! count it: a token is cheap to check.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::auth::Role;
use shared::domain::{Comment, CourseId, FeedbackId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;
use shared::http::ApiError;
use shared::metrics::names;

use crate::filter::{Filtered, Policy};
use crate::idempotency::{self, Claim};
use crate::pipeline::Outcome;
use crate::record::KafkaRecord;
use crate::AppState;

/// The largest accepted body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The reply to a submission taken (`202`), and what a retry with the same
/// `Idempotency-Key` gets again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The event's id, the same for every retry with the key.
    pub feedback_id: String,
    /// `accepted` (Kafka has it) or `spooled` (on disk, delivered later).
    pub status: Outcome,
}

/// The validated content of a submission.
#[derive(Debug)]
pub struct Submission {
    pub course_id: CourseId,
    pub rating: Rating,
    pub comment: Option<Comment>,
}

pub async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Answer>), ApiError> {
    let claims = state.auth.require(&headers, &[Role::Student]).await?;
    let student = StudentKey::derive(&state.student_key_secret, &claims.sub);
    let idempotency_key = idempotency::key_from(&headers)?;
    // A retry of a request already answered is not counted by the rate
    // limits; it gets that answer again once its body shows it is the same
    // submission, never on the key alone.
    let answered = match &idempotency_key {
        Some(key) => state.idempotency.answered(&student, key).await,
        None => None,
    };
    if answered.is_none() {
        let client = state.trusted_proxies.client(peer.ip(), &headers);
        state.limits.per_ip.check(&client)?;
        state
            .limits
            .per_student
            .check(&student.as_str().to_owned())?;
    }
    require_json(&headers)?;
    let bytes = read_body(&headers, body).await?;
    let mut submission = parse(&bytes)?;
    // With a key, the id is what the client sent, the same on every replica.
    let feedback_id = match &idempotency_key {
        Some(key) => {
            idempotency::feedback_id(&state.student_key_secret, &student, key, &submission)
        }
        None => FeedbackId::generate(),
    };
    if let Some(answered) = answered {
        return Ok((StatusCode::ACCEPTED, Json(answered.replay(&feedback_id)?)));
    }
    submission.comment = apply_policy(&state, submission.comment)?;

    let mut event = FeedbackSubmitted::new(
        submission.course_id,
        student.clone(),
        submission.rating,
        submission.comment,
    );
    event.feedback_id = feedback_id;
    let record = KafkaRecord::of_event(&event, request_id(&headers), traceparent(&headers));
    let feedback_id = event.feedback_id.to_string();

    let answer =
        match idempotency_key {
            None => deliver(&state, record, feedback_id).await?,
            // A task of its own: a client hanging up drops this handler, and a
            // reservation dropped half-way would answer every retry of the key
            // with 409 until the process restarts.
            Some(key) => tokio::spawn(async move {
                idempotent(&state, &student, &key, record, feedback_id).await
            })
            .await
            .map_err(ApiError::internal)??,
        };
    tracing::debug!(feedback_id = %answer.feedback_id, status = ?answer.status, "feedback taken");
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// The id the request-id layer gave this request, carried into the Kafka header.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The client's W3C `traceparent`, carried into the Kafka header: only a
/// single, well-formed one. Any other is ignored, never refused: tracing is
/// the client's aid, and must not cost it its submission.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(shared::trace::TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .filter(|v| shared::trace::is_traceparent(v))
            .map(str::to_owned),
        _ => None,
    }
}

/// Reserves the student's `key`, delivers, and records the answer; or
/// answers as the first request with the key did.
async fn idempotent(
    state: &AppState,
    student: &StudentKey,
    key: &str,
    record: KafkaRecord,
    feedback_id: String,
) -> Result<Answer, ApiError> {
    match state
        .idempotency
        .claim(student, key, record, feedback_id)
        .await?
    {
        Claim::Replay(answer) => Ok(answer),
        Claim::Unguarded {
            record,
            feedback_id,
        } => deliver(state, record, feedback_id).await,
        Claim::Submit {
            key,
            record,
            feedback_id,
        } => match deliver(state, record, feedback_id).await {
            Ok(answer) => {
                state.idempotency.finish(key, &answer).await;
                Ok(answer)
            }
            Err(err) => {
                state.idempotency.release(&key).await;
                Err(err)
            }
        },
    }
}

async fn deliver(
    state: &AppState,
    record: KafkaRecord,
    feedback_id: String,
) -> Result<Answer, ApiError> {
    match state.pipeline.submit(record).await {
        Ok(status) => Ok(Answer {
            feedback_id,
            status,
        }),
        Err(err) => {
            tracing::error!(%err, "submission refused: neither Kafka nor the spool can take it");
            Err(ApiError::unavailable(
                "unavailable",
                "feedback cannot be taken right now; please retry shortly",
                5,
            ))
        }
    }
}

/// `application/json`, with no charset or `charset=utf-8` (JSON is UTF-8,
/// RFC 8259; a body declared as Latin-1 or UTF-16 is not one this reads).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut parts = value.split(';');
    let mime = parts.next().unwrap_or_default();
    let charset_ok = parts.all(|param| match param.split_once('=') {
        Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = charset.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    let is_json = mime.trim().eq_ignore_ascii_case("application/json") && charset_ok;
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json (in UTF-8)",
        ))
    }
}

/// The body is left (partly) unread, so the connection cannot carry another
/// request: `Connection: close` tells a keep-alive client to open a new one
/// rather than write its next request into a connection being closed.
fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body must be at most {MAX_BODY_BYTES} bytes"),
    )
    .with_header(header::CONNECTION, "close")
}

/// How long a body may take to arrive: 16 KiB at well under 2 KB/s. A
/// client that stops half-way would otherwise hold its connection and this
/// handler for good.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads at most [`MAX_BODY_BYTES`] within [`BODY_READ_TIMEOUT`]; a larger
/// declared length is refused unread.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    let Ok(collected) = tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )
        .with_header(header::CONNECTION, "close"));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(_) => Err(ApiError::bad_request(
            "invalid_body",
            "the request body could not be read",
        )),
    }
}

/// Parses the body into a [`Submission`], with the contract's status per fault.
pub fn parse(bytes: &[u8]) -> Result<Submission, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ));
    };
    let wrong_type = |field: &'static str, wanted: &str| {
        ApiError::bad_request("invalid_type", format!("{field} must be {wanted}")).with_field(field)
    };
    let missing = |field: &'static str| {
        ApiError::unprocessable("missing_field", format!("{field} is required")).with_field(field)
    };
    let invalid = |field: &'static str, e: shared::domain::Invalid| {
        ApiError::unprocessable("invalid_value", e.0).with_field(field)
    };

    let course_id = match fields.get("course_id") {
        None | Some(Value::Null) => return Err(missing("course_id")),
        Some(Value::String(s)) => {
            CourseId::parse_new(s.as_str()).map_err(|e| invalid("course_id", e))?
        }
        Some(_) => return Err(wrong_type("course_id", "a string")),
    };
    let rating = match fields.get("rating") {
        None | Some(Value::Null) => return Err(missing("rating")),
        // JSON has one kind of number: `3.0` is the integer 3 to JSON Schema
        // (and to the API document), and is what a client that keeps ratings
        // as floats sends. The cast saturates, so a huge whole number stays
        // out of range.
        Some(Value::Number(n)) => match n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        {
            Some(i) => Rating::parse(i).map_err(|e| invalid("rating", e))?,
            // 4.5: a number, but not a whole one.
            None => {
                return Err(invalid(
                    "rating",
                    shared::domain::Invalid("rating must be an integer from 1 to 5".into()),
                ))
            }
        },
        Some(_) => return Err(wrong_type("rating", "an integer")),
    };
    let comment = match fields.get("comment") {
        None | Some(Value::Null) => None,
        // Checked as sent, as the API document's schema reads it (its
        // length, its characters); then trimmed, and blank is no comment.
        Some(Value::String(s)) => {
            Comment::parse(s.as_str()).map_err(|e| invalid("comment", e))?;
            match s.trim() {
                "" => None,
                trimmed => Some(Comment::parse(trimmed).map_err(|e| invalid("comment", e))?),
            }
        }
        Some(_) => return Err(wrong_type("comment", "a string")),
    };
    Ok(Submission {
        course_id,
        rating,
        comment,
    })
}

fn apply_policy(state: &AppState, comment: Option<Comment>) -> Result<Option<Comment>, ApiError> {
    let Some(comment) = comment else {
        return Ok(None);
    };
    match (state.filter.check(comment.as_str()), state.policy) {
        (Filtered::Clean, _) => Ok(Some(comment)),
        (Filtered::Masked(_), Policy::Reject) => {
            metrics::counter!(names::INGEST_SENSITIVE_TOTAL, "action" => "rejected").increment(1);
            Err(ApiError::unprocessable(
                "sensitive_content",
                "the comment contains words that are not allowed",
            )
            .with_field("comment"))
        }
        (Filtered::Masked(masked), Policy::Mask) => {
            metrics::counter!(names::INGEST_SENSITIVE_TOTAL, "action" => "masked").increment(1);
            // Masking keeps the character count, so the masked text is still a valid comment.
            Comment::parse(masked)
                .map(Some)
                .map_err(|e| ApiError::unprocessable("invalid_value", e.0).with_field("comment"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(body: &str) -> (StatusCode, &'static str, Option<&'static str>) {
        let err = parse(body.as_bytes()).unwrap_err();
        (err.status, err.code, err.field)
    }

    #[test]
    fn a_valid_body_parses_with_a_trimmed_comment() {
        let s =
            parse(r#"{"course_id":"CS101","rating":4,"comment":"  很好  "}"#.as_bytes()).unwrap();
        assert_eq!((s.course_id.as_str(), s.rating.get()), ("CS101", 4));
        assert_eq!(s.comment.unwrap().as_str(), "很好");
        let s = parse(br#"{"course_id":"CS101","rating":1,"comment":"   "}"#).unwrap();
        assert!(s.comment.is_none());
        let s = parse(br#"{"course_id":"CS101","rating":5,"comment":null,"extra":1}"#).unwrap();
        assert!(s.comment.is_none());
    }

    #[test]
    fn a_whole_rating_written_as_a_float_is_that_integer() {
        for (raw, rating) in [("3.0", 3), ("5.000", 5), ("0.1e1", 1), ("4e0", 4)] {
            let s = parse(format!(r#"{{"course_id":"C","rating":{raw}}}"#).as_bytes()).unwrap();
            assert_eq!(s.rating.get(), rating, "{raw}");
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_400() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(fault("{"), (bad, "invalid_json", None));
        assert_eq!(fault("[1,2]"), (bad, "invalid_json", None));
        assert_eq!(fault(""), (bad, "invalid_json", None));
        let err = parse(b"{\"course_id\":\"\xff\xfe\"}").unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (bad, "invalid_json"),
            "invalid UTF-8"
        );
    }

    #[test]
    fn wrong_types_are_400_with_the_field() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(
            fault(r#"{"course_id":1,"rating":4}"#),
            (bad, "invalid_type", Some("course_id"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":"4"}"#),
            (bad, "invalid_type", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":true}"#),
            (bad, "invalid_type", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":4,"comment":["x"]}"#),
            (bad, "invalid_type", Some("comment"))
        );
    }

    #[test]
    fn missing_and_out_of_range_fields_are_422_with_the_field() {
        let un = StatusCode::UNPROCESSABLE_ENTITY;
        assert_eq!(
            fault(r#"{"rating":4}"#),
            (un, "missing_field", Some("course_id"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C"}"#),
            (un, "missing_field", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":0}"#),
            (un, "invalid_value", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":6}"#),
            (un, "invalid_value", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":4.5}"#),
            (un, "invalid_value", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":1e30}"#),
            (un, "invalid_value", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"C","rating":-3}"#),
            (un, "invalid_value", Some("rating"))
        );
        assert_eq!(
            fault(r#"{"course_id":"","rating":3}"#),
            (un, "invalid_value", Some("course_id"))
        );
        assert_eq!(
            fault(r#"{"course_id":"CS 101","rating":3}"#),
            (un, "invalid_value", Some("course_id"))
        );
        for course in [".", "..", "-a", "_a", ":a", ".x"] {
            assert_eq!(
                fault(&format!(r#"{{"course_id":"{course}","rating":3}}"#)),
                (un, "invalid_value", Some("course_id")),
                "{course}"
            );
        }
        let long = format!(r#"{{"course_id":"{}","rating":3}}"#, "x".repeat(65));
        assert_eq!(fault(&long), (un, "invalid_value", Some("course_id")));
        let comment = format!(
            r#"{{"course_id":"C","rating":3,"comment":"{}"}}"#,
            "好".repeat(2001)
        );
        assert_eq!(fault(&comment), (un, "invalid_value", Some("comment")));
        // Checked as sent: whitespace that trimming would drop still counts.
        for sent in [
            format!("{}{}", " ".repeat(10), "好".repeat(1995)),
            "\\u000b".into(),
            "fine\\u0085".into(),
        ] {
            let body = format!(r#"{{"course_id":"C","rating":3,"comment":"{sent}"}}"#);
            assert_eq!(
                fault(&body),
                (un, "invalid_value", Some("comment")),
                "{sent}"
            );
        }
    }
}
