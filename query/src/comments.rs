//! `GET /v1/courses/{course_id}/feedback?limit=&cursor=`: a course's current
//! responses, newest first, in pages.
//!
//! Keyset pagination on `(submitted_at, feedback_id)`, the order of the
//! history's index `idx_events_course_submitted (course_id, submitted_at)`
//! (InnoDB appends the primary key, `feedback_id`), so each page is a backward
//! range scan of that index from the cursor, joined to `current_responses` by
//! primary key to keep only current responses: no OFFSET, no sort, and a page
//! costs the same at row 10 or row 10 million. A page steps over the
//! course's superseded submissions in its range (each a key lookup); the
//! current-response table keeps no listing index of its own, which would
//! cost the aggregator a second index write for every counted rating.
//! The row comparison is written out (`a < x OR (a = x AND b < y)`) because
//! MariaDB and MySQL both turn that form into an index range.
//!
//! The cursor is opaque to clients: base64url of `{submitted_at µs}:{feedback_id}`
//! of the last row shown, then a tag (HMAC-SHA-256 of the course and that
//! text, 16 bytes) under a key derived from `FEEDBACK_JWT_SECRET`. So a cursor
//! this service did not issue, or issued for another course, is 400
//! `invalid_cursor`, not a page from some other place. (Changing the secret
//! turns every outstanding cursor away too; the admin starts at page one.)
//! No student identifier appears in any answer.

use std::collections::HashMap;

use crate::access::Reader;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Mac, SimpleHmac};
use mysql_async::prelude::Queryable;
use serde::Serialize;
use sha2::Sha256;
use shared::http::ApiError;

use crate::params::{CoursePath, Params};
use crate::{time_fmt, AppState};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// `1000-01-01 00:00:00` and `9999-12-31 23:59:59.999999` UTC, in
/// microseconds since the epoch.
const DATETIME_FIRST_MICROS: i64 = -30_610_224_000_000_000;
const DATETIME_LAST_MICROS: i64 = 253_402_300_799_999_999;

/// Bytes of a cursor's tag.
const TAG_LEN: usize = 16;

/// Where a page starts: just after (older than) this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub submitted_at_micros: i64,
    pub feedback_id: String,
}

impl Cursor {
    pub(crate) fn text(&self) -> String {
        format!("{}:{}", self.submitted_at_micros, self.feedback_id)
    }

    /// `{µs}:{feedback_id}`, within DATETIME's years 1000 to 9999 as every
    /// stored row is, with a 26-character ULID.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once(':')?;
        let submitted_at_micros: i64 = micros.parse().ok()?;
        let in_range =
            (DATETIME_FIRST_MICROS..=DATETIME_LAST_MICROS).contains(&submitted_at_micros);
        let id_ok = id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        (in_range && id_ok).then(|| Self {
            submitted_at_micros,
            feedback_id: id.to_owned(),
        })
    }
}

/// Tags the cursors this service gives out and checks those it is given.
///
/// The tag finds a cursor damaged or edited on its way back; it is not a
/// secret and needs none (so query holds no key in identity-provider mode,
/// and every replica checks every other's cursors). A cursor only says
/// where a page of one course's comments starts, which whoever holds it may
/// read anyway; a forged one could show nothing more.
pub struct CursorKey {
    key: [u8; 32],
}

impl Default for CursorKey {
    fn default() -> Self {
        Self::new()
    }
}

