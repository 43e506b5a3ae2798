//! The Rust event type and `schemas/feedback-submitted.v1.json` describe the same thing.

use serde_json::{json, Value};
use shared::domain::{Comment, CourseId, Rating, StudentKey};
use shared::event::{FeedbackSubmitted, SCHEMA_V1};

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA_V1).expect("the schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema is a valid JSON Schema")
}

fn event(comment: Option<&str>) -> Value {
    let event = FeedbackSubmitted::new(
        CourseId::parse("CS101").unwrap(),
        StudentKey::derive(b"key", "student-42"),
        Rating::parse(5).unwrap(),
        comment.map(|c| Comment::parse(c).unwrap()),
    );
    serde_json::from_slice(&event.to_json()).unwrap()
}

#[test]
fn serialised_events_validate_against_the_schema() {
    let validator = validator();
    for comment in [
        None,
        Some(""),
        Some("老师讲得很清楚，作业有点多。"),
        Some(&*"a".repeat(2000)),
    ] {
        let value = event(comment);
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{value} failed: {errors:?}");
    }
}

#[test]
fn the_schema_rejects_bad_events() {
    let validator = validator();
    let good = event(Some("fine"));
    assert!(validator.is_valid(&good));
    let cases: Vec<(&str, Value)> = vec![
        ("type", json!("feedback.deleted")),
        ("version", json!(2)),
        ("feedback_id", json!("not-a-ulid")),
        ("course_id", json!("CS 101")),
        ("course_id", json!("")),
        ("student_key", json!("raw-student-id")),
        ("rating", json!(0)),
        ("rating", json!(6)),
        ("rating", json!(4.5)),
        ("rating", json!("4")),
        ("comment", json!("x".repeat(2001))),
        ("comment", json!(7)),
        ("submitted_at", json!("yesterday")),
        ("submitted_at", json!("2026-11-23T10:00:00+08:00")),
        ("flagged", json!("yes")),
    ];
    for (field, value) in cases {
        let mut bad = good.clone();
        bad[field] = value.clone();
        assert!(!validator.is_valid(&bad), "{field} = {value} was accepted");
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("student_key");
    assert!(
        !validator.is_valid(&missing),
        "a missing student_key was accepted"
    );
    let mut extra = good.clone();
    extra["student_id"] = json!("alice");
    assert!(!validator.is_valid(&extra), "a raw student_id was accepted");
}

#[test]
fn a_flagged_event_validates_and_decodes_flagged() {
    let mut value = event(Some("****"));
    value["flagged"] = json!(true);
    assert!(validator().is_valid(&value), "{value}");
    let decoded = FeedbackSubmitted::decode(value.to_string().as_bytes()).unwrap();
    assert!(decoded.flagged);
    assert_eq!(
        serde_json::from_slice::<Value>(&decoded.to_json()).unwrap(),
        value
    );
}

#[test]
fn what_the_schema_accepts_the_rust_type_decodes() {
    let value = event(Some("ok"));
    let decoded = FeedbackSubmitted::decode(value.to_string().as_bytes()).unwrap();
    assert_eq!(decoded.course_id.as_str(), "CS101");
}
