//! `cream-judge`: rewards of sampled responses (CREAM steps 2-3).

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::Parser;
use cream_cli::flags::{Sharding, Stage, emit};
use cream_stages::judge::JudgeMode;

/// Score samples: `dpo` = S_policy - S_reference (the DPO implicit reward, reference M0);
/// `likelihood` = mean token log-prob under --policy (the previous-model ranking at t = 1);
/// `llm-judge` = mean of sampled 0-5 rubric scores that --policy gives itself (the
/// Self-Rewarding LM baseline; the [judge] judgements / judge_* settings of --config apply).
///
/// On many machines (dpo and likelihood modes): `--shard K/N` scores only the samples of shard
/// K's prompts under --policy, publishes that `score` shard artifact, prints its path and stops
/// (rewards need every sample's score, so no rewards artifact is made). Then `--merge <the N score
/// shard artifacts>` with the same other flags merges them into the --policy `score` artifact an
/// unsharded run would make (same id, same bytes) and goes on to the rewards as usual (the
/// --reference scores are computed unsharded unless the store has them: to shard those too, first
/// run the same --shard / --merge steps with `--mode likelihood --policy <reference model>`).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The `generate` artifact.
    #[arg(long)]
    samples: String,
    /// How rewards are computed.
    #[arg(long, value_enum, default_value_t = JudgeMode::Dpo)]
    mode: JudgeMode,
    /// The model whose rewards these are (M_t for the current ranking, M_{t-1} for the previous).
    #[arg(long)]
    policy: PathBuf,
    /// The reference model M0 (dpo mode; ignored by the other modes).
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    sharding: Sharding,
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    let (shard, merge) = (cli.sharding.shard, cli.sharding.merge_paths());
    if !shard.is_all() || !merge.is_empty() {
        ensure!(
            cli.mode != JudgeMode::LlmJudge,
            "--shard and --merge apply to the policy scoring of the dpo and likelihood modes, not to llm-judge"
        );
        let samples = ctx.open(&cli.samples, cream_stages::names::stage::GENERATE)?;
        let batch_tokens = p.judge.batch_tokens;
        if !shard.is_all() {
            // Rewards need every sample's score: a shard stops at its score artifact.
            emit(&cream_stages::score::score_shard(&ctx, &samples, &cli.policy, batch_tokens, p.judge.precision, shard)?);
            return Ok(());
        }
        cream_stages::score::merge_scores(&ctx, &samples, &cli.policy, batch_tokens, p.judge.precision, &merge)?;
    }
    let a = cream_stages::judge::run(&ctx, &p, &cli.samples, cli.mode, &cli.policy, cli.reference.as_deref())?;
    emit(&a);
    Ok(())
}
