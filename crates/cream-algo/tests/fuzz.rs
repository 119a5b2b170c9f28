//! Fuzzing (see tests/fuzz_support): the answer extractors take any text without panicking and
//! return well-formed answers. `just fuzz` runs these for longer.

#[path = "../../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use cream_algo::{
    extract_answer_text, extract_choice, extract_number, gsm8k_gold, normalize_answer_text, normalize_number, numbers_equal,
};
use fuzz_support::fuzz;
use proptest::prelude::*;

/// Text biased towards what the extractors look for.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("Answer:".to_owned()),
        Just("answer is".to_owned()),
        Just("####".to_owned()),
        Just("###".to_owned()),
        Just("**".to_owned()),
        Just("(".to_owned()),
        "[ A-Da-d0-9.,\\-]{0,6}",
        "\\PC{0,8}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

#[test]
fn fuzz_answer_extractors() {
    fuzz("extract", (text(), any::<bool>()), |(t, compat)| {
        if let Some(c) = extract_choice(&t, compat) {
            prop_assert!(('A'..='D').contains(&c), "{c:?}");
        }
        if let Some(n) = extract_number(&t) {
            prop_assert!(n.parse::<f64>().is_ok(), "{n:?} is not a number");
            prop_assert!(numbers_equal(&n, &n));
            prop_assert_eq!(normalize_number(&n), Some(n.clone()), "normalisation is idempotent");
        }
        if let Some(a) = extract_answer_text(&t) {
            prop_assert!(!a.is_empty() && !a.contains('\n'), "{a:?}");
            prop_assert_eq!(normalize_answer_text(&a), a.clone(), "normalisation is idempotent");
        }
        let _ = gsm8k_gold(&t);
        let _ = normalize_number(&t);
        Ok(())
    });
}
