//! What a lane knows of its courses' current rows, so that a batch need not
//! read them back (step 3).
//!
//! A lane is the only writer of its partitions' courses while it owns them,
//! and every transaction that writes a course's current rows bumps that
//! course's `course_stats` version (step 4), read under the course lock in
//! step 1. So the rows a lane wrote or read for a course are still the
//! current rows exactly when the version it locks is the one it left after
//! its last commit of the course; any other version (another member wrote the
//! course: a rebalance, a topic whose partitions were changed; a commit whose
//! outcome this lane never learned) and the course's entries are not used,
//! and are replaced when the batch commits.
//!
//! A pair the memo does not hold is not taken to be new: the batch inserts
//! it only where no row is (`current.rs`), and MySQL's count of rows
//! inserted tells whether one was there after all; only then is anything
//! read. The memo is bounded ([`Memo::CAPACITY`] pairs, whole courses
//! dropped beyond it), emptied when the lane loses partitions, and learns
//! only from committed transactions.

use std::collections::{HashMap, HashSet};

use crate::counting::{Current, ResponseKey};

/// One course's known rows, at the version the lane left it at.
#[derive(Debug, Default)]
struct Course {
    version: i64,
    /// By the student key's 32 bytes (its 64 hex characters halved).
    rows: HashMap<[u8; 32], Row>,
}

/// A current row, compact: a full memo is a few megabytes.
#[derive(Debug, Clone, Copy)]
struct Row {
    feedback_id: u128,
    submitted_at_micros: i64,
    rating: u8,
}

/// A course a committed transaction locked: the version it read, and the one
/// it left (higher when it wrote the course's rows).
#[derive(Debug, Clone)]
pub struct CourseSeen {
    pub course_id: String,
    pub locked: i64,
    pub after: i64,
}

/// A lane's knowledge of its courses' current rows.
#[derive(Debug, Default)]
pub struct Memo {
    courses: HashMap<String, Course>,
    pairs: usize,
}

impl Memo {
    /// At most this many pairs are held, about 70 bytes each.
    pub const CAPACITY: usize = 40_000;

    /// The known current rows of `keys`, for courses whose locked version
    /// (`versions`, a course without a stats row at 0) is the one the memo
    /// holds them at.
    pub fn known<'a>(
        &self,
        versions: &HashMap<String, i64>,
        keys: impl Iterator<Item = &'a ResponseKey>,
    ) -> HashMap<ResponseKey, Current> {
        let mut known = HashMap::new();
        for key in keys {
            let Some(course) = self.courses.get(&key.0) else {
                continue;
            };
            if course.version != versions.get(&key.0).copied().unwrap_or(0) {
                continue;
            }
            let Some(row) = student(&key.1).and_then(|s| course.rows.get(&s)) else {
                continue;
            };
            known.insert(
                key.clone(),
                Current {
                    feedback_id: ulid::Ulid(row.feedback_id).to_string(),
                    rating: row.rating,
                    submitted_at: shared::mysql::from_micros(row.submitted_at_micros),
                },
            );
        }
        known
    }

    /// Learns from committed transactions (one, or the parts of a batch
    /// committed in turn): the courses they locked, in order, and the current
    /// rows they wrote or read, in order.
    pub fn learn(&mut self, seen: &[CourseSeen], rows: &[(ResponseKey, Current)]) {
        // A course that another writer moved between two parts: which of the
        // earlier parts' rows still hold is unknown, so none are kept.
        let mut left: HashMap<&str, i64> = HashMap::new();
        let mut untrusted: HashSet<&str> = HashSet::new();
        for course in seen {
            let id = course.course_id.as_str();
            if left
                .insert(id, course.after)
                .is_some_and(|after| after != course.locked)
            {
                untrusted.insert(id);
            }
            let entry = self.courses.entry(course.course_id.clone()).or_default();
            if entry.version != course.locked {
                self.pairs -= entry.rows.len();
                entry.rows.clear();
            }
            entry.version = course.after;
        }
        for ((course_id, student_key), current) in rows {
            if untrusted.contains(course_id.as_str()) {
                continue;
            }
            let (Some(student), Ok(id)) = (
                student(student_key),
                ulid::Ulid::from_string(&current.feedback_id),
            ) else {
                continue;
            };
            let Some(course) = self.courses.get_mut(course_id) else {
                continue;
            };
            let row = Row {
                feedback_id: id.0,
                submitted_at_micros: (current.submitted_at.unix_timestamp_nanos() / 1000) as i64,
                rating: current.rating,
            };
            if course.rows.insert(student, row).is_none() {
                self.pairs += 1;
            }
        }
        self.bound();
    }

    /// Forgets everything (the lane lost partitions).
    pub fn clear(&mut self) {
        self.courses = HashMap::new();
        self.pairs = 0;
    }

    /// How many pairs are held.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Drops whole courses until at most three quarters of the capacity is
    /// held: a course's pairs are found again by the insert-and-count path.
    fn bound(&mut self) {
        if self.pairs <= Self::CAPACITY {
            return;
        }
        let target = Self::CAPACITY / 4 * 3;
        let mut dropped = Vec::new();
        let mut pairs = self.pairs;
        for (course_id, course) in &self.courses {
            if pairs <= target {
                break;
            }
            pairs -= course.rows.len();
            dropped.push(course_id.clone());
        }
        for course_id in dropped {
            self.courses.remove(&course_id);
        }
        self.pairs = pairs;
    }
}

