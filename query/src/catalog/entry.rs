//! A catalog entry as an admin sends it, parsed: from a `PUT` body's JSON
//! ([`Entry::from_json`]) or a CSV row's text fields ([`Entry::from_fields`]),
//! with the same rules and the contract's errors (400 a wrong type, 422 a
//! value out of range, naming the field).

use serde::Serialize;
use serde_json::Value;
use shared::http::ApiError;

/// The longest title, in characters (`courses.title VARCHAR(200)`).
pub const MAX_TITLE: usize = 200;
/// The longest term, in characters (`courses.term VARCHAR(64)`).
pub const MAX_TERM: usize = 64;
/// The longest instructor `sub`, in characters (`course_instructors.sub VARCHAR(255)`).
pub const MAX_SUB: usize = 255;
/// The most instructors one course lists.
pub const MAX_INSTRUCTORS: usize = 100;

/// A valid entry (the course id is the path's or the row's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub title: String,
    pub term: Option<String>,
    pub enrolled: Option<u32>,
    /// Distinct, sorted.
    pub instructors: Vec<String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_value", message).with_field(field)
}

fn wrong_type(field: &'static str, wanted: &str) -> ApiError {
    ApiError::bad_request("invalid_type", format!("{field} must be {wanted}")).with_field(field)
}

/// Control characters have no place in a title, a term or a `sub`, and
/// would reach every page that shows them.
fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

fn title(text: &str) -> Result<String, ApiError> {
    let length = text.chars().count();
    if !(1..=MAX_TITLE).contains(&length) || has_control(text) {
        return Err(invalid(
            "title",
            format!("title must be 1 to {MAX_TITLE} characters, none of them a control character"),
        ));
    }
    Ok(text.to_owned())
}

