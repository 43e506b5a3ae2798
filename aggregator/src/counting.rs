//! The counting rule, as a pure function over one batch.
//!
//! One counted rating per student per course: the latest `submitted_at` wins,
//! ties broken by the larger `feedback_id`, whatever order events arrive in.
//! Given the current rows for the batch's (course, student) pairs and the
//! batch's new events, [`apply`] says which rows to write and how each
//! course's stats change.

use std::collections::{BTreeMap, HashMap, HashSet};

use shared::event::FeedbackSubmitted;
use time::OffsetDateTime;

/// A student's current response for a course: what counting needs of it (its
/// comment stays in the history, where the listings read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub feedback_id: String,
    pub rating: u8,
    pub submitted_at: OffsetDateTime,
}

impl Current {
    pub fn of(event: &FeedbackSubmitted) -> Self {
        Self {
            feedback_id: event.feedback_id.to_string(),
            rating: event.rating.get(),
            submitted_at: event.submitted_at,
        }
    }

    /// Whether `self` replaces `other` under the counting rule.
    pub fn beats(&self, other: &Current) -> bool {
        (self.submitted_at, &self.feedback_id) > (other.submitted_at, &other.feedback_id)
    }
}

/// (course_id, student_key)
pub type ResponseKey = (String, String);

/// How one course's numbers change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsChange {
    pub responses: i64,
    pub rating_sum: i64,
    /// Change of the count of each rating 1 to 5.
    pub distribution: [i64; 5],
}

impl StatsChange {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    fn add(&mut self, rating: u8, sign: i64) {
        self.rating_sum += sign * i64::from(rating);
        self.distribution[usize::from(rating) - 1] += sign;
    }
}

/// What a batch does.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows of `current_responses` to write (the new winners).
    pub writes: Vec<(ResponseKey, Current)>,
    /// Per course, the change of its stats: every course with a row to
    /// write, even when its numbers stay (a new rating equal to the old), so
    /// that each write of a course's current rows moves its version (which
    /// is what tells a lane its memo of the rows still holds: `sink/memo.rs`).
    pub changes: BTreeMap<String, StatsChange>,
}

/// An event's (course, student) pair.
pub fn key(event: &FeedbackSubmitted) -> ResponseKey {
    (
        event.course_id.to_string(),
        event.student_key.as_str().to_owned(),
    )
}

