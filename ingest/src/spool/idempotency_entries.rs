//! The idempotency entries on disk, typed: one [`Entry`], as JSON, under each
//! [`EntryKey`], in the spool's sled database so that an answer survives a
//! restart. A reservation is a compare-and-swap against what was read; an
//! answer is durable with the store's next group commit. Each entry's bytes
//! count against the spool's cap on disk.

use std::sync::Arc;

use super::store::Store;
use super::{Counters, SpoolError};
use crate::idempotency::{Entry, EntryKey};

/// How many entries one pruning call looks at, so that the store's thread
/// is never held long by a large tree.
const PRUNE_CHUNK: usize = 1000;

/// The idempotency entries; the only way to them.
#[derive(Clone)]
pub struct IdempotencyEntries {
    store: Store,
    counters: Arc<Counters>,
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
    pub(super) fn new(store: Store, counters: Arc<Counters>) -> Self {
        Self { store, counters }
    }

    /// What `key` holds now.
    pub async fn get(&self, key: &EntryKey) -> Result<Snapshot, SpoolError> {
        let key = key.as_bytes().to_vec();
        let bytes = self
            .store
            .call(move |disk| disk.idempotency.get(key))
            .await?;
        let entry = bytes.as_deref().and_then(from_json);
        Ok(Snapshot { bytes, entry })
    }

    /// Puts `entry` under `key` if the key still holds what `read` saw;
    /// false when someone changed it first.
    pub async fn swap(
        &self,
        key: &EntryKey,
        read: Snapshot,
        entry: &Entry,
    ) -> Result<bool, SpoolError> {
        let key = key.as_bytes().to_vec();
        let value = to_json(entry);
        let counters = self.counters.clone();
        self.store
            .call(move |disk| {
                let (old, new) = (
                    entry_len(&key, read.bytes.as_deref()),
                    entry_len(&key, Some(&value)),
                );
                let swapped = disk
                    .idempotency
                    .compare_and_swap(&key, read.bytes, Some(value))?
                    .is_ok();
                if swapped {
                    counters.entry_resized(old, new);
                }
                Ok(swapped)
            })
            .await
    }

    /// Puts `entry` under `key` whatever it held; returns once it is on disk.
    pub async fn put(&self, key: EntryKey, entry: &Entry) -> Result<(), SpoolError> {
        let (key, value) = (key.as_bytes().to_vec(), to_json(entry));
        let counters = self.counters.clone();
        self.store
            .durable(move |disk| {
                let new = entry_len(&key, Some(&value));
                let old = disk.idempotency.insert(&key, value)?;
                counters.entry_resized(entry_len(&key, old.as_deref()), new);
                Ok(())
            })
            .await
    }

    pub async fn remove(&self, key: &EntryKey) -> Result<(), SpoolError> {
        let key = key.as_bytes().to_vec();
        let counters = self.counters.clone();
        self.store
            .call(move |disk| {
                let old = disk.idempotency.remove(&key)?;
                counters.entry_resized(entry_len(&key, old.as_deref()), 0);
                Ok(())
            })
            .await
    }

    /// Removes every entry `doomed` picks (given `None` for bytes that are
    /// no entry), unless it changed since it was read; returns how many.
    pub async fn remove_where(
        &self,
        doomed: impl Fn(Option<&Entry>) -> bool + Clone + Send + 'static,
    ) -> Result<usize, SpoolError> {
        let mut removed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (doomed, counters, from) = (doomed.clone(), self.counters.clone(), after.take());
            let (count, last) = self
                .store
                .call(move |disk| {
                    let range = match &from {
                        Some(key) => disk.idempotency.range::<&[u8], _>((
                            std::ops::Bound::Excluded(key.as_slice()),
                            std::ops::Bound::Unbounded,
                        )),
                        None => disk.idempotency.iter(),
                    };
                    let (mut count, mut last) = (0, None);
                    for entry in range.take(PRUNE_CHUNK) {
                        let (key, value) = entry?;
                        last = Some(key.to_vec());
                        let len = entry_len(&key, Some(&value));
                        if doomed(from_json(&value).as_ref())
                            && disk
                                .idempotency
                                .compare_and_swap(&key, Some(value), None::<&[u8]>)?
                                .is_ok()
                        {
                            counters.entry_resized(len, 0);
                            count += 1;
                        }
                    }
                    Ok((count, last))
                })
                .await?;
            removed += count;
            match last {
                Some(key) => after = Some(key),
                None => return Ok(removed),
            }
        }
    }
}

/// What an entry costs on disk: its key and its value.
fn entry_len(key: &[u8], value: Option<&[u8]>) -> u64 {
    value.map_or(0, |value| (key.len() + value.len()) as u64)
}

fn to_json(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("entries serialise")
}

fn from_json(bytes: &[u8]) -> Option<Entry> {
    serde_json::from_slice(bytes).ok()
}