/// Empty means none.
fn term(text: &str) -> Result<Option<String>, ApiError> {
    if text.chars().count() > MAX_TERM || has_control(text) {
        return Err(invalid(
            "term",
            format!("term must be at most {MAX_TERM} characters, none of them a control character"),
        ));
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

fn enrolled_out_of_range() -> ApiError {
    invalid(
        "enrolled",
        format!("enrolled must be a whole number from 0 to {}", u32::MAX),
    )
}

/// A `sub` as a token carries it. One ending in a space is refused: MySQL
/// compares `utf8mb4_bin` with trailing spaces ignored, so `li` and `li `
/// would be one row there and two instructors here.
fn sub(text: &str) -> Result<String, ApiError> {
    let length = text.chars().count();
    if !(1..=MAX_SUB).contains(&length) || has_control(text) || text.ends_with(' ') {
        return Err(invalid(
            "instructors",
            format!(
                "each instructor must be a sub of 1 to {MAX_SUB} characters, no control \
                 character, not ending in a space"
            ),
        ));
    }
    Ok(text.to_owned())
}

fn too_many_instructors() -> ApiError {
    invalid(
        "instructors",
        format!("a course lists at most {MAX_INSTRUCTORS} instructors"),
    )
}

fn instructors(subs: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut subs = subs;
    subs.sort();
    subs.dedup();
    if subs.len() > MAX_INSTRUCTORS {
        return Err(too_many_instructors());
    }
    Ok(subs)
}

impl Entry {
    /// A `PUT` body: `title` required; `term`, `enrolled` and `instructors`
    /// optional (absent or null: none). Other members are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        let fields = shared::http::body::json_object(bytes)?;
        let title = match fields.get("title") {
            None | Some(Value::Null) => {
                return Err(
                    ApiError::unprocessable("missing_field", "title is required")
                        .with_field("title"),
                )
            }
            Some(Value::String(text)) => title(text)?,
            Some(_) => return Err(wrong_type("title", "a string")),
        };
        let term = match fields.get("term") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => term(text)?,
            Some(_) => return Err(wrong_type("term", "a string")),
        };
        let enrolled = match fields.get("enrolled") {
            None | Some(Value::Null) => None,
            // JSON has one kind of number: `40.0` is the whole number 40.
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(enrolled_out_of_range)?,
            ),
            Some(_) => return Err(wrong_type("enrolled", "an integer")),
        };
        let subs = match fields.get("instructors") {
            None | Some(Value::Null) => Vec::new(),
            // Counted as sent, duplicates included, as the API document's `maxItems` is.
            Some(Value::Array(items)) if items.len() > MAX_INSTRUCTORS => {
                return Err(too_many_instructors())
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => sub(text),
                    _ => Err(wrong_type("instructors", "an array of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(wrong_type("instructors", "an array of strings")),
        };
        Ok(Self {
            title,
            term,
            enrolled,
            instructors: instructors(subs)?,
        })
    }

    /// A CSV row's fields after its `course_id`: `enrolled` empty or a whole
    /// number, `instructors` separated by `;` (spaces around each trimmed,
    /// empty parts skipped).
    pub fn from_fields(
        title_text: &str,
        term_text: &str,
        enrolled_text: &str,
        instructors_text: &str,
    ) -> Result<Self, ApiError> {
        let enrolled = match enrolled_text.trim() {
            "" => None,
            digits => Some(digits.parse::<u32>().map_err(|_| enrolled_out_of_range())?),
        };
        let subs = instructors_text
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(sub)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            title: title(title_text)?,
            term: term(term_text)?,
            enrolled,
            instructors: instructors(subs)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn refused(body: &str) -> (StatusCode, Option<&'static str>) {
        let err = Entry::from_json(body.as_bytes()).unwrap_err();
        (err.status, err.field)
    }

    #[test]
    fn a_full_body_parses_with_instructors_as_a_sorted_set() {
        let entry = Entry::from_json(
            r#"{"title": "数据结构", "term": "2026F", "enrolled": 40.0,
                 "instructors": ["wang", "li", "wang"], "other": 1}"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            entry,
            Entry {
                title: "数据结构".into(),
                term: Some("2026F".into()),
                enrolled: Some(40),
                instructors: vec!["li".into(), "wang".into()],
            }
        );
        let bare = Entry::from_json(br#"{"title": "T", "term": null}"#).unwrap();
        assert_eq!((bare.term, bare.enrolled), (None, None));
        assert!(bare.instructors.is_empty());
        let long = format!(r#"{{"title": "{}"}}"#, "课".repeat(MAX_TITLE));
        assert!(
            Entry::from_json(long.as_bytes()).is_ok(),
            "characters, not bytes"
        );
    }

    #[test]
    fn bad_bodies_are_400_for_types_and_422_for_values_naming_the_field() {
        let bad = StatusCode::BAD_REQUEST;
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        for (body, expected) in [
            ("{", (bad, None)),
            ("[]", (bad, None)),
            ("{}", (unprocessable, Some("title"))),
            (r#"{"title": ""}"#, (unprocessable, Some("title"))),
            (r#"{"title": "a\u0007"}"#, (unprocessable, Some("title"))),
            (r#"{"title": 5}"#, (bad, Some("title"))),
            (r#"{"title": "T", "term": 5}"#, (bad, Some("term"))),
            (
                r#"{"title": "T", "enrolled": -1}"#,
                (unprocessable, Some("enrolled")),
            ),
            (
                r#"{"title": "T", "enrolled": 1.5}"#,
                (unprocessable, Some("enrolled")),
            ),
            (
                r#"{"title": "T", "enrolled": 4294967296}"#,
                (unprocessable, Some("enrolled")),
            ),
            (
                r#"{"title": "T", "enrolled": "4"}"#,
                (bad, Some("enrolled")),
            ),
            (
                r#"{"title": "T", "instructors": "li"}"#,
                (bad, Some("instructors")),
            ),
            (
                r#"{"title": "T", "instructors": [1]}"#,
                (bad, Some("instructors")),
            ),
            (
                r#"{"title": "T", "instructors": [""]}"#,
                (unprocessable, Some("instructors")),
            ),
            (
                r#"{"title": "T", "instructors": ["li "]}"#,
                (unprocessable, Some("instructors")),
            ),
        ] {
            assert_eq!(refused(body), expected, "{body}");
        }
        let long = format!(r#"{{"title": "{}"}}"#, "x".repeat(MAX_TITLE + 1));
        assert_eq!(refused(&long), (unprocessable, Some("title")));
        // Counted as sent: 101 entries are too many even when one name repeats.
        let many =
            serde_json::json!({"title": "T", "instructors": vec!["li"; MAX_INSTRUCTORS + 1]});
        assert_eq!(
            refused(&many.to_string()),
            (unprocessable, Some("instructors"))
        );
    }

    #[test]
    fn csv_fields_parse_with_the_same_rules() {
        let entry = Entry::from_fields("Intro", "", " 35 ", " li ; wang;;").unwrap();
        assert_eq!(entry.term, None);
        assert_eq!(entry.enrolled, Some(35));
        assert_eq!(entry.instructors, ["li", "wang"]);
        assert_eq!(
            Entry::from_fields("Intro", "", "-3", "").unwrap_err().field,
            Some("enrolled")
        );
        assert_eq!(
            Entry::from_fields("", "", "", "").unwrap_err().field,
            Some("title")
        );
    }
}
