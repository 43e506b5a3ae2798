//! Parsed input types. Each has a private field and a `parse` that is the only
//! way in, so code holding one never checks it again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused, worded for the student or admin who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A course identifier: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`, and
/// for a new submission the first a letter or a digit ([`CourseId::parse_new`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CourseId(String);

impl CourseId {
    pub const MAX_LEN: usize = 64;

    /// A course id a new submission may name: [`CourseId::parse`]'s, the
    /// first character a letter or a digit. `.` and `..` are path segments
    /// every URL client removes, so such a course could never be read back;
    /// ids starting with `_ : -` go with them, as the contract says.
    pub fn parse_new(value: impl Into<String>) -> Result<Self, Invalid> {
        let id = Self::parse(value)?;
        if id.0.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            Ok(id)
        } else {
            Err(Invalid(
                "course_id must start with a letter or a digit".into(),
            ))
        }
    }

    /// A course id as it may already be stored: events on the topic or in a
    /// spool and rows in MySQL from before [`CourseId::parse_new`] may start
    /// with `_ . : -`, and stay readable.
    pub fn parse(value: impl Into<String>) -> Result<Self, Invalid> {
        let value = value.into();
        let length = value.chars().count();
        if length == 0 || length > Self::MAX_LEN {
            return Err(Invalid(format!(
                "course_id must be 1 to {} characters long",
                Self::MAX_LEN
            )));
        }
        // Every allowed character is one byte: past this, the length in
        // characters is the length in bytes (the columns' and keys' measure).
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
        if !value.chars().all(allowed) {
            return Err(Invalid(
                "course_id may contain only letters, digits and _ . : -".into(),
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CourseId {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl From<CourseId> for String {
    fn from(value: CourseId) -> Self {
        value.0
    }
}

impl fmt::Display for CourseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A rating: an integer from 1 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u8")]
pub struct Rating(u8);

impl Rating {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 5;

    pub fn parse(value: i64) -> Result<Self, Invalid> {
        if (i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as u8))
        } else {
            Err(Invalid(format!(
                "rating must be an integer from {} to {}",
                Self::MIN,
                Self::MAX
            )))
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Rating {
    type Error = Invalid;
    fn try_from(value: i64) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl From<Rating> for u8 {
    fn from(value: Rating) -> Self {
        value.0
    }
}

/// A comment: at most 2000 Unicode characters, any language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Comment(String);

impl Comment {
    pub const MAX_CHARS: usize = 2000;

    pub fn parse(value: impl Into<String>) -> Result<Self, Invalid> {
        let value = value.into();
        if value.chars().count() > Self::MAX_CHARS {
            return Err(Invalid(format!(
                "comment must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(Invalid(
                "comment must not contain control characters".into(),
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Comment {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl From<Comment> for String {
    fn from(value: Comment) -> Self {
        value.0
    }
}

/// A feedback id: a ULID (26 characters of Crockford base 32), unique.
/// A generated one sorts by creation time; one derived from what a client
/// sent ([`FeedbackId::keyed`]) does not, so nothing orders submissions by
/// id alone: `submitted_at` first, the id only between equal times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FeedbackId(ulid::Ulid);

impl FeedbackId {
    /// A fresh random id, which sorts by when it was made (to the millisecond).
    pub fn generate() -> Self {
        Self(ulid::Ulid::new())
    }

    /// The id a submission's own content names: the first 128 bits of
    /// HMAC-SHA256 under `key` over `parts` (each length-prefixed, so no two
    /// lists of parts are one message), the same wherever it is computed.
    /// Any 128 bits are a ULID (its first character 0 to 7), but this one
    /// carries no creation time: `submitted_at` orders submissions, and an
    /// id only breaks its ties.
    pub fn keyed(key: &[u8], parts: &[&[u8]]) -> Self {
        use hmac::{Mac, SimpleHmac};
        let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Self(ulid::Ulid(u128::from_be_bytes(first)))
    }

    /// A ULID in its canonical form only: upper case, as the schema's
    /// pattern says, and within 128 bits. The decoder alone would take
    /// `01k…` or `ZZZ…` and hand back another spelling (`01K…`, `7ZZ…`),
    /// which would then be stored, and taken as a duplicate of the id it
    /// became.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        ulid::Ulid::from_string(value)
            .ok()
            .filter(|id| id.to_string() == value)
            .map(Self)
            .ok_or_else(|| Invalid("feedback_id must be a ULID in upper case".into()))
    }
}

impl TryFrom<String> for FeedbackId {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(&value)
    }
}

impl From<FeedbackId> for String {
    fn from(value: FeedbackId) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for FeedbackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stable keyed-hash pseudonym of a student (64 lowercase hex characters of
/// HMAC-SHA256 over the JWT subject). The raw subject never leaves ingest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StudentKey(String);

impl StudentKey {
    /// Derives the pseudonym of `subject` under `key`.
    pub fn derive(key: &[u8], subject: &str) -> Self {
        use hmac::{Mac, SimpleHmac};
        let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        mac.update(subject.as_bytes());
        Self(hex::encode(mac.finalize().into_bytes()))
    }

    pub fn parse(value: impl Into<String>) -> Result<Self, Invalid> {
        let value = value.into();
        let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if value.len() == 64 && value.chars().all(is_hex) {
            Ok(Self(value))
        } else {
            Err(Invalid(
                "student_key must be 64 lowercase hex characters".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StudentKey {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl From<StudentKey> for String {
    fn from(value: StudentKey) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn course_ids_of_the_allowed_alphabet_parse() {
        for ok in ["CS101", "a", "math.2026:fall-A_1", &"x".repeat(64)] {
            assert_eq!(CourseId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn course_ids_that_are_empty_too_long_or_foreign_are_refused() {
        for bad in ["", " CS101", "CS 101", "课程", "a/b", &"x".repeat(65)] {
            assert!(CourseId::parse(bad).is_err(), "{bad:?} parsed");
        }
        // 64 characters, one of them not allowed (and two bytes): the
        // message names the character, not the length.
        let err = CourseId::parse(format!("{}é", "x".repeat(63))).unwrap_err();
        assert!(err.0.contains("only letters"), "{}", err.0);
    }

    #[test]
    fn a_new_course_id_starts_with_a_letter_or_a_digit_and_a_stored_one_need_not() {
        for ok in ["CS101", "9a", "a.", "x-_:."] {
            assert_eq!(CourseId::parse_new(ok).unwrap().as_str(), ok);
        }
        for old in [".", "..", ".x", "-a", "_a", ":a"] {
            let err = CourseId::parse_new(old).unwrap_err();
            assert!(err.0.contains("start with"), "{old}: {}", err.0);
            assert_eq!(CourseId::parse(old).unwrap().as_str(), old, "still read");
        }
        // Outside the alphabet, the alphabet's message.
        let err = CourseId::parse_new("é").unwrap_err();
        assert!(err.0.contains("only letters"), "{}", err.0);
    }

    #[test]
    fn keyed_feedback_ids_are_canonical_ulids_fixed_by_key_and_parts() {
        let id = FeedbackId::keyed(b"secret", &[b"a", b"bc"]);
        assert_eq!(id, FeedbackId::keyed(b"secret", &[b"a", b"bc"]));
        assert_ne!(id, FeedbackId::keyed(b"other", &[b"a", b"bc"]));
        assert_ne!(
            id,
            FeedbackId::keyed(b"secret", &[b"ab", b"c"]),
            "parts are framed"
        );
        assert_ne!(id, FeedbackId::keyed(b"secret", &[b"a", b"bc", b""]));
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert!(matches!(text.as_bytes()[0], b'0'..=b'7'), "{text}");
        assert_eq!(FeedbackId::parse(&text).unwrap(), id);
    }

    #[test]
    fn ratings_from_one_to_five_parse_and_others_do_not() {
        for ok in 1..=5 {
            assert_eq!(i64::from(Rating::parse(ok).unwrap().get()), ok);
        }
        for bad in [-1, 0, 6, 256 + 3, i64::MAX] {
            assert!(Rating::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn comments_count_unicode_characters_not_bytes() {
        assert!(Comment::parse("好".repeat(2000)).is_ok());
        assert!(Comment::parse("好".repeat(2001)).is_err());
        assert!(Comment::parse("line one\nline two\ttab").is_ok());
        assert!(Comment::parse("bell\u{7}").is_err());
    }

    #[test]
    fn student_keys_are_stable_keyed_hashes() {
        let a = StudentKey::derive(b"key", "alice");
        assert_eq!(a, StudentKey::derive(b"key", "alice"));
        assert_ne!(a, StudentKey::derive(b"key", "bob"));
        assert_ne!(a, StudentKey::derive(b"other", "alice"));
        assert_eq!(StudentKey::parse(a.as_str().to_owned()).unwrap(), a);
    }

    #[test]
    fn feedback_ids_sort_by_creation_time() {
        let first = FeedbackId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = FeedbackId::generate();
        assert!(first < second);
        assert!(first.to_string() < second.to_string());
    }

    #[test]
    fn feedback_ids_are_taken_only_as_the_schema_spells_them() {
        let id = FeedbackId::generate().to_string();
        assert_eq!(FeedbackId::parse(&id).unwrap().to_string(), id);
        for bad in [
            id.to_lowercase(),
            // Past 128 bits: the decoder would wrap it to 7ZZZ…
            "ZZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
            // Crockford's aliases of 0 and 1.
            id.replacen('0', "O", 1),
            format!("{}L", &id[..25]),
            id[..25].to_owned(),
            String::new(),
        ] {
            assert!(FeedbackId::parse(&bad).is_err(), "{bad}");
        }
    }
}
