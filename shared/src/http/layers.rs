//! The layers and fallbacks every service's router gets, as one stack
//! ([`with_service_layers`]): the three services take, log, count and answer
//! requests alike, down to their 404, 405 and 500 bodies.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::FutureExt as _;
use tower_http::request_id::RequestId;
use tracing::Instrument as _;

use super::ApiError;
use crate::metrics::names;

/// `routes` with what every service's router has, in one layer
/// ([`ServiceLayer`]) so that a request pays for one boxed service and one
/// future instead of one per concern. For each request, in this order:
///
/// - a client's unusable `X-Request-Id` is dropped (`sanitize_request_id`),
///   one is made when there is none, and it goes back with the answer;
/// - a trace span per request that carries it (`request_span`), entered
///   while the handler runs, with tower-http's trace events (`DEBUG` at the
///   start and end, `ERROR` "response failed" on a 5xx);
/// - the access log line and the HTTP metrics (`ServiceLayer::finish`);
/// - a handler's panic as the contract's 500 (`panic_response`);
/// - the contract's 404 and 405 (`fallbacks`);
/// - on every answer: `X-Content-Type-Options: nosniff` (no browser reads a
///   JSON error or a CSV as a page), `Cache-Control: no-store` where the
///   handler set none (statistics and comments stay out of shared caches
///   and the browser's disk), and `Referrer-Policy: no-referrer` (a page
///   just back from the provider has its code in the URL).
///
/// Call it with every route in: a route added after it gets none of this.
/// The state goes in after it (`.with_state`).
pub fn with_service_layers<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    fallbacks(routes).layer(ServiceLayer)
}

/// The request id's header, on the request and on the answer.
const REQUEST_ID: HeaderName = HeaderName::from_static(crate::trace::REQUEST_ID);

/// The layer [`with_service_layers`] puts on every route (and the
/// fallbacks): inside the router, so the matched route is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceLayer;

impl<I> tower::Layer<I> for ServiceLayer {
    type Service = ServiceLayers<I>;

    fn layer(&self, inner: I) -> Self::Service {
        ServiceLayers { inner }
    }
}

/// The service [`ServiceLayer`] makes.
#[derive(Debug, Clone)]
pub struct ServiceLayers<I> {
    inner: I,
}

impl<I> tower::Service<Request> for ServiceLayers<I>
where
    I: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let request_id = request_id(&mut request);
        let method = method_label(request.method());
        let route = request.extensions().get::<MatchedPath>().cloned();
        let span = request_span(&request, &request_id);
        let started = Instant::now();
        // Called here rather than in the future: `self.inner` is the service
        // that was polled ready. A panic while making the future is a
        // handler's panic too.
        let called = {
            let _entered = span.enter();
            tracing::debug!(target: "tower_http::trace::on_request", "started processing request");
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)))
        };
        let answer = async move {
            let response = match called {
                Ok(future) => match AssertUnwindSafe(future).catch_unwind().await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(panic) => panic_response(panic),
                },
                Err(panic) => panic_response(panic),
            };
            Ok(finish(
                response,
                route,
                method,
                request_id,
                started.elapsed(),
            ))
        };
        Box::pin(answer.instrument(span))
    }
}

