//! The course catalog as ingest sees it: with `FEEDBACK_CATALOG=closed` a
//! submission must name a course the catalog lists; in either mode `GET
//! /v1/catalog` lists its courses, ids, titles and terms, as query does, so
//! the form ingest serves has its course list when ingest is reached
//! directly rather than behind the front door (which sends that path to
//! query).
//!
//! The catalog lives in MySQL (table `courses`, managed through query).
//! Ingest never asks MySQL while it answers a request: a background task
//! (`catalog/refresh.rs`) reads it every 10 s and publishes an immutable
//! map that the request reads in memory; it also keeps a copy on disk in the
//! spool (`spool/catalog_copy.rs`), loaded at start before serving. So a
//! course added is accepted within about 10 s, and a MySQL (or query) outage,
//! or an ingest restart during one, leaves ingest with the last catalog it
//! knew. Only a closed ingest that never read a catalog has none: it answers
//! 503 `catalog_unavailable` and `/readyz` is 503 until it reads one. An
//! open ingest reads MySQL on a best-effort basis: a catalog it cannot read
//! only leaves the list empty (or as last known), never ingest unready.

pub mod refresh;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use shared::domain::CourseId;
use shared::metrics::names;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

pub use refresh::Refresher;

/// How often MySQL is asked whether the catalog changed: well within the
/// contract's 30 s for a new course, at one cheap query per interval.
pub const REFRESH: Duration = Duration::from_secs(10);

/// `FEEDBACK_CATALOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Any valid course id is taken.
    Open,
    /// Only the catalog's courses are.
    Closed,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(Mode::Open),
            "closed" => Ok(Mode::Closed),
            other => Err(format!("unknown catalog mode {other:?} (open or closed)")),
        }
    }
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Closed => "closed",
        }
    }
}

/// Ingest's catalog settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `FEEDBACK_CATALOG` (default `open`).
    pub mode: Mode,
    /// `FEEDBACK_MYSQL_URL`, where the catalog is read: required in closed
    /// mode, best effort in open mode.
    pub mysql_url: String,
    /// How often MySQL is asked ([`REFRESH`]); not a variable, as the
    /// contract's 30 s is the operator's promise. Tests shorten it.
    pub refresh: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Open,
            mysql_url: shared::env::DEFAULT_MYSQL_URL.to_owned(),
            refresh: REFRESH,
        }
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let mode = shared::env::parse_or("FEEDBACK_CATALOG", Mode::Open)?;
        let mysql_url = shared::env::mysql_url();
        if mode == Mode::Closed {
            // Checked now, so that a mistyped URL stops the start rather
            // than showing up later as a catalog that never arrives.
            mysql_async::Opts::from_url(&mysql_url).map_err(|e| {
                anyhow::anyhow!("FEEDBACK_MYSQL_URL is not valid (FEEDBACK_CATALOG=closed reads the catalog from it): {e}")
            })?;
        }
        Ok(Self {
            mode,
            mysql_url,
            refresh: REFRESH,
        })
    }
}

/// What the catalog says of one course: what `GET /v1/catalog` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Course {
    pub title: String,
    pub term: Option<String>,
}

/// The courses by id. A `BTreeMap` of `String`s orders them as query's
/// snapshot does (binary), so both list the catalog alike.
pub type Courses = BTreeMap<String, Course>;

/// The catalog's copy on disk: what ingest knew, and when MySQL said so.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The courses, sorted by id.
    pub courses: Vec<SavedCourse>,
    #[serde(with = "time::serde::rfc3339")]
    pub learned_at: OffsetDateTime,
}

impl Saved {
    fn of(courses: &Courses, learned_at: OffsetDateTime) -> Self {
        Self {
            courses: courses
                .iter()
                .map(|(course_id, course)| SavedCourse {
                    course_id: course_id.clone(),
                    title: course.title.clone(),
                    term: course.term.clone(),
                })
                .collect(),
            learned_at,
        }
    }

    fn into_courses(self) -> Courses {
        self.courses
            .into_iter()
            .map(|c| {
                let course = Course {
                    title: c.title,
                    term: c.term,
                };
                (c.course_id, course)
            })
            .collect()
    }
}

/// One course of the copy on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SavedCourseForm")]
pub struct SavedCourse {
    pub course_id: String,
    pub title: String,
    pub term: Option<String>,
}

