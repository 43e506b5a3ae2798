use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::auth::{JwtKeys, Role};

// jemalloc, not glibc's malloc: a request's buffers are allocated on one tokio
// worker and often freed on another (or on librdkafka's threads), and glibc
// then locks the owning arena; jemalloc's thread caches take such frees
// without a lock.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them). Dirty pages go back to the kernel after
/// 1 s instead of 10 s, so memory freed after a burst (the spool's, above all)
/// leaves the resident set soon.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 20] = b"dirty_decay_ms:1000\0";

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
    /// Print a signed token for development, tests and quick trials
    /// (shared-secret mode only: signs with FEEDBACK_JWT_SECRET).
    MintToken {
        /// The subject: a student or admin id.
        #[arg(long)]
        sub: String,
        /// `student`, `instructor` or `admin`.
        #[arg(long, default_value = "student", value_parser = ["student", "instructor", "admin"])]
        role: String,
        /// Hours until it expires.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
    /// Look at, check, export or replay the disk spool of a stopped ingest
    /// (`ingest spool <command> --help` for each).
    Spool(ingest::spool_tools::SpoolArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let _telemetry = shared::telemetry::init("ingest");
            let config = ingest::Config::from_env()?;
            let app = ingest::Application::build(config).await?;
            app.run_until(shared::shutdown::signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MintToken {
            sub,
            role,
            ttl_hours,
        } => {
            anyhow::ensure!(
                shared::env::var("FEEDBACK_OIDC_ISSUER").is_none(),
                "FEEDBACK_OIDC_ISSUER is set: in identity-provider mode tokens come from the \
                 provider, and the services refuse any minted here"
            );
            let keys = JwtKeys::new(shared::env::jwt_secret()?.as_bytes())?;
            let role = match role.as_str() {
                "admin" => Role::Admin,
                "instructor" => Role::Instructor,
                _ => Role::Student,
            };
            println!("{}", keys.mint(&sub, role, ttl_hours * 3600));
            Ok(ExitCode::SUCCESS)
        }
        // An operator's tool: the reason alone, without a backtrace.
        Command::Spool(args) => Ok(args.run().await.unwrap_or_else(|err| {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        })),
    }
}
