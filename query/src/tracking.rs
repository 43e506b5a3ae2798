//! Course hashes kept in this process, with Redis saying when one changes:
//! Redis's server-assisted client-side caching (`CLIENT TRACKING`, RESP3).
//!
//! A stats hit used to be an HMGET: a round trip through Redis and through
//! the connection's driver task, about half of a hit's cost. Here the hashes
//! read on one dedicated connection are kept in memory, and Redis pushes an
//! `invalidate` on that connection whenever such a key changes (a delta, a
//! fill, a DEL), expires, is evicted, or its database is flushed. So a kept
//! value is always the one Redis holds, give or take the push's trip across
//! loopback, and the numbers stay Redis's numbers: a hit still answers
//! `source: cache`.
//!
//! Why a kept value is never stale for longer than that trip:
//! - Pushes are handled inside the connection's driver, in the order they
//!   arrive, by the closure given as its push sender (no task in between).
//! - A read marks its course pending (with a token) before sending HMGET; an
//!   invalidation removes the mark; the answer is kept only if its own mark is
//!   still there. An invalidation that overtakes the answer on its way to the
//!   caller therefore cannot leave an old value behind.
//! - The connection closing (Redis killed or restarted) or a heartbeat PING
//!   going unanswered (Redis hung) forgets everything; the next read connects
//!   again, and only reads on that new connection are kept.
//!
//! Redis without RESP3 or tracking (before 6.0) refuses the handshake: then
//! tracking turns itself off and reads go through the ordinary connection.
//!
//! On a Redis Cluster tracking is off from the start, and every stats hit
//! reads Redis (one HMGET, as above): a cluster tracks per node, on the
//! connection that read the key, so keeping values would need a tracking
//! connection to every node, each with its own pushes, heartbeat and loss
//! handling, re-made whenever slots move or a replica is promoted, and a
//! push lost in any of those would serve a stale value indefinitely.
//! Without tracking, a hit is Redis's value at the moment of the read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use shared::mysql::StatsRow;
use shared::redis_conn::Target;

/// More courses than this kept at once: forget them all and start again
/// (a university has thousands of courses, not hundreds of thousands).
const MAX_ENTRIES: usize = 100_000;

/// How often the connection is checked while idle.
const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A read is on its way; the token is that read's.
    Pending(u64),
    /// Redis's value of the hash, still valid.
    Kept(StatsRow),
}

/// What is kept, and which connection it belongs to.
#[derive(Debug, Default)]
struct Kept {
    /// The live connection's number; bumped whenever one is made or lost, so
    /// the tasks and reads of an old connection can tell they are old.
    generation: u64,
    conn: Option<MultiplexedConnection>,
    entries: HashMap<String, Entry>,
    next_token: u64,
}

impl Kept {
    fn get(&self, course: &str) -> Option<StatsRow> {
        match self.entries.get(course) {
            Some(Entry::Kept(row)) => Some(row.clone()),
            _ => None,
        }
    }

