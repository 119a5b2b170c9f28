//! `cream-gc`: remove abandoned temporary directories of interrupted stages.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

/// Remove `.tmp-*` directories no running stage holds; finished artifacts are never touched.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Root of the artifact store.
    #[arg(long, env = "CREAM_ARTIFACTS", default_value = "artifacts")]
    artifacts: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let report = cream_core::Store::open(&cli.artifacts)?.gc()?;
    for p in &report.removed {
        println!("removed {}", p.display());
    }
    for p in &report.in_use {
        println!("in use (left alone) {}", p.display());
    }
    println!("gc: removed {}, in use {}", report.removed.len(), report.in_use.len());
    Ok(())
}
