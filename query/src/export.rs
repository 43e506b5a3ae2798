//! `GET /v1/courses/{course_id}/feedback.csv`: every current response of a
//! course as CSV, streamed page by page, so memory stays flat however large
//! the course is.
//!
//! - UTF-8 with a BOM (Excel then shows Chinese correctly), CRLF line ends,
//!   RFC 4180 quoting (commas, quotes and line breaks inside comments survive).
//! - Header `feedback_id,rating,comment,submitted_at`; no student identifier.
//! - One read-only transaction with a consistent snapshot: a student who
//!   resubmits during the download cannot appear twice or vanish.
//! - A comment starting with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`,
//!   so a spreadsheet shows it as text instead of running it as a formula
//!   (comments are untrusted student input).
//! - The status is decided by the first page: MySQL down is a 503 with the
//!   contract's body; a failure later cuts the stream, so the client sees an
//!   incomplete download rather than a silently short file.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::access::Reader;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use mysql_async::TxOpts;
use shared::http::ApiError;
use tokio::sync::mpsc;

use crate::comments::{page, Cursor, Item};
use crate::params::CoursePath;
use crate::read_model::{Db, Unavailable};
use crate::AppState;

/// Rows per database page and per streamed chunk.
const PAGE_ROWS: u32 = 500;
/// The longest an export may hold its connection and snapshot: a client
/// reading a chunk just under every minute is cut here. (A course of 100,000
/// responses exports in seconds.)
const EXPORT_LIMIT: Duration = Duration::from_secs(600);
/// Excel's cue that the file is UTF-8.
const BOM: &str = "\u{FEFF}";
pub const HEADER: [&str; 4] = ["feedback_id", "rating", "comment", "submitted_at"];

type Chunk = Result<Bytes, Unavailable>;

pub async fn csv(
    State(state): State<AppState>,
    reader: Reader,
    CoursePath(course): CoursePath,
) -> Result<Response, ApiError> {
    reader.may_read(course.as_str())?;
    let disposition = format!("attachment; filename=\"{course}-feedback.csv\"");
    let headers = [
        (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CACHE_CONTROL, "no-store".to_owned()),
    ];
    if reader.withheld(&state, &course).await? {
        // Below the anonymity threshold: the header row alone.
        let only_header = encode(true, &[]).map_err(ApiError::internal)?;
        return Ok((headers, only_header).into_response());
    }
    let (tx, mut rx) = mpsc::channel::<Chunk>(4);
    // Set when the producer gave up on a stalled or too slow client: the end
    // of its chunks is then a cut, not the end of the file.
    let cut = Arc::new(AtomicBool::new(false));
    tokio::spawn(produce(
        state.db.clone(),
        course.to_string(),
        tx,
        cut.clone(),
        state.export_stall,
    ));
    let first = match rx.recv().await {
        Some(Ok(first)) => first,
        Some(Err(err)) => return Err(err.into()),
        None => return Err(Unavailable::ExportEnded.into()),
    };
    let rest = futures::stream::unfold(Some(rx), move |rx| {
        let cut = cut.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(chunk) => Some((chunk.map_err(std::io::Error::other), Some(rx))),
                // An error ends the body unfinished, so the client sees an
                // incomplete download rather than a short file.
                None if cut.load(Ordering::Acquire) => {
                    Some((Err(std::io::Error::other("the export was cut")), None))
                }
                None => None,
            }
        }
    });
    let body = futures::stream::once(async { Ok(first) }).chain(rest);
    Ok((headers, Body::from_stream(body)).into_response())
}

/// Reads the course page by page in one snapshot and sends each page as CSV.
async fn produce(
    db: Db,
    course: String,
    tx: mpsc::Sender<Chunk>,
    cut: Arc<AtomicBool>,
    stall: Duration,
) {
    if let Err(err) = produce_pages(&db, &course, &tx, &cut, stall).await {
        tracing::warn!(%err, course, "CSV export failed");
        // Bounded: a client that stopped reading must not hold this task.
        let _ = tx.send_timeout(Err(err), stall).await;
    }
}

