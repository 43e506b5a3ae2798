//! `POST /v1/catalog`'s body: a CSV of catalog entries, parsed whole before
//! anything is written, so one bad row refuses the import and names its
//! line (the header is line 1; a row's line is where it starts, a quoted
//! field may span lines).
//!
//! Header `course_id,title,term,enrolled,instructors` (a UTF-8 BOM before
//! it, as spreadsheets write, is skipped); `instructors` separated by `;`.

use std::collections::HashMap;

use shared::domain::CourseId;
use shared::http::ApiError;

use super::entry::Entry;

pub const HEADER: [&str; 5] = ["course_id", "title", "term", "enrolled", "instructors"];
/// The most rows one import takes.
pub const MAX_ROWS: usize = 10_000;

/// `message` about line `line`, as the 422 that refuses the import.
fn at_line(line: u64, code: &'static str, message: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable(code, format!("line {line}: {message}"))
}

/// Every row of `bytes`, each a course and its entry; the first bad one
/// refuses them all.
pub fn parse(bytes: &[u8]) -> Result<Vec<(CourseId, Entry)>, ApiError> {
    let bytes = bytes.strip_prefix("\u{FEFF}".as_bytes()).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = reader.records();
    let header = match records.next() {
        Some(Ok(header)) => header,
        Some(Err(err)) => return Err(csv_error(&err)),
        None => return Err(at_line(1, "invalid_csv", "the header is missing")),
    };
    if header.iter().map(str::trim).ne(HEADER) {
        return Err(at_line(
            1,
            "invalid_csv",
            format!("the header must be {}", HEADER.join(",")),
        ));
    }
    let mut rows: Vec<(CourseId, Entry)> = Vec::new();
    // Where each course was seen, to name both lines of a repeated one.
    let mut seen: HashMap<String, u64> = HashMap::new();
    for record in records {
        let record = record.map_err(|err| csv_error(&err))?;
        let line = record.position().map_or(0, csv::Position::line);
        if rows.len() == MAX_ROWS {
            return Err(at_line(
                line,
                "too_many_rows",
                format!("an import takes at most {MAX_ROWS} courses"),
            ));
        }
        if record.len() != HEADER.len() {
            return Err(at_line(
                line,
                "invalid_csv",
                format!("expected {} fields, found {}", HEADER.len(), record.len()),
            ));
        }
        let field = |i: usize| record.get(i).unwrap_or_default();
        let course = CourseId::parse_new(field(0).trim()).map_err(|e| {
            at_line(line, "invalid_value", format!("course_id: {e}")).with_field("course_id")
        })?;
        let entry = Entry::from_fields(field(1), field(2), field(3), field(4)).map_err(|e| {
            let mut err = at_line(line, e.code, &e.message);
            err.field = e.field;
            err
        })?;
        if let Some(first) = seen.insert(course.to_string(), line) {
            return Err(at_line(
                line,
                "invalid_value",
                format!("course {course} is already on line {first}"),
            )
            .with_field("course_id"));
        }
        rows.push((course, entry));
    }
    Ok(rows)
}

/// A row the CSV reader could not read (bad UTF-8, a broken quote).
fn csv_error(err: &csv::Error) -> ApiError {
    let line = err.position().map_or(1, csv::Position::line);
    let what = match err.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_owned(),
        _ => format!("not a CSV row: {err}"),
    };
    at_line(line, "invalid_csv", what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(csv: &str) -> String {
        parse(csv.as_bytes()).unwrap_err().message
    }

    #[test]
    fn rows_parse_after_the_header_with_or_without_a_bom() {
        let csv = "\u{FEFF}course_id,title,term,enrolled,instructors\r\n\
                   CS101,\"Intro, with a comma\",2026F,40,li;wang\r\n\
                   MA201,Two,,,\"li;\nwang\"\r\n";
        let rows = parse(csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0.as_str(), "CS101");
        assert_eq!(rows[0].1.title, "Intro, with a comma");
        assert_eq!(rows[0].1.instructors, ["li", "wang"]);
        assert_eq!((rows[1].1.term.clone(), rows[1].1.enrolled), (None, None));
        assert_eq!(
            rows[1].1.instructors,
            ["li", "wang"],
            "a field over two lines"
        );
        assert!(parse(b"course_id,title,term,enrolled,instructors\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_bad_row_names_its_line() {
        let head = "course_id,title,term,enrolled,instructors\n";
        assert!(message("").starts_with("line 1:"));
        assert!(message("id,name\nCS1,x\n").starts_with("line 1:"));
        for (rows, line) in [
            ("CS1,A,,,\nCS2,B,,many,\n", 3),
            ("CS1,A,,,\n.x,B,,,\n", 3),
            ("CS1,A,,,\nCS2,,,,\n", 3),
            ("CS1,A,,\n", 2),
            ("CS1,A,,,\"li;\nwang\"\nCS1,C,,,\n", 4),
        ] {
            let text = message(&format!("{head}{rows}"));
            assert!(
                text.starts_with(&format!("line {line}:")),
                "{rows:?}: {text}"
            );
        }
        let bad_utf8 = [head.as_bytes(), b"CS1,\xff,,,\n"].concat();
        let err = parse(&bad_utf8).unwrap_err();
        assert!(err.message.starts_with("line 2:"), "{}", err.message);
    }

    #[test]
    fn an_import_takes_at_most_max_rows() {
        let mut csv = String::from("course_id,title,term,enrolled,instructors\n");
        for i in 0..=MAX_ROWS {
            csv.push_str(&format!("C{i},T,,,\n"));
        }
        let text = message(&csv);
        assert!(
            text.starts_with(&format!("line {}:", MAX_ROWS + 2)),
            "{text}"
        );
    }
}
