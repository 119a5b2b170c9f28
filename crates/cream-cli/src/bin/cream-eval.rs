//! `cream-eval`: greedy answers on the eval set, answer extraction, accuracy per task; or
//! (`--method loglik`) multiple-choice items scored by log-likelihood.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::{Parser, ValueEnum};
use cream_cli::flags::{Sharding, Stage, emit};

/// Evaluate a model on the `prepare` artifact's eval set; accuracy per task is printed and kept
/// in the manifest's `extra`, the raw answers in eval.parquet.
///
/// On many machines: run `--shard K/N` as task K of an N-task job array (each publishes the
/// graded answers of its eval rows), then `--merge <the N shard artifacts>` with the same other
/// flags; the merged artifact is exactly the one an unsharded run produces.
///
/// `--method loglik` instead scores every option of the `prepare` artifact's multiple-choice
/// items (mc.parquet, `[data] mc_per_task`) as lm-evaluation-harness does and reports `acc` and
/// `acc_norm` per task with 95% bootstrap intervals (mc_eval.parquet; not sharded).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The `prepare` artifact.
    #[arg(long)]
    prompts: String,
    /// The model: a `train` artifact, a GGUF file or a Hugging Face directory.
    #[arg(long)]
    model: PathBuf,
    /// How answers are graded: greedy generation + answer extraction, or log-likelihood of each
    /// multiple-choice option.
    #[arg(long, value_enum, default_value_t = Method::Generate)]
    method: Method,
    #[command(flatten)]
    sharding: Sharding,
    #[command(flatten)]
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Method {
    Generate,
    Loglik,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    if cli.method == Method::Loglik {
        ensure!(
            cli.sharding.shard.is_all() && cli.sharding.merge.is_empty(),
            "--method loglik runs unsharded (it scores a few thousand short options); drop --shard/--merge"
        );
        let a = cream_stages::eval_mc::run(&ctx, &p, &cli.prompts, &cli.model)?;
        emit(&a);
        return Ok(());
    }
    let a = cli.sharding.run_or_merge(
        |shard| cream_stages::eval::run_shard(&ctx, &p, &cli.prompts, &cli.model, shard),
        |shards| cream_stages::eval::merge(&ctx, &p, &cli.prompts, &cli.model, shards),
    )?;
    let scope = if cli.sharding.shard.is_all() { String::new() } else { format!(" (shard {})", cli.sharding.shard) };
    ctx.log(format!("eval: accuracy{scope} {}", a.manifest.extra["accuracy"]));
    emit(&a);
    Ok(())
}
