//! `Idempotency-Key`: the same key from the same student within the window
//! (24 h) gets the same answer and the same `feedback_id`, and is counted once.
//!
//! The entry lives in the spool's sled database
//! (`spool/idempotency_entries.rs`), so it survives a restart. A request
//! reserves the key atomically (compare-and-swap) with its event before
//! producing; a second request with the key waits for the first one's answer.
//! A reservation left by a process that died is taken over: its stored event
//! (same `feedback_id`) is submitted again, which the aggregator dedupes.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use shared::domain::StudentKey;
use shared::http::ApiError;
use shared::metrics::names;

use crate::feedback::Answer;
use crate::pipeline::Outcome;
use crate::record::KafkaRecord;
use crate::spool::IdempotencyEntries;

/// The longest accepted key.
pub const MAX_KEY_LEN: usize = 128;
/// How long a second request waits for the first one with the same key.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(15);

/// What is remembered under a student's key. Its JSON is on disk, read back
/// after a restart: the field names are the format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Given again to every retry, so the event is counted once.
    feedback_id: String,
    /// `None` while the first request is still submitting.
    status: Option<Outcome>,
    /// Unix seconds; the entry expires `ttl` later.
    created_at: i64,
    /// The process that reserved it; another process's pending entry is an orphan.
    boot: String,
    /// The event, kept while pending so an orphan can be submitted again.
    record: Option<KafkaRecord>,
}

impl Entry {
    /// The answer given, once the first request has one.
    fn answer(&self) -> Option<Answer> {
        self.status.map(|status| Answer {
            feedback_id: self.feedback_id.clone(),
            status,
        })
    }
}

/// Where a student's key is remembered: `{student_key}:{key}`, so another
/// student's same key is another entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey(Vec<u8>);

impl EntryKey {
    fn new(student: &StudentKey, key: &str) -> Self {
        Self(format!("{}:{key}", student.as_str()).into_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What to do with a request that carries a key.
pub enum Claim {
    /// Submit this record (ours, or an orphan's), then call [`Idempotency::finish`].
    Submit {
        key: EntryKey,
        record: KafkaRecord,
        feedback_id: String,
    },
    /// Answered before: answer the same again.
    Replay(Answer),
}

/// What a request does about the entry it found under its key.
enum Step {
    /// Answered before.
    Replay(Answer),
    /// The first request is still submitting: wait for its answer.
    Wait,
    /// Absent, expired or unreadable: reserve it afresh.
    Reserve,
    /// Pending in a process that died: reserve it again, with its event.
    TakeOver(Entry, KafkaRecord),
}

pub struct Idempotency {
    /// On disk, so answers and reservations outlive the process.
    entries: IdempotencyEntries,
    /// Identifies this process's reservations.
    boot: String,
    /// How long an answer is kept for retries.
    ttl: Duration,
}

/// Reads the optional `Idempotency-Key` header: 1 to 128 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    if headers.get_all("idempotency-key").iter().count() > 1 {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "send one Idempotency-Key header, not several",
        )
        .with_field("Idempotency-Key"));
    }
    let invalid = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )
        .with_field("Idempotency-Key")
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_KEY_LEN
        || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(invalid());
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

impl Idempotency {
    pub fn new(entries: IdempotencyEntries, ttl: Duration) -> Self {
        Self {
            entries,
            boot: ulid::Ulid::new().to_string(),
            ttl,
        }
    }

    /// The answer already given to `student`'s `key` within the time kept,
    /// if any: a retry gets it before its rate limit is counted.
    pub fn answered(&self, student: &StudentKey, key: &str) -> Result<Option<Answer>, ApiError> {
        let read = self
            .entries
            .get(&EntryKey::new(student, key))
            .map_err(store_failed)?;
        let answer = read
            .entry()
            .filter(|entry| self.is_live(entry))
            .and_then(Entry::answer);
        if answer.is_some() {
            metrics::counter!(names::INGEST_IDEMPOTENT_REPLAYS_TOTAL).increment(1);
        }
        Ok(answer)
    }

