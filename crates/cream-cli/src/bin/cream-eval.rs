//! `cream-eval`: greedy answers on the eval set, answer extraction, accuracy per task.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Stage, emit};

/// Evaluate a model on the `prepare` artifact's eval set; accuracy per task is printed and kept
/// in the manifest's `extra`, the raw answers in eval.parquet.
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
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    let a = cream_stages::eval::run(&ctx, &p, &cli.prompts, &cli.model)?;
    ctx.log(format!("eval: accuracy {}", a.manifest.extra["accuracy"]));
    emit(&a);
    Ok(())
}