/// The forms a saved course has had: the id alone (written by an ingest
/// that kept only ids), or the whole entry. An old copy still loads, so an
/// upgrade during a MySQL outage keeps its closed catalog; its titles are
/// empty until the next read from MySQL.
#[derive(Deserialize)]
#[serde(untagged)]
enum SavedCourseForm {
    Entry {
        course_id: String,
        title: String,
        #[serde(default)]
        term: Option<String>,
    },
    Id(String),
}

impl From<SavedCourseForm> for SavedCourse {
    fn from(form: SavedCourseForm) -> Self {
        match form {
            SavedCourseForm::Entry {
                course_id,
                title,
                term,
            } => Self {
                course_id,
                title,
                term,
            },
            SavedCourseForm::Id(course_id) => Self {
                course_id,
                title: String::new(),
                term: None,
            },
        }
    }
}

/// What the catalog says of a course.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Taken: listed, or the catalog is open.
    Listed,
    /// Closed, and the catalog does not list it.
    Unknown,
    /// Closed, and no catalog was ever read.
    Unavailable,
}

/// Where the courses held came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    None,
    Disk,
    Mysql,
}

/// What the catalog holds now; replaced whole, never changed in place.
#[derive(Debug, Clone)]
struct View {
    /// `None` until a catalog was read from disk or MySQL.
    courses: Option<Arc<Courses>>,
    source: Source,
    /// When MySQL listed the courses held (the disk copy keeps it).
    learned_at: Option<OffsetDateTime>,
    /// When MySQL last answered this process (unchanged or not).
    refreshed_at: Option<OffsetDateTime>,
    /// The last failed read and when, cleared by the next success.
    failure: Option<(String, OffsetDateTime)>,
}

/// The catalog: the request handler reads it, the refresher replaces it.
pub struct Catalog {
    mode: Mode,
    /// A watch channel's value rather than a lock of its own: reads take a
    /// shared borrow for one map lookup (or an `Arc` clone), and a
    /// replacement never waits for a request.
    view: watch::Sender<View>,
}

impl Catalog {
    /// A catalog in `mode`, starting from the disk copy, if any: open, every
    /// valid course is taken; closed, only listed ones.
    pub fn new(mode: Mode, saved: Option<Saved>) -> Self {
        let view = match saved {
            Some(saved) => View {
                learned_at: Some(saved.learned_at),
                courses: Some(Arc::new(saved.into_courses())),
                source: Source::Disk,
                refreshed_at: None,
                failure: None,
            },
            None => View {
                courses: None,
                source: Source::None,
                learned_at: None,
                refreshed_at: None,
                failure: None,
            },
        };
        publish_size(&view);
        shared::metrics::show_counters(&[(
            names::INGEST_CATALOG_REFRESHES_TOTAL,
            &[("outcome", "failed")],
        )]);
        if mode == Mode::Closed {
            shared::metrics::show_counters(&[
                (
                    names::INGEST_CATALOG_REFUSED_TOTAL,
                    &[("reason", "unknown_course")],
                ),
                (
                    names::INGEST_CATALOG_REFUSED_TOTAL,
                    &[("reason", "unavailable")],
                ),
            ]);
        }
        Self {
            mode,
            view: watch::Sender::new(view),
        }
    }

    /// `FEEDBACK_CATALOG`.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether `course_id` may be submitted: a lookup in memory, by id only.
    pub fn lookup(&self, course_id: &CourseId) -> Lookup {
        if self.mode == Mode::Open {
            return Lookup::Listed;
        }
        match &self.view.borrow().courses {
            None => Lookup::Unavailable,
            Some(courses) if courses.contains_key(course_id.as_str()) => Lookup::Listed,
            Some(_) => Lookup::Unknown,
        }
    }

