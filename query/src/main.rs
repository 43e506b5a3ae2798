#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = query::Config::from_env()?;
    let app = query::Application::build(config).await?;
    app.run_until(shared::shutdown::signal()).await
}
