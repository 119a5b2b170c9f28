//! `cream-generate`: sample N responses per prompt of one iteration (CREAM step 1).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Sharding, Stage, emit};

/// Sample [generate].n responses for each prompt of iteration `--iteration`'s prompt subset.
///
/// On many machines: run `--shard K/N` as task K of an N-task job array (each publishes the
/// samples of its prompts), then `--merge <the N shard artifacts>` with the same other flags; the
/// merged artifact is exactly the one an unsharded run produces.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The `prepare` artifact (its pool is split evenly across the config's iterations).
    #[arg(long)]
    prompts: String,
    /// The policy M_t: a `train` artifact, a GGUF file or a Hugging Face directory.
    #[arg(long)]
    model: PathBuf,
    /// Which iteration's prompt subset (1-based).
    #[arg(long)]
    iteration: usize,
    #[command(flatten)]
    sharding: Sharding,
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    let a = cli.sharding.run_or_merge(
        |shard| cream_stages::generate::run(&ctx, &p, &cli.prompts, &cli.model, cli.iteration, shard),
        |shards| cream_stages::generate::merge(&ctx, &p, &cli.prompts, &cli.model, cli.iteration, shards),
    )?;
    emit(&a);
    Ok(())
}
