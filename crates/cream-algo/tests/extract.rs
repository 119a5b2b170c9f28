//! Answer extraction (spec "Evaluation").

use cream_algo::{
    Error, extract_answer_text, extract_choice, extract_number, gsm8k_gold, normalize_answer_text, normalize_number,
    numbers_equal,
};

#[test]
fn choice_after_answer_marker() {
    let cases = [
        ("Step by step... Answer: B", Some('B')),
        ("answer: c.", Some('C')),
        ("ANSWER:d", Some('D')),
        ("Answer: (b)", Some('B')),
        ("Answer: **C**", Some('C')),
        ("**Answer:** A", Some('A')),
        ("Answer:\n  (d) because", Some('D')),
        // The first answer: that is followed by a letter wins.
        ("Answer: Because it rains. Answer: C", Some('C')),
        ("Answer: A then Answer: B", Some('A')),
        // Not a standalone letter, not A-D, not a whole word "answer".
        ("Answer: Both", None),
        ("Answer: E", None),
        ("Myanswer: B", None),
        ("The answer is B", None),
    ];
    for (text, expected) in cases {
        assert_eq!(extract_choice(text, false), expected, "{text:?}");
    }
}

#[test]
fn compat_mode_falls_back_to_the_last_standalone_letter() {
    assert_eq!(extract_choice("a cat", true), Some('A'));
    assert_eq!(extract_choice("a cat", false), None);
    assert_eq!(extract_choice("I pick C, not d.", true), Some('D'));
    assert_eq!(extract_choice("Option (b) is right", true), Some('B'));
    assert_eq!(extract_choice("bad code", true), None);
    // The marker still wins in compat mode.
    assert_eq!(extract_choice("Answer: C. Not a d", true), Some('C'));
}

#[test]
fn number_after_markers_in_priority_order() {
    let cases = [
        ("The answer is 1,234.", Some("1234")),
        ("#### 18.0", Some("18")),
        ("so -3.50 is left", Some("-3.5")),
        ("answer: 3 ... #### 5", Some("5")),
        ("### 7 and then 8", Some("7")),
        ("#### 9 ... ### 4", Some("9")),
        ("Answer: $42. Then 7", Some("42")),
        ("the answer is 12, answer: 13", Some("13")),
        // First occurrence of the winning marker: its first number, even past a later marker.
        ("#### none yet #### 6", Some("6")),
        // No marker: the last number.
        ("2 apples and 3 pears make 5 fruits", Some("5")),
        ("It costs $1,000,000 total, i.e. 10.", Some("10")),
        ("0042 items", Some("42")),
        // A marker with no number after it: no answer (reference behaviour), no fallback.
        ("I computed 12. Answer: unknown", None),
        ("no digits here", None),
    ];
    for (text, expected) in cases {
        assert_eq!(extract_number(text).as_deref(), expected, "{text:?}");
    }
}

#[test]
fn number_normalisation_and_equality() {
    assert_eq!(normalize_number("18.0").as_deref(), Some("18"));
    assert_eq!(normalize_number("-3.50").as_deref(), Some("-3.5"));
    assert_eq!(normalize_number(" $1,234. ").as_deref(), Some("1234"));
    assert_eq!(normalize_number("-0.00").as_deref(), Some("0"));
    assert_eq!(normalize_number("0.50").as_deref(), Some("0.5"));
    assert_eq!(
        normalize_number("123456789012345678901").as_deref(),
        Some("123456789012345678901")
    );
    for bad in ["", "-", ".5", "1.2.3", "12a", "$", "1e5"] {
        assert_eq!(normalize_number(bad), None, "{bad:?}");
    }
    assert!(numbers_equal("18", "18.0"));
    assert!(numbers_equal("1,234", "1234."));
    assert!(numbers_equal("-3.5", "-3.50"));
    assert!(!numbers_equal("18", "18.5"));
    assert!(!numbers_equal("x", "x"));
}

#[test]
fn gsm8k_gold_answers() {
    let field = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72";
    assert_eq!(gsm8k_gold(field).unwrap(), "72");
    assert_eq!(gsm8k_gold("so\n#### 1,000").unwrap(), "1000");
    assert_eq!(gsm8k_gold("#### -5").unwrap(), "-5");
    assert_eq!(
        gsm8k_gold("no marker 5"),
        Err(Error::Gsm8kGold("no marker 5".into()))
    );
    assert!(gsm8k_gold("#### seventy").is_err());
}

#[test]
fn free_text_answer_after_the_marker() {
    let cases = [
        ("Let me think. Answer: Paris", Some("paris")),
        ("**Answer:** The  Eiffel Tower.\nIt is tall.", Some("the eiffel tower")),
        ("ANSWER:\n\n  Blue whale  \nmore text", Some("blue whale")),
        // The first marker wins; a word before it is not a marker.
        ("Answer: red. Answer: green", Some("red. answer: green")),
        ("Myanswer: red", None),
        ("No marker here", None),
        ("Answer:   ", None),
        // Non-ASCII text keeps its offsets.
        ("Réponse... Answer: Genève", Some("genève")),
    ];
    for (text, expected) in cases {
        assert_eq!(extract_answer_text(text).as_deref(), expected, "{text:?}");
    }
    assert_eq!(normalize_answer_text(" **Paris.** "), "paris");
    assert_eq!(normalize_answer_text("New\tYork"), "new york");
}
