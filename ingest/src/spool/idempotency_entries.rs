//! The idempotency entries on disk, typed: one [`Entry`], as JSON, under each
//! [`EntryKey`], in the spool's sled database so that an answer survives a
//! restart. A reservation is a compare-and-swap against what was read; an
//! answer goes through the spool's writer, durable with its next group commit.

use super::writer::{Write, Writer};
use super::SpoolError;
use crate::idempotency::{Entry, EntryKey};

/// The idempotency entries; the only way to them.
#[derive(Clone)]
pub struct IdempotencyEntries {
    tree: sled::Tree,
    /// For answers, which must be on disk before they are given.
    writer: Writer,
}

/// What a key held when it was read: nothing, bytes that are no entry, or an
/// entry. [`IdempotencyEntries::swap`] succeeds only if the key still holds it.
pub struct Snapshot {
    bytes: Option<sled::IVec>,
    entry: Option<Entry>,
}

impl Snapshot {
    /// The entry read, if the key held a readable one.
    pub fn entry(&self) -> Option<&Entry> {
        self.entry.as_ref()
    }
}

impl IdempotencyEntries {
    pub(super) fn new(tree: sled::Tree, writer: Writer) -> Self {
        Self { tree, writer }
    }

    /// What `key` holds now.
    pub fn get(&self, key: &EntryKey) -> Result<Snapshot, sled::Error> {
        let bytes = self.tree.get(key.as_bytes())?;
        let entry = bytes.as_deref().and_then(from_json);
        Ok(Snapshot { bytes, entry })
    }

    /// Puts `entry` under `key` if the key still holds what `read` saw;
    /// false when someone changed it first.
    pub fn swap(
        &self,
        key: &EntryKey,
        read: &Snapshot,
        entry: &Entry,
    ) -> Result<bool, sled::Error> {
        let swapped = self.tree.compare_and_swap(
            key.as_bytes(),
            read.bytes.as_ref(),
            Some(to_json(entry)),
        )?;
        Ok(swapped.is_ok())
    }

    /// Puts `entry` under `key` whatever it held; returns once it is on disk.
    pub async fn put(&self, key: EntryKey, entry: &Entry) -> Result<(), SpoolError> {
        let (key, value) = (key.as_bytes().to_vec(), to_json(entry));
        self.writer.write(Write::PutEntry { key, value }).await
    }

    pub fn remove(&self, key: &EntryKey) -> Result<(), sled::Error> {
        self.tree.remove(key.as_bytes())?;
        Ok(())
    }

    /// Removes every entry `doomed` picks (given `None` for bytes that are
    /// no entry), unless it changed since it was read; returns how many.
    pub fn remove_where(&self, doomed: impl Fn(Option<&Entry>) -> bool) -> usize {
        let mut removed = 0;
        for (key, value) in self.tree.iter().flatten() {
            if doomed(from_json(&value).as_ref())
                && self
                    .tree
                    .compare_and_swap(&key, Some(value), None::<&[u8]>)
                    .is_ok_and(|swapped| swapped.is_ok())
            {
                removed += 1;
            }
        }
        removed
    }
}

fn to_json(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("entries serialise")
}

fn from_json(bytes: &[u8]) -> Option<Entry> {
    serde_json::from_slice(bytes).ok()
}
