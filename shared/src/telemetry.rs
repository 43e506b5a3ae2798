//! Structured logs with `tracing`: `RUST_LOG` filters (default `info`),
//! `FEEDBACK_LOG_FORMAT=json` switches to JSON lines. Colours only on a
//! terminal: a log file or `docker compose logs` gets plain text.
//!
//! Lines go to standard output from a thread of their own, which writes
//! whatever has queued up in one `write`: a request does not wait for the
//! log's file or pipe, and a busy service makes a few writes a millisecond
//! rather than one per line (docs/benchmarks.md). Nothing is dropped: when
//! the queue is full a caller waits. What the queue holds when the process
//! is killed with -9 is lost, as the last lines of any buffered log are; an
//! orderly stop writes it out.
//!
//! Trace export is optional and off by default: with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! set, the spans `RUST_LOG` lets through also go to that OpenTelemetry
//! collector over OTLP/HTTP (protobuf), as service `OTEL_SERVICE_NAME`
//! (default the binary's name); the exporter's other standard variables
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, ...) apply. A span continues
//! the client's trace when the request came with a `traceparent`
//! (`shared::trace`). Unset, nothing is exported and nothing is set up.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Set once the exporter is installed: the trace helpers do nothing without it.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint was configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What must live as long as the process: dropped at the end of `main`, it
/// sends the spans still queued.
#[must_use = "dropping it at once stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Writes out the queued lines when dropped.
    _log: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                tracing::warn!(%err, "sending the last spans to the OTLP endpoint failed");
            }
        }
    }
}

/// Installs the global subscriber once, for the service `service`; later
/// calls (tests) install nothing and export nothing.
pub fn init(service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // Far more than a writer behind by a moment holds; each slot of
        // the queue is resident once used, and tracing-appender's default
        // (128,000 lines) made each service megabytes larger
        // (docs/benchmarks.md).
        .buffered_lines_limit(8192)
        .thread_name("log writer")
        .finish(std::io::BufWriter::new(std::io::stdout()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal());
    let fmt = if crate::env::var("FEEDBACK_LOG_FORMAT").as_deref() == Some("json") {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let (provider, export_error) = match otlp_provider(service) {
        Ok(provider) => (provider, None),
        Err(err) => (None, Some(err)),
    };
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(err) = export_error {
        tracing::error!(%err, "the OTLP trace exporter could not be set up: spans are not exported");
    }
    // Already installed (tests start many apps in one process): keep the first.
    let provider = provider.filter(|_| installed);
    if provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!("exporting spans over OTLP/HTTP");
    }
    Telemetry {
        provider,
        _log: installed.then_some(guard),
    }
}

/// The tracer provider, when an OTLP endpoint is configured.
fn otlp_provider(service: &'static str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| crate::env::var(name).is_some());
    if !configured {
        return Ok(None);
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let name = crate::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}
