//! Final-answer extraction for evaluation (spec "Evaluation"), following the reference code's
//! `evaluate.py` except where the spec says otherwise.
//!
//! Matching is ASCII case-insensitive; a "word character" is a Unicode alphanumeric or `_`
//! (Python's `\w`); digits are ASCII digits.

use crate::{Error, Result};

/// GSM8K answer markers, highest priority first (spec "Evaluation").
const NUMBER_MARKERS: [&str; 4] = ["####", "###", "answer:", "answer is"];

/// The multiple-choice letter of a response (ARC, OBQA, SIQA; spec "Evaluation"), uppercase.
///
/// The first `answer:` (case-insensitive, not preceded by a word character) that is followed, after
/// optional whitespace, an optional `(` or `**` and optional whitespace, by a standalone letter
/// A-D (not followed by a word character) gives the letter: "Answer: (b)", "Answer: **C**",
/// "**Answer:** D." all match; "Answer: Because ..." does not.
///
/// With `compat_last_letter`, a response without such a marker falls back to the last standalone
/// a-d anywhere, as the reference code does; that counts the article "a" as A, which is why it is
/// opt-in.
pub fn extract_choice(text: &str, compat_last_letter: bool) -> Option<char> {
    let lower = text.to_ascii_lowercase();
    let marked = lower
        .match_indices("answer:")
        .filter(|&(i, _)| !word_char_before(&lower, i))
        .find_map(|(i, marker)| {
            let rest = lower[i + marker.len()..].trim_start();
            let rest = rest
                .strip_prefix('(')
                .or_else(|| rest.strip_prefix("**"))
                .unwrap_or(rest);
            standalone_choice(rest.trim_start())
        });
    marked.or_else(|| {
        compat_last_letter
            .then(|| last_standalone_choice(&lower))
            .flatten()
    })
}

/// The numeric answer of a GSM8K response (spec "Evaluation"), normalised by
/// [`normalize_number`].
///
/// The first marker type of `####`, `###`, `answer:`, `answer is` (in that priority,
/// case-insensitive) that occurs in the text wins; the answer is the first number after its first
/// occurrence, and `None` when no number follows it (as in the reference code, which does not fall
/// back then). Without any marker, the answer is the last number in the text. Commas are removed
/// before numbers are read ("1,234" is 1234); a number is `-?\d+(\.\d*)?`.
pub fn extract_number(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase().replace(',', "");
    let number = match NUMBER_MARKERS
        .iter()
        .find_map(|m| lower.find(m).map(|i| i + m.len()))
    {
        Some(after) => numbers(&lower[after..]).next(),
        None => numbers(&lower).last(),
    };
    number.and_then(normalize_number)
}

/// The canonical form of a number written as text, or `None` if `s` is not one number
/// (spec "Evaluation": "18.0" == "18").
///
/// Surrounding whitespace, commas, one leading `$` and a trailing `.` are dropped; then the text
/// must be `-?\d+(\.\d*)?`. Leading integer zeros and trailing fraction zeros are removed and
/// "-0" becomes "0": "18.0" -> "18", "-3.50" -> "-3.5", "$1,234." -> "1234". Pure string
/// arithmetic, so long integers are exact.
pub fn normalize_number(s: &str) -> Option<String> {
    let s = s.trim().replace(',', "");
    let s = s.strip_prefix('$').unwrap_or(&s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let sign = if negative && (int != "0" || !frac.is_empty()) {
        "-"
    } else {
        ""
    };
    Some(match frac {
        "" => format!("{sign}{int}"),
        _ => format!("{sign}{int}.{frac}"),
    })
}

/// Whether two answers are the same number after [`normalize_number`]; false if either is not a
/// number.
pub fn numbers_equal(a: &str, b: &str) -> bool {
    matches!((normalize_number(a), normalize_number(b)), (Some(x), Some(y)) if x == y)
}

/// The free-text answer of a response, for evaluation sets graded by exact match of the
/// extracted answer (answers that are neither a number nor a letter A-D): the rest of the line
/// after the first `answer:` (case-insensitive, not preceded by a word character; the next
/// non-empty line when nothing follows on that line), normalised by [`normalize_answer_text`].
/// `None` without a marker or with nothing after it.
pub fn extract_answer_text(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let (i, marker) = lower
        .match_indices("answer:")
        .find(|&(i, _)| !word_char_before(&lower, i))?;
    // ASCII lowercasing keeps byte offsets, so `i` indexes `text` too.
    text[i + marker.len()..]
        .lines()
        .map(normalize_answer_text)
        .find(|l| !l.is_empty())
}

/// A free-text answer in the form exact matching compares: surrounding whitespace and `*`
/// (markdown bold) and trailing `.` removed, inner whitespace runs collapsed to one space,
/// lowercase: "**Paris.**" -> "paris".
pub fn normalize_answer_text(s: &str) -> String {
    let s = s
        .trim_start_matches(|c: char| c.is_whitespace() || c == '*')
        .trim_end_matches(|c: char| c.is_whitespace() || c == '*' || c == '.');
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The gold answer of a GSM8K `answer` field: the number after its last `####` marker, normalised
/// by [`normalize_number`] (spec "Evaluation").
///
/// # Errors
/// [`Error::Gsm8kGold`] when there is no `####` or no number after it.
pub fn gsm8k_gold(answer_field: &str) -> Result<String> {
    answer_field
        .rsplit_once("####")
        .and_then(|(_, tail)| normalize_number(tail))
        .ok_or_else(|| Error::Gsm8kGold(answer_field.to_owned()))
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn word_char_before(s: &str, i: usize) -> bool {
    s[..i].chars().next_back().is_some_and(is_word_char)
}

/// The uppercase letter if `s` starts with a standalone a-d.
fn standalone_choice(s: &str) -> Option<char> {
    let mut chars = s.chars();
    let letter = chars.next().filter(|c| matches!(c, 'a'..='d'))?;
    (!chars.next().is_some_and(is_word_char)).then(|| letter.to_ascii_uppercase())
}

/// The last standalone a-d of lowercased text, uppercase (the reference's `\b([a-d])\b`).
fn last_standalone_choice(lower: &str) -> Option<char> {
    lower
        .char_indices()
        .filter(|&(i, _)| !word_char_before(lower, i))
        .filter_map(|(i, _)| standalone_choice(&lower[i..]))
        .last()
}

/// The numbers `-?\d+\.?\d*` of `s`, left to right, without overlaps (Python's `re.findall`).
fn numbers(s: &str) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let digits_end = move |from: usize| {
        from + bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() {
            let start = pos;
            let digits_from = if bytes[pos] == b'-' { pos + 1 } else { pos };
            let mut end = digits_end(digits_from);
            if end > digits_from {
                if bytes.get(end) == Some(&b'.') {
                    end = digits_end(end + 1);
                }
                pos = end;
                // start and end sit next to ASCII bytes, so both are char boundaries.
                return Some(&s[start..end]);
            }
            pos += 1;
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_like_findall() {
        let found: Vec<_> = numbers("x-5 3.14.15 --7 8. é9").collect();
        assert_eq!(found, ["-5", "3.14", "15", "-7", "8.", "9"]);
    }
}
