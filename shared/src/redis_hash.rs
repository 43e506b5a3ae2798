//! The Redis side of course statistics, shared by the aggregator (deltas) and
//! query (reads and fills).
//!
//! One hash per course, `feedback:course:{course_id}`, with the fields
//! `responses`, `rating_sum`, `rating_1`..`rating_5`, `version` and
//! `updated_at` (microseconds since the epoch). `version` is MySQL's
//! `course_stats.version` that the hash reflects, which makes every write
//! safe against races and redelivery:
//!
//! - a delta carries (from, to): applied only when the hash is exactly at
//!   `from`; skipped when it is at `to` or beyond; on a gap the hash is deleted
//!   so the next read refills it from MySQL;
//! - a fill writes only when the hash is absent or older than the fill.
//!
//! One race remains in that design: a reader takes version v from MySQL, a
//! delta v → v+1 finds no hash and is skipped, then the reader fills v, which
//! stays stale. So a skipped or gap-deleted delta leaves a *floor*
//! (`feedback:floor:{course_id}` = v+1, for a minute) and a fill below
//! the floor is refused: the reader answers from MySQL and the next read fills.
//! Floors have their own prefix: course ids may contain `:`, so a suffix
//! (`feedback:course:X:floor`, before) named course `X:floor`'s hash too.
//!
//! So Redis never holds numbers MySQL never had, nor numbers older than a
//! delta it has seen.

use redis::aio::ConnectionLike;
use redis::Script;

use crate::mysql::StatsRow;

/// The hash key of a course.
pub fn course_key(course_id: &str) -> String {
    format!("feedback:course:{course_id}")
}

/// The floor key of a course: fills below this version are refused.
pub fn floor_key(course_id: &str) -> String {
    format!("feedback:floor:{course_id}")
}

/// How long a floor lives: far longer than a read-then-fill takes.
const FLOOR_TTL_SECS: u32 = 60;

/// Fields of a course hash, in the order scripts take them.
const FIELDS: [&str; 7] = [
    "responses",
    "rating_sum",
    "rating_1",
    "rating_2",
    "rating_3",
    "rating_4",
    "rating_5",
];

/// KEYS: per course, its hash then its floor. ARGV per course, 11 values:
/// from, to, the 7 deltas, updated_at, floor TTL.
/// Returns per course: 1 applied, 0 skipped (absent or already applied), -1 deleted on a gap.
const DELTA_LUA: &str = r#"
local fields = {'responses','rating_sum','rating_1','rating_2','rating_3','rating_4','rating_5'}
local out = {}
local function raise_floor(floor, to, ttl)
  local f = redis.call('GET', floor)
  if (not f) or tonumber(f) < to then redis.call('SET', floor, to, 'EX', ttl) end
end
for i = 1, #KEYS / 2 do
  local key = KEYS[2 * i - 1]
  local floor = KEYS[2 * i]
  local base = (i - 1) * 11
  local from = tonumber(ARGV[base + 1])
  local to = tonumber(ARGV[base + 2])
  local current = redis.call('HGET', key, 'version')
  if not current then
    raise_floor(floor, to, ARGV[base + 11])
    out[i] = 0
  else
    current = tonumber(current)
    if current >= to then
      out[i] = 0
    elseif current ~= from then
      redis.call('DEL', key)
      raise_floor(floor, to, ARGV[base + 11])
      out[i] = -1
    else
      for f = 1, 7 do
        local d = tonumber(ARGV[base + 2 + f])
        if d ~= 0 then redis.call('HINCRBY', key, fields[f], d) end
      end
      redis.call('HSET', key, 'version', to, 'updated_at', ARGV[base + 10])
      out[i] = 1
    end
  end
end
return out
"#;

/// KEYS[1]: the hash, KEYS[2]: its floor. ARGV: version, the 7 values, updated_at, ttl seconds.
/// Returns 1 when written, 0 when the hash was as new already or the fill is below the floor.
const FILL_LUA: &str = r#"
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
local floor = redis.call('GET', KEYS[2])
if floor and tonumber(floor) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1],
  'responses', ARGV[2], 'rating_sum', ARGV[3], 'rating_1', ARGV[4], 'rating_2', ARGV[5],
  'rating_3', ARGV[6], 'rating_4', ARGV[7], 'rating_5', ARGV[8], 'updated_at', ARGV[9])
