//! `cream-score --model <gguf|hf dir> --input <jsonl>`: teacher-forced log-probs of responses.
//!
//! Input lines: `{"id": "...", "prompt": "...", "response": "..."}`. Output on stdout, one JSON
//! line per input line, in order: `{"id", "token_ids", "score_start", "token_logprobs",
//! "sum_logprob", "mean_logprob"}`. The scored tokens are everything after the user-only chat
//! prefix (assistant header, response, end-of-turn), as in the CREAM spec.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use cream_cli::flags::{Common, ModelArg};
use cream_lm::{Conversation, ScoreOptions};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Render (user: prompt, assistant: response) with the model's own chat template.
    HfChat,
    /// No template: score `response` as plain text continuing `prompt`.
    Plain,
}

/// Score responses with a model: per-token log-probs of the scored span, their sum and mean.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    model: ModelArg,
    /// JSON lines with fields id, prompt, response ("-" for stdin).
    #[arg(long, value_name = "JSONL")]
    input: PathBuf,
    /// How (prompt, response) become tokens.
    #[arg(long, value_enum, default_value = "hf-chat")]
    format: Format,
    /// Upper bound on padded tokens per forward pass.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: serde_json::Value,
    prompt: String,
    response: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.common.init()?;
    let text = if cli.input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&cli.input)
            .with_context(|| format!("cannot read input file {}", cli.input.display()))?
    };
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected a JSON object with fields id, prompt, response",
                cli.input.display(),
                n + 1
            )
        })?;
        lines.push((n + 1, l));
    }
    let lm = cli.model.load()?;
    let convs: Vec<Conversation> = lines
        .iter()
        .map(|(n, l)| {
            let conv = match cli.format {
                Format::HfChat => lm.tokenizer.encode_conversation(&l.prompt, &l.response),
                Format::Plain => plain_conversation(&lm.tokenizer, &l.prompt, &l.response),
            };
            conv.with_context(|| format!("{} line {n}", cli.input.display()))
        })
        .collect::<Result<_>>()?;
    let opts = ScoreOptions { max_batch_tokens: cli.batch_tokens, ..Default::default() };
    // In chunks, so the progress bar moves (one call over all lines would leave it at 0 until
    // the end); the scores do not depend on the chunking.
    let scored = cream_stages::progress::score(&lm.model, &convs, opts, 64, "scoring", cli.common.quiet)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (((_, l), c), s) in lines.iter().zip(&convs).zip(&scored) {
        let row = json!({
            "id": l.id,
            "token_ids": c.ids,
            "score_start": c.score_start,
            "token_logprobs": s.token_logprobs,
            "sum_logprob": s.sum,
            "mean_logprob": s.mean,
        });
        writeln!(out, "{row}")?;
    }
    out.flush()?;
    Ok(())
}

fn plain_conversation(tok: &cream_lm::ChatTokenizer, prompt: &str, response: &str) -> Result<Conversation> {
    let prefix = tok.encode_plain(prompt)?;
    let ids = tok.encode_plain(&format!("{prompt}{response}"))?;
    anyhow::ensure!(
        ids.len() > prefix.len() && ids[..prefix.len()] == prefix[..],
        "the prompt's tokens are not a prefix of prompt+response (a BPE merge crosses the boundary); \
         use --format hf-chat or end the prompt with whitespace"
    );
    anyhow::ensure!(!prefix.is_empty(), "plain format needs a non-empty prompt");
    Ok(Conversation { score_start: prefix.len(), ids })
}
