//! Tokens verified lately, so a client's repeated calls with one token (a
//! dashboard's, a form's retries) skip the signature check and the claims'
//! decoding.
//!
//! What it keeps, and why that weakens no check:
//!
//! - the key is the SHA-256 of the whole token string, so only the very
//!   token that was verified finds its entry (a forged token that differs
//!   in any byte misses), and no bearer credential sits in memory;
//! - only a token that passed every check is kept: a refusal is never kept,
//!   so a refused token is checked again on every call;
//! - `exp` is checked again at every use, with the same leeway as the first
//!   check, and an entry lives at most [`TTL`] in any case;
//! - `nbf` and the lifetime limit need no second look: a token that passed
//!   them once passes them later too.
//!
//! In identity-provider mode a token signed with a key the provider later
//! withdraws stays accepted until its entry ends, at most [`TTL`] after it
//! was verified: that is why the TTL is short.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Principal;

/// How long a verified token is taken without a second signature check.
pub const TTL: Duration = Duration::from_secs(60);

/// Independent locks, so the threads serving requests seldom wait for one another.
const SHARDS: usize = 16;

/// Entries at most, over all shards: with an entry of about a hundred bytes,
/// about a megabyte, whatever the number of distinct tokens sent.
pub const CAPACITY: usize = 8192;

type Key = [u8; 32];

struct Entry {
    principal: Principal,
    /// The token's `exp`, seconds since the epoch.
    exp: u64,
    /// When the entry ends at the latest (the TTL after the check).
    until: Instant,
}

pub(super) struct TokenCache {
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    per_shard: usize,
    leeway_secs: u64,
    ttl: Duration,
}

impl TokenCache {
    pub(super) fn new(leeway_secs: u64) -> Self {
        Self::with(leeway_secs, TTL, CAPACITY)
    }

    pub(super) fn with(leeway_secs: u64, ttl: Duration, capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            leeway_secs,
            ttl,
        }
    }

    pub(super) fn key(token: &str) -> Key {
        Sha256::digest(token.as_bytes()).into()
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Entry>> {
        &self.shards[key[0] as usize % self.shards.len()]
    }

    /// The principal of a token verified lately that is still valid at `now_secs`.
    pub(super) fn get(&self, key: &Key, now_secs: u64) -> Option<Principal> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let entry = shard.get(key)?;
        if self.live(entry, now_secs, Instant::now()) {
            return Some(entry.principal.clone());
        }
        shard.remove(key);
        None
    }

    /// Keeps a token that passed every check, whose `exp` is `exp`.
    pub(super) fn insert(&self, key: Key, principal: Principal, exp: u64) {
        let now = Instant::now();
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let now_secs = super::now_secs();
            shard.retain(|_, entry| self.live(entry, now_secs, now));
            if shard.len() >= self.per_shard {
                // Full of live entries: any one goes (the next call with its
                // token is checked in full, and kept again).
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                principal,
                exp,
                until: now + self.ttl,
            },
        );
    }

    /// As jsonwebtoken judges `exp`: expired once `exp < now - leeway`.
    fn live(&self, entry: &Entry, now_secs: u64, now: Instant) -> bool {
        now < entry.until && entry.exp.saturating_add(self.leeway_secs) >= now_secs
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}
