//! An OpenTelemetry collector's OTLP/HTTP trace endpoint, as far as a test
//! needs one: it takes every export and keeps its body, to look for a
//! trace id and a span name in.

use std::sync::{Arc, Mutex};

/// A collector listening on loopback until dropped.
pub struct Collector {
    /// `http://127.0.0.1:PORT`: a service's `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// The bodies of the exports to `/v1/traces` so far (protobuf).
    exports: Arc<Mutex<Vec<Vec<u8>>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Self {
        let exports: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let kept = exports.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                kept.lock().expect("not poisoned").push(body.to_vec());
                // An empty ExportTraceServiceResponse: all spans taken.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint,
            exports,
            server,
        }
    }

    /// Whether an export so far holds a span of trace `trace_id` (32 hex
    /// digits) named `name`: protobuf carries the id as its 16 bytes and the
    /// name as its UTF-8.
    pub fn has_span(&self, trace_id: &str, name: &str) -> bool {
        let id: Vec<u8> = (0..trace_id.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).expect("hex"))
            .collect();
        let contains = |body: &[u8], part: &[u8]| body.windows(part.len()).any(|w| w == part);
        self.exports
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|body| contains(body, &id) && contains(body, name.as_bytes()))
    }

    /// How many exports arrived.
    pub fn exports(&self) -> usize {
        self.exports.lock().expect("not poisoned").len()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
