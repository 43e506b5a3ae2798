//! Hand tools for an operator, one file per subcommand of the binary:
//! `aggregator quarantine list|replay|purge` (`quarantine.rs`), `aggregator
//! dlq list|replay|purge` (`dlq.rs`) and
//! `aggregator reconcile` (`reconcile.rs`). Settings come from the same
//! environment variables as the service. Anything that changes data is a
//! dry run unless `--apply` is given: it says what it would do.

pub mod dlq;
pub mod quarantine;
pub mod reconcile;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// A connection of `pool`, or an error within 5 s (mysql_async has no
/// connect timeout, and an operator should not wait on a dead server).
async fn connect(pool: &mysql_async::Pool) -> anyhow::Result<mysql_async::Conn> {
    tokio::time::timeout(std::time::Duration::from_secs(5), pool.get_conn())
        .await
        .context("MySQL did not answer within 5 s")?
        .context("connecting to MySQL")
}

/// A progress bar on stderr for `len` items, in `query rebuild-cache`'s style.
fn progress(len: u64, unit: &str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}"
        ))
        .context("progress template")?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// What a dry run prefixes to each line, so its output cannot be taken for done work.
fn would(apply: bool) -> &'static str {
    if apply {
        ""
    } else {
        "would "
    }
}
