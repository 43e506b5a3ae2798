//! The `feedback.submitted` event, version 1: the only thing ingest writes to
//! Kafka and the only thing the aggregator reads. Its JSON form is described by
//! `schemas/feedback-submitted.v1.json`; a test keeps the two in step.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{Comment, CourseId, FeedbackId, Rating, StudentKey};

/// The value of the event's `type` field.
pub const EVENT_TYPE: &str = "feedback.submitted";
/// The version this code writes and reads.
pub const EVENT_VERSION: u32 = 1;
/// The JSON Schema of version 1, shipped in the binary.
pub const SCHEMA_V1: &str = include_str!("../../schemas/feedback-submitted.v1.json");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackSubmitted {
    /// Always [`EVENT_TYPE`]; kept on the wire so a topic can carry other types later.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Always [`EVENT_VERSION`]; a reader refuses versions it does not know.
    pub version: u32,
    pub feedback_id: FeedbackId,
    /// Also the Kafka key, so one course's events stay in order on one partition.
    pub course_id: CourseId,
    pub student_key: StudentKey,
    pub rating: Rating,
    /// `None` when the student left no comment.
    pub comment: Option<Comment>,
    /// Set by ingest, UTC, truncated to microseconds so MySQL `DATETIME(6)` keeps it exactly.
    #[serde(with = "time::serde::rfc3339")]
    pub submitted_at: OffsetDateTime,
    /// Ingest masked words of the comment: it waits in the moderation queue.
    /// Optional on the wire, absent meaning false, and written only when
    /// true: events of earlier builds still read, and while the aggregators
    /// of an earlier build run (they refuse unknown fields) only flagged
    /// events would be dead-lettered, not every one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
}

/// Why bytes from the topic are not a usable event (the reason goes to the DLQ).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unknown event version {0}")]
    UnknownVersion(u32),
    #[error("submitted_at {0} is not a UTC time between the years 1000 and 9999")]
    SubmittedAt(String),
}

impl FeedbackSubmitted {
    pub fn new(
        course_id: CourseId,
        student_key: StudentKey,
        rating: Rating,
        comment: Option<Comment>,
    ) -> Self {
        Self {
            event_type: EVENT_TYPE.to_owned(),
            version: EVENT_VERSION,
            feedback_id: FeedbackId::generate(),
            course_id,
            student_key,
            rating,
            comment,
            submitted_at: now_micros(),
            flagged: false,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serialises")
    }

    /// Parses an event from the topic, refusing other types and versions.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut event: Self = serde_json::from_slice(bytes)?;
        if event.event_type != EVENT_TYPE {
            return Err(DecodeError::UnknownType(event.event_type));
        }
        if event.version != EVENT_VERSION {
            return Err(DecodeError::UnknownVersion(event.version));
        }
        // The schema's UTC, within MySQL's DATETIME range (a year past 9999
        // in UTC would not even convert), at the microseconds DATETIME(6)
        // keeps: the counting rule then compares the same instant in a
        // batch as it does against the stored row.
        let at = event.submitted_at;
        if at.offset() != time::UtcOffset::UTC || !(1000..=9999).contains(&at.year()) {
            return Err(DecodeError::SubmittedAt(at.to_string()));
        }
        event.submitted_at = truncate_to_micros(at);
        Ok(event)
    }
}

/// The current UTC time truncated to whole microseconds.
pub fn now_micros() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .expect("a truncated nanosecond is in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FeedbackSubmitted {
        FeedbackSubmitted::new(
            CourseId::parse("CS101").unwrap(),
            StudentKey::derive(b"k", "alice"),
            Rating::parse(4).unwrap(),
            Some(Comment::parse("很好, \"great\"").unwrap()),
        )
    }

    #[test]
    fn an_event_round_trips_through_json() {
        let event = sample();
        assert_eq!(FeedbackSubmitted::decode(&event.to_json()).unwrap(), event);
    }

    #[test]
    fn decode_refuses_unknown_versions_types_and_bad_fields() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["version"] = 2.into();
        let err = FeedbackSubmitted::decode(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownVersion(2)));

        let mut value = serde_json::to_value(sample()).unwrap();
        value["type"] = "feedback.deleted".into();
        let err = FeedbackSubmitted::decode(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType(_)));

        let mut value = serde_json::to_value(sample()).unwrap();
        value["rating"] = 9.into();
        assert!(FeedbackSubmitted::decode(value.to_string().as_bytes()).is_err());
        assert!(FeedbackSubmitted::decode(b"not json").is_err());

        // An id the schema does not spell that way goes to the DLQ too.
        for id in [
            sample().feedback_id.to_string().to_lowercase(),
            "ZZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
        ] {
            let mut value = serde_json::to_value(sample()).unwrap();
            value["feedback_id"] = id.clone().into();
            assert!(
                FeedbackSubmitted::decode(value.to_string().as_bytes()).is_err(),
                "{id}"
            );
        }
    }

    #[test]
    fn decode_refuses_times_outside_utc_or_datetime_range_and_keeps_microseconds() {
        let with = |at: &str| {
            let mut value = serde_json::to_value(sample()).unwrap();
            value["submitted_at"] = at.into();
            FeedbackSubmitted::decode(value.to_string().as_bytes())
        };
        for at in [
            "9999-12-31T23:30:00-01:00",
            "2026-11-01T10:00:00+08:00",
            "0999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(matches!(with(at), Err(DecodeError::SubmittedAt(_))), "{at}");
        }
        assert_eq!(
            with("9999-12-31T23:59:59.999999999Z").unwrap().submitted_at,
            time::macros::datetime!(9999-12-31 23:59:59.999999 UTC)
        );
        assert_eq!(
            with("2026-11-01T10:00:00.0000009Z").unwrap().submitted_at,
            with("2026-11-01T10:00:00.0000005Z").unwrap().submitted_at,
            "both are 10:00:00.000000, as MySQL stores them"
        );
    }

    #[test]
    fn flagged_is_written_only_when_true_and_absent_means_false() {
        let event = sample();
        let json = serde_json::to_value(&event).unwrap();
        assert!(json.get("flagged").is_none(), "{json}");
        assert!(!FeedbackSubmitted::decode(&event.to_json()).unwrap().flagged);
        let flagged = FeedbackSubmitted {
            flagged: true,
            ..sample()
        };
        assert_eq!(serde_json::to_value(&flagged).unwrap()["flagged"], true);
        assert!(
            FeedbackSubmitted::decode(&flagged.to_json())
                .unwrap()
                .flagged
        );
    }

    #[test]
    fn submitted_at_is_utc_with_whole_microseconds() {
        let event = sample();
        assert_eq!(event.submitted_at.offset(), time::UtcOffset::UTC);
        assert_eq!(event.submitted_at.nanosecond() % 1_000, 0);
        let json = serde_json::to_value(&event).unwrap();
        assert!(json["submitted_at"].as_str().unwrap().ends_with('Z'));
    }
}
