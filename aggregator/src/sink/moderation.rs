//! `comment_moderation`: a flagged comment (ingest masked words of it)
//! enters the moderation queue in the transaction that appends its event
//! (after step 2), so the queue never names an event the history lacks, nor
//! misses one it holds.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, Value};
use shared::mysql::datetime;

use super::shapes::INSERT_ROWS;
use super::{Received, SinkError};

/// Adds a queue row for each flagged event of `new` (the events this batch
/// appended), stamped `now`: one multi-row `INSERT` per batch of up to
/// [`INSERT_ROWS`] flagged events, none without one. Only events appended
/// now reach here, and an admin acts only on an event already in the
/// history, so no row should be there; should one be, it is left as it is
/// rather than undo an admin's decision.
pub(super) async fn flag(
    tx: &mut Transaction<'_>,
    new: &[&Received],
    now: &str,
) -> Result<(), SinkError> {
    let flagged: Vec<&Received> = new.iter().copied().filter(|r| r.event.flagged).collect();
    for chunk in flagged.chunks(INSERT_ROWS) {
        let sql = format!(
            "INSERT INTO comment_moderation
                   (feedback_id, course_id, submitted_at, flagged, hidden, reviewed_at, updated_at)
                 VALUES {}
                 ON DUPLICATE KEY UPDATE feedback_id = feedback_id",
            vec!["(?, ?, ?, 1, 0, NULL, ?)"; chunk.len()].join(", ")
        );
        let mut params = Vec::with_capacity(chunk.len() * 4);
        for r in chunk {
            let e = &r.event;
            params.extend([
                Value::from(e.feedback_id.to_string()),
                Value::from(e.course_id.as_str()),
                Value::from(datetime(e.submitted_at)),
                Value::from(now),
            ]);
        }
        tx.exec_drop(sql, Params::Positional(params)).await?;
    }
    Ok(())
}