local ttl = tonumber(ARGV[10])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"#;

/// One course's change from one committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub course_id: String,
    /// The version before the batch and after it.
    pub from_version: i64,
    pub to_version: i64,
    pub responses: i64,
    pub rating_sum: i64,
    pub distribution: [i64; 5],
    pub updated_at_micros: i64,
}

/// What a delta did to a course's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    Skipped,
    /// The hash was at an unexpected version and was deleted.
    Invalidated,
}

/// The scripts, loaded once (EVALSHA; the redis crate reloads them on NOSCRIPT).
pub struct Scripts {
    delta: Script,
    fill: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            delta: Script::new(DELTA_LUA),
            fill: Script::new(FILL_LUA),
        }
    }

    /// Applies a batch's deltas atomically, in one script call.
    pub async fn apply<C: ConnectionLike>(
        &self,
        conn: &mut C,
        deltas: &[Delta],
    ) -> redis::RedisResult<Vec<Applied>> {
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.delta.prepare_invoke();
        for d in deltas {
            invocation
                .key(course_key(&d.course_id))
                .key(floor_key(&d.course_id));
            invocation
                .arg(d.from_version)
                .arg(d.to_version)
                .arg(d.responses)
                .arg(d.rating_sum);
            for n in d.distribution {
                invocation.arg(n);
            }
            invocation.arg(d.updated_at_micros).arg(FLOOR_TTL_SECS);
        }
        let results: Vec<i64> = invocation.invoke_async(conn).await?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                1 => Applied::Applied,
                -1 => Applied::Invalidated,
                _ => Applied::Skipped,
            })
            .collect())
    }

    /// Writes MySQL's numbers for a course unless the hash is as new already.
    /// Returns whether it wrote.
    pub async fn fill<C: ConnectionLike>(
        &self,
        conn: &mut C,
        course_id: &str,
        stats: &StatsRow,
        ttl_secs: u64,
    ) -> redis::RedisResult<bool> {
        let mut invocation = self.fill.prepare_invoke();
        invocation
            .key(course_key(course_id))
            .key(floor_key(course_id));
        invocation
            .arg(stats.version)
            .arg(stats.responses)
            .arg(stats.rating_sum);
        for n in stats.distribution {
            invocation.arg(n);
        }
        invocation.arg(stats.updated_at_micros).arg(ttl_secs);
        let written: i64 = invocation.invoke_async(conn).await?;
        Ok(written == 1)
    }
}

/// Reads a course's hash; `None` when absent or incomplete.
pub async fn read<C: ConnectionLike>(
    conn: &mut C,
    course_id: &str,
) -> redis::RedisResult<Option<StatsRow>> {
    let values: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg(course_key(course_id))
        .arg(&FIELDS[..])
        .arg("version")
        .arg("updated_at")
        .query_async(conn)
        .await?;
    if values.iter().any(Option::is_none) {
        return Ok(None);
    }
    let v: Vec<i64> = values.into_iter().flatten().collect();
    Ok(Some(StatsRow {
        responses: v[0],
        rating_sum: v[1],
        distribution: [v[2], v[3], v[4], v[5], v[6]],
        version: v[7],
        updated_at_micros: v[8],
    }))
}

/// Deletes a course's hash (the next read refills it from MySQL).
pub async fn invalidate<C: ConnectionLike>(
    conn: &mut C,
    course_id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("DEL")
        .arg(course_key(course_id))
        .query_async(conn)
        .await
}

/// A self-reconnecting Redis connection that does not need Redis up to be
/// created, with short timeouts so a dead Redis is noticed in well under a second.
pub fn connect(
    url: &str,
    timeout: std::time::Duration,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(std::time::Duration::from_millis(500));
    redis::aio::ConnectionManager::new_lazy_with_config(client, config)
}
