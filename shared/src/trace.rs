//! A submission's trace through the pipeline: the request id ingest's HTTP
//! layers give every request and, when the client sent one, its W3C trace
//! context (`traceparent`). Ingest puts both on the event's Kafka record as
//! headers of these names, the spool keeping them while Kafka is down; the
//! aggregator logs them with every event it commits, and a dead letter keeps
//! them. The event's JSON (its schema) does not carry them: they describe the
//! request that brought the event, not the feedback.
//!
//! When spans are exported (`shared::telemetry`), [`continue_trace`] makes a
//! span part of the client's trace: ingest's request span, and the
//! aggregator's span for each event it commits. The `traceparent` travels
//! as the client sent it, so both are children of the client's span.

use rdkafka::message::Headers;

/// The request id: the HTTP header every service answers with, and the Kafka
/// header ingest puts on the record.
pub const REQUEST_ID: &str = "x-request-id";

/// The W3C trace context header, on the HTTP request and on the Kafka record.
pub const TRACEPARENT: &str = "traceparent";

/// The longest request id kept: a client's longer one is replaced by the
/// HTTP layers, and one read from Kafka is left out of the log.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether `bytes` is a request id the pipeline keeps: 1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters. It goes into log lines
/// (plain text too, where a line break would forge a line) and into every
/// spooled record (where a long one would cost disk).
pub fn is_request_id(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Whether `value` is a `traceparent` of the W3C Trace Context's version
/// `00`: `00-<trace id: 32 hex>-<parent id: 16 hex>-<flags: 2 hex>`, in
/// lowercase, neither id all zeros. Only such a value is passed on: anything
/// else a client sends is ignored, as the recommendation says a receiver
/// does, rather than refused (a broken tracer must not lose feedback).
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let not_zero = |part: &str| part.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace_id, parent_id, flags]
        if *version == "00"
            && hex(trace_id, 32)
            && not_zero(trace_id)
            && hex(parent_id, 16)
            && not_zero(parent_id)
            && hex(flags, 2))
}

/// Makes `span` a child of the span `traceparent` names (a well-formed
/// one), when spans are exported; else does nothing, at no cost.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !crate::telemetry::exporting() || !is_traceparent(traceparent) {
        return;
    }
    let carrier =
        std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    // Fails only when the span is disabled (filtered out): nothing to continue.
    let _ = span.set_parent(parent);
}

/// What a Kafka record says of the request that produced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// Its `x-request-id` header, when it is one ingest could have written.
    pub request_id: Option<String>,
    /// Its `traceparent` header, when well-formed.
    pub traceparent: Option<String>,
}

impl TraceContext {
    /// The trace headers of a record. Anyone who can produce to the topic
    /// can write headers, so a value ingest would not have written (too long,
    /// not visible ASCII, not a `traceparent`) is left out, as is a header
    /// that appears twice.
    pub fn from_kafka<H: Headers>(headers: Option<&H>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        let only = |name: &str| {
            let mut values = headers.iter().filter(|h| h.key == name);
            match (values.next(), values.next()) {
                (Some(header), None) => header.value.and_then(|v| std::str::from_utf8(v).ok()),
                _ => None,
            }
        };
        Self {
            request_id: only(REQUEST_ID)
                .filter(|id| is_request_id(id.as_bytes()))
                .map(str::to_owned),
            traceparent: only(TRACEPARENT)
                .filter(|value| is_traceparent(value))
                .map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_a_well_formed_version_00_traceparent_is_one() {
        assert!(is_traceparent(VALID));
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        for bad in [
            "",
            "garbage",
            // Uppercase hex, all-zero ids, a wrong length, a version this does not read.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_records_trace_leaves_out_what_ingest_would_not_have_written() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "other",
                value: Some("x"),
            })
            .insert(Header {
                key: REQUEST_ID,
                value: Some("req-1"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some(VALID),
            });
        assert_eq!(
            TraceContext::from_kafka(Some(&headers)),
            TraceContext {
                request_id: Some("req-1".into()),
                traceparent: Some(VALID.into()),
            }
        );
        assert_eq!(
            TraceContext::from_kafka::<OwnedHeaders>(None),
            TraceContext::default()
        );
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        let bad = OwnedHeaders::new()
            .insert(Header {
                key: REQUEST_ID,
                value: Some(long.as_str()),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some("00-zz"),
            });
        assert_eq!(
            TraceContext::from_kafka(Some(&bad)),
            TraceContext::default()
        );
        let twice = OwnedHeaders::new()
            .insert(Header {
                key: REQUEST_ID,
                value: Some("a\nforged line"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some(VALID),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some(VALID),
            });
        assert_eq!(
            TraceContext::from_kafka(Some(&twice)),
            TraceContext::default()
        );
    }
}
