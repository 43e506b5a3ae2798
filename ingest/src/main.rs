use clap::{Parser, Subcommand};
use shared::auth::{JwtKeys, Role};

/// Ingest: takes students' feedback over HTTP and produces it to Kafka.
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
    /// Print a signed token for development and the demo (uses FEEDBACK_JWT_SECRET).
    MintToken {
        /// The subject: a student or admin id.
        #[arg(long)]
        sub: String,
        /// `student` or `admin`.
        #[arg(long, default_value = "student", value_parser = ["student", "admin"])]
        role: String,
        /// Hours until it expires.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            shared::telemetry::init();
            let config = ingest::Config::from_env()?;
            let app = ingest::Application::build(config).await?;
            app.run_until(shared::shutdown::signal()).await
        }
        Command::MintToken {
            sub,
            role,
            ttl_hours,
        } => {
            let keys = JwtKeys::new(shared::config::jwt_secret()?.as_bytes())?;
            let role = if role == "admin" {
                Role::Admin
            } else {
                Role::Student
            };
            println!("{}", keys.mint(&sub, role, ttl_hours * 3600));
            Ok(())
        }
    }
}
