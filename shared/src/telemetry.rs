//! Structured logs with `tracing`: `RUST_LOG` filters (default `info`),
//! `FEEDBACK_LOG_FORMAT=json` switches to JSON lines. Colours only on a
//! terminal: a log file or `docker compose logs` gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (tests) do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal());
    let result = if crate::env::var("FEEDBACK_LOG_FORMAT").as_deref() == Some("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // Already installed (tests start many apps in one process): keep the first.
    let _ = result;
}
