// jemalloc, as in ingest and query: with glibc's malloc, allocation is a hot
// spot on every thread here too (malloc_consolidate on the router,
// _int_malloc in librdkafka's fetch parsing).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Aggregator: consumes feedback events from Kafka into MySQL and Redis,
/// with an exactly-once effect. Every setting is an environment variable
/// (README, "Configuration"); it serves /healthz, /readyz and /metrics on
/// FEEDBACK_AGGREGATOR_ADDR.
#[derive(clap::Parser)]
#[command(version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // No options: `--help` and `--version` answer instead of starting.
    <Cli as clap::Parser>::parse();
    let _telemetry = shared::telemetry::init("aggregator");
    let config = aggregator::Config::from_env()?;
    let app = aggregator::Application::build(config).await?;
    app.run_until(shared::shutdown::signal()).await
}
