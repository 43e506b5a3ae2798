#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = ingest::Config::from_env()?;
    let app = ingest::Application::build(config).await?;
    app.run_until(shared::shutdown::signal()).await
}
