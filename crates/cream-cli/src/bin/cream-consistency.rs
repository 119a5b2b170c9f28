//! `cream-consistency`: rank consistency of the current and previous model's rewards (step 4).

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Stage, emit};

/// Per-prompt Kendall tau (or Spearman / TopOrder, [consistency] method) between two judge
/// artifacts' rankings, C_j = (tau + 1) / 2, and the dataset C (in the manifest's `extra`).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// `judge` artifact of the current model M_t.
    #[arg(long)]
    current: String,
    /// `judge` artifact of the previous model M_{t-1} (likelihood under M0 at t = 1).
    #[arg(long)]
    previous: String,
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    emit(&cream_stages::consistency::run(&ctx, &p, &cli.current, &cli.previous)?);
    Ok(())
}
