//! `cream-chat --model <gguf|hf dir> --prompt "..."`: one chat turn, for trying a model out.

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Common, ModelArg};
use cream_lm::{GenRequest, SamplingParams};

/// Generate a reply to one or more prompts with the model's chat template.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    model: ModelArg,
    /// A user message (repeat for a batch).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Run seed; each prompt's RNG derives from (seed, prompt index, 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.common.init()?;
    let lm = cli.model.load()?;
    let params = SamplingParams {
        temperature: cli.temperature,
        top_p: cli.top_p,
        max_new_tokens: cli.max_new_tokens,
    };
    let reqs: Vec<GenRequest> = cli
        .prompt
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(GenRequest {
                prompt_ids: lm.tokenizer.encode_prompt(p)?,
                seed: cream_lm::rng::sample_seed(cli.seed, &i.to_string(), 0),
            })
        })
        .collect::<Result<_>>()?;
    let start = std::time::Instant::now();
    let outs = cream_lm::generate(&lm.model, lm.tokenizer.stop_ids(), &reqs, &params, reqs.len(), &mut |_| {})?;
    let secs = start.elapsed().as_secs_f64();
    let mut n_tokens = 0;
    for (p, o) in cli.prompt.iter().zip(&outs) {
        n_tokens += o.tokens.len();
        let text_ids: Vec<u32> =
            o.tokens.iter().copied().filter(|t| !lm.tokenizer.stop_ids().contains(t)).collect();
        println!("user: {p}\nassistant: {}\n[finish: {}]", lm.tokenizer.decode(&text_ids)?, o.finish.as_str());
    }
    tracing::info!("{n_tokens} tokens in {secs:.2}s ({:.1} tokens/s)", n_tokens as f64 / secs);
    Ok(())
}
