//! The Redis side of course statistics, shared by the aggregator (deltas) and
//! query (reads and fills).
//!
//! One hash per course, `feedback:course:{<course_id>}`, with the fields
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
//! (`feedback:floor:{<course_id>}` = v+1, for a minute) and a fill below
//! the floor is refused: the reader answers from MySQL and the next read fills.
//! Floors have their own prefix: course ids may contain `:`, so a suffix
//! (`feedback:course:X:floor`, before) named course `X:floor`'s hash too.
//!
//! The braces are a Redis Cluster hash tag: only the course id picks the
//! slot, so a course's hash and floor share one and a script may touch both.
//! A batch's deltas go to a cluster in one script call per slot, to a single
//! server in one call (`Scripts::apply_batch`). The same names serve both
//! modes; hashes under the names before the tags (`feedback:course:CS101`)
//! are no longer read: Redis is a cache of MySQL, so a course missing under
//! the new name is read from MySQL and filled (`query rebuild-cache` deletes
//! the old names too).
//!
//! So Redis never holds numbers MySQL never had, nor numbers older than a
//! delta it has seen.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::cluster_routing::Slot;
use redis::Script;

use crate::mysql::StatsRow;
use crate::redis_conn::Connection;

/// Where a course's hash key starts; the course id follows in braces.
const COURSE_KEY_PREFIX: &str = "feedback:course:{";

/// The hash key of a course.
pub fn course_key(course_id: &str) -> String {
    format!("{COURSE_KEY_PREFIX}{course_id}}}")
}

/// The floor key of a course: fills below this version are refused.
pub fn floor_key(course_id: &str) -> String {
    format!("feedback:floor:{{{course_id}}}")
}

/// The course whose hash `key` is; `None` for any other key (a floor, say).
pub fn course_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(COURSE_KEY_PREFIX)?.strip_suffix('}')
}

/// A course's hash key as named before hash tags, still deleted by a rebuild.
pub fn untagged_course_key(course_id: &str) -> String {
    format!("feedback:course:{course_id}")
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

/// One script call of [`Scripts::apply_batch`]: the deltas it carried and what it did.
pub struct Call<'a> {
    pub deltas: Vec<&'a Delta>,
    pub result: redis::RedisResult<Vec<Applied>>,
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

    /// Applies a batch's deltas atomically, in one script call (which a
    /// cluster refuses unless they share a slot: see [`Self::apply_batch`]).
    pub async fn apply<C: ConnectionLike>(
        &self,
        conn: &mut C,
        deltas: &[Delta],
    ) -> redis::RedisResult<Vec<Applied>> {
        let deltas: Vec<&Delta> = deltas.iter().collect();
        self.invoke_delta(conn, &deltas).await
    }

    /// Applies a batch's deltas in as few script calls as the server takes:
    /// one on a single server; on a cluster one per hash slot (a script's
    /// keys must share a slot), sent together. Each call is atomic on its
    /// own; a course's deltas stay in one call, in their order.
    pub async fn apply_batch<'a>(&self, conn: &Connection, deltas: &'a [Delta]) -> Vec<Call<'a>> {
        let groups = if conn.is_cluster() {
            by_slot(deltas)
        } else {
            vec![deltas.iter().collect()]
        };
        let calls = groups.into_iter().filter(|g| !g.is_empty()).map(|group| {
            let mut conn = conn.clone();
            async move {
                let result = self.invoke_delta(&mut conn, &group).await;
                Call {
                    deltas: group,
                    result,
                }
            }
        });
        futures::future::join_all(calls).await
    }

    async fn invoke_delta<C: ConnectionLike>(
        &self,
        conn: &mut C,
        deltas: &[&Delta],
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

/// Deltas grouped by the hash slot of their course, each group in the
/// batch's order, the groups in the order of their first delta.
fn by_slot(deltas: &[Delta]) -> Vec<Vec<&Delta>> {
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut groups: Vec<Vec<&Delta>> = Vec::new();
    for delta in deltas {
        let slot = Slot::for_key(course_key(&delta.course_id));
        let at = *index.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(delta);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(course: &str, from: i64) -> Delta {
        Delta {
            course_id: course.into(),
            from_version: from,
            to_version: from + 1,
            responses: 1,
            rating_sum: 4,
            distribution: [0, 0, 0, 1, 0],
            updated_at_micros: 1,
        }
    }

    #[test]
    fn a_course_hash_and_its_floor_share_a_slot_and_name_the_course() {
        for course in ["CS101", "X:floor", "a.b-c_d", "MATH-2024:fall"] {
            assert_eq!(
                Slot::for_key(course_key(course)),
                Slot::for_key(floor_key(course))
            );
            assert_eq!(course_of_key(&course_key(course)), Some(course));
            assert_eq!(course_of_key(&floor_key(course)), None);
        }
        assert_eq!(course_key("CS101"), "feedback:course:{CS101}");
        assert_eq!(course_of_key("feedback:course:CS101"), None);
    }

    #[test]
    fn deltas_are_grouped_by_slot_keeping_each_course_in_order() {
        let deltas: Vec<Delta> = (0..40)
            .map(|i| delta(&format!("C{}", i % 20), i / 20))
            .collect();
        let groups = by_slot(&deltas);
        assert!(groups.len() > 1, "twenty courses span several slots");
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 40);
        for group in &groups {
            let slot = Slot::for_key(course_key(&group[0].course_id));
            assert!(group
                .iter()
                .all(|d| Slot::for_key(course_key(&d.course_id)) == slot));
            for course in group.iter().map(|d| &d.course_id) {
                let versions: Vec<i64> = group
                    .iter()
                    .filter(|d| &d.course_id == course)
                    .map(|d| d.from_version)
                    .collect();
                assert!(versions.windows(2).all(|w| w[0] < w[1]), "in order");
            }
        }
    }
}
