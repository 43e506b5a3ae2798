//! `Idempotency-Key`: the same key from the same student within the window
//! (24 h) gets the same answer and the same `feedback_id`, and is counted
//! once, on any ingest replica.
//!
//! Across replicas nothing is shared: the `feedback_id` is derived from what
//! the client sent ([`feedback_id`]), so a retry that lands on another
//! replica produces the same id, and the aggregator, which keeps each
//! `feedback_id` once, drops the copy (counted once, one history row).
//!
//! Within a replica the entry lives in the spool's sled database
//! (`spool/idempotency_entries.rs`), so it survives a restart: it gives a
//! retry the first answer itself (`accepted` or `spooled`) without producing
//! again. A request reserves the key atomically (compare-and-swap) with its
//! event before producing; a second request with the key waits for the
//! first one's answer. A reservation left by a process that died is taken
//! over: its stored event (same `feedback_id`) is submitted again, which the
//! aggregator dedupes. A request whose submission derives another id than
//! the entry's used the key for other content: 422 `idempotency_key_reused`.
//!
//! While the spool's store is failed (a disk fault) a keyed request is
//! delivered to Kafka without an entry ([`Claim::Unguarded`]): the contract
//! allows a 503 only when neither Kafka nor the spool can take a submission.
//! A retry of it still has its id, so it is counted once; what is lost for
//! that while is the replayed answer and the 422 for a key reused.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use shared::domain::{FeedbackId, StudentKey};
use shared::http::ApiError;
use shared::metrics::names;

use crate::feedback::{Answer, Submission};
use crate::pipeline::Outcome;
use crate::record::KafkaRecord;
use crate::spool::{IdempotencyEntries, SpoolError};

/// The longest accepted key.
pub const MAX_KEY_LEN: usize = 128;
/// How long a second request waits for the first one with the same key.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(15);

/// Names what [`feedback_id`] hashes, apart from anything else made with the
/// student-key secret (the student keys hash a bare subject).
const ID_LABEL: &[u8] = b"feedback.submitted feedback_id for an Idempotency-Key, v1";

/// The `feedback_id` of `submission`, sent by `student` under `key`: a keyed
/// hash (the student-key secret, which only ingest holds) of what the client
/// sent, so every replica derives the same id for a retry without asking
/// any other. The submission is part of it: a key reused for other content
/// on a replica that never saw the key becomes another submission, counted
/// by the rule, rather than a copy of the first that the aggregator would
/// drop after this request was told its content was taken. The comment is
/// the one sent, before the sensitive-word policy masks it.
pub fn feedback_id(
    secret: &[u8],
    student: &StudentKey,
    key: &str,
    submission: &Submission,
) -> FeedbackId {
    let comment = submission.comment.as_ref().map(|c| c.as_str());
    FeedbackId::keyed(
        secret,
        &[
            ID_LABEL,
            student.as_str().as_bytes(),
            key.as_bytes(),
            submission.course_id.as_str().as_bytes(),
            &[submission.rating.get()],
            &[u8::from(comment.is_some())],
            comment.unwrap_or_default().as_bytes(),
        ],
    )
}

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
    /// `feedback_id` was derived from the submission ([`feedback_id`]), so
    /// another submission under the key derives another one. Entries written
    /// before ids were derived (`false`) hold a random id, which no
    /// submission matches: those are given their answer as they always were.
    #[serde(default)]
    keyed: bool,
    /// The answer said the comment was masked. Entries of earlier builds,
    /// which did not say, read as not.
    #[serde(default)]
    flagged: bool,
}

impl Entry {
    /// The answer given, once the first request has one.
    fn answer(&self) -> Option<Answer> {
        self.status.map(|status| Answer {
            feedback_id: self.feedback_id.clone(),
            status,
            flagged: self.flagged,
        })
    }

    /// Whether a request whose submission derives `feedback_id` sent what
    /// this entry's request sent.
    fn is_for(&self, feedback_id: &str) -> bool {
        !self.keyed || self.feedback_id == feedback_id
    }
}

/// An answer found under a key before the request's body was read: given
/// again only once the body is a valid submission, and the same one.
#[derive(Debug, Clone)]
pub struct Answered(Entry);

