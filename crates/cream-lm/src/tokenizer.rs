//! Tokenizer + chat template: turns (prompt, response) into token ids with the scoring boundary.
//!
//! The tokenizer is a `tokenizers::Tokenizer`, read from `tokenizer.json` or built from GGUF
//! metadata (byte-level BPE vocab + merges + the pre-tokenizer llama.cpp names). The chat
//! template is the one the model ships, rendered with minijinja (+ Python string methods).
//!
//! Special-token strings inside user or model text (e.g. a prompt containing `<|im_end|>`) are
//! encoded as ordinary text, never as control tokens: when a message contains one, the
//! conversation is encoded piecewise — template text with special tokens recognised, message
//! text with a tokenizer that has no added tokens. Text without such strings is encoded as one
//! string, exactly as transformers' `apply_chat_template(..., tokenize=True)` does.

use std::collections::BTreeSet;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

/// One chat message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Message { role: "user".into(), content: content.into() }
    }
    pub fn assistant(content: &str) -> Self {
        Message { role: "assistant".into(), content: content.into() }
    }
}

/// A rendered, tokenised conversation. Tokens `score_start..` are the scored span: the assistant
/// header, the response and the end-of-turn tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub ids: Vec<u32>,
    pub score_start: usize,
}

pub struct ChatTokenizer {
    tok: Tokenizer,
    /// Same vocabulary without added tokens: encodes special-token strings as plain text.
    plain: Tokenizer,
    template: String,
    env: minijinja::Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    specials: Vec<String>,
    stop_ids: Vec<u32>,
    /// What we save as tokenizer.json / tokenizer_config.json in Hugging Face layout.
    tokenizer_json: Value,
    tokenizer_config: Value,
}

const SENTINEL_OPEN: char = '\u{E000}';
const SENTINEL_CLOSE: char = '\u{E001}';
/// End-of-turn markers of common chat formats; those present as special tokens stop generation.
const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>", "</s>"];

impl ChatTokenizer {
    /// Build from a tokenizer.json value, a chat template and the special-token strings.
    pub fn new(
        tokenizer_json: Value,
        template: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
        extra_stop_ids: &[u32],
        tokenizer_config: Value,
    ) -> Result<Self> {
        let tok = Tokenizer::from_bytes(serde_json::to_vec(&tokenizer_json)?)
            .map_err(|e| anyhow!("cannot build the tokenizer: {e}"))?;
        let mut plain_json = tokenizer_json.clone();
        plain_json["added_tokens"] = json!([]);
        let plain = Tokenizer::from_bytes(serde_json::to_vec(&plain_json)?)
            .map_err(|e| anyhow!("cannot build the plain-text tokenizer: {e}"))?;
        let specials: Vec<String> = tokenizer_json["added_tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["content"].as_str().map(str::to_string))
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut stops: BTreeSet<u32> = extra_stop_ids.iter().copied().collect();
        for s in eos_token.iter().map(String::as_str).chain(END_OF_TURN.iter().copied()) {
            if specials.iter().any(|x| x == s) {
                if let Some(id) = tok.token_to_id(s) {
                    stops.insert(id);
                }
            }
        }
        ensure!(
            !stops.is_empty(),
            "the tokenizer has no end-of-sequence token: generation could not stop"
        );
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template.clone())
            .map_err(|e| anyhow!("the model's chat template does not parse: {e}"))?;
        Ok(ChatTokenizer {
            tok,
            plain,
            template,
            env,
            bos_token,
            eos_token,
            specials,
            stop_ids: stops.into_iter().collect(),
            tokenizer_json,
            tokenizer_config,
        })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }
    pub fn chat_template(&self) -> &str {
        &self.template
    }
    /// Token ids that end a generated turn (EOS and end-of-turn markers).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }
    pub fn tokenizer_json(&self) -> &Value {
        &self.tokenizer_json
    }
    pub fn tokenizer_config(&self) -> &Value {
        &self.tokenizer_config
    }

