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
//! (422 `idempotency_key_reused` for another); then, with a closed catalog,
//! the course (422 `unknown_course`, or 503 `catalog_unavailable` when no
//! catalog was ever read); then the sensitive-word policy (422 or masked),
//! the idempotency key's reservation, delivery. A
//! request without a valid token is answered 401 before the rate limits
//! count it: a token is cheap to check.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::auth::Role;
use shared::domain::{Comment, CourseId, FeedbackId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;
use shared::http::ApiError;
use shared::metrics::names;

use crate::catalog::Lookup;
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
    /// Words of the comment were masked: the form tells the student, and the
    /// comment waits for an admin's review.
    pub flagged: bool,
}

/// The validated content of a submission.
#[derive(Debug)]
pub struct Submission {
    pub course_id: CourseId,
    pub rating: Rating,
    pub comment: Option<Comment>,
}

pub async fn submit(
    State(state): State<Arc<AppState>>,
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
    shared::http::body::require_media_type(&headers, "application/json")?;
    let bytes = shared::http::body::read_limited(&headers, body, MAX_BODY_BYTES).await?;
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
    require_listed(&state, &submission.course_id)?;
    let (comment, flagged) = apply_policy(&state, submission.comment)?;
    submission.comment = comment;

    let mut event = FeedbackSubmitted::new(
        submission.course_id,
        student.clone(),
        submission.rating,
        submission.comment,
    );
    event.feedback_id = feedback_id;
    event.flagged = flagged;
    let record = KafkaRecord::of_event(&event, request_id(&headers), traceparent(&headers));
    let feedback_id = event.feedback_id.to_string();

    let answer = match idempotency_key {
        None => deliver(&state, record, feedback_id, flagged).await?,
        // A task of its own: a client hanging up drops this handler, and a
        // reservation dropped half-way would answer every retry of the key
        // with 409 until the process restarts.
        Some(key) => tokio::spawn(async move {
            idempotent(&state, &student, &key, record, feedback_id, flagged).await
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
    flagged: bool,
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
        } => deliver(state, record, feedback_id, flagged).await,
        Claim::Submit {
            key,
            record,
            feedback_id,
        } => match deliver(state, record, feedback_id, flagged).await {
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
    flagged: bool,
) -> Result<Answer, ApiError> {
    match state.pipeline.submit(record).await {
        Ok(status) => Ok(Answer {
            feedback_id,
            status,
            flagged,
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

/// Parses the body into a [`Submission`], with the contract's status per fault.
pub fn parse(bytes: &[u8]) -> Result<Submission, ApiError> {
    let fields = shared::http::body::json_object(bytes)?;
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

/// With a closed catalog, the course must be in it. A catalog never read
/// is the service's fault, not the student's: 503, to retry, rather than a
/// 422 telling them their course does not exist.
fn require_listed(state: &AppState, course_id: &CourseId) -> Result<(), ApiError> {
    let refused = |reason: &'static str| {
        metrics::counter!(names::INGEST_CATALOG_REFUSED_TOTAL, "reason" => reason).increment(1);
    };
    match state.catalog.lookup(course_id) {
        Lookup::Listed => Ok(()),
        Lookup::Unknown => {
            refused("unknown_course");
            Err(ApiError::unprocessable(
                "unknown_course",
                format!("course {} is not in the catalog", course_id.as_str()),
            )
            .with_field("course_id"))
        }
        Lookup::Unavailable => {
            refused("unavailable");
            Err(ApiError::unavailable(
                "catalog_unavailable",
                "the course catalog is not available yet; please retry shortly",
                10,
            ))
        }
    }
}

/// The comment as the policy leaves it, and whether words of it were masked.
fn apply_policy(
    state: &AppState,
    comment: Option<Comment>,
) -> Result<(Option<Comment>, bool), ApiError> {
    let Some(comment) = comment else {
        return Ok((None, false));
    };
    match (state.filter.check(comment.as_str()), state.policy) {
        (Filtered::Clean, _) => Ok((Some(comment), false)),
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
                .map(|masked| (Some(masked), true))
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