impl Answered {
    /// The first answer, for a request whose submission derives
    /// `feedback_id`; 422 when it is another submission under the same key.
    pub fn replay(self, feedback_id: &FeedbackId) -> Result<Answer, ApiError> {
        match self.0.answer() {
            Some(answer) if self.0.is_for(&feedback_id.to_string()) => {
                metrics::counter!(names::INGEST_IDEMPOTENT_REPLAYS_TOTAL).increment(1);
                Ok(answer)
            }
            _ => Err(reused()),
        }
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

/// A key a request reserved, for [`Idempotency::finish`] or [`Idempotency::release`].
#[derive(Debug)]
pub struct Reserved {
    key: EntryKey,
    /// The reserved entry's [`Entry::keyed`], which its answer keeps (an
    /// orphan of an earlier build holds a random id).
    keyed: bool,
}

/// What to do with a request that carries a key.
pub enum Claim {
    /// Submit this record (ours, or an orphan's), then call [`Idempotency::finish`].
    Submit {
        key: Reserved,
        record: KafkaRecord,
        feedback_id: String,
    },
    /// Answered before: answer the same again.
    Replay(Answer),
    /// The store cannot be used: submit this record without an entry.
    Unguarded {
        record: KafkaRecord,
        feedback_id: String,
    },
}

/// What a request does about the entry it found under its key.
enum Step {
    /// Answered before.
    Replay(Answer),
    /// Taken by another submission (answered or not): 422.
    Reused,
    /// The first request is still submitting: wait for its answer.
    Wait,
    /// Absent, expired or unreadable: reserve it afresh.
    Reserve,
    /// Pending in a process that died: reserve it again, with its event.
    TakeOver(Box<Entry>, KafkaRecord),
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
    /// if any: a retry is not counted by the rate limits, and gets it once
    /// its body is read and checked ([`Answered::replay`]).
    /// With the store failed, none: the request goes on as a new one.
    pub async fn answered(&self, student: &StudentKey, key: &str) -> Option<Answered> {
        let read = match self.entries.get(&EntryKey::new(student, key)).await {
            Ok(read) => read,
            Err(err) => {
                store_failed(&err);
                return None;
            }
        };
        read.entry()
            .filter(|entry| self.is_live(entry) && entry.status.is_some())
            .cloned()
            .map(Answered)
    }

    /// Reserves `key` for `record`, whose `feedback_id` was derived from its
    /// submission ([`feedback_id`]), or says what an earlier request did with it.
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
            keyed: true,
            flagged: false,
        };
        loop {
            let read = match self.entries.get(&key).await {
                Ok(read) => read,
                Err(err) => {
                    store_failed(&err);
                    return Ok(Claim::Unguarded {
                        record,
                        feedback_id: mine.feedback_id,
                    });
                }
            };
            let (entry, record) = match self.step(read.entry(), &mine.feedback_id) {
                Step::Replay(answer) => {
                    metrics::counter!(names::INGEST_IDEMPOTENT_REPLAYS_TOTAL).increment(1);
                    return Ok(Claim::Replay(answer));
                }
                Step::Reused => return Err(reused()),
                Step::Wait if tokio::time::Instant::now() >= deadline => return Err(in_use()),
                Step::Wait => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Step::Reserve => (mine.clone(), record.clone()),
                Step::TakeOver(orphan, its_record) => (*orphan, its_record),
            };
            let reserved = match self.entries.swap(&key, read, &entry).await {
                Ok(reserved) => reserved,
                Err(err) => {
                    store_failed(&err);
                    return Ok(Claim::Unguarded {
                        record,
                        feedback_id: mine.feedback_id,
                    });
                }
            };
            if reserved {
                return Ok(Claim::Submit {
                    key: Reserved {
                        key,
                        keyed: entry.keyed,
                    },
                    record,
                    feedback_id: entry.feedback_id,
                });
            }
            // Someone else changed it first: look again.
        }
    }

    /// What a request whose submission derives `feedback_id` does about
    /// `found` under its key.
    fn step(&self, found: Option<&Entry>, feedback_id: &str) -> Step {
        let Some(entry) = found.filter(|entry| self.is_live(entry)) else {
            return Step::Reserve;
        };
        if !entry.is_for(feedback_id) {
            return Step::Reused;
        }
        if let Some(answer) = entry.answer() {
            return Step::Replay(answer);
        }
        match &entry.record {
            Some(record) if entry.boot != self.boot => Step::TakeOver(
                Box::new(Entry {
                    boot: self.boot.clone(),
                    ..entry.clone()
                }),
                record.clone(),
            ),
            _ => Step::Wait,
        }
    }

