//! Which MySQL errors are the data's fault, for good.
//!
//! A batch fails for one of two kinds of reason. Most are passing: a lost
//! connection, a server restarting or read-only, too many connections, a
//! lock wait or a deadlock, a full disk, a table an older or newer version
//! of the schema lacks; retrying the same transaction later succeeds, so the
//! lane retries it (with backoff) and skips nothing. A few say that a value
//! of the batch cannot be stored, whenever it is tried: a constraint the row
//! breaks, a value out of range or too long for its column. Retrying such a
//! batch would hold its lane for ever, so the lane finds the events MySQL
//! refuses and sets them aside (`quarantine.rs`, `worker/commit.rs`).
//!
//! Only the codes listed here are refusals; any other error, one this list
//! does not know included, is retried: waiting is safe, setting feedback
//! aside is not.

/// MySQL's and MariaDB's server error codes for a value a statement cannot
/// store, each with the `reason` it is counted and recorded under.
const REFUSALS: &[(u16, &str)] = &[
    (1048, "null"),             // ER_BAD_NULL_ERROR: a NOT NULL column given NULL
    (1263, "null"),             // ER_WARN_NULL_TO_NOTNULL
    (1062, "duplicate"), // ER_DUP_ENTRY: a unique key the sink's upserts do not cover (they dedupe on the primary keys without an error)
    (1586, "duplicate"), // ER_DUP_ENTRY_WITH_KEY_NAME
    (1264, "out_of_range"), // ER_WARN_DATA_OUT_OF_RANGE
    (1690, "out_of_range"), // ER_DATA_OUT_OF_RANGE: arithmetic past the column's type
    (1265, "incorrect_value"), // WARN_DATA_TRUNCATED
    (1292, "incorrect_value"), // ER_TRUNCATED_WRONG_VALUE: a date or number the column cannot read
    (1366, "incorrect_value"), // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: a string in a narrower character set
    (1367, "incorrect_value"), // ER_ILLEGAL_VALUE_FOR_TYPE
    (1406, "too_long"),        // ER_DATA_TOO_LONG
    (1216, "foreign_key"),     // ER_NO_REFERENCED_ROW
    (1217, "foreign_key"),     // ER_ROW_IS_REFERENCED
    (1451, "foreign_key"),     // ER_ROW_IS_REFERENCED_2
    (1452, "foreign_key"),     // ER_NO_REFERENCED_ROW_2
    (3819, "check_constraint"), // MySQL's ER_CHECK_CONSTRAINT_VIOLATED
    (4025, "check_constraint"), // MariaDB's ER_CONSTRAINT_FAILED
    (1644, "trigger"),         // ER_SIGNAL_EXCEPTION: a trigger's SIGNAL refused the row
];

/// Every reason a refusal is counted under, each shown at 0 from the start.
pub const REASONS: &[&str] = &[
    "null",
    "duplicate",
    "out_of_range",
    "incorrect_value",
    "too_long",
    "foreign_key",
    "check_constraint",
    "trigger",
];

/// The reason MySQL's error `code` refuses a value for good; `None` for an
/// error worth retrying (any code not listed).
pub fn reason_of(code: u16) -> Option<&'static str> {
    REFUSALS
        .iter()
        .find(|(listed, _)| *listed == code)
        .map(|(_, reason)| *reason)
}

/// MySQL's refusal of a value: the error, and the reason it is counted under.
#[derive(Debug, thiserror::Error)]
#[error("MySQL refused a value ({reason}): {error}")]
pub struct Refusal {
    pub reason: &'static str,
    #[source]
    pub error: mysql_async::Error,
}

impl Refusal {
    /// The refusal `err` is, if it is one.
    pub fn of(err: &mysql_async::Error) -> Option<&'static str> {
        match err {
            mysql_async::Error::Server(server) => reason_of(server.code),
            _ => None,
        }
    }

    /// MySQL's error code.
    pub fn code(&self) -> u16 {
        match &self.error {
            mysql_async::Error::Server(server) => server.code,
            _ => 0,
        }
    }

    /// MySQL's message, naming the constraint or the column.
    pub fn message(&self) -> String {
        match &self.error {
            mysql_async::Error::Server(server) => server.message.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_refusals_and_everything_else_is_retried() {
        for (code, reason) in [
            (4025, "check_constraint"),
            (3819, "check_constraint"),
            (1264, "out_of_range"),
            (1406, "too_long"),
            (1452, "foreign_key"),
            (1366, "incorrect_value"),
            (1048, "null"),
        ] {
            assert_eq!(reason_of(code), Some(reason), "{code}");
        }
        // Lock wait timeout, deadlock, too many connections, server
        // shutting down, read-only, connection killed, statement
        // interrupted, table full, unknown column or table (a schema the
        // version does not match), access denied, and a code nobody listed.
        for code in [
            1205, 1213, 1040, 1053, 1290, 1836, 1927, 1317, 1114, 1054, 1146, 1142, 1045, 9999,
        ] {
            assert_eq!(reason_of(code), None, "{code} is retried");
        }
    }

    #[test]
    fn every_listed_reason_is_shown_from_the_start() {
        for (code, reason) in REFUSALS {
            assert!(REASONS.contains(reason), "{code}: {reason} not in REASONS");
        }
    }
}
