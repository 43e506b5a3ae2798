//! Query's integration tests, in one binary (one link). The outages here
//! strike private Redis and MariaDB servers of the tests' own, never the
//! shared ones, so they run alongside the rest.

mod api;
mod catalog;
mod comments;
mod moderation;
mod outage;
mod stats;
mod trend;
