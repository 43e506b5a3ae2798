//! MySQL as the aggregator (which writes it) and query (which reads it) both
//! use it: the schema and its migrations, the pool's session settings, the
//! `DATETIME(6)` helpers and a course's stats row. Migrations are idempotent
//! and run at start by both, so either can come up first. The SQL runs on MySQL 8.4 and MariaDB 10.11:
//! explicit `utf8mb4_unicode_ci`, indexes inside `CREATE TABLE`. Identifiers
//! (`course_id`, `student_key`, `feedback_id`) compare in binary, as Redis keys
//! and the Rust code do: `CS101` and `cs101` are two courses, not one row.

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool};

/// Every event received, once per `feedback_id` (the history).
pub const FEEDBACK_EVENTS: &str = "feedback_events";
/// One row per (course_id, student_key): the student's current rating (the counting rule).
pub const CURRENT_RESPONSES: &str = "current_responses";
/// One row per course: responses, rating_sum, the count of each rating, a version.
pub const COURSE_STATS: &str = "course_stats";
/// The aggregator's progress: the next offset per topic partition.
pub const CONSUMER_OFFSETS: &str = "consumer_offsets";
/// Events MySQL refused for good (a constraint the data breaks, a value out
/// of range), set aside with the reason by the transaction that moved their
/// offsets past them.
pub const QUARANTINED_EVENTS: &str = "quarantined_events";
/// The course catalog, one row per course: its title, term and enrolment.
/// Query's admin API writes it (touching `updated_at` on every write of the
/// entry, its instructors included); ingest polls it for a closed catalog.
pub const COURSES: &str = "courses";
/// Who teaches each course: the instructors' token subjects, replaced as a
/// set with their course's entry.
pub const COURSE_INSTRUCTORS: &str = "course_instructors";
/// A comment's moderation state, one row per `feedback_id` that has one: the
/// aggregator adds a flagged one with its event; query's admin actions
/// hide, unhide and mark it reviewed.
pub const COMMENT_MODERATION: &str = "comment_moderation";
/// Every admin action on a comment, appended with the state it changed.
pub const MODERATION_LOG: &str = "moderation_log";

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS feedback_events (
        feedback_id CHAR(26) COLLATE utf8mb4_bin NOT NULL,
        course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
        student_key CHAR(64) COLLATE utf8mb4_bin NOT NULL,
        rating TINYINT UNSIGNED NOT NULL,
        comment TEXT NULL,
        submitted_at DATETIME(6) NOT NULL,
        kafka_partition INT NOT NULL,
        kafka_offset BIGINT NOT NULL,
        received_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (feedback_id),
        INDEX idx_events_course_submitted (course_id, submitted_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    "CREATE TABLE IF NOT EXISTS current_responses (
        course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
        student_key CHAR(64) COLLATE utf8mb4_bin NOT NULL,
        feedback_id CHAR(26) COLLATE utf8mb4_bin NOT NULL,
        rating TINYINT UNSIGNED NOT NULL,
        submitted_at DATETIME(6) NOT NULL,
        PRIMARY KEY (course_id, student_key)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    "CREATE TABLE IF NOT EXISTS course_stats (
        course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
        responses BIGINT NOT NULL DEFAULT 0,
        rating_sum BIGINT NOT NULL DEFAULT 0,
        rating_1 BIGINT NOT NULL DEFAULT 0,
        rating_2 BIGINT NOT NULL DEFAULT 0,
        rating_3 BIGINT NOT NULL DEFAULT 0,
        rating_4 BIGINT NOT NULL DEFAULT 0,
        rating_5 BIGINT NOT NULL DEFAULT 0,
        version BIGINT NOT NULL DEFAULT 0,
        updated_at DATETIME(6) NOT NULL,
        PRIMARY KEY (course_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    "CREATE TABLE IF NOT EXISTS consumer_offsets (
        topic VARCHAR(255) NOT NULL,
        kafka_partition INT NOT NULL,
        next_offset BIGINT NOT NULL,
        updated_at DATETIME(6) NOT NULL,
        PRIMARY KEY (topic, kafka_partition)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    // `payload` is the message's value as read, to produce again once the
    // cause is fixed; the key is its place in the topic, so a redelivered
    // batch cannot set the same event aside twice.
    "CREATE TABLE IF NOT EXISTS quarantined_events (
        topic VARCHAR(255) NOT NULL,
        kafka_partition INT NOT NULL,
        kafka_offset BIGINT NOT NULL,
        feedback_id CHAR(26) COLLATE utf8mb4_bin NOT NULL,
        course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
        payload LONGBLOB NOT NULL,
        error_code INT NOT NULL,
        reason VARCHAR(32) NOT NULL,
        error_message TEXT NOT NULL,
        request_id VARCHAR(255) NULL,
        traceparent VARCHAR(255) NULL,
        quarantined_at DATETIME(6) NOT NULL,
        PRIMARY KEY (topic, kafka_partition, kafka_offset)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    "CREATE TABLE IF NOT EXISTS courses (
        course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
        title VARCHAR(200) NOT NULL,
        term VARCHAR(64) NULL,
        enrolled INT UNSIGNED NULL,
        updated_at DATETIME(6) NOT NULL,
        PRIMARY KEY (course_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    "CREATE TABLE IF NOT EXISTS course_instructors (
        course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
        sub VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
        PRIMARY KEY (course_id, sub),
        INDEX idx_instructors_sub (sub)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    // A table of its own rather than columns of the large `feedback_events`
    // (no ALTER of the history, no wider rows for the listings to read): a
    // row exists only for a comment flagged or acted on. `submitted_at` is
    // the event's, so the queue's index serves "flagged, not reviewed,
    // newest first" by a range scan without a sort.
    "CREATE TABLE IF NOT EXISTS comment_moderation (
        feedback_id CHAR(26) COLLATE utf8mb4_bin NOT NULL,
        course_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
        submitted_at DATETIME(6) NOT NULL,
        flagged TINYINT(1) NOT NULL DEFAULT 0,
        hidden TINYINT(1) NOT NULL DEFAULT 0,
        reviewed_at DATETIME(6) NULL,
        updated_at DATETIME(6) NOT NULL,
        PRIMARY KEY (feedback_id),
        INDEX idx_moderation_queue (flagged, reviewed_at, submitted_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    // The audit trail, newest first by `id`. `sub` is the admin's token
    // subject, any length a token carries.
    "CREATE TABLE IF NOT EXISTS moderation_log (
        id BIGINT NOT NULL AUTO_INCREMENT,
        sub TEXT COLLATE utf8mb4_bin NOT NULL,
        feedback_id CHAR(26) COLLATE utf8mb4_bin NOT NULL,
        action VARCHAR(8) NOT NULL,
        at DATETIME(6) NOT NULL,
        PRIMARY KEY (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
];

/// Indexes and columns earlier versions created and this one no longer
/// keeps: each cost the aggregator writes for every counted rating or
/// changed course.
///
/// - Index `current_responses (course_id, submitted_at, feedback_id)` served
///   the listings; they now read the history's `(course_id, submitted_at)`
///   index, keeping the entries that `current_responses` names (query's
///   `comments.rs`). With `course_stats (updated_at)`, about a fifth of
///   MariaDB's work per event (docs/benchmarks.md).
/// - Index `course_stats (updated_at)` served the reconciler's "changed in the
///   last ten minutes"; every stats update moved its entry to the same last
///   page. The reconciler now scans `course_stats` every 2 s instead: one
///   row per course.
/// - Index `course_stats (responses)` was meant for the course list, ordered
///   by `responses DESC, course_id` (and query's warm-up, the same order):
///   an ascending index cannot give those mixed directions, and MariaDB's plan
///   is a full scan and a sort with it as without it, while every stats
///   update moved the course's entry in it (docs/benchmarks.md).
/// - Column `current_responses.comment` copied the history's comment, which
///   is the one every listing reads: up to 8 KB more per current row (2,000
///   characters of 4 bytes) for the counting step to read and write.
///   MySQL 8.0.29+ and MariaDB 10.4+ drop a column in place (no rebuild). An
///   aggregator of an earlier version still running then fails its batches
///   (they retry, nothing is lost) until it is replaced.
const OBSOLETE: &[Obsolete] = &[
    Obsolete::Index("current_responses", "idx_current_course_submitted"),
    Obsolete::Index("course_stats", "idx_stats_updated"),
    Obsolete::Index("course_stats", "idx_stats_responses"),
    Obsolete::Column("current_responses", "comment"),
];

/// An index or a column, by table and name.
enum Obsolete {
    Index(&'static str, &'static str),
    Column(&'static str, &'static str),
}

/// Drops `obsolete` when present. Both services migrate at start, so the other
/// one may drop it first (MySQL error 1091, for an index or a column). The
/// drop waits for the table's metadata lock, at most 10 s: if older processes
/// still hold it, it stays (it only costs writes) and the next start tries again.
async fn drop_obsolete(conn: &mut mysql_async::Conn, obsolete: &Obsolete) -> anyhow::Result<()> {
    // The catalog table listing such things, and its column for the name.
    let (table, name, kind, catalog, field) = match *obsolete {
        Obsolete::Index(table, index) => (table, index, "INDEX", "statistics", "index_name"),
        Obsolete::Column(table, column) => (table, column, "COLUMN", "columns", "column_name"),
    };
    let lookup = format!(
        "SELECT COUNT(*) FROM information_schema.{catalog}
         WHERE table_schema = DATABASE() AND table_name = ? AND {field} = ?"
    );
    let present: Option<i64> = conn
        .exec_first(lookup, (table, name))
        .await
        .context("looking for an obsolete index or column")?;
    if present.unwrap_or(0) == 0 {
        return Ok(());
    }
    conn.query_drop("SET SESSION lock_wait_timeout = 10")
        .await?;
    match conn
        .query_drop(format!("ALTER TABLE {table} DROP {kind} {name}"))
        .await
    {
        Ok(()) => tracing::info!(
            table,
            name,
            kind,
            "dropped what this version no longer uses"
        ),
        Err(mysql_async::Error::Server(err)) if err.code == 1091 => {}
        Err(err) => {
            tracing::warn!(table, name, kind, error = %err, "could not drop an obsolete index or column; it stays until the next start")
        }
    }
    Ok(())
}

/// A pool for `url` (callers bound their waits with timeouts: mysql_async has no connect timeout).
pub fn pool(url: &str) -> anyhow::Result<Pool> {
    let opts = Opts::from_url(url).with_context(|| format!("parsing MySQL URL {url:?}"))?;
    // mysql_async's statement cache (32 a connection unless the URL says
    // otherwise) is not raised: the aggregator's multi-row statements hold
    // a few hundred parameters' metadata each, so more cached shapes cost
    // megabytes a connection, while with 32 only some batches prepare a
    // statement again (docs/benchmarks.md).
    let opts = OptsBuilder::from_opts(opts)
        .init(vec![
            // Belt and braces: the code never relies on the session time zone, but UTC everywhere.
            "SET time_zone = '+00:00'",
            // The aggregator's exactly-once argument needs REPEATABLE READ's
            // gap locks (a locking read of a row that is not there yet, such
            // as a new partition's offset, must hold off a second writer), so
            // a server defaulting to READ COMMITTED does not get to choose.
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        ])
        // Affected rows count only rows inserted or changed (an `ON DUPLICATE
        // KEY UPDATE` that changes nothing counts 0), whatever the URL asks
        // for: the aggregator tells a duplicate event from a new one that way.
        .client_found_rows(false)
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(mysql_async::PoolConstraints::new(1, 32).expect("1 <= 32"))
                // Idle connections stay in the pool for a minute. Without a TTL
                // mysql_async keeps only `min` (1) idle and closes every other
                // returned connection: the aggregator's lanes reconnected (TCP,
                // socket, init) and prepared their statements anew every few batches.
                .with_inactive_connection_ttl(std::time::Duration::from_secs(60))
                // Keep each connection's prepared statements when it returns to
                // the pool (a reset drops them, doubling the aggregator's round trips).
                .with_reset_connection(false),
        );
    Ok(Pool::new(opts))
}

/// Creates the database named in `url` when missing, then the tables.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let opts = Opts::from_url(url).with_context(|| format!("parsing MySQL URL {url:?}"))?;
    let database = opts.db_name().unwrap_or("feedback").to_owned();
    anyhow::ensure!(
        database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name {database:?} must be letters, digits and _"
    );
    let server = Pool::new(OptsBuilder::from_opts(opts.clone()).db_name(None::<String>));
    let mut conn = server.get_conn().await.context("connecting to MySQL")?;
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .await?;
    conn.query_drop(format!("USE `{database}`")).await?;
    for statement in MIGRATIONS {
        conn.query_drop(*statement)
            .await
            .context("running a migration")?;
    }
    for obsolete in OBSOLETE {
        drop_obsolete(&mut conn, obsolete).await?;
    }
    drop(conn);
    server.disconnect().await?;
    Ok(())
}

/// A `DATETIME(6)` literal for a UTC time (bound as a string: portable, no time-zone lookup).
pub fn datetime(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// SQL for a `DATETIME(6)` column as microseconds since the epoch, without the session time zone.
pub fn micros(column: &str) -> String {
    format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column})")
}

/// The UTC time `micros` microseconds after the epoch.
pub fn from_micros(micros: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `?, ?, ?` with `n` placeholders.
pub fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A course's row of `course_stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsRow {
    pub responses: i64,
    pub rating_sum: i64,
    /// Counts of ratings 1 to 5.
    pub distribution: [i64; 5],
    /// Increases with every change; 0 for a course never seen.
    pub version: i64,
    /// Microseconds since the epoch of the last change (0 when never changed).
    pub updated_at_micros: i64,
}

/// The select list of a course's stats: `course_id`, the numbers, `version`
/// and `updated_at` in microseconds; read into [`StatsColumns`].
pub fn stats_columns() -> String {
    format!(
        "course_id, responses, rating_sum, rating_1, rating_2, rating_3, rating_4, rating_5, version, {}",
        micros("updated_at")
    )
}

/// One row selected with [`stats_columns`].
pub type StatsColumns = (String, i64, i64, i64, i64, i64, i64, i64, i64, i64);

impl StatsRow {
    /// A row selected with [`stats_columns`], as (course_id, stats).
    pub fn from_columns(
        (course_id, n, sum, r1, r2, r3, r4, r5, version, at): StatsColumns,
    ) -> (String, StatsRow) {
        let row = StatsRow {
            responses: n,
            rating_sum: sum,
            distribution: [r1, r2, r3, r4, r5],
            version,
            updated_at_micros: at,
        };
        (course_id, row)
    }
}

/// Reads one course's stats (zeros and version 0 when it has none).
pub async fn read_stats(conn: &mut mysql_async::Conn, course_id: &str) -> anyhow::Result<StatsRow> {
    let sql = format!(
        "SELECT {} FROM course_stats WHERE course_id = ?",
        stats_columns()
    );
    let row: Option<StatsColumns> = conn.exec_first(sql, (course_id,)).await?;
    Ok(row.map_or_else(StatsRow::default, |columns| {
        StatsRow::from_columns(columns).1
    }))
}
