//! The spool's database as the operator's tools see it (`ingest spool ...`):
//! opened without a writer or a drainer, read in order, the records moved
//! aside as unreadable included. sled lets one process at a time open a
//! directory, so a running ingest keeps these tools out: they say so.

use std::path::Path;

use anyhow::Context;

use super::{is_locked, seq_of, UNREADABLE_TREE};

/// One stored entry: its sequence number and its bytes as on disk.
pub type Entry = (u64, sled::IVec);

/// The entries of one tree, in order.
pub type Entries =
    std::iter::Map<sled::Iter, fn(sled::Result<(sled::IVec, sled::IVec)>) -> sled::Result<Entry>>;

/// An opened spool directory.
pub struct SpoolFiles {
    /// Held for the lock while a tool reads; flushed by [`SpoolFiles::close`].
    db: sled::Db,
    /// The records waiting for Kafka, oldest first.
    waiting: sled::Tree,
    /// The records moved aside because their bytes do not decode.
    unreadable: sled::Tree,
}

impl SpoolFiles {
    /// Opens the spool in `dir`, which must already hold one: a tool never
    /// creates a spool where an operator mistyped a path.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dir.join("db").is_file(),
            "no spool in {} (FEEDBACK_SPOOL_DIR, or --dir)",
            dir.display()
        );
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(4 * 1024 * 1024)
            .open()
            .map_err(anyhow::Error::from);
        let db = match db {
            Err(err) if is_locked(&err) => anyhow::bail!(
                "the spool in {} is in use by a running ingest: stop ingest first, \
                 or use its /readyz (checks.spool) while it runs",
                dir.display()
            ),
            other => other.with_context(|| format!("opening the spool in {}", dir.display()))?,
        };
        let waiting = db.open_tree("spool")?;
        let unreadable = db.open_tree(UNREADABLE_TREE)?;
        Ok(Self {
            db,
            waiting,
            unreadable,
        })
    }

    /// The records waiting, oldest first.
    pub fn waiting(&self) -> Entries {
        entries(&self.waiting)
    }

    /// The records moved aside as unreadable, in their original order.
    pub fn unreadable(&self) -> Entries {
        entries(&self.unreadable)
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn unreadable_len(&self) -> usize {
        self.unreadable.len()
    }

    /// Flushes and lets go of the directory's lock (before a tool reopens
    /// it as a [`super::Spool`]).
    pub fn close(self) -> Result<(), sled::Error> {
        self.db.flush()?;
        Ok(())
    }
}

fn entries(tree: &sled::Tree) -> Entries {
    tree.iter()
        .map(|entry| entry.map(|(key, value)| (seq_of(&key), value)))
}
