//! `cream-plan --config P`: validate a pipeline config and print the values the justfile's loop
//! needs, as shell assignments (`eval "$(cream-plan --config P)"`).

use anyhow::Result;
use clap::Parser;
use cream_algo::CMode;
use cream_cli::flags::{Common, ConfigArg};

/// Print `name`, `iterations`, `base` (M0) and `consistency` (1 if the loop ranks with the
/// previous model's consistency in the loss, 0 for a fixed C such as SRLM) and `mc` (1 if the
/// prompts include multiple-choice items for log-likelihood evaluation) as shell assignments,
/// and per stage `slurm_opts_<stage>` (a bash array of sbatch options) and `slurm_shards_<stage>`
/// from the `[slurm]` section.
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
    // The cluster executor's job options (scripts/slurm.sh): per stage, its sbatch options and
    // its array size.
    for stage in cream_stages::config::LOOP_STAGES {
        let job = p.slurm.job(stage);
        let args: Vec<String> = job.sbatch_args().iter().map(|a| quote(a)).collect();
        println!("slurm_opts_{stage}=({})", args.join(" "));
        println!("slurm_shards_{stage}={}", job.shards.unwrap_or(1));
    }
    Ok(())
}