    /// Render messages with the model's chat template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat")?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| anyhow!("rendering the chat template failed: {e:#}"))
    }

    fn has_special(&self, text: &str) -> bool {
        self.specials.iter().any(|s| text.contains(s.as_str()))
    }

    /// Encode rendered text with special-token strings recognised (no BOS is added: templates
    /// that want one write it themselves).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tok.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?.get_ids().to_vec())
    }

    /// Encode text as ordinary text: special-token strings become ordinary tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.plain.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?.get_ids().to_vec())
    }

    /// Render and encode messages. Message text containing special-token strings is encoded
    /// piecewise so that it stays text (see the module docs).
    pub fn encode_messages(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        if !messages.iter().any(|m| self.has_special(&m.content)) {
            return self.encode_raw(&self.render(messages, add_generation_prompt)?);
        }
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                role: m.role.clone(),
                content: format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}"),
            })
            .collect();
        let rendered = self.render(&marked, add_generation_prompt)?;
        let mut ids = Vec::new();
        let mut rest = rendered.as_str();
        while let Some(open) = rest.find(SENTINEL_OPEN) {
            ids.extend(self.encode_raw(&rest[..open])?);
            let after = &rest[open + SENTINEL_OPEN.len_utf8()..];
            let close = after.find(SENTINEL_CLOSE).context("chat template mangled a message")?;
            let idx: usize = after[..close].parse().context("chat template mangled a message")?;
            ids.extend(self.encode_plain(&messages[idx].content)?);
            rest = &after[close + SENTINEL_CLOSE.len_utf8()..];
        }
        ids.extend(self.encode_raw(rest)?);
        Ok(ids)
    }

    /// The prompt for generation: one user turn plus the assistant generation header.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode_messages(&[Message::user(prompt)], true)
    }

    /// The full conversation (user turn + assistant turn) and the scoring boundary: the length
    /// of the user-only prefix, which must tokenise to a prefix of the full conversation.
    pub fn encode_conversation(&self, prompt: &str, response: &str) -> Result<Conversation> {
        let prefix = self.encode_messages(&[Message::user(prompt)], false)?;
        let ids = self.encode_messages(&[Message::user(prompt), Message::assistant(response)], false)?;
        if ids.len() <= prefix.len() || ids[..prefix.len()] != prefix[..] {
            bail!(
                "the chat template's user-only prefix ({} tokens) does not tokenise as a prefix of \
                 the full conversation ({} tokens); cannot find the scoring boundary for this template",
                prefix.len(),
                ids.len()
            );
        }
        Ok(Conversation { score_start: prefix.len(), ids })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok.decode(ids, false).map_err(|e| anyhow!("tokenizer decode: {e}"))
    }
}

/// The tokenizer.json that the GGUF metadata describes (byte-level BPE only).
pub fn tokenizer_json_from_gguf(
    model: &str,
    pre: &str,
    tokens: &[String],
    token_types: &[i32],
    merges: &[String],
) -> Result<Value> {
    if model != "gpt2" {
        bail!(
            "GGUF tokenizer model {model:?} is not supported (only byte-level BPE, `gpt2`); \
             use a Hugging Face model directory with tokenizer.json instead"
        );
    }
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
    };
    let split = |pattern: &str| {
        json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
    };
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let (pre_tokenizer, normalizer) = match pre {
        // llama.cpp's `smollm`: every digit split off, then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            Value::Null,
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
            json!({"type": "NFC"}),
        ),
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]}),
            Value::Null,
        ),
        "gpt2" | "default" | "" => (byte_level(true), Value::Null),
        other => bail!(
            "GGUF pre-tokenizer {other:?} is not supported; use a Hugging Face model directory \
             with tokenizer.json instead"
        ),
    };
    ensure!(
        token_types.is_empty() || token_types.len() == tokens.len(),
        "GGUF: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
        token_types.len(),
        tokens.len()
    );
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    // GGUF token types: 3 = control, 4 = user-defined; both are matched verbatim in text.
    let added: Vec<Value> = token_types
        .iter()
        .enumerate()
        .filter(|(_, ty)| **ty == 3 || **ty == 4)
        .map(|(i, ty)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *ty == 3})
        })
        .collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').with_context(|| format!("GGUF: malformed merge {m:?}"))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}