impl CursorKey {
    pub fn new() -> Self {
        let mut mac =
            SimpleHmac::<Sha256>::new_from_slice(b"course feedback").expect("HMAC takes any key");
        mac.update(b"feedback query: comment page cursors, v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, course: &str, text: &str) -> SimpleHmac<Sha256> {
        let mut mac = SimpleHmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        // The course's length first: no course and text can pass for another pair.
        mac.update(&(course.len() as u64).to_be_bytes());
        mac.update(course.as_bytes());
        mac.update(text.as_bytes());
        mac
    }

    /// The cursor a client gets for `course`.
    pub fn encode(&self, course: &str, cursor: &Cursor) -> String {
        self.sign(course, &cursor.text())
    }

    /// `text` with its tag for `scope` (a course, or a list of another kind
    /// named with a space, which no course id holds), as a client gets it.
    pub fn sign(&self, scope: &str, text: &str) -> String {
        let tag = self.mac(scope, text).finalize().into_bytes();
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The text of `raw` when this service signed it for `scope`.
    pub fn verify(&self, scope: &str, raw: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).ok()?;
        let split = bytes.len().checked_sub(TAG_LEN)?;
        let (text, tag) = bytes.split_at(split);
        let text = std::str::from_utf8(text).ok()?;
        self.mac(scope, text).verify_truncated_left(tag).ok()?;
        Some(text.to_owned())
    }

    /// A cursor this service issued for `course`; 400 `invalid_cursor` otherwise.
    pub fn decode(&self, course: &str, raw: &str) -> Result<Cursor, ApiError> {
        let invalid = || {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor is not one this service issued for this course",
            )
            .with_field("cursor")
        };
        let text = self.verify(course, raw).ok_or_else(invalid)?;
        Cursor::parse(&text).ok_or_else(invalid)
    }
}

/// One current response as admins see it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub feedback_id: String,
    pub rating: u8,
    pub comment: Option<String>,
    pub submitted_at: String,
    /// The sensitive-word filter masked words of the comment.
    pub flagged: bool,
    /// An admin hid it: listed only when an admin asks `include_hidden=true`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    #[serde(skip)]
    pub submitted_at_micros: i64,
}

impl Item {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            submitted_at_micros: self.submitted_at_micros,
            feedback_id: self.feedback_id.clone(),
        }
    }
}

/// The statement for a page: a cursor adds the keyset condition. Binds
/// `course_id`, then (with a cursor) `submitted_at` twice and `feedback_id`,
/// then the limit.
///
/// The history's index `(course_id, submitted_at)` holds the primary key
/// `feedback_id` as well, so scanning it backwards from the cursor yields
/// `(submitted_at, feedback_id)` descending without a sort. Each entry is kept
/// when `current_responses` names it as its student's current response (a
/// primary-key lookup), so a superseded submission is stepped over. Its
/// moderation state is one more primary-key lookup (most entries have none);
/// a hidden one is stepped over the same way unless `include_hidden`, so a
/// page still holds `limit` rows when there are that many to show.
pub fn page_sql(with_cursor: bool, include_hidden: bool) -> String {
    format!(
        "SELECT e.feedback_id, e.rating, e.comment, {}, COALESCE(m.flagged, 0), COALESCE(m.hidden, 0)
         FROM feedback_events e FORCE INDEX (idx_events_course_submitted)
         STRAIGHT_JOIN current_responses c
           ON c.course_id = e.course_id AND c.student_key = e.student_key AND c.feedback_id = e.feedback_id
         LEFT JOIN comment_moderation m ON m.feedback_id = e.feedback_id
         WHERE e.course_id = ? {} {}
         ORDER BY e.submitted_at DESC, e.feedback_id DESC LIMIT ?",
        shared::mysql::micros("e.submitted_at"),
        if with_cursor {
            "AND (e.submitted_at < ? OR (e.submitted_at = ? AND e.feedback_id < ?))"
        } else {
            ""
        },
        if include_hidden {
            ""
        } else {
            "AND (m.hidden IS NULL OR m.hidden = 0)"
        }
    )
}

