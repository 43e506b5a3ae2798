//! `Idempotency-Key`: the same key from the same student within the window
//! (24 h) gets the same answer and the same `feedback_id`, and is counted once.
//!
//! The record lives in the sled store, so it survives a restart. A request
//! reserves the key atomically (compare-and-swap) with its event before
//! producing; a second request with the key waits for the first one's answer.
//! A reservation left by a process that died is taken over: its stored event
//! (same `feedback_id`) is submitted again, which the aggregator dedupes.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use shared::domain::StudentKey;
use shared::http::ApiError;

use crate::pipeline::Outcome;
use crate::store::{SpooledRecord, Store};

/// The longest accepted key.
pub const MAX_KEY_LEN: usize = 128;
/// How long a second request waits for the first one with the same key.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(15);

/// The answer remembered for a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub feedback_id: String,
    pub status: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    feedback_id: String,
    /// `None` while the first request is still submitting.
    status: Option<Outcome>,
    /// Unix seconds; the entry expires `ttl` later.
    created_at: i64,
    /// The process that reserved it; another process's pending entry is an orphan.
    boot: String,
    /// The event, kept while pending so an orphan can be submitted again.
    record: Option<SpooledRecord>,
}

/// What to do with a request that carries a key.
pub enum Claim {
    /// Submit this record (ours, or an orphan's), then call [`Idempotency::finish`].
    Submit {
        key: Vec<u8>,
        record: SpooledRecord,
        feedback_id: String,
    },
    /// Answered before: answer the same again.
    Replay(Answer),
}

pub struct Idempotency {
    store: Store,
    /// Identifies this process's reservations.
    boot: String,
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
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            boot: ulid::Ulid::new().to_string(),
            ttl,
        }
    }

    fn tree(&self) -> &sled::Tree {
        self.store.idempotency_tree()
    }

    /// The answer already given to `student`'s `key` within the time kept,
    /// if any: a retry gets it before its rate limit is counted.
    pub fn answered(&self, student: &StudentKey, key: &str) -> Result<Option<Answer>, ApiError> {
        let db_key = format!("{}:{key}", student.as_str());
        let Some(value) = self.tree().get(db_key.as_bytes()).map_err(store_failed)? else {
            return Ok(None);
        };
        let answer = serde_json::from_slice::<Entry>(&value)
            .ok()
            .filter(|entry| entry.created_at + self.ttl.as_secs() as i64 > now())
            .and_then(|entry| {
                entry.status.map(|status| Answer {
                    feedback_id: entry.feedback_id,
                    status,
                })
            });
        if answer.is_some() {
            metrics::counter!("ingest_idempotent_replays_total").increment(1);
        }
        Ok(answer)
    }

    /// Reserves `key` for `record`, or says what an earlier request did with it.
    pub async fn claim(
        &self,
        student: &StudentKey,
        key: &str,
        record: SpooledRecord,
        feedback_id: String,
    ) -> Result<Claim, ApiError> {
        let db_key = format!("{}:{key}", student.as_str()).into_bytes();
        let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
        let mine = Entry {
            feedback_id: feedback_id.clone(),
            status: None,
            created_at: now(),
            boot: self.boot.clone(),
            record: Some(record.clone()),
        };
        loop {
            let current = self.tree().get(&db_key).map_err(store_failed)?;
            let existing = current
                .as_ref()
                .and_then(|v| serde_json::from_slice::<Entry>(v).ok());
            let takeover = match &existing {
                Some(entry) if entry.created_at + self.ttl.as_secs() as i64 > now() => {
                    match (&entry.status, &entry.record) {
                        (Some(status), _) => {
                            metrics::counter!("ingest_idempotent_replays_total").increment(1);
                            return Ok(Claim::Replay(Answer {
                                feedback_id: entry.feedback_id.clone(),
                                status: *status,
                            }));
                        }
                        (None, Some(record)) if entry.boot != self.boot => Some(Entry {
                            boot: self.boot.clone(),
                            ..entry.clone()
                        })
                        .map(|e| (e, record.clone())),
                        (None, _) => {
                            // The first request is still submitting: wait for its answer.
                            if tokio::time::Instant::now() >= deadline {
                                return Err(ApiError::new(
                                StatusCode::CONFLICT,
                                "idempotency_key_in_use",
                                "a request with this Idempotency-Key is still being processed; retry shortly",
                            )
                            .with_header(axum::http::header::RETRY_AFTER, 1));
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                // Absent, expired or unreadable: reserve it afresh.
                _ => None,
            };
            let (entry, record, feedback_id) = match takeover {
                Some((entry, record)) => {
                    let id = entry.feedback_id.clone();
                    (entry, record, id)
                }
                None => (mine.clone(), record.clone(), feedback_id.clone()),
            };
            let value = serde_json::to_vec(&entry).expect("entries serialise");
            match self.tree().compare_and_swap(&db_key, current, Some(value)) {
                Ok(Ok(())) => {
                    return Ok(Claim::Submit {
                        key: db_key,
                        record,
                        feedback_id,
                    })
                }
                Ok(Err(_)) => continue, // Someone else changed it first: look again.
                Err(e) => return Err(store_failed(e)),
            }
        }
    }

    /// Records the answer for a reserved key (durably, with the next group commit).
    pub async fn finish(&self, key: Vec<u8>, answer: &Answer) {
        let entry = Entry {
            feedback_id: answer.feedback_id.clone(),
            status: Some(answer.status),
            created_at: now(),
            boot: self.boot.clone(),
            record: None,
        };
        let value = serde_json::to_vec(&entry).expect("entries serialise");
        if let Err(err) = self.store.remember(key, value).await {
            tracing::error!(%err, "could not store an idempotency answer");
        }
    }

    /// Frees a reserved key after a failed submission, so a retry can try again.
    pub fn release(&self, key: &[u8]) {
        if let Err(err) = self.tree().remove(key) {
            tracing::error!(%err, "could not release an idempotency key");
        }
    }

    /// Removes expired entries; returns how many.
    pub fn prune(&self) -> usize {
        let cutoff = now() - self.ttl.as_secs() as i64;
        let mut removed = 0;
        for (key, value) in self.tree().iter().flatten() {
            let expired =
                serde_json::from_slice::<Entry>(&value).map_or(true, |e| e.created_at < cutoff);
            if expired
                && self
                    .tree()
                    .compare_and_swap(&key, Some(value), None::<&[u8]>)
                    .is_ok_and(|r| r.is_ok())
            {
                removed += 1;
            }
        }
        removed
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

/// The local store failing (a disk fault): the contract's 503, never a 500.
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
    use crate::store::tests::tempdir;

    fn record(n: u8) -> SpooledRecord {
        SpooledRecord {
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
        let store = Store::open(&dir, 1 << 20).unwrap();
        let student = StudentKey::derive(b"k", "alice");
        let first = Idempotency::new(store.clone(), Duration::from_secs(3600));

        // A process reserves a key and dies before finishing.
        let Claim::Submit { .. } = first
            .claim(&student, "k1", record(1), "ID1".into())
            .await
            .unwrap()
        else {
            panic!("a new key is submitted")
        };
        // The next process finds the orphan and submits its event, with its feedback id.
        let second = Idempotency::new(store.clone(), Duration::from_secs(3600));
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
        let store = Store::open(&dir, 1 << 20).unwrap();
        let student = StudentKey::derive(b"k", "alice");
        let idem = Idempotency::new(store, Duration::ZERO);
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
}
