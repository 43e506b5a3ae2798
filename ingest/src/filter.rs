//! The sensitive-word filter: Aho-Corasick (every match, overlapping) over a
//! UTF-8 word list, on a normalised copy of the comment.
//!
//! Normalisation folds full-width forms to half-width and Latin letters to
//! lower case, and skips symbols and spaces, so `Ｆ.U-c k` and `傻*逼` are found.
//! Each normalised character remembers where it came from, so a match masks
//! the original span. Latin words match only as whole words (`class` does not
//! contain `ass`), and across spaces only when they are spelt out one
//! letter at a time (`f u c k`, not `who re` for `whore`); CJK words match
//! anywhere, since Chinese has no spaces. Every match is weighed, so a longer
//! word refused (`fucking` in `fuck in general`) does not hide a shorter one.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use anyhow::Context;

/// What to do with a comment that contains a sensitive word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Replace each character of the match with `*`.
    Mask,
    /// Refuse the submission (422 `sensitive_content`).
    Reject,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mask" => Ok(Policy::Mask),
            "reject" => Ok(Policy::Reject),
            other => Err(format!("unknown policy {other:?} (mask or reject)")),
        }
    }
}

pub struct SensitiveFilter {
    matcher: AhoCorasick,
    /// Per pattern: whether it is made of Latin letters and digits (whole-word rule).
    latin: Vec<bool>,
}

/// The outcome of filtering a comment.
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    Clean,
    /// The comment with every match masked.
    Masked(String),
}

impl SensitiveFilter {
    /// Loads one word a line; `#` comments and blank lines are skipped.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the sensitive-word list {}", path.display()))?;
        Self::from_words(text.lines())
    }

    pub fn from_words<'a>(lines: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        let words: Vec<String> = lines
            .into_iter()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|w| w.chars().filter_map(normalise).collect::<String>())
            .filter(|w| !w.is_empty())
            .collect();
        let latin = words
            .iter()
            .map(|w| w.chars().all(|c| c.is_ascii_alphanumeric()))
            .collect();
        let matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&words)
            .context("building the sensitive-word matcher")?;
        Ok(Self { matcher, latin })
    }

    /// Finds sensitive words in `text`; masks them when there are any.
    pub fn check(&self, text: &str) -> Filtered {
        let original: Vec<char> = text.chars().collect();
        // The normalised text, and for each of its bytes the index of the original char.
        let mut normalised = String::with_capacity(text.len());
        let mut origin: Vec<usize> = Vec::with_capacity(text.len());
        for (i, c) in original.iter().enumerate() {
            if let Some(n) = normalise(*c) {
                normalised.push(n);
                origin.extend(std::iter::repeat_n(i, n.len_utf8()));
            }
        }
        let mut masked = original.clone();
        let mut found = false;
        for m in self.matcher.find_overlapping_iter(&normalised) {
            let (first, last) = (origin[m.start()], origin[m.end() - 1]);
            if self.latin[m.pattern().as_usize()]
                && !(is_whole_word(&original, first, last)
                    && is_spelt_as_a_word(&original[first..=last]))
            {
                continue;
            }
            found = true;
            for c in &mut masked[first..=last] {
                if !c.is_whitespace() {
                    *c = '*';
                }
            }
        }
        if found {
            Filtered::Masked(masked.into_iter().collect())
        } else {
            Filtered::Clean
        }
    }
}

/// A Latin match must not continue a longer Latin word on either side.
fn is_whole_word(original: &[char], first: usize, last: usize) -> bool {
    let letter = |c: &char| fold_width(*c).is_ascii_alphanumeric();
    let before = first
        .checked_sub(1)
        .and_then(|i| original.get(i))
        .is_some_and(letter);
    let after = original.get(last + 1).is_some_and(letter);
    !before && !after
}

/// A Latin match within one word (`fuck`, `fu.ck`, `s-h-i-t`), or spread over
/// several only as single letters (`f u c k`, `f. u. c. k`): not whole words
/// that happen to join up across a space (`who re` → `whore`, `s hit` →
/// `shit`).
fn is_spelt_as_a_word(span: &[char]) -> bool {
    let letters = |piece: &[char]| piece.iter().filter(|c| normalise(**c).is_some()).count();
    let pieces: Vec<usize> = span
        .split(|c| fold_width(*c).is_whitespace())
        .map(letters)
        .filter(|n| *n > 0)
        .collect();
    pieces.len() <= 1 || pieces.iter().all(|n| *n == 1)
}

