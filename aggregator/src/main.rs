// jemalloc, as in ingest and query: glibc's malloc showed up in every thread
// here too (malloc_consolidate on the router, _int_malloc in librdkafka's
// fetch parsing). Drain ratio in 3 interleaved pairs of `scripts/bench.sh
// aggregator`: 0.44, 0.42, 0.46 against 0.42, 0.41, 0.39 with glibc.
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
    shared::telemetry::init();
    let config = aggregator::Config::from_env()?;
    let app = aggregator::Application::build(config).await?;
    app.run_until(shared::shutdown::signal()).await
}