    /// Reserves `key` for `record`, or says what an earlier request did with it.
    pub async fn claim(
        &self,
        student: &StudentKey,
        key: &str,
        record: KafkaRecord,
        feedback_id: String,
    ) -> Result<Claim, ApiError> {
        let key = EntryKey::new(student, key);
        let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
        let mine = Entry {
            feedback_id,
            status: None,
            created_at: now(),
            boot: self.boot.clone(),
            record: Some(record.clone()),
        };
        loop {
            let read = self.entries.get(&key).map_err(store_failed)?;
            let (entry, record) = match self.step(read.entry()) {
                Step::Replay(answer) => {
                    metrics::counter!(names::INGEST_IDEMPOTENT_REPLAYS_TOTAL).increment(1);
                    return Ok(Claim::Replay(answer));
                }
                Step::Wait if tokio::time::Instant::now() >= deadline => return Err(in_use()),
                Step::Wait => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Step::Reserve => (mine.clone(), record.clone()),
                Step::TakeOver(orphan, its_record) => (orphan, its_record),
            };
            let reserved = self.entries.swap(&key, &read, &entry);
            if reserved.map_err(store_failed)? {
                return Ok(Claim::Submit {
                    key,
                    record,
                    feedback_id: entry.feedback_id,
                });
            }
            // Someone else changed it first: look again.
        }
    }

    /// What a request does about `found` under its key.
    fn step(&self, found: Option<&Entry>) -> Step {
        let Some(entry) = found.filter(|entry| self.is_live(entry)) else {
            return Step::Reserve;
        };
        if let Some(answer) = entry.answer() {
            return Step::Replay(answer);
        }
        match &entry.record {
            Some(record) if entry.boot != self.boot => Step::TakeOver(
                Entry {
                    boot: self.boot.clone(),
                    ..entry.clone()
                },
                record.clone(),
            ),
            _ => Step::Wait,
        }
    }

    fn is_live(&self, entry: &Entry) -> bool {
        entry.created_at + self.ttl.as_secs() as i64 > now()
    }

    /// Records the answer for a reserved key (durably, with the next group commit).
    pub async fn finish(&self, key: EntryKey, answer: &Answer) {
        let entry = Entry {
            feedback_id: answer.feedback_id.clone(),
            status: Some(answer.status),
            created_at: now(),
            boot: self.boot.clone(),
            record: None,
        };
        if let Err(err) = self.entries.put(key, &entry).await {
            tracing::error!(%err, "could not store an idempotency answer");
        }
    }

    /// Frees a reserved key after a failed submission, so a retry can try again.
    pub fn release(&self, key: &EntryKey) {
        if let Err(err) = self.entries.remove(key) {
            tracing::error!(%err, "could not release an idempotency key");
        }
    }

    /// Removes expired entries (and unreadable ones); returns how many.
    pub fn prune(&self) -> usize {
        let cutoff = now() - self.ttl.as_secs() as i64;
        self.entries
            .remove_where(|entry| entry.is_none_or(|entry| entry.created_at < cutoff))
    }

    /// Prunes on a timer for as long as the process runs.
    pub fn spawn_pruner(self: &std::sync::Arc<Self>, period: Duration) {
        let this = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { break };
                let removed = tokio::task::spawn_blocking(move || this.prune())
                    .await
                    .unwrap_or(0);
                if removed > 0 {
                    tracing::info!(removed, "expired idempotency keys pruned");
                }
            }
        });
    }
}

/// Another request with the key is still being answered after [`WAIT_FOR_FIRST`].
fn in_use() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still being processed; retry shortly",
    )
    .with_header(axum::http::header::RETRY_AFTER, 1)
}

