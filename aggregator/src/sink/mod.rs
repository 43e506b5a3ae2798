//! MySQL: one transaction per batch, which is what makes the effect exactly once.
//!
//! In order, inside the transaction (`commit_as` reads as this list):
//! 1. lock the batch's courses in `course_stats`, reading their versions
//!    (`stats.rs`);
//! 2. append the events to `feedback_events` in multi-row `INSERT`s of up to
//!    100 rows; a `feedback_id` already there (a replayed spool, a retried
//!    produce) is a duplicate and changes nothing else (`history.rs`); the
//!    flagged ones among those appended enter the moderation queue
//!    (`moderation.rs`);
//! 3. apply the counting rule (`counting.rs`) to the rows of
//!    `current_responses` the batch replaces, known from the lane's memo
//!    (`memo.rs`) or else found by inserting and counting what MySQL
//!    inserted, and write the new winners (`current.rs`);
//! 4. add the per-course changes to `course_stats`, bumping the version of
//!    each course whose rows were written (the versions the Redis deltas
//!    carry, and what tells the memo it still holds; `stats.rs`);
//! 5. move each partition's next offset past the batch, on the condition that
//!    it was at most the batch's first offset: nothing of the batch had been
//!    applied (`offsets.rs`). A lane reads on from where its last batch
//!    ended, so this holds but for a redelivery (a rewind, a member that lost
//!    the partition while its batch was in flight); then the transaction is
//!    rolled back and the batch written again with the partitions' offset
//!    rows locked and read after step 1, skipping the messages below them.
//!    Reading them first in every batch would cost a statement and a round
//!    trip for what is rare.
//!
//! The statements come in a few fixed shapes (`shapes.rs`), so that each
//! connection prepares them once.
//!
//! An error that says MySQL will never store a value of the batch (a
//! constraint it breaks: `refusal.rs`) is a [`SinkError::Refused`]; the
//! lane then commits the batch in parts until the refused events stand
//! alone, and each goes to `quarantined_events` in a transaction that moves
//! its offset past it (`quarantine.rs`).
//!
//! Redis is updated only after the commit (see `redis_view.rs`).

mod current;
mod history;
mod memo;
mod moderation;
mod offsets;
mod quarantine;
pub mod refusal;
mod shapes;
mod stats;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use mysql_async::{Pool, TxOpts};
use shared::event::FeedbackSubmitted;
use shared::metrics::names;
use shared::mysql::datetime;
use shared::redis_hash::Delta;

use crate::counting;
use crate::steps::Steps;
pub use memo::{CourseSeen, Memo};
pub use quarantine::{quarantine, Quarantined};
pub use refusal::Refusal;

/// An event read from Kafka, with where it came from.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub event: FeedbackSubmitted,
    /// The request that brought it (`x-request-id`, `traceparent` from the
    /// record's headers): for its log line, its span and a quarantine row.
    pub trace: shared::trace::TraceContext,
}

/// What one committed batch did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Events counted for the first time.
    pub applied: usize,
    /// Events skipped: redelivered offsets and duplicate `feedback_id`s.
    pub duplicates: usize,
    /// Events MySQL refused, set aside in `quarantined_events`.
    pub quarantined: usize,
    /// The per-course changes, with the versions they move between.
    pub deltas: Vec<Delta>,
    /// The courses locked, with the versions they were found and left at,
    /// and the current rows written or read: what the lane's memo learns.
    pub seen: Vec<CourseSeen>,
    pub rows: Vec<(counting::ResponseKey, counting::Current)>,
}