/// A student key's bytes; `None` for a key that is not 64 hex characters
/// (never the case for a decoded event: such a pair is simply not memoised).
fn student(key: &str) -> Option<[u8; 32]> {
    let mut out = [0; 32];
    hex::decode_to_slice(key, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn key(course: &str, n: u8) -> ResponseKey {
        (course.to_owned(), hex::encode([n; 32]))
    }

    fn current(rating: u8) -> Current {
        Current {
            feedback_id: ulid::Ulid::from_parts(1, u128::from(rating)).to_string(),
            rating,
            submitted_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        }
    }

    fn seen(course: &str, locked: i64, after: i64) -> CourseSeen {
        CourseSeen {
            course_id: course.to_owned(),
            locked,
            after,
        }
    }

    fn versions(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(c, v)| ((*c).to_owned(), *v)).collect()
    }

    #[test]
    fn a_row_is_known_only_at_the_version_it_was_left_at() {
        let mut memo = Memo::default();
        memo.learn(&[seen("CS1", 0, 1)], &[(key("CS1", 1), current(4))]);
        let k = key("CS1", 1);
        let at_1 = memo.known(&versions(&[("CS1", 1)]), [&k].into_iter());
        assert_eq!(at_1.get(&k), Some(&current(4)));
        assert!(
            memo.known(&versions(&[("CS1", 2)]), [&k].into_iter())
                .is_empty(),
            "another writer moved the version: the row is not trusted"
        );
        assert!(memo.known(&versions(&[]), [&k].into_iter()).is_empty());
    }

    #[test]
    fn a_course_locked_at_another_version_loses_its_rows_when_learned_again() {
        let mut memo = Memo::default();
        memo.learn(
            &[seen("CS1", 0, 1)],
            &[(key("CS1", 1), current(4)), (key("CS1", 2), current(2))],
        );
        assert_eq!(memo.pairs(), 2);
        // Someone else took the course to 5; this lane's commit read 5, left 6.
        memo.learn(&[seen("CS1", 5, 6)], &[(key("CS1", 3), current(1))]);
        assert_eq!(memo.pairs(), 1);
        let (k1, k3) = (key("CS1", 1), key("CS1", 3));
        let known = memo.known(&versions(&[("CS1", 6)]), [&k1, &k3].into_iter());
        assert_eq!(known.len(), 1);
        assert_eq!(known.get(&k3), Some(&current(1)));
    }

    #[test]
    fn parts_of_a_batch_with_another_writer_between_them_leave_the_course_unknown() {
        let mut memo = Memo::default();
        let (k1, k2) = (key("CS1", 1), key("CS1", 2));
        // Part one left CS1 at 4; someone else took it to 6 before part two.
        memo.learn(
            &[seen("CS1", 3, 4), seen("CS1", 6, 7)],
            &[(k1.clone(), current(4)), (k2.clone(), current(2))],
        );
        assert_eq!(memo.pairs(), 0);
        assert!(memo
            .known(&versions(&[("CS1", 7)]), [&k1, &k2].into_iter())
            .is_empty());
        // In step, both parts' rows are kept.
        memo.learn(
            &[seen("CS1", 7, 8), seen("CS1", 8, 9)],
            &[(k1.clone(), current(4)), (k2.clone(), current(2))],
        );
        assert_eq!(memo.pairs(), 2);
    }

    #[test]
    fn it_stays_within_its_capacity_and_forgets_on_clear() {
        let mut memo = Memo::default();
        let per_course = 1000;
        for c in 0..(Memo::CAPACITY / per_course + 1) {
            let course = format!("C{c}");
            let rows: Vec<_> = (0..per_course)
                .map(|n| {
                    let mut student = [0u8; 32];
                    student[..8].copy_from_slice(&(n as u64).to_be_bytes());
                    ((course.clone(), hex::encode(student)), current(3))
                })
                .collect();
            memo.learn(&[seen(&course, 0, 1)], &rows);
            assert!(memo.pairs() <= Memo::CAPACITY);
        }
        assert!(memo.pairs() >= Memo::CAPACITY / 2);
        memo.clear();
        assert_eq!(memo.pairs(), 0);
    }
}