/// Logs and counts the answer, and gives it the headers every answer has.
fn finish(
    mut response: Response,
    route: Option<MatchedPath>,
    method: &'static str,
    request_id: HeaderValue,
    elapsed: Duration,
) -> Response {
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status();
    tracing::info!(
        target: "access",
        method,
        route = %route,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = %request_id.to_str().unwrap_or_default(),
        "request"
    );
    record_metrics(route, method, status.as_u16(), elapsed);
    let millis = elapsed.as_millis();
    tracing::debug!(
        target: "tower_http::trace::on_response",
        latency = format_args!("{millis} ms"),
        status = status.as_u16() as i32,
        "finished processing request"
    );
    if status.is_server_error() {
        tracing::error!(
            target: "tower_http::trace::on_failure",
            classification = format_args!("Status code: {status}"),
            latency = format_args!("{millis} ms"),
            "response failed"
        );
    }
    let headers = response.headers_mut();
    if !headers.contains_key(&REQUEST_ID) {
        headers.insert(REQUEST_ID, request_id);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The request's id, after `sanitize_request_id`: the client's, or a new
/// UUID when it sent none (set on the request's header, and as tower-http's
/// [`RequestId`] extension).
fn request_id(request: &mut Request) -> HeaderValue {
    sanitize_request_id(request);
    let id = match request.headers().get(&REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
            let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
            let id = HeaderValue::from_str(text).expect("a UUID is a header value");
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    request.extensions_mut().insert(RequestId::new(id.clone()));
    id
}

/// Each request's span, named by method and path, carrying its id (from
/// [`request_id`]); exported, it continues the client's trace (`traceparent`).
fn request_span(request: &Request, request_id: &HeaderValue) -> tracing::Span {
    let id = request_id.to_str().unwrap_or("");
    let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id);
    let traceparent = request
        .headers()
        .get(crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    if let Some(traceparent) = traceparent {
        crate::trace::continue_trace(&span, traceparent);
    }
    span
}

/// The contract's 404 and 405 bodies instead of axum's empty ones: the one
/// place either is answered. Set before the layer, so that a 404 or 405
/// carries the request id and counts in the metrics like any other answer
/// (set after it, it would bypass it). The 405 goes to every route
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
/// connection closed without an answer. A panic is a bug; this only makes
/// sure the client still hears back, in the contract's format.
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

/// Drops a client's `X-Request-Id` that is empty, longer than 128 bytes or
/// not visible ASCII, or sent more than once, so a fresh one is made
/// instead. The id goes into logs, and ingest keeps it with every spooled
/// event: a client could otherwise make each record some 64 KiB.
fn sanitize_request_id(request: &mut Request) {
    let headers = request.headers_mut();
    let mut values = headers.get_all(&REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (Some(only), None) => crate::trace::is_request_id(only.as_bytes()),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove(&REQUEST_ID);
    }
}

/// A request's method as a metrics label: one of HTTP's own methods, else
/// `other`. Any token is a valid method, and a label taken from the request
/// as it came would let anyone add series to `/metrics` without end.
fn method_label(method: &Method) -> &'static str {
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

/// A route's and method's metric handles: the duration histogram, and a
/// request counter per status seen.
struct Handles {
    duration: metrics::Histogram,
    by_status: Vec<(u16, metrics::Counter)>,
}

thread_local! {
    /// Handles already registered, by route and method, per thread: a
    /// request then neither builds label sets nor looks them up in the
    /// recorder's shared registry. Bounded: routes are the matched patterns
    /// (never raw paths), methods and statuses few.
    static HANDLES: RefCell<HashMap<String, HashMap<&'static str, Handles>>> =
        RefCell::new(HashMap::new());
}

/// Counts a request by route, method and status, and times it by route and
/// method. The route is the matched pattern (`/v1/courses/{course_id}/stats`)
/// or `unmatched`, never the raw path: a path can carry whatever a client
/// typed, and a label from it would let anyone add series without end. The
/// access line (target `access`, one INFO line a request, so
/// `RUST_LOG=info,access=warn` silences it alone) is written by `finish`.
fn record_metrics(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    HANDLES.with_borrow_mut(|routes| {
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), HashMap::new());
        }
        let methods = routes.get_mut(route).expect("inserted above");
        let handles = methods.entry(method).or_insert_with(|| Handles {
            duration: metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "route" => route.to_owned(), "method" => method),
            by_status: Vec::new(),
        });
        handles.duration.record(elapsed.as_secs_f64());
        let counter = match handles.by_status.iter().position(|(s, _)| *s == status) {
            Some(at) => &handles.by_status[at].1,
            None => {
                let counter = metrics::counter!(names::HTTP_REQUESTS_TOTAL, "route" => route.to_owned(), "method" => method, "status" => status.to_string());
                handles.by_status.push((status, counter));
                &handles.by_status[handles.by_status.len() - 1].1
            }
        };
        counter.increment(1);
    });
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
            .layer(ServiceLayer);
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
        let app = Router::new().route("/boom", get(boom)).layer(ServiceLayer);
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
    async fn every_answer_gets_the_security_headers_and_a_sane_request_id() {
        let routes = Router::new()
            .route("/plain", get(|| async { "ok" }))
            .route(
                "/cached",
                get(|| async { ([(header::CACHE_CONTROL, "max-age=60")], "ok") }),
            )
            .route("/boom", get(boom));
        let app = with_service_layers(routes);
        let call = |request: Request<Body>| {
            let app = app.clone();
            async move { app.oneshot(request).await.unwrap() }
        };

        let response = call(Request::get("/plain").body(Body::empty()).unwrap()).await;
        let headers = response.headers();
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        let made = headers["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");

        let response = call(Request::get("/cached").body(Body::empty()).unwrap()).await;
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "max-age=60",
            "the handler's own is kept"
        );

        // Sent twice: neither is kept.
        let request = Request::get("/plain")
            .header("x-request-id", "a")
            .header("x-request-id", "b")
            .body(Body::empty())
            .unwrap();
        let response = call(request).await;
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

        let request = Request::get("/boom")
            .header("x-request-id", "req-9")
            .body(Body::empty())
            .unwrap();
        let response = call(request).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-request-id"], "req-9");
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
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
