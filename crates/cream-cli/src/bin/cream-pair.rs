//! `cream-pair`: preference pairs from the current model's rewards (step 5).

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Stage, emit};

/// chosen = first argmax, rejected = first argmin of each prompt's current rewards; prompts with
/// all-equal rewards are dropped; each pair carries its C ([pair] c_mode: avg, dyn or fixed).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The `generate` artifact the rewards are about.
    #[arg(long)]
    samples: String,
    /// `judge` artifact of the current model.
    #[arg(long)]
    rewards: String,
    /// `consistency` artifact (needed for c_mode avg and dyn).
    #[arg(long)]
    consistency: Option<String>,
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    emit(&cream_stages::pair::run(&ctx, &p, &cli.samples, &cli.rewards, cli.consistency.as_deref())?);
    Ok(())
}