async fn produce_pages(
    db: &Db,
    course: &str,
    tx: &mpsc::Sender<Chunk>,
    cut: &AtomicBool,
    stall: Duration,
) -> Result<(), Unavailable> {
    let mut snapshot = db
        .within(async {
            let mut opts = TxOpts::default();
            opts.with_consistent_snapshot(true).with_readonly(true);
            Ok(db.pool().start_transaction(opts).await?)
        })
        .await?;
    let mut after: Option<Cursor> = None;
    let mut first = true;
    let deadline = tokio::time::Instant::now() + EXPORT_LIMIT;
    loop {
        let rows = db
            // Hidden comments are left out: the file has no column to mark them.
            .within(async {
                Ok(page(&mut snapshot, course, after.as_ref(), PAGE_ROWS, false).await?)
            })
            .await?;
        if rows.is_empty() && !first {
            // The last page was full: nothing more to send.
            break;
        }
        let chunk = encode(first, &rows).map_err(|e| Unavailable::Csv(Arc::new(e)))?;
        first = false;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tx.send_timeout(Ok(chunk), stall.min(left)).await.is_err() {
            // The client left, stalled, or read too slowly for too long:
            // dropping the snapshot rolls it back, and the stream is cut.
            tracing::warn!(
                course,
                "CSV export cut: the client stalled or took over {EXPORT_LIMIT:?}"
            );
            cut.store(true, Ordering::Release);
            return Ok(());
        }
        if rows.len() < PAGE_ROWS as usize {
            break;
        }
        after = rows.last().map(Item::cursor);
    }
    let _ = snapshot.commit().await;
    Ok(())
}

/// `rows` as CSV; the first chunk starts with the BOM and the header row.
pub fn encode(first: bool, rows: &[Item]) -> csv::Result<Bytes> {
    let mut out = Vec::with_capacity(64 + rows.len() * 96);
    if first {
        out.extend_from_slice(BOM.as_bytes());
    }
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    if first {
        writer.write_record(HEADER)?;
    }
    for row in rows {
        let comment = row.comment.as_deref().map(defuse).unwrap_or_default();
        writer.write_record([
            row.feedback_id.as_str(),
            &row.rating.to_string(),
            &comment,
            &row.submitted_at,
        ])?;
    }
    let out = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(Bytes::from(out))
}

/// Keeps a spreadsheet from reading a comment as a formula.
fn defuse(comment: &str) -> Cow<'_, str> {
    if comment.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{comment}"))
    } else {
        Cow::Borrowed(comment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, rating: u8, comment: Option<&str>) -> Item {
        Item {
            feedback_id: id.into(),
            rating,
            comment: comment.map(Into::into),
            submitted_at: "2026-11-01T10:00:00Z".into(),
            flagged: false,
            hidden: false,
            submitted_at_micros: 0,
        }
    }

    #[test]
    fn the_first_chunk_has_the_bom_and_header_and_fields_are_quoted_per_rfc_4180() {
        let rows = [
            item("A1", 5, Some("好课, 讲得\"很\"清楚\n第二行")),
            item("A2", 3, None),
        ];
        let text = String::from_utf8(encode(true, &rows).unwrap().to_vec()).unwrap();
        assert_eq!(
            text,
            "\u{FEFF}feedback_id,rating,comment,submitted_at\r\n\
             A1,5,\"好课, 讲得\"\"很\"\"清楚\n第二行\",2026-11-01T10:00:00Z\r\n\
             A2,3,,2026-11-01T10:00:00Z\r\n"
        );
        let next = String::from_utf8(encode(false, &rows[1..]).unwrap().to_vec()).unwrap();
        assert_eq!(next, "A2,3,,2026-11-01T10:00:00Z\r\n");
    }

    #[test]
    fn comments_that_look_like_formulas_are_defused() {
        assert_eq!(defuse("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(defuse("+1"), "'+1");
        assert_eq!(defuse("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(defuse("很好 = good"), "很好 = good");
    }
}
