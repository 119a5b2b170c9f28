//! `cream-judge`: rewards of sampled responses (CREAM steps 2-3).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Stage, emit};
use cream_stages::judge::JudgeMode;

/// Score samples: `dpo` = S_policy - S_reference (the DPO implicit reward, reference M0);
/// `likelihood` = mean token log-prob under --policy (the previous-model ranking at t = 1).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The `generate` artifact.
    #[arg(long)]
    samples: String,
    /// dpo or likelihood.
    #[arg(long, default_value = "dpo", value_parser = JudgeMode::parse)]
    mode: JudgeMode,
    /// The model whose rewards these are (M_t for the current ranking, M_{t-1} for the previous).
    #[arg(long)]
    policy: PathBuf,
    /// The reference model M0 (dpo mode).
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    let a = cream_stages::judge::run(
        &ctx,
        &cli.samples,
        cli.mode,
        &cli.policy,
        cli.reference.as_deref(),
        p.judge.batch_tokens,
    )?;
    emit(&a);
    Ok(())
}
