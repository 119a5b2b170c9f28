//! `cream-eval`: greedy answers on the eval set, answer extraction, accuracy per task.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Sharding, Stage, emit};

/// Evaluate a model on the `prepare` artifact's eval set; accuracy per task is printed and kept
/// in the manifest's `extra`, the raw answers in eval.parquet.
///
/// On many machines: run `--shard K/N` as task K of an N-task job array (each publishes the
/// graded answers of its eval rows), then `--merge <the N shard artifacts>` with the same other
/// flags; the merged artifact is exactly the one an unsharded run produces.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The `prepare` artifact.
    #[arg(long)]
    prompts: String,
    /// The model: a `train` artifact, a GGUF file or a Hugging Face directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    sharding: Sharding,
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    let a = cli.sharding.run_or_merge(
        |shard| cream_stages::eval::run_shard(&ctx, &p, &cli.prompts, &cli.model, shard),
        |shards| cream_stages::eval::merge(&ctx, &p, &cli.prompts, &cli.model, shards),
    )?;
    let scope = if cli.sharding.shard.is_all() { String::new() } else { format!(" (shard {})", cli.sharding.shard) };
    ctx.log(format!("eval: accuracy{scope} {}", a.manifest.extra["accuracy"]));
    emit(&a);
    Ok(())
}
