//! The Kafka record of one feedback: what the producer sends, what the spool
//! keeps until Kafka acknowledges it, and what a pending idempotency entry
//! keeps so that a later process can submit it again.
//!
//! It has two forms on disk, and a spool written by one build must replay
//! with the next, so both are pinned by tests: the spool's compact bytes
//! ([`KafkaRecord::spool_bytes`]) and its JSON inside an idempotency entry
//! (the serde field names; `traceparent` is left out when there is none, so
//! an entry without one reads as before on either build).

use serde::{Deserialize, Serialize};
use shared::event::FeedbackSubmitted;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord {
    /// The Kafka key: the course id, so one course's events stay in order on one partition.
    pub key: String,
    /// The event JSON.
    pub payload: Vec<u8>,
    /// The request id that accepted it, carried into the `x-request-id` header.
    pub request_id: String,
    /// The client's W3C trace context, carried into the `traceparent` header;
    /// only a well-formed one (`shared::trace::is_traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The first two bytes of the spool's second form. The first form starts
/// with its key's length (u16 BE): a course id is at most 64 characters, so
/// its first byte is always 0 and never this marker.
const TRACED: [u8; 2] = [0xff, 0x02];

impl KafkaRecord {
    /// The record that carries `event`, accepted by the request `request_id`
    /// (which sent `traceparent`, if any).
    pub fn of_event(
        event: &FeedbackSubmitted,
        request_id: String,
        traceparent: Option<String>,
    ) -> Self {
        Self {
            key: event.course_id.to_string(),
            payload: event.to_json(),
            request_id,
            traceparent,
        }
    }

    /// The spool's form. Without a traceparent, the first form: key length
    /// (u16 BE), key, request id length (u16 BE), request id, payload. With
    /// one, the second: the marker [`TRACED`], then the same with the
    /// traceparent (length, bytes) before the payload. The first form is the
    /// one earlier builds wrote and read, so records without a trace context
    /// still replay on them after a downgrade.
    pub fn spool_bytes(&self) -> Vec<u8> {
        let traceparent = self.traceparent.as_deref();
        let fields = [Some(self.key.as_str()), Some(&self.request_id), traceparent];
        let mut out = Vec::with_capacity(
            8 + fields.iter().flatten().map(|f| f.len()).sum::<usize>() + self.payload.len(),
        );
        if traceparent.is_some() {
            out.extend_from_slice(&TRACED);
        }
        for field in fields.into_iter().flatten() {
            let bytes = &field.as_bytes()[..field.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads [`KafkaRecord::spool_bytes`] back (either form); `None` when
    /// they are not a record.
    pub fn from_spool_bytes(bytes: &[u8]) -> Option<Self> {
        Self::decode_spool_bytes(bytes).ok()
    }

    /// As [`KafkaRecord::from_spool_bytes`], saying why bytes are not a
    /// record: an operator looking at one moved aside needs more than "no".
    pub fn decode_spool_bytes(bytes: &[u8]) -> Result<Self, SpoolDecodeError> {
        let take = |at: usize, field: &'static str| -> Result<(String, usize), SpoolDecodeError> {
            let len = bytes
                .get(at..at + 2)
                .map(|len| u16::from_be_bytes([len[0], len[1]]) as usize)
                .ok_or(SpoolDecodeError::Truncated { field, at })?;
            let raw = bytes
                .get(at + 2..at + 2 + len)
                .ok_or(SpoolDecodeError::Truncated { field, at })?;
            let text =
                std::str::from_utf8(raw).map_err(|_| SpoolDecodeError::NotUtf8 { field, at })?;
            Ok((text.to_owned(), at + 2 + len))
        };
        let traced = bytes.starts_with(&TRACED);
        let (key, at) = take(if traced { TRACED.len() } else { 0 }, "key")?;
        let (request_id, at) = take(at, "request id")?;
        let (traceparent, at) = if traced {
            let (traceparent, at) = take(at, "traceparent")?;
            (Some(traceparent), at)
        } else {
            (None, at)
        };
        Ok(Self {
            key,
            request_id,
            traceparent,
            payload: bytes[at..].to_vec(),
        })
    }
}

/// Why spool bytes are not a [`KafkaRecord`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolDecodeError {
    #[error("the {field} at byte {at} runs past the end of the record")]
    Truncated { field: &'static str, at: usize },
    #[error("the {field} at byte {at} is not UTF-8")]
    NotUtf8 { field: &'static str, at: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn course_record() -> KafkaRecord {
        KafkaRecord {
            key: "课程-1".into(),
            payload: b"{\"a\":1}".to_vec(),
            request_id: "rid".into(),
            traceparent: None,
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
        assert_eq!(
            KafkaRecord::decode_spool_bytes(&[0, 9, b'x'])
                .unwrap_err()
                .to_string(),
            "the key at byte 0 runs past the end of the record"
        );
        assert_eq!(
            KafkaRecord::decode_spool_bytes(&[0, 1, 0xff, 0, 0])
                .unwrap_err()
                .to_string(),
            "the key at byte 0 is not UTF-8"
        );
    }

    #[test]
    fn the_json_form_is_the_one_idempotency_entries_hold() {
        let record = KafkaRecord {
            key: "C1".into(),
            payload: b"{}".to_vec(),
            request_id: "r".into(),
            traceparent: None,
        };
        let json = r#"{"key":"C1","payload":[123,125],"request_id":"r"}"#;
        assert_eq!(serde_json::to_string(&record).unwrap(), json);
        assert_eq!(serde_json::from_str::<KafkaRecord>(json).unwrap(), record);

        let traced = KafkaRecord {
            traceparent: Some(TRACEPARENT.into()),
            ..record
        };
        let json = format!(
            r#"{{"key":"C1","payload":[123,125],"request_id":"r","traceparent":"{TRACEPARENT}"}}"#
        );
        assert_eq!(serde_json::to_string(&traced).unwrap(), json);
        assert_eq!(serde_json::from_str::<KafkaRecord>(&json).unwrap(), traced);
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traced_record_takes_the_second_spool_form_byte_for_byte() {
        let record = KafkaRecord {
            traceparent: Some(TRACEPARENT.into()),
            ..course_record()
        };
        let mut expected = vec![0xff, 0x02, 0, 8];
        expected.extend_from_slice("课程-1".as_bytes());
        expected.extend_from_slice(&[0, 3]);
        expected.extend_from_slice(b"rid");
        expected.extend_from_slice(&[0, 55]);
        expected.extend_from_slice(TRACEPARENT.as_bytes());
        expected.extend_from_slice(b"{\"a\":1}");
        assert_eq!(record.spool_bytes(), expected);
        assert_eq!(KafkaRecord::from_spool_bytes(&expected), Some(record));
        // Cut inside its traceparent, or an unknown form: not a record.
        assert_eq!(KafkaRecord::from_spool_bytes(&expected[..20]), None);
        assert_eq!(
            KafkaRecord::from_spool_bytes(&[0xff, 0x03, 0, 0, 0, 0]),
            None
        );
    }
}