/// Up to `limit` current responses of `course_id` older than `after`,
/// newest first; hidden ones only when `include_hidden`.
pub async fn page<Q: Queryable>(
    conn: &mut Q,
    course_id: &str,
    after: Option<&Cursor>,
    limit: u32,
    include_hidden: bool,
) -> mysql_async::Result<Vec<Item>> {
    let rows: Vec<(String, u8, Option<String>, i64, u8, u8)> = match after {
        None => {
            conn.exec(page_sql(false, include_hidden), (course_id, limit))
                .await?
        }
        Some(cursor) => {
            let at =
                shared::mysql::datetime(shared::mysql::from_micros(cursor.submitted_at_micros));
            conn.exec(
                page_sql(true, include_hidden),
                (course_id, &at, &at, &cursor.feedback_id, limit),
            )
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(
            |(feedback_id, rating, comment, micros, flagged, hidden)| Item {
                feedback_id,
                rating,
                comment,
                submitted_at: time_fmt::rfc3339(micros),
                flagged: flagged != 0,
                hidden: hidden != 0,
                submitted_at_micros: micros,
            },
        )
        .collect())
}

#[derive(Debug, Serialize)]
pub struct PageBody {
    pub items: Vec<Item>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
    /// Below the anonymity threshold for this instructor: no items.
    pub withheld: bool,
}

pub async fn list(
    State(state): State<AppState>,
    reader: Reader,
    CoursePath(course): CoursePath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<PageBody>, ApiError> {
    reader.may_read(course.as_str())?;
    let params = Params::parse(query)?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let include_hidden = crate::moderation::include_hidden(&params, &reader)?;
    let after = params
        .get("cursor")
        .map(|raw| state.cursors.decode(course.as_str(), raw))
        .transpose()?;
    if reader.withheld(&state, &course).await? {
        return Ok(Json(PageBody {
            items: Vec::new(),
            next_cursor: None,
            withheld: true,
        }));
    }
    let db = &state.db;
    // One row beyond the page says whether another page follows.
    let mut items = db
        .within(async {
            let mut conn = db.conn().await?;
            Ok(page(
                &mut conn,
                course.as_str(),
                after.as_ref(),
                limit + 1,
                include_hidden,
            )
            .await?)
        })
        .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|last| state.cursors.encode(course.as_str(), &last.cursor()))
    } else {
        None
    };
    Ok(Json(PageBody {
        items,
        next_cursor,
        withheld: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_400_on_the_cursor_field() {
        let key = CursorKey::new();
        let cursor = Cursor {
            submitted_at_micros: 1_793_527_200_123_456,
            feedback_id: "01JC0000000000000000000000".into(),
        };
        assert_eq!(
            key.decode("CS101", &key.encode("CS101", &cursor)).unwrap(),
            cursor
        );
        for edge in [DATETIME_FIRST_MICROS, DATETIME_LAST_MICROS] {
            let cursor = Cursor {
                submitted_at_micros: edge,
                ..cursor.clone()
            };
            assert_eq!(key.decode("C", &key.encode("C", &cursor)).unwrap(), cursor);
            assert_eq!(
                shared::mysql::from_micros(edge).year(),
                if edge < 0 { 1000 } else { 9999 }
            );
        }
        let refused = |course: &str, raw: &str| {
            let err = key.decode(course, raw).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{raw}");
            assert_eq!(err.field, Some("cursor"));
        };
        // Issued, but for another course.
        refused("CS102", &key.encode("CS101", &cursor));
        refused("CS10", &key.encode("CS101", &cursor));
        // Well formed but unsigned (as cursors were before they had a tag),
        // or with its text changed under the tag.
        refused("CS101", &URL_SAFE_NO_PAD.encode(cursor.text()));
        let mut edited = URL_SAFE_NO_PAD
            .decode(key.encode("CS101", &cursor))
            .unwrap();
        edited[0] = b'2';
        refused("CS101", &URL_SAFE_NO_PAD.encode(&edited));
        // Signed, but outside what a stored row can be (the key signs only
        // what it is given: this checks the parse behind the tag).
        let signed = |text: &str| {
            let mut bytes = text.as_bytes().to_vec();
            bytes.extend_from_slice(&key.mac("C", text).finalize().into_bytes()[..TAG_LEN]);
            URL_SAFE_NO_PAD.encode(bytes)
        };
        assert!(key
            .decode("C", &signed("1:01JC0000000000000000000000"))
            .is_ok());
        for bad in [
            signed("no-colon"),
            signed("12:short"),
            signed("x:01JC0000000000000000000000"),
            signed("1:01JC00000000000000000000'; --"),
            // Outside DATETIME: the year 10000, and one before the year 1000.
            signed("253402300800000000:01JC0000000000000000000000"),
            signed("-30610224000000001:01JC0000000000000000000000"),
            signed("-9223372036854775808:01JC0000000000000000000000"),
            "".to_owned(),
            "!!!".to_owned(),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, b':']),
        ] {
            refused("C", &bad);
        }
    }
}
