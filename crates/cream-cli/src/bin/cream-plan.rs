//! `cream-plan --config P`: validate a pipeline config and print the values the justfile's loop
//! needs, as shell assignments (`eval "$(cream-plan --config P)"`).

use anyhow::Result;
use clap::Parser;
use cream_algo::CMode;
use cream_cli::flags::{Common, ConfigArg};

/// Print `name`, `iterations`, `base` (M0) and `consistency` (1 if the loop ranks with the
/// previous model's consistency in the loss, 0 for a fixed C such as SRLM) and `mc` (1 if the
/// prompts include multiple-choice items for log-likelihood evaluation) as shell assignments.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    common: Common,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.common.init_logging();
    let p = cli.config.load()?;
    println!("name={}", quote(&p.name));
    println!("iterations={}", p.iterations);
    println!("base={}", quote(&p.model.base.to_string_lossy()));
    println!("consistency={}", u8::from(!matches!(p.pair.c_mode, CMode::Fixed(_))));
    println!("mc={}", u8::from(p.data.mc_per_task.is_some()));
    Ok(())
}
