//! `cream-prepare`: data files named in the pipeline config -> a `prepare` artifact holding the
//! prompt pool, the eval set and the SFT seed pairs.

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::{Stage, emit};

/// Build the prompt pool, eval set and SFT seed set from the data files in the config's [data].
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    stage: Stage,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    emit(&cream_stages::prepare::run(&ctx, &p.data)?);
    Ok(())
}