    fn is_live(&self, entry: &Entry) -> bool {
        entry.created_at + self.ttl.as_secs() as i64 > now()
    }

    /// Records the answer for a reserved key (durably, with the next group commit).
    pub async fn finish(&self, reserved: Reserved, answer: &Answer) {
        let entry = Entry {
            feedback_id: answer.feedback_id.clone(),
            status: Some(answer.status),
            created_at: now(),
            boot: self.boot.clone(),
            record: None,
            keyed: reserved.keyed,
            flagged: answer.flagged,
        };
        if let Err(err) = self.entries.put(reserved.key, &entry).await {
            tracing::error!(%err, "could not store an idempotency answer");
        }
    }

    /// Frees a reserved key after a failed submission, so a retry can try again.
    pub async fn release(&self, reserved: &Reserved) {
        if let Err(err) = self.entries.remove(&reserved.key).await {
            tracing::error!(%err, "could not release an idempotency key");
        }
    }

    /// Removes expired entries (and unreadable ones); returns how many.
    pub async fn prune(&self) -> Result<usize, SpoolError> {
        let cutoff = now() - self.ttl.as_secs() as i64;
        self.entries
            .remove_where(move |entry| entry.is_none_or(|entry| entry.created_at < cutoff))
            .await
    }

    /// Prunes on a timer for as long as the process runs.
    pub fn spawn_pruner(self: &std::sync::Arc<Self>, period: Duration) {
        let this = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { break };
                match this.prune().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "expired idempotency keys pruned"),
                    Err(err) => tracing::warn!(%err, "pruning idempotency keys failed"),
                }
            }
        });
    }
}

