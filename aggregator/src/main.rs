#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = aggregator::Config::from_env()?;
    let app = aggregator::Application::build(config).await?;
    app.run_until(shared::shutdown::signal()).await
}
