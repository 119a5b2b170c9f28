//! `cream-judge`: rewards of sampled responses (CREAM steps 2-3).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Stage, emit};
use cream_stages::judge::JudgeMode;

/// Score samples: `dpo` = S_policy - S_reference (the DPO implicit reward, reference M0);
/// `likelihood` = mean token log-prob under --policy (the previous-model ranking at t = 1);
/// `llm-judge` = mean of sampled 0-5 rubric scores that --policy gives itself (the
/// Self-Rewarding LM baseline; the [judge] judgements / judge_* settings of --config apply).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The `generate` artifact.
    #[arg(long)]
    samples: String,
    /// dpo, likelihood or llm-judge.
    #[arg(long, default_value = "dpo", value_parser = JudgeMode::parse)]
    mode: JudgeMode,
    /// The model whose rewards these are (M_t for the current ranking, M_{t-1} for the previous).
    #[arg(long)]
    policy: PathBuf,
    /// The reference model M0 (dpo mode; ignored by the other modes).
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    let a = cream_stages::judge::run(&ctx, &p, &cli.samples, cli.mode, &cli.policy, cli.reference.as_deref())?;
    emit(&a);
    Ok(())
}