/// The key was used for another submission: the contract's 422, never the
/// first answer, which would tell the client its new content was taken.
fn reused() -> ApiError {
    ApiError::unprocessable(
        "idempotency_key_reused",
        "this Idempotency-Key was sent with a different submission; use a new key for a new submission",
    )
    .with_field("Idempotency-Key")
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

/// The spool's store failing (a disk fault): the request goes on without an
/// entry, as far as Kafka takes it.
fn store_failed(err: &SpoolError) {
    tracing::warn!(%err, "the idempotency store cannot be used: going on without an entry");
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
            traceparent: None,
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

    /// The id a submission derives; `n` stands for its content.
    fn id(n: u8) -> String {
        FeedbackId::keyed(b"k", &[&[n]]).to_string()
    }

    fn code(err: ApiError) -> (StatusCode, &'static str) {
        (err.status, err.code)
    }

    const REUSED: (StatusCode, &str) = (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");

    #[tokio::test]
    async fn a_finished_key_replays_and_an_orphan_is_taken_over_with_its_event() {
        let dir = tempdir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let student = StudentKey::derive(b"k", "alice");
        let first = Idempotency::new(spool.idempotency_entries(), Duration::from_secs(3600));

        // A process reserves a key and dies before finishing.
        let Claim::Submit { .. } = first.claim(&student, "k1", record(1), id(1)).await.unwrap()
        else {
            panic!("a new key is submitted")
        };
        // The next process finds the orphan: another submission under its
        // key is refused; the same one submits the orphan's event, with its
        // feedback id.
        let second = Idempotency::new(spool.idempotency_entries(), Duration::from_secs(3600));
        let other = second.claim(&student, "k1", record(2), id(2)).await;
        assert_eq!(other.err().map(code), Some(REUSED));
        let Claim::Submit {
            key,
            record: again,
            feedback_id,
        } = second
            .claim(&student, "k1", record(3), id(1))
            .await
            .unwrap()
        else {
            panic!("an orphan is submitted again")
        };
        assert_eq!((again, feedback_id.clone()), (record(1), id(1)));
        let answer = Answer {
            feedback_id,
            status: Outcome::Accepted,
            flagged: true,
        };
        second.finish(key, &answer).await;
        let Claim::Replay(replayed) = second
            .claim(&student, "k1", record(4), id(1))
            .await
            .unwrap()
        else {
            panic!("a finished key replays")
        };
        assert_eq!(replayed, answer);
        let other = second.claim(&student, "k1", record(5), id(5)).await;
        assert_eq!(
            other.err().map(code),
            Some(REUSED),
            "never replayed blindly"
        );
        // Found before the body is read, the answer goes to the same submission only.
        let found = second.answered(&student, "k1").await.unwrap();
        let same = FeedbackId::parse(&id(1)).unwrap();
        assert_eq!(found.clone().replay(&same).unwrap(), answer);
        let other = FeedbackId::parse(&id(6)).unwrap();
        assert_eq!(found.replay(&other).err().map(code), Some(REUSED));
        // Another student's same key is a different key.
        let bob = StudentKey::derive(b"k", "bob");
        assert!(matches!(
            second.claim(&bob, "k1", record(7), id(7)).await.unwrap(),
            Claim::Submit { .. }
        ));
    }

    #[tokio::test]
    async fn an_entry_from_before_ids_were_derived_replays_for_any_submission() {
        let dir = tempdir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let student = StudentKey::derive(b"k", "alice");
        let idem = Idempotency::new(spool.idempotency_entries(), Duration::from_secs(3600));
        // An orphan of an earlier build: a random id, no `keyed`.
        let json = format!(
            r#"{{"feedback_id":"{}","status":null,"created_at":{},"boot":"old","record":{{"key":"CS101","payload":[1],"request_id":"r1"}}}}"#,
            id(1),
            now()
        );
        let key = EntryKey::new(&student, "k1");
        let entry: Entry = serde_json::from_str(&json).unwrap();
        spool.idempotency_entries().put(key, &entry).await.unwrap();
        let Claim::Submit {
            key, feedback_id, ..
        } = idem.claim(&student, "k1", record(2), id(2)).await.unwrap()
        else {
            panic!("the orphan is taken over")
        };
        assert_eq!(feedback_id, id(1));
        let answer = Answer {
            feedback_id,
            status: Outcome::Spooled,
            flagged: false,
        };
        idem.finish(key, &answer).await;
        // Its answer keeps saying so: a retry deriving its own id gets it.
        let retry = FeedbackId::parse(&id(2)).unwrap();
        let found = idem.answered(&student, "k1").await.unwrap();
        assert_eq!(found.replay(&retry).unwrap(), answer);
    }

    #[tokio::test]
    async fn expired_entries_are_forgotten_and_pruned() {
        let dir = tempdir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let student = StudentKey::derive(b"k", "alice");
        let idem = Idempotency::new(spool.idempotency_entries(), Duration::ZERO);
        let Claim::Submit { key, .. } = idem.claim(&student, "k", record(1), id(1)).await.unwrap()
        else {
            panic!()
        };
        idem.finish(
            key,
            &Answer {
                feedback_id: id(1),
                status: Outcome::Accepted,
                flagged: false,
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(matches!(
            idem.claim(&student, "k", record(2), id(2)).await.unwrap(),
            Claim::Submit { .. }
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(idem.prune().await.unwrap(), 1);
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
                traceparent: None,
            }),
            keyed: true,
            flagged: false,
        };
        let json = concat!(
            r#"{"feedback_id":"ID1","status":null,"created_at":1700000000,"boot":"B","#,
            r#""record":{"key":"C1","payload":[123,125],"request_id":"r"},"keyed":true,"flagged":false}"#
        );
        assert_eq!(serde_json::to_string(&pending).unwrap(), json);
        let answered = Entry {
            status: Some(Outcome::Spooled),
            record: None,
            flagged: true,
            ..pending
        };
        let json = r#"{"feedback_id":"ID1","status":"spooled","created_at":1700000000,"boot":"B","record":null,"keyed":true,"flagged":true}"#;
        assert_eq!(serde_json::to_string(&answered).unwrap(), json);
        let read: Entry = serde_json::from_str(json).unwrap();
        assert_eq!(
            read.answer().map(|a| (a.status, a.flagged)),
            Some((Outcome::Spooled, true))
        );
        assert!(read.keyed && !read.is_for("ID2"));
        // As an earlier build wrote it: no `keyed`, a random id.
        let earlier = r#"{"feedback_id":"ID1","status":"spooled","created_at":1700000000,"boot":"B","record":null}"#;
        let read: Entry = serde_json::from_str(earlier).unwrap();
        assert!(!read.keyed && read.is_for("ID2"));
        assert_eq!(read.answer().map(|a| a.flagged), Some(false));
    }
}