/// Applies `events` (new, deduplicated) on top of `existing` rows.
pub fn apply(mut existing: HashMap<ResponseKey, Current>, events: &[FeedbackSubmitted]) -> Outcome {
    let mut changes: BTreeMap<String, StatsChange> = BTreeMap::new();
    let mut written: HashMap<ResponseKey, Current> = HashMap::new();
    for event in events {
        let key = key(event);
        let candidate = Current::of(event);
        let change = changes.entry(key.0.clone()).or_default();
        match existing.get(&key) {
            None => {
                change.responses += 1;
                change.add(candidate.rating, 1);
            }
            Some(current) if candidate.beats(current) => {
                change.add(current.rating, -1);
                change.add(candidate.rating, 1);
            }
            Some(_) => continue, // An older submission, arriving late: it never counts.
        }
        existing.insert(key.clone(), candidate.clone());
        written.insert(key, candidate);
    }
    let written_courses: HashSet<&String> = written.keys().map(|(course, _)| course).collect();
    changes.retain(|course, change| !change.is_zero() || written_courses.contains(course));
    let mut writes: Vec<_> = written.into_iter().collect();
    writes.sort_by(|a, b| a.0.cmp(&b.0));
    Outcome { writes, changes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{CourseId, FeedbackId, Rating, StudentKey};
    use time::Duration;

    fn event(
        course: &str,
        student: &str,
        rating: i64,
        at_secs: i64,
        id: &str,
    ) -> FeedbackSubmitted {
        let mut e = FeedbackSubmitted::new(
            CourseId::parse(course).unwrap(),
            StudentKey::derive(b"k", student),
            Rating::parse(rating).unwrap(),
            None,
        );
        e.submitted_at = OffsetDateTime::UNIX_EPOCH + Duration::seconds(at_secs);
        e.feedback_id = FeedbackId::parse(id).unwrap();
        e
    }

    const A: &str = "01JAAAAAAAAAAAAAAAAAAAAAAA";
    const B: &str = "01JBBBBBBBBBBBBBBBBBBBBBBB";
    const C: &str = "01JCCCCCCCCCCCCCCCCCCCCCCC";

    #[test]
    fn a_first_rating_counts_once() {
        let out = apply(HashMap::new(), &[event("CS1", "alice", 4, 10, A)]);
        assert_eq!(
            out.changes["CS1"],
            StatsChange {
                responses: 1,
                rating_sum: 4,
                distribution: [0, 0, 0, 1, 0]
            }
        );
        assert_eq!(out.writes.len(), 1);
    }

    #[test]
    fn a_later_submission_replaces_the_earlier_one_in_either_arrival_order() {
        let early = event("CS1", "alice", 2, 10, A);
        let late = event("CS1", "alice", 5, 20, B);
        for order in [
            vec![early.clone(), late.clone()],
            vec![late.clone(), early.clone()],
        ] {
            let out = apply(HashMap::new(), &order);
            assert_eq!(
                out.changes["CS1"],
                StatsChange {
                    responses: 1,
                    rating_sum: 5,
                    distribution: [0, 0, 0, 0, 1]
                }
            );
            assert_eq!(out.writes[0].1.feedback_id, B);
        }
    }

    #[test]
    fn against_an_existing_row_only_a_newer_event_changes_anything() {
        let key = (
            "CS1".to_owned(),
            StudentKey::derive(b"k", "alice").as_str().to_owned(),
        );
        let existing =
            HashMap::from([(key.clone(), Current::of(&event("CS1", "alice", 3, 15, B)))]);
        let out = apply(existing.clone(), &[event("CS1", "alice", 5, 10, C)]);
        assert!(
            out.changes.is_empty() && out.writes.is_empty(),
            "an older event changes nothing"
        );
        let out = apply(existing, &[event("CS1", "alice", 1, 20, A)]);
        assert_eq!(
            out.changes["CS1"],
            StatsChange {
                responses: 0,
                rating_sum: -2,
                distribution: [1, 0, -1, 0, 0]
            }
        );
    }

    #[test]
    fn equal_times_are_broken_by_the_larger_feedback_id() {
        let out = apply(
            HashMap::new(),
            &[event("CS1", "bob", 4, 10, B), event("CS1", "bob", 1, 10, A)],
        );
        assert_eq!(out.writes[0].1.feedback_id, B);
        assert_eq!(out.changes["CS1"].rating_sum, 4);
    }

    #[test]
    fn the_same_rating_again_rewrites_the_row_but_leaves_the_numbers() {
        let out = apply(
            HashMap::new(),
            &[event("CS1", "bob", 4, 10, A), event("CS1", "bob", 4, 20, B)],
        );
        assert_eq!(out.writes[0].1.feedback_id, B);
        assert_eq!(
            out.changes["CS1"],
            StatsChange {
                responses: 1,
                rating_sum: 4,
                distribution: [0, 0, 0, 1, 0]
            }
        );
        let key = (
            "CS2".to_owned(),
            StudentKey::derive(b"k", "eve").as_str().to_owned(),
        );
        let existing = HashMap::from([(key, Current::of(&event("CS2", "eve", 3, 1, A)))]);
        let out = apply(existing, &[event("CS2", "eve", 3, 2, B)]);
        assert_eq!(
            out.changes["CS2"],
            StatsChange::default(),
            "no number moves, but the course is written (its version moves)"
        );
        assert_eq!(out.writes.len(), 1);
    }

    #[test]
    fn students_and_courses_are_counted_separately() {
        let out = apply(
            HashMap::new(),
            &[
                event("CS1", "a", 5, 1, A),
                event("CS1", "b", 3, 1, B),
                event("CS2", "a", 1, 1, C),
            ],
        );
        assert_eq!(out.changes["CS1"].responses, 2);
        assert_eq!(out.changes["CS1"].rating_sum, 8);
        assert_eq!(out.changes["CS2"].rating_sum, 1);
    }
}
