//! Fuzzing (see tests/fuzz_support): the chat-template/tokenizer input path of the default model
//! takes any prompt and response text. It never panics; a conversation it accepts has a scoring
//! boundary inside it, its prefix is the prompt encoding, and special-token strings in the text
//! never become control tokens. `just fuzz` runs this for longer.

mod common;
#[path = "../../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use common::default_model;
use fuzz_support::fuzz;
use proptest::prelude::*;

/// Text biased towards special-token strings and template syntax.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<|im_start|>".to_owned()),
        Just("<|im_end|>".to_owned()),
        Just("<|endoftext|>".to_owned()),
        Just("{{ messages }}".to_owned()),
        Just("{% if %}".to_owned()),
        Just("\n".to_owned()),
        "\\PC{0,10}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models"]
fn fuzz_chat_template_input() {
    let tok = &default_model().tokenizer;
    let specials: Vec<u32> =
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>"].iter().map(|t| tok.inner().token_to_id(t).unwrap()).collect();
    let count = |ids: &[u32]| ids.iter().filter(|i| specials.contains(i)).count();
    // What the template itself emits around any text.
    let template = count(&tok.encode_conversation("x", "y").unwrap().ids);
    fuzz("chat", (text(), text()), |(prompt, response)| {
        let Ok(conv) = tok.encode_conversation(&prompt, &response) else { return Ok(()) };
        prop_assert!(conv.score_start >= 1 && conv.score_start <= conv.ids.len());
        prop_assert_eq!(count(&conv.ids), template, "special-token strings became control tokens");
        let prompt_ids = tok.encode_prompt(&prompt).unwrap();
        prop_assert_eq!(count(&prompt_ids), count(&tok.encode_prompt("x").unwrap()));
        let _ = tok.decode(&conv.ids).unwrap();
        Ok(())
    });
}
