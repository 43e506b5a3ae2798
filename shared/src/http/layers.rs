//! The layers and fallbacks every service's router gets, as one stack
//! ([`with_service_layers`]): the three services take, log, count and answer
//! requests alike, down to their 404, 405 and 500 bodies.

use std::any::Any;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use super::ApiError;
use crate::metrics::names;

/// `routes` with what every service's router has, from the outside in:
///
/// - `sanitize_request_id` drops a client's unusable `X-Request-Id`,
///   `SetRequestIdLayer` makes one when there is none, and
///   `PropagateRequestIdLayer` sends it back with the answer;
/// - a trace span per request that carries it (`request_span`);
/// - `track_metrics`: the access log line and the HTTP metrics;
/// - `catch_panic`: a handler's panic as the contract's 500;
/// - the contract's 404 and 405 (`fallbacks`);
/// - outermost, on every answer: `X-Content-Type-Options: nosniff` (no
///   browser reads a JSON error or a CSV as a page), `Cache-Control:
///   no-store` where the handler set none (statistics and comments stay out
///   of shared caches and the browser's disk), and `Referrer-Policy:
///   no-referrer` (a page just back from the provider has its code in the
///   URL).
///
/// Call it with every route in: a route added after it gets none of this.
/// The state goes in after it (`.with_state`).
pub fn with_service_layers<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    let request_id = HeaderName::from_static("x-request-id");
    fallbacks(routes)
        .layer(catch_panic())
        .layer(axum::middleware::from_fn(track_metrics))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn(sanitize_request_id))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
}

/// Each request's span, named by method and path, carrying the request id;
/// exported, it continues the client's trace (`traceparent`).
fn request_span(request: &axum::extract::Request) -> tracing::Span {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let id = header(crate::trace::REQUEST_ID).unwrap_or("");
    let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id);
    if let Some(traceparent) = header(crate::trace::TRACEPARENT) {
        crate::trace::continue_trace(&span, traceparent);
    }
    span
}

/// The contract's 404 and 405 bodies instead of axum's empty ones: the one
/// place either is answered. Set before the layers, so that a 404 or 405
/// carries the request id and counts in the metrics like any other answer
/// (set after them, it would bypass them). The 405 goes to every route
/// already in `router` that has no handler for the method, with its `Allow`
/// header.
fn fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Fallback for unknown paths: the contract's 404 body instead of an empty one.
async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Fallback for a known path with the wrong method.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    )
}

/// A handler's panic as the contract's 500 body (logged), instead of a
/// connection closed without an answer. A panic is a bug; this layer only
/// makes sure the client still hears back, in the contract's format.
fn catch_panic() -> CatchPanicLayer<fn(Box<dyn Any + Send + 'static>) -> Response> {
    CatchPanicLayer::custom(panic_response as fn(_) -> _)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    ApiError::internal(format!("a handler panicked: {message}")).into_response()
}

/// The longest `X-Request-Id` a client may choose.
pub use crate::trace::MAX_REQUEST_ID_LEN;

/// Middleware, outside `SetRequestIdLayer`: drops a client's `X-Request-Id`
/// that is empty, longer than 128 bytes or not visible ASCII, so a fresh one
/// is made instead. The id goes into logs, and ingest keeps it with every
/// spooled event: a client could otherwise make each record some 64 KiB.
async fn sanitize_request_id(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers_mut();
    let values = headers.get_all("x-request-id");
    let keep = values.iter().count() == 1
        && values
            .iter()
            .all(|v| crate::trace::is_request_id(v.as_bytes()));
    if !keep {
        headers.remove("x-request-id");
    }
    next.run(request).await
}