/// The spool's database failing (a disk fault): the contract's 503, never a 500.
fn store_failed(err: sled::Error) -> ApiError {
    tracing::error!(%err, "the idempotency store failed");
    ApiError::unavailable(
        "unavailable",
        "feedback cannot be taken right now; please retry shortly",
        5,
    )
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::tempdir;
    use crate::spool::Spool;

    fn record(n: u8) -> KafkaRecord {
        KafkaRecord {
            key: "CS101".into(),
            payload: vec![n],
            request_id: format!("r{n}"),
        }
    }

    #[test]
    fn keys_must_be_visible_ascii_of_1_to_128() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", v.parse().unwrap());
            key_from(&h)
        };
        assert_eq!(key_from(&HeaderMap::new()).unwrap(), None);
        assert_eq!(with("abc-123").unwrap().as_deref(), Some("abc-123"));
        assert!(with(&"k".repeat(128)).is_ok());
        assert_eq!(
            with(&"k".repeat(129)).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(with("has space").is_err());
        assert!(with("").is_err());
    }

    #[tokio::test]
    async fn a_finished_key_replays_and_an_orphan_is_taken_over_with_its_event() {
        let dir = tempdir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let student = StudentKey::derive(b"k", "alice");
        let first = Idempotency::new(spool.idempotency_entries(), Duration::from_secs(3600));

        // A process reserves a key and dies before finishing.
        let Claim::Submit { .. } = first
            .claim(&student, "k1", record(1), "ID1".into())
            .await
            .unwrap()
        else {
            panic!("a new key is submitted")
        };
        // The next process finds the orphan and submits its event, with its feedback id.
        let second = Idempotency::new(spool.idempotency_entries(), Duration::from_secs(3600));
        let Claim::Submit {
            key,
            record: again,
            feedback_id,
        } = second
            .claim(&student, "k1", record(2), "ID2".into())
            .await
            .unwrap()
        else {
            panic!("an orphan is submitted again")
        };
        assert_eq!((again, feedback_id.as_str()), (record(1), "ID1"));
        let answer = Answer {
            feedback_id,
            status: Outcome::Accepted,
        };
        second.finish(key, &answer).await;
        let Claim::Replay(replayed) = second
            .claim(&student, "k1", record(3), "ID3".into())
            .await
            .unwrap()
        else {
            panic!("a finished key replays")
        };
        assert_eq!(replayed, answer);
        // Another student's same key is a different key.
        let bob = StudentKey::derive(b"k", "bob");
        assert!(matches!(
            second
                .claim(&bob, "k1", record(4), "ID4".into())
                .await
                .unwrap(),
            Claim::Submit { .. }
        ));
    }

    #[tokio::test]
    async fn expired_entries_are_forgotten_and_pruned() {
        let dir = tempdir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let student = StudentKey::derive(b"k", "alice");
        let idem = Idempotency::new(spool.idempotency_entries(), Duration::ZERO);
        let Claim::Submit { key, .. } = idem
            .claim(&student, "k", record(1), "ID1".into())
            .await
            .unwrap()
        else {
            panic!()
        };
        idem.finish(
            key,
            &Answer {
                feedback_id: "ID1".into(),
                status: Outcome::Accepted,
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(matches!(
            idem.claim(&student, "k", record(2), "ID2".into())
                .await
                .unwrap(),
            Claim::Submit { .. }
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(idem.prune(), 1);
    }

    #[test]
    fn entries_keep_the_form_they_have_on_disk() {
        let student = StudentKey::derive(b"k", "alice");
        let key = EntryKey::new(&student, "k1");
        assert_eq!(
            key.as_bytes(),
            format!("{}:k1", student.as_str()).as_bytes()
        );
        let pending = Entry {
            feedback_id: "ID1".into(),
            status: None,
            created_at: 1_700_000_000,
            boot: "B".into(),
            record: Some(KafkaRecord {
                key: "C1".into(),
                payload: b"{}".to_vec(),
                request_id: "r".into(),
            }),
        };
        let json = concat!(
            r#"{"feedback_id":"ID1","status":null,"created_at":1700000000,"boot":"B","#,
            r#""record":{"key":"C1","payload":[123,125],"request_id":"r"}}"#
        );
        assert_eq!(serde_json::to_string(&pending).unwrap(), json);
        let answered = Entry {
            status: Some(Outcome::Spooled),
            record: None,
            ..pending
        };
        let json = r#"{"feedback_id":"ID1","status":"spooled","created_at":1700000000,"boot":"B","record":null}"#;
        assert_eq!(serde_json::to_string(&answered).unwrap(), json);
        let read: Entry = serde_json::from_str(json).unwrap();
        assert_eq!(read.answer().map(|a| a.status), Some(Outcome::Spooled));
    }
}
