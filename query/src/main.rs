use clap::{Parser, Subcommand};

// jemalloc, as in ingest: glibc's malloc locks an arena whenever one thread
// frees what another allocated, which query's connections do all the time;
// jemalloc's thread caches take such frees without a lock.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Query: serves course statistics, comments, trends and CSV to admins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Rebuild every course's Redis hash from MySQL (FEEDBACK_MYSQL_URL, FEEDBACK_REDIS_URL).
    RebuildCache {
        /// Courses per page.
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("query");
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = query::Config::from_env()?;
            let app = query::Application::build(config).await?;
            app.run_until(shared::shutdown::signal()).await
        }
        Command::RebuildCache { page_size } => query::warm::rebuild_from_env(page_size).await,
    }
}