    /// `GET /v1/catalog`: the body and headers query answers, from the
    /// courses held (none yet: an empty list, so the form still takes a
    /// typed id). Public, and any origin may read it, as query's.
    pub fn public_list(&self) -> Response {
        // Cloned out of the borrow, so a long list is written without
        // holding up the refresher.
        let courses = self.view.borrow().courses.clone().unwrap_or_default();
        let courses = courses
            .iter()
            .map(|(course_id, course)| PublicCourse {
                course_id,
                title: &course.title,
                term: course.term.as_deref(),
            })
            .collect();
        (
            [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
            Json(PublicCatalog { courses }),
        )
            .into_response()
    }

    /// MySQL listed `courses` now. Returns what to save on disk when they
    /// differ from what was held (a title or term included), `None` when
    /// they are the same.
    fn learned(&self, courses: Courses) -> Option<Saved> {
        let now = OffsetDateTime::now_utc();
        let mut saved = None;
        self.view.send_modify(|view| {
            if view.courses.as_deref() != Some(&courses) {
                saved = Some(Saved::of(&courses, now));
                view.courses = Some(Arc::new(courses));
                view.learned_at = Some(now);
            }
            view.source = Source::Mysql;
            view.refreshed_at = Some(now);
            view.failure = None;
            publish_size(view);
        });
        saved
    }

    /// MySQL said the catalog has not changed since it was last listed.
    fn confirmed(&self) {
        self.view.send_modify(|view| {
            view.refreshed_at = Some(OffsetDateTime::now_utc());
            view.failure = None;
        });
    }

    /// A read from MySQL failed; the courses held stay.
    pub(crate) fn failed(&self, error: String) {
        self.view.send_modify(|view| {
            view.failure = Some((error, OffsetDateTime::now_utc()));
        });
    }

    /// `/readyz`'s `checks.catalog`, and whether it lets ingest be ready: a
    /// closed catalog that was never read refuses every submission, while
    /// one held from an earlier read keeps serving through a MySQL outage.
    /// An open one is always ready: its list only helps the form.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let view = self.view.borrow();
        let at = |at: Option<OffsetDateTime>| at.and_then(|at| at.format(&Rfc3339).ok());
        let check = serde_json::json!({
            "mode": self.mode.as_str(),
            "courses": view.courses.as_ref().map(|c| c.len()),
            "source": match view.source {
                Source::None => "none",
                Source::Disk => "disk",
                Source::Mysql => "mysql",
            },
            "learned_at": at(view.learned_at),
            "last_refresh": at(view.refreshed_at),
            "last_error": view.failure.as_ref().map(|(error, _)| error),
            "last_error_at": at(view.failure.as_ref().map(|(_, at)| *at)),
        });
        (self.mode == Mode::Open || view.courses.is_some(), check)
    }
}

/// `GET /v1/catalog`'s body, field for field query's.
#[derive(Serialize)]
struct PublicCatalog<'a> {
    courses: Vec<PublicCourse<'a>>,
}

#[derive(Serialize)]
struct PublicCourse<'a> {
    course_id: &'a str,
    title: &'a str,
    term: Option<&'a str>,
}