/// A request's method as a metrics label: one of HTTP's own methods, else
/// `other`. Any token is a valid method, and a label taken from the request
/// as it came would let anyone add series to `/metrics` without end.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Middleware: counts requests by route, method and status, times them, and
/// writes the access log, one INFO line per request (target `access`, so
/// `RUST_LOG=info,access=warn` silences it alone). The route is the matched
/// pattern (`/v1/courses/{course_id}/stats`), never the raw path: a path can
/// carry whatever a client typed, and a label or log field from it would let
/// anyone add series without end.
async fn track_metrics(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = method_label(request.method());
    // Set (or checked) by the request-id layers outside this one.
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    tracing::info!(
        target: "access",
        method,
        route = %route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = %request_id,
        "request"
    );
    metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "route" => route.clone(), "method" => method)
        .record(elapsed.as_secs_f64());
    metrics::counter!(names::HTTP_REQUESTS_TOTAL, "route" => route, "method" => method, "status" => status.to_string())
        .increment(1);
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::http::{header, Request};
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    /// A log sink the test reads back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_request_writes_one_access_line_with_route_status_latency_and_request_id() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = Router::new()
            .route("/v1/courses/{course_id}/stats", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(track_metrics));
        let request = Request::get("/v1/courses/CS101/stats")
            .header("x-request-id", "req-42")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let request = Request::post("/nowhere").body(Body::empty()).unwrap();
        assert_eq!(
            app.oneshot(request).await.unwrap().status(),
            StatusCode::NOT_FOUND
        );

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &serde_json::Value| l["target"] == "access")
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["method"], "GET");
        assert_eq!(
            first["route"], "/v1/courses/{course_id}/stats",
            "never the raw path"
        );
        assert_eq!(first["status"], 200);
        assert_eq!(first["request_id"], "req-42");
        assert!(first["latency_ms"].as_f64().unwrap() >= 0.0, "{first}");
        assert_eq!(lines[1]["route"], "unmatched");
        assert_eq!(lines[1]["status"], 404);
        assert_eq!(lines[1]["method"], "POST");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_the_contracts_500_body() {
        let app = Router::new().route("/boom", get(boom)).layer(catch_panic());
        let request = Request::get("/boom").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "internal", "{body}");
    }

    /// The answer's status, `X-Request-Id`, `Allow` and error code.
    async fn answer(
        app: &Router,
        request: Request<Body>,
    ) -> (
        StatusCode,
        Option<String>,
        Option<String>,
        serde_json::Value,
    ) {
        let response = app.clone().oneshot(request).await.unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let (status, id, allow) = (response.status(), header("x-request-id"), header("allow"));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        (status, id, allow, body["error"]["code"].clone())
    }

    #[tokio::test]
    async fn a_404_and_a_405_pass_the_layers_with_the_contracts_body() {
        // A route with a layer of its own, as ingest's body limit is.
        let routes = Router::new()
            .route("/v1/feedback", post(|| async { "ok" }))
            .layer(DefaultBodyLimit::disable())
            .route("/healthz", get(|| async { "ok" }));
        let app = with_service_layers(routes);

        let request = Request::get("/v1/feedback").body(Body::empty()).unwrap();
        let (status, id, allow, code) = answer(&app, request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(allow.as_deref(), Some("POST"));
        assert!(id.is_some_and(|id| !id.is_empty()), "a request id is made");
        assert_eq!(code, "method_not_allowed");

        let request = Request::delete("/healthz")
            .header("x-request-id", "req-7")
            .body(Body::empty())
            .unwrap();
        let (status, id, allow, code) = answer(&app, request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(allow.as_deref(), Some("GET,HEAD"));
        assert_eq!(id.as_deref(), Some("req-7"), "the client's id comes back");
        assert_eq!(code, "method_not_allowed");

        let request = Request::get("/nowhere")
            .header("x-request-id", "x".repeat(MAX_REQUEST_ID_LEN + 1))
            .body(Body::empty())
            .unwrap();
        let (status, id, _, code) = answer(&app, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            id.is_some_and(|id| id.len() <= MAX_REQUEST_ID_LEN),
            "an overlong id is replaced"
        );
        assert_eq!(code, "not_found");

        let request = Request::post("/v1/feedback").body(Body::empty()).unwrap();
        let (status, id, _, _) = answer(&app, request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(id.is_some());
    }
}
