//! Request bodies a handler reads itself, within its own limits: the media
//! type it takes (415 otherwise), a size cap refused from `Content-Length`
//! before reading (413), and a deadline for the body to arrive (408), each
//! in the contract's error format rather than axum's plain-text rejections.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};

use super::ApiError;

/// How long a body may take to arrive: a client that stops half-way would
/// otherwise hold its connection and the handler for good.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// 415 unless `Content-Type` is `mime`, with no charset or a UTF-8 one (a
/// body declared in Latin-1 or UTF-16 is not one these handlers read).
pub fn require_media_type(headers: &HeaderMap, mime: &str) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut parts = value.split(';');
    let given = parts.next().unwrap_or_default();
    let charset_ok = parts.all(|param| match param.split_once('=') {
        Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = charset.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    if given.trim().eq_ignore_ascii_case(mime) && charset_ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be {mime} (in UTF-8)"),
        ))
    }
}

/// The body is left (partly) unread, so the connection cannot carry another
/// request: `Connection: close` tells a keep-alive client to open a new one.
fn too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body must be at most {max_bytes} bytes"),
    )
    .with_header(header::CONNECTION, "close")
}

/// Reads at most `max_bytes` within [`READ_TIMEOUT`]; a larger declared
/// length is refused unread.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;

    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes as u64) {
        return Err(too_large(max_bytes));
    }
    let limited = http_body_util::Limited::new(body, max_bytes);
    let Ok(collected) = tokio::time::timeout(READ_TIMEOUT, limited.collect()).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the body did not arrive within {} s",
                READ_TIMEOUT.as_secs()
            ),
        )
        .with_header(header::CONNECTION, "close"));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(max_bytes))
        }
        Err(_) => Err(ApiError::bad_request(
            "invalid_body",
            "the request body could not be read",
        )),
    }
}

/// The body as a JSON object: 400 `invalid_json` when it is not JSON or not
/// an object, so each handler checks its members by hand and says which is
/// at fault.
pub fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    match value {
        serde_json::Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        )),
    }
}