fn publish_size(view: &View) {
    let courses = view.courses.as_ref().map_or(0, |c| c.len());
    metrics::gauge!(names::INGEST_CATALOG_COURSES).set(courses as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn course(id: &str) -> CourseId {
        CourseId::parse_new(id).unwrap()
    }

    fn courses(ids: &[&str]) -> Courses {
        ids.iter()
            .map(|id| {
                let course = Course {
                    title: format!("Course {id}"),
                    term: None,
                };
                ((*id).to_owned(), course)
            })
            .collect()
    }

    fn saved(ids: &[&str]) -> Saved {
        Saved::of(&courses(ids), OffsetDateTime::UNIX_EPOCH)
    }

    async fn listed(catalog: &Catalog) -> (axum::http::HeaderMap, serde_json::Value) {
        let response = catalog.public_list();
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (headers, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn the_mode_parses_in_any_case_and_refuses_anything_else() {
        assert_eq!(" Closed ".parse::<Mode>(), Ok(Mode::Closed));
        assert_eq!("open".parse::<Mode>(), Ok(Mode::Open));
        assert!("shut"
            .parse::<Mode>()
            .unwrap_err()
            .contains("open or closed"));
    }

    #[test]
    fn an_open_catalog_takes_every_course_and_is_ready_without_one() {
        let catalog = Catalog::new(Mode::Open, None);
        assert_eq!(catalog.lookup(&course("ANY1")), Lookup::Listed);
        catalog.failed("MySQL is down".into());
        let (ready, check) = catalog.readiness();
        assert!(ready);
        assert_eq!(check["mode"], "open");
        assert_eq!(check["source"], "none");
        assert!(check["courses"].is_null());
        assert_eq!(check["last_error"], "MySQL is down");
    }

    #[test]
    fn a_closed_catalog_never_read_is_unavailable_and_not_ready() {
        let catalog = Catalog::new(Mode::Closed, None);
        assert_eq!(catalog.lookup(&course("CS101")), Lookup::Unavailable);
        let (ready, check) = catalog.readiness();
        assert!(!ready);
        assert_eq!(check["source"], "none");
        assert!(check["courses"].is_null());
    }

    #[test]
    fn a_failed_read_keeps_the_courses_held_and_ingest_ready() {
        let catalog = Catalog::new(Mode::Closed, Some(saved(&["CS101"])));
        catalog.failed("MySQL is down".into());
        assert_eq!(catalog.lookup(&course("CS101")), Lookup::Listed);
        assert_eq!(catalog.lookup(&course("cs101")), Lookup::Unknown);
        let (ready, check) = catalog.readiness();
        assert!(ready);
        assert_eq!(check["source"], "disk");
        assert_eq!(check["courses"], 1);
        assert_eq!(check["last_error"], "MySQL is down");
    }

    #[test]
    fn only_a_changed_list_is_saved_again_a_title_included() {
        let catalog = Catalog::new(Mode::Closed, None);
        let saved = catalog
            .learned(courses(&["MA2", "CS101"]))
            .expect("a first list");
        let ids: Vec<&str> = saved.courses.iter().map(|c| c.course_id.as_str()).collect();
        assert_eq!(ids, ["CS101", "MA2"]);
        assert!(catalog.learned(courses(&["CS101", "MA2"])).is_none());
        assert_eq!(catalog.lookup(&course("MA2")), Lookup::Listed);

        let mut renamed = courses(&["CS101", "MA2"]);
        renamed.get_mut("MA2").unwrap().title = "Algebra".into();
        let saved = catalog.learned(renamed).expect("a title changed");
        assert_eq!(saved.courses[1].title, "Algebra");

        let saved = catalog
            .learned(courses(&["CS101"]))
            .expect("a course removed");
        assert_eq!(saved.courses.len(), 1);
        assert_eq!(catalog.lookup(&course("MA2")), Lookup::Unknown);
        assert_eq!(catalog.readiness().1["source"], "mysql");
    }

    #[tokio::test]
    async fn the_public_list_is_querys_body_by_id_with_any_origin_allowed() {
        let catalog = Catalog::new(Mode::Open, None);
        let (headers, body) = listed(&catalog).await;
        assert_eq!(body, serde_json::json!({"courses": []}));
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");

        let mut held = courses(&["b2", "CS101", "B1"]);
        held.get_mut("CS101").unwrap().term = Some("2026F".into());
        catalog.learned(held);
        let (_, body) = listed(&catalog).await;
        assert_eq!(
            body,
            serde_json::json!({"courses": [
                {"course_id": "B1", "title": "Course B1", "term": null},
                {"course_id": "CS101", "title": "Course CS101", "term": "2026F"},
                {"course_id": "b2", "title": "Course b2", "term": null},
            ]})
        );
    }

    #[test]
    fn a_copy_of_ids_only_still_loads_with_empty_titles() {
        let old = br#"{"courses":["CS101","MA2"],"learned_at":"2020-01-01T00:00:00Z"}"#;
        let saved: Saved = serde_json::from_slice(old).unwrap();
        let catalog = Catalog::new(Mode::Closed, Some(saved.clone()));
        assert_eq!(catalog.lookup(&course("MA2")), Lookup::Listed);
        assert_eq!(
            saved.courses[0],
            SavedCourse {
                course_id: "CS101".into(),
                title: String::new(),
                term: None,
            }
        );

        let new = serde_json::to_vec(&Saved::of(
            &saved.into_courses(),
            OffsetDateTime::UNIX_EPOCH,
        ))
        .unwrap();
        let again: Saved = serde_json::from_slice(&new).unwrap();
        assert_eq!(again.courses.len(), 2);
        let mut with_term = courses(&["CS101"]);
        with_term.get_mut("CS101").unwrap().term = Some("2026F".into());
        let bytes = serde_json::to_vec(&Saved::of(&with_term, OffsetDateTime::UNIX_EPOCH)).unwrap();
        let again: Saved = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(again.into_courses(), with_term);
    }
}
