use aggregator::ops::dlq;
use aggregator::ops::quarantine::{self, Position, Selection};
use aggregator::ops::reconcile::{self, Courses};
use clap::{Args, Parser, Subcommand};

// jemalloc, as in ingest and query: with glibc's malloc, allocation is a hot
// spot on every thread here too (malloc_consolidate on the router,
// _int_malloc in librdkafka's fetch parsing).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, as ingest's (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them): dirty pages go back to the kernel after 1 s instead
/// of 10 s, so what a backlog's batches freed leaves the resident set soon.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 20] = b"dirty_decay_ms:1000\0";

/// Aggregator: consumes feedback events from Kafka into MySQL and Redis,
/// with an exactly-once effect. Every setting is an environment variable
/// (README, "Configuration"); it serves /healthz, /readyz and /metrics on
/// FEEDBACK_AGGREGATOR_ADDR. The other subcommands are an operator's hand
/// tools; those that change data are dry runs unless given --apply.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume (the default).
    Run,
    /// The events MySQL refused for good, of FEEDBACK_KAFKA_TOPIC (table quarantined_events).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// The dead letters of <FEEDBACK_KAFKA_TOPIC>.dlq: messages that could not be decoded.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Compare courses' Redis hashes with MySQL's course_stats; repair with --apply.
    Reconcile {
        #[command(flatten)]
        courses: CourseArgs,
        /// Repair what lags or differs (without it, only report).
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List the quarantined events, oldest first.
    List {
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Produce quarantined events back to the topic (keyed by course, with
    /// their request id and traceparent); each row is deleted once Kafka has
    /// the event.
    Replay {
        #[command(flatten)]
        rows: Rows,
        /// Replay (without it, only say what would be replayed).
        #[arg(long)]
        apply: bool,
    },
    /// Delete quarantined events for good.
    Purge {
        #[command(flatten)]
        rows: PurgedRows,
        /// Delete (without it, only say what would be deleted).
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List the dead letters, oldest first (reads the topic to its end, commits nothing).
    List {
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Produce dead letters' original messages back to the topic, with their
    /// key and headers; they stay in the DLQ until purged.
    Replay {
        #[command(flatten)]
        letters: Letters,
        /// Replay (without it, only say what would be replayed).
        #[arg(long)]
        apply: bool,
    },
    /// Delete every dead letter before an offset (Kafka deletes no single record).
    Purge {
        /// The first offset kept.
        #[arg(long, value_name = "N")]
        before_offset: i64,
        /// Delete (without it, only say what would be deleted).
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Letters {
    /// The dead letter at this offset of the DLQ (as `list` shows it).
    #[arg(long, value_name = "N")]
    offset: Option<i64>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct CourseArgs {
    /// One course.
    #[arg(long)]
    course: Option<String>,
    /// Every course in course_stats, with progress.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Rows {
    /// The event read at PARTITION:OFFSET (as `list` shows it).
    #[arg(long, value_name = "PARTITION:OFFSET")]
    at: Option<Position>,
    /// Every quarantined event of the topic.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PurgedRows {
    /// The event read at PARTITION:OFFSET (as `list` shows it).
    #[arg(long, value_name = "PARTITION:OFFSET")]
    at: Option<Position>,
    /// Every quarantined event of the topic.
    #[arg(long)]
    all: bool,
    /// Events quarantined before this RFC 3339 time (2025-01-31T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = quarantine::parse_time)]
    before: Option<time::OffsetDateTime>,
}

impl Rows {
    fn selection(self) -> Selection {
        self.at.map_or(Selection::All, Selection::At)
    }
}

impl PurgedRows {
    fn selection(self) -> Selection {
        match (self.at, self.before) {
            (Some(at), _) => Selection::At(at),
            (None, Some(before)) => Selection::Before(before),
            (None, None) => Selection::All,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => {
            // Only the service logs: the tools' stdout is their answer
            // (`list --json` is read by programs).
            let _telemetry = shared::telemetry::init("aggregator");
            let config = aggregator::Config::from_env()?;
            let app = aggregator::Application::build(config).await?;
            app.run_until(shared::shutdown::signal()).await
        }
        Command::Quarantine(QuarantineCommand::List { json }) => quarantine::list(json).await,
        Command::Quarantine(QuarantineCommand::Replay { rows, apply }) => {
            quarantine::replay(rows.selection(), apply).await
        }
        Command::Quarantine(QuarantineCommand::Purge { rows, apply }) => {
            quarantine::purge(rows.selection(), apply).await
        }
        Command::Dlq(DlqCommand::List { json }) => dlq::list(json).await,
        Command::Dlq(DlqCommand::Replay { letters, apply }) => {
            let selection = letters
                .offset
                .map_or(dlq::Selection::All, dlq::Selection::At);
            dlq::replay(selection, apply).await
        }
        Command::Dlq(DlqCommand::Purge {
            before_offset,
            apply,
        }) => dlq::purge(before_offset, apply).await,
        Command::Reconcile { courses, apply } => {
            let courses = courses.course.map_or(Courses::All, Courses::One);
            reconcile::run(courses, apply).await
        }
    }
}