    /// Marks `course` pending for a read on connection `generation`.
    fn mark(&mut self, course: &str, generation: u64) -> Option<u64> {
        if generation != self.generation {
            return None;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.next_token += 1;
        let token = self.next_token;
        self.entries
            .insert(course.to_owned(), Entry::Pending(token));
        Some(token)
    }

    /// Keeps the answer of read `token` if nothing invalidated it meanwhile;
    /// clears its mark otherwise.
    fn settle(&mut self, course: &str, token: u64, generation: u64, row: Option<&StatsRow>) {
        if generation != self.generation || self.entries.get(course) != Some(&Entry::Pending(token))
        {
            return;
        }
        match row {
            Some(row) => self
                .entries
                .insert(course.to_owned(), Entry::Kept(row.clone())),
            None => self.entries.remove(course),
        };
    }

    /// Handles a push of connection `generation`.
    fn on_push(&mut self, generation: u64, push: &PushInfo) {
        if generation != self.generation {
            return;
        }
        match push.kind {
            PushKind::Invalidate => {
                for value in &push.data {
                    match value {
                        // A flush: everything this connection read is gone.
                        Value::Nil => self.entries.clear(),
                        Value::Array(keys) => {
                            for key in keys {
                                if let Value::BulkString(key) = key {
                                    self.invalidate(key);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            PushKind::Disconnection => self.lose(generation),
            _ => {}
        }
    }

    fn invalidate(&mut self, key: &[u8]) {
        let course = std::str::from_utf8(key)
            .ok()
            .and_then(shared::redis_hash::course_of_key);
        // Another key (a floor, say): nothing kept depends on it.
        if let Some(course) = course {
            self.entries.remove(course);
        }
    }

    /// Forgets connection `generation` and everything read on it.
    fn lose(&mut self, generation: u64) {
        if generation == self.generation {
            self.generation += 1;
            self.conn = None;
            self.entries.clear();
        }
    }
}

pub struct Tracking {
    /// The single server's client with RESP3; `None` on a cluster (tracking off).
    client: Option<redis::Client>,
    timeout: Duration,
    kept: Mutex<Kept>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Off when this Redis refused RESP3 or tracking.
    enabled: AtomicBool,
}

impl Tracking {
    /// Tracking for the Redis at `target`; connects on the first read. Off
    /// on a cluster (see the module's comment).
    pub fn new(target: &Target, timeout: Duration) -> RedisResult<Arc<Self>> {
        let client = match target {
            Target::Single(url) => {
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                Some(redis::Client::open(info.set_redis_settings(settings))?)
            }
            Target::Cluster(_) => {
                tracing::info!(
                    "Redis Cluster: client-side tracking off, every stats hit reads Redis"
                );
                None
            }
        };
        Ok(Arc::new(Self {
            enabled: AtomicBool::new(client.is_some()),
            client,
            timeout,
            kept: Mutex::new(Kept::default()),
            connecting: tokio::sync::Mutex::new(()),
        }))
    }

    /// False once this Redis refused tracking: read through the ordinary connection.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The kept value of `course`, if any.
    pub fn get(&self, course: &str) -> Option<StatsRow> {
        self.lock().get(course)
    }

    /// Reads `course`'s hash on the tracking connection and keeps it.
    pub async fn read(self: &Arc<Self>, course: &str) -> RedisResult<Option<StatsRow>> {
        let (generation, mut conn) = self.connection().await?;
        let token = self.lock().mark(course, generation);
        let result = shared::redis_hash::read(&mut conn, course).await;
        if let Some(token) = token {
            let row = result.as_ref().ok().and_then(Option::as_ref);
            self.lock().settle(course, token, generation, row);
        }
        if let Err(err) = &result {
            if err.is_unrecoverable_error() || err.is_timeout() {
                self.lock().lose(generation);
            }
        }
        result
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection, made when there is none.
    async fn connection(self: &Arc<Self>) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _one = self.connecting.lock().await;
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let generation = self.lock().generation;
        let weak = Arc::downgrade(self);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |push: PushInfo| -> Result<(), ()> {
                if let Some(tracking) = weak.upgrade() {
                    tracking.lock().on_push(generation, &push);
                }
                Ok(())
            });
        let Some(client) = &self.client else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "client-side tracking is off on a Redis Cluster",
            )));
        };
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(err) => return Err(self.refused(err)),
        };
        if let Err(err) = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async::<()>(&mut conn)
            .await
        {
            return Err(self.refused(err));
        }
        {
            let mut kept = self.lock();
            if kept.generation != generation {
                // Its driver saw it close before it was even stored.
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "tracking connection superseded",
                )));
            }
            kept.conn = Some(conn.clone());
            kept.entries.clear();
        }
        tracing::debug!(generation, "Redis tracking connection up");
        tokio::spawn(heartbeat(Arc::downgrade(self), generation, conn.clone()));
        Ok((generation, conn))
    }

    fn live(&self) -> Option<(u64, MultiplexedConnection)> {
        let kept = self.lock();
        kept.conn.clone().map(|conn| (kept.generation, conn))
    }

    /// This Redis answering the handshake or `CLIENT TRACKING` with an error
    /// (unknown command: older than 6.0, or a proxy; not allowed: an ACL)
    /// means it cannot track: turn tracking off for good. Anything else (down,
    /// timing out, still loading) is an outage and is passed on.
    fn refused(&self, err: redis::RedisError) -> redis::RedisError {
        use redis::{ErrorKind, ServerErrorKind};
        let cannot_track = matches!(
            err.kind(),
            ErrorKind::Extension
                | ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
        );
        if cannot_track && self.enabled.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %err, "Redis refused client-side tracking: every stats hit reads Redis");
        }
        err
    }
}