impl Committed {
    /// Adds what a later transaction of the same batch did (its deltas follow these).
    pub fn absorb(&mut self, later: Committed) {
        self.applied += later.applied;
        self.duplicates += later.duplicates;
        self.quarantined += later.quarantined;
        self.deltas.extend(later.deltas);
        self.seen.extend(later.seen);
        self.rows.extend(later.rows);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A deadlock or lock wait timeout: retry the transaction at once.
    #[error("transaction conflict: {0}")]
    Conflict(#[source] mysql_async::Error),
    /// MySQL is unreachable or failed: retry with backoff.
    #[error("MySQL unavailable: {0}")]
    Unavailable(#[source] UnavailableCause),
    /// MySQL will never store a value of the transaction (`refusal.rs`):
    /// retrying it as it is cannot succeed.
    #[error(transparent)]
    Refused(Refusal),
}

impl SinkError {
    /// The same error with a refusal taken as a failure to retry: for the
    /// writes that must happen however long it takes (the quarantine itself).
    pub fn retried(self) -> Self {
        match self {
            SinkError::Refused(refusal) => {
                SinkError::Unavailable(UnavailableCause::Mysql(refusal.error))
            }
            other => other,
        }
    }
}

/// Why MySQL could not take a transaction.
#[derive(Debug, thiserror::Error)]
pub enum UnavailableCause {
    /// No connection within `connect`'s timeout (mysql_async has none of its own).
    #[error("timed out connecting to MySQL")]
    ConnectTimedOut,
    /// Anything MySQL or the connection said, but a conflict or a refusal.
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
}

impl From<mysql_async::Error> for SinkError {
    fn from(err: mysql_async::Error) -> Self {
        match &err {
            mysql_async::Error::Server(server) if matches!(server.code, 1213 | 1205) => {
                SinkError::Conflict(err)
            }
            _ => match Refusal::of(&err) {
                Some(reason) => SinkError::Refused(Refusal { reason, error: err }),
                None => SinkError::Unavailable(err.into()),
            },
        }
    }
}

/// Commits a batch: `events` decoded from the topic, `consumed` every offset
/// the batch covers (poison messages included, so they are not read again),
/// with what the lane's `memo` holds of its courses' current rows.
///
/// A lane reads on from where its last batch ended, so a batch normally starts
/// at or after each partition's recorded next offset: it is written on that
/// assumption and the assumption is checked when the offsets are recorded, by
/// the statement that moves them. When it fails (a redelivery: a rewind, a
/// member that lost the partition while its batch was in flight), the
/// transaction is rolled back and the batch written again after reading the
/// recorded offsets, skipping what they cover.
pub async fn commit_batch(
    pool: &Pool,
    topic: &str,
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
    memo: &Memo,
) -> Result<Committed, SinkError> {
    let mut resume = Resume::Assumed;
    loop {
        // `Resume::Read` always commits (or fails): this runs at most twice.
        if let Some(committed) = commit_as(pool, topic, events, consumed, memo, resume).await? {
            return Ok(committed);
        }
        metrics::counter!(names::AGGREGATOR_REDELIVERED_BATCHES_TOTAL).increment(1);
        resume = Resume::Read;
    }
}

/// Where a batch learns which of its messages were applied already.
#[derive(Clone, Copy)]
enum Resume {
    /// None were: each partition's recorded next offset is at most the
    /// batch's first offset of it, checked when the offsets are recorded.
    Assumed,
    /// Lock and read the recorded offsets, and skip the messages below them.
    Read,
}

/// One attempt at [`commit_batch`], step by step; `None` when
/// `Resume::Assumed` turned out wrong (the transaction was rolled back).
async fn commit_as(
    pool: &Pool,
    topic: &str,
    events: &[Received],
    consumed: &BTreeMap<i32, i64>,
    memo: &Memo,
    resume: Resume,
) -> Result<Option<Committed>, SinkError> {
    let mut steps = Steps::start();
    let mut conn = connect(pool).await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    steps.lap("begin");
    // One clock reading for the batch: MySQL's updated_at and the deltas' agree.
    let now_at = shared::event::now_micros();
    let now = datetime(now_at);

    // The courses first, then the offsets, in both modes (one lock order).
    let versions = stats::lock_courses(&mut tx, events).await?;
    steps.lap("courses_lock");
    let recorded = match resume {
        Resume::Assumed => HashMap::new(),
        Resume::Read => {
            let recorded = offsets::lock(&mut tx, topic, consumed.keys().copied()).await?;
            steps.lap("offsets_lock");
            recorded
        }
    };
    let new = history::append(&mut tx, &unapplied(events, &recorded), now_at).await?;
    moderation::flag(&mut tx, &new, &now).await?;
    steps.lap("history");

    let counted: Vec<FeedbackSubmitted> = new.iter().map(|r| r.event.clone()).collect();
    let keys: Vec<counting::ResponseKey> = counted.iter().map(counting::key).collect();
    let known = memo.known(&versions, keys.iter());
    steps.lap("counting");
    let (outcome, found) = current::count(&mut tx, known, &counted).await?;
    steps.lap("current_write");
    let deltas = stats::add(&mut tx, &outcome.changes, &versions, now_at).await?;
    steps.lap("stats");
    if !offsets::move_past(&mut tx, topic, events, consumed, resume, &now).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    steps.lap("offsets_record");
    tx.commit().await?;
    steps.lap("commit");

    let seen = versions
        .into_iter()
        .map(|(course_id, locked)| {
            let written = outcome.changes.contains_key(&course_id);
            CourseSeen {
                course_id,
                locked,
                after: locked + i64::from(written),
            }
        })
        .collect();
    let mut rows = found;
    rows.extend(outcome.writes);
    Ok(Some(Committed {
        applied: new.len(),
        // Redelivered offsets, copies within the batch, and ids already in the history.
        duplicates: events.len() - new.len(),
        quarantined: 0,
        deltas,
        seen,
        rows,
    }))
}

/// The events not applied yet as far as `recorded` (each partition's next
/// offset) tells, each `feedback_id` once.
fn unapplied<'a>(events: &'a [Received], recorded: &HashMap<i32, i64>) -> Vec<&'a Received> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|r| r.offset >= recorded.get(&r.partition).copied().unwrap_or(0))
        .filter(|r| seen.insert(r.event.feedback_id))
        .collect()
}

/// A connection, or `Unavailable` within 5 s (mysql_async has no connect timeout).
pub(crate) async fn connect(pool: &Pool) -> Result<mysql_async::Conn, SinkError> {
    tokio::time::timeout(Duration::from_secs(5), pool.get_conn())
        .await
        .map_err(|_| SinkError::Unavailable(UnavailableCause::ConnectTimedOut))?
        .map_err(SinkError::from)
}
