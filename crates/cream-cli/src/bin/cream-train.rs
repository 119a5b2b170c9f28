//! `cream-train`: SFT (M0 -> M1) or consistency-regularised DPO (M_t -> M_{t+1}).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cream_cli::flags::{Stage, emit};

/// Train a model; the result is a `train` artifact in Hugging Face layout.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Supervised fine-tuning on the `prepare` artifact's SFT seed pairs ([sft] section).
    Sft {
        /// The `prepare` artifact.
        #[arg(long)]
        prompts: String,
        /// The model to start from (M0).
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        stage: Stage,
    },
    /// DPO with the consistency-regularised loss on a `pair` artifact ([train] section).
    Dpo {
        /// The `pair` artifact.
        #[arg(long)]
        pairs: String,
        /// The policy to start from, which is also the frozen reference (M_t).
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        stage: Stage,
    },
}

fn main() -> Result<()> {
    let a = match Cli::parse().mode {
        Mode::Sft { prompts, model, stage } => {
            let (p, ctx) = stage.init()?;
            cream_stages::train::sft(&ctx, &p, &prompts, &model)?
        }
        Mode::Dpo { pairs, model, stage } => {
            let (p, ctx) = stage.init()?;
            cream_stages::train::dpo(&ctx, &p, &pairs, &model)?
        }
    };
    emit(&a);
    Ok(())
}