/// PINGs connection `generation` every second while it is the live one; an
/// unanswered PING (Redis hung) forgets it, so nothing kept outlives a hang by
/// more than a heartbeat and a timeout.
async fn heartbeat(tracking: Weak<Tracking>, generation: u64, mut conn: MultiplexedConnection) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(this) = tracking.upgrade() else {
            return;
        };
        if this.lock().generation != generation {
            return;
        }
        let pong = tokio::time::timeout(
            this.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        if !matches!(pong, Ok(Ok(_))) {
            tracing::debug!(generation, "Redis tracking connection lost");
            this.lock().lose(generation);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64) -> StatsRow {
        StatsRow {
            responses: version,
            rating_sum: 4 * version,
            distribution: [0, 0, 0, version, 0],
            version,
            updated_at_micros: 1_793_527_200_000_000,
        }
    }

    fn invalidate(keys: &[&str]) -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(
                keys.iter()
                    .map(|k| Value::BulkString(k.as_bytes().to_vec()))
                    .collect(),
            )],
        }
    }

    #[test]
    fn an_answer_is_kept_when_nothing_invalidated_it() {
        let mut kept = Kept::default();
        let token = kept.mark("CS101", 0).unwrap();
        assert_eq!(kept.get("CS101"), None, "pending is not a value");
        kept.settle("CS101", token, 0, Some(&row(3)));
        assert_eq!(kept.get("CS101"), Some(row(3)));
    }

    #[test]
    fn an_invalidation_that_overtakes_the_answer_keeps_it_from_being_kept() {
        let mut kept = Kept::default();
        let token = kept.mark("CS101", 0).unwrap();
        kept.on_push(0, &invalidate(&["feedback:course:{CS101}"]));
        kept.settle("CS101", token, 0, Some(&row(3)));
        assert_eq!(kept.get("CS101"), None);
    }

    #[test]
    fn an_invalidation_removes_a_kept_value_and_only_that_one() {
        let mut kept = Kept::default();
        for course in ["A", "B"] {
            let token = kept.mark(course, 0).unwrap();
            kept.settle(course, token, 0, Some(&row(1)));
        }
        kept.on_push(
            0,
            &invalidate(&["feedback:course:{A}", "feedback:floor:{B}", "other"]),
        );
        assert_eq!((kept.get("A"), kept.get("B")), (None, Some(row(1))));
    }

    #[test]
    fn a_flush_or_a_lost_connection_forgets_everything() {
        let mut kept = Kept::default();
        let token = kept.mark("A", 0).unwrap();
        kept.settle("A", token, 0, Some(&row(1)));
        let flush = PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        };
        kept.on_push(0, &flush);
        assert_eq!(kept.get("A"), None);

        let token = kept.mark("A", 0).unwrap();
        kept.settle("A", token, 0, Some(&row(1)));
        let late = kept.mark("B", 0).unwrap();
        kept.on_push(
            0,
            &PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert_eq!(kept.get("A"), None);
        kept.settle("B", late, 0, Some(&row(1)));
        assert_eq!(
            kept.get("B"),
            None,
            "a read of the lost connection is not kept"
        );
        assert_eq!(kept.mark("C", 0), None, "nor is one started on it");
    }

    #[test]
    fn the_later_of_two_concurrent_reads_wins_and_a_miss_keeps_nothing() {
        let mut kept = Kept::default();
        let first = kept.mark("A", 0).unwrap();
        let second = kept.mark("A", 0).unwrap();
        kept.settle("A", first, 0, Some(&row(1)));
        assert_eq!(kept.get("A"), None);
        kept.settle("A", second, 0, Some(&row(2)));
        assert_eq!(kept.get("A"), Some(row(2)));

        let token = kept.mark("A", 0).unwrap();
        kept.settle("A", token, 0, None);
        assert_eq!(kept.get("A"), None);
    }

    #[test]
    fn pushes_of_an_old_connection_change_nothing() {
        let mut kept = Kept {
            generation: 2,
            ..Kept::default()
        };
        let token = kept.mark("A", 2).unwrap();
        kept.settle("A", token, 2, Some(&row(1)));
        kept.on_push(1, &invalidate(&["feedback:course:{A}"]));
        kept.on_push(
            1,
            &PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert_eq!(kept.get("A"), Some(row(1)));
    }
}