/// Full-width ASCII forms (U+FF01 to U+FF5E) and the ideographic space to half-width.
fn fold_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// The character as matching sees it, or `None` for separators (spaces,
/// punctuation, symbols) that are skipped.
fn normalise(c: char) -> Option<char> {
    let c = fold_width(c);
    if c.is_alphanumeric() {
        Some(c.to_ascii_lowercase())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> SensitiveFilter {
        SensitiveFilter::from_words([
            "# comment",
            "",
            "fuck",
            "shit",
            "ass",
            "傻逼",
            "他妈的",
            "妈的",
        ])
        .unwrap()
    }

    fn masked(text: &str) -> String {
        match filter().check(text) {
            Filtered::Masked(m) => m,
            Filtered::Clean => text.to_owned(),
        }
    }

    #[test]
    fn clean_text_is_left_alone() {
        assert_eq!(
            filter().check("老师讲得很好, great class!"),
            Filtered::Clean
        );
        assert_eq!(filter().check(""), Filtered::Clean);
    }

    #[test]
    fn latin_words_match_case_insensitively_as_whole_words() {
        assert_eq!(masked("What the FUCK."), "What the ****.");
        assert_eq!(masked("Shit happens"), "**** happens");
        assert_eq!(
            masked("a classic assignment, pass hit"),
            "a classic assignment, pass hit"
        );
        assert_eq!(masked("you ass"), "you ***");
    }

    #[test]
    fn symbols_and_spaces_inserted_between_letters_are_seen_through() {
        assert_eq!(masked("f.u.c.k this"), "******* this");
        assert_eq!(masked("f u c k"), "* * * *");
        assert_eq!(masked("s-h-i-t!"), "*******!");
    }

    #[test]
    fn full_width_forms_are_folded() {
        assert_eq!(masked("ＦＵＣＫ"), "****");
        assert_eq!(masked("ｓｈｉｔ　ok"), "****　ok");
    }

    #[test]
    fn chinese_words_match_inside_chinese_text() {
        assert_eq!(masked("这个老师是傻逼吗"), "这个老师是**吗");
        assert_eq!(masked("傻*逼"), "***");
        assert_eq!(masked("傻 逼"), "* *");
        assert_eq!(
            masked("他妈的作业太多"),
            "***作业太多",
            "both 他妈的 and 妈的 are masked"
        );
    }

    #[test]
    fn whole_words_that_join_up_across_a_space_are_not_a_match() {
        let filter =
            SensitiveFilter::from_words(["whore", "shit", "fuck", "fucking", "fucker"]).unwrap();
        for innocent in [
            "the TA who re-graded it",
            "it's hit or miss",
            "of uck",
            "fu ck",
        ] {
            assert_eq!(filter.check(innocent), Filtered::Clean, "{innocent}");
        }
        // Within one word, any separators: still the word.
        for spelt in ["fu.ck", "f-uck", "sh-it", "f. u. c. k"] {
            assert!(
                matches!(filter.check(spelt), Filtered::Masked(_)),
                "{spelt}"
            );
        }
        // A longer word refused does not hide the shorter one inside it.
        let masked = |text: &str| match filter.check(text) {
            Filtered::Masked(m) => m,
            Filtered::Clean => text.to_owned(),
        };
        assert_eq!(masked("fuck in general"), "**** in general");
        assert_eq!(masked("fuck erase"), "**** erase");
        assert_eq!(masked("f.u.c.k.i.n.g."), "*************.");
        assert_eq!(masked("FUCKING late"), "******* late");
    }

    #[test]
    fn the_shipped_list_loads_and_catches_both_languages() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sensitive-words.txt");
        let filter = SensitiveFilter::from_file(&path).unwrap();
        assert!(matches!(
            filter.check("this is bullshit"),
            Filtered::Masked(_)
        ));
        assert!(matches!(filter.check("真是个傻逼"), Filtered::Masked(_)));
        for clean in [
            "The lectures were clear and helpful. 作业有点多。",
            "the TA who re-graded my exam was fair",
            "it's hit or miss whether labs start on time",
            "今天是老师的生日你们都来了",
            "以前过去死记硬背，现在理解为主",
            "老师像妈妈的感觉一样温暖",
            "废物利用那一章很有意思",
            "尼玛同学的报告很精彩",
        ] {
            assert_eq!(filter.check(clean), Filtered::Clean, "{clean}");
        }
        assert!(matches!(
            filter.check("fuck in general"),
            Filtered::Masked(_)
        ));
    }

    #[test]
    fn policies_parse() {
        assert_eq!("mask".parse::<Policy>().unwrap(), Policy::Mask);
        assert_eq!(" Reject ".parse::<Policy>().unwrap(), Policy::Reject);
        assert!("drop".parse::<Policy>().is_err());
    }
}
