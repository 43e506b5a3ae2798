//! The Kafka record of one feedback: what the producer sends, what the spool
//! keeps until Kafka acknowledges it, and what a pending idempotency entry
//! keeps so that a later process can submit it again.
//!
//! It has two forms on disk, and a spool written by one build must replay
//! with the next, so both are pinned by tests: the spool's compact bytes
//! ([`KafkaRecord::spool_bytes`]) and its JSON inside an idempotency entry
//! (the serde field names).

use serde::{Deserialize, Serialize};
use shared::event::FeedbackSubmitted;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord {
    /// The Kafka key: the course id, so one course's events stay in order on one partition.
    pub key: String,
    /// The event JSON.
    pub payload: Vec<u8>,
    /// The request id that accepted it, carried into the Kafka header.
    pub request_id: String,
}

impl KafkaRecord {
    /// The record that carries `event`, accepted by the request `request_id`.
    pub fn of_event(event: &FeedbackSubmitted, request_id: String) -> Self {
        Self {
            key: event.course_id.to_string(),
            payload: event.to_json(),
            request_id,
        }
    }

    /// The spool's form: key length (u16 BE), key, request id length (u16
    /// BE), request id, payload.
    pub fn spool_bytes(&self) -> Vec<u8> {
        let key = &self.key.as_bytes()[..self.key.len().min(u16::MAX as usize)];
        let id = &self.request_id.as_bytes()[..self.request_id.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(4 + key.len() + id.len() + self.payload.len());
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads [`KafkaRecord::spool_bytes`] back; `None` when they are not a record.
    pub fn from_spool_bytes(bytes: &[u8]) -> Option<Self> {
        let take = |at: usize| -> Option<(String, usize)> {
            let len = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
            let text = std::str::from_utf8(bytes.get(at + 2..at + 2 + len)?).ok()?;
            Some((text.to_owned(), at + 2 + len))
        };
        let (key, at) = take(0)?;
        let (request_id, at) = take(at)?;
        Some(Self {
            key,
            request_id,
            payload: bytes[at..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn course_record() -> KafkaRecord {
        KafkaRecord {
            key: "课程-1".into(),
            payload: b"{\"a\":1}".to_vec(),
            request_id: "rid".into(),
        }
    }

    #[test]
    fn the_spool_form_is_byte_for_byte_the_one_spools_hold() {
        // "课程-1" is 8 bytes of UTF-8.
        let mut expected = vec![0, 8];
        expected.extend_from_slice("课程-1".as_bytes());
        expected.extend_from_slice(&[0, 3]);
        expected.extend_from_slice(b"rid{\"a\":1}");
        assert_eq!(course_record().spool_bytes(), expected);
        assert_eq!(
            KafkaRecord::from_spool_bytes(&expected),
            Some(course_record())
        );
    }

    #[test]
    fn bytes_that_are_not_a_record_decode_to_none() {
        assert_eq!(KafkaRecord::from_spool_bytes(&[0, 9, b'x']), None);
        assert_eq!(KafkaRecord::from_spool_bytes(&[0]), None);
        assert_eq!(KafkaRecord::from_spool_bytes(&[0, 1, 0xff, 0, 0]), None);
    }

    #[test]
    fn the_json_form_is_the_one_idempotency_entries_hold() {
        let record = KafkaRecord {
            key: "C1".into(),
            payload: b"{}".to_vec(),
            request_id: "r".into(),
        };
        let json = r#"{"key":"C1","payload":[123,125],"request_id":"r"}"#;
        assert_eq!(serde_json::to_string(&record).unwrap(), json);
        assert_eq!(serde_json::from_str::<KafkaRecord>(json).unwrap(), record);
    }
}
