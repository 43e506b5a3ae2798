//! Times in answers: RFC 3339 in UTC (`2026-11-01T10:00:00.123456Z`).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Microseconds since the epoch as RFC 3339 UTC: whole seconds without a
/// fraction, others with all six digits (`.500000`, not `.5`, so that the
/// fractions of one second line up).
pub fn rfc3339(micros: i64) -> String {
    let at = shared::mysql::from_micros(micros);
    if micros.rem_euclid(1_000_000) == 0 {
        return at.format(&Rfc3339).unwrap_or_default();
    }
    at.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .unwrap_or_default()
}

/// As [`rfc3339`], but `None` for 0 (never set).
pub fn micros_or_null(micros: i64) -> Option<String> {
    (micros != 0).then(|| rfc3339(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_microseconds_when_there_are_some() {
        assert_eq!(rfc3339(1_793_527_200_000_000), "2026-11-01T10:00:00Z");
        assert_eq!(
            rfc3339(1_793_527_200_000_001),
            "2026-11-01T10:00:00.000001Z"
        );
        assert_eq!(
            rfc3339(1_793_527_200_500_000),
            "2026-11-01T10:00:00.500000Z"
        );
        assert_eq!(
            rfc3339(1_793_527_200_869_210),
            "2026-11-01T10:00:00.869210Z"
        );
        assert_eq!(micros_or_null(0), None);
    }
}
