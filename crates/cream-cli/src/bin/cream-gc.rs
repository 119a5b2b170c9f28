//! `cream-gc`: remove abandoned temporary directories of interrupted stages.

use anyhow::Result;
use clap::Parser;
use cream_cli::flags::StoreArg;

/// Remove `.tmp-*` directories no running stage holds; finished artifacts are never touched.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    store: StoreArg,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let report = cli.store.open()?.gc()?;
    for p in &report.removed {
        println!("removed {}", p.display());
    }
    for p in &report.in_use {
        println!("in use (left alone) {}", p.display());
    }
    println!("gc: removed {}, in use {}", report.removed.len(), report.in_use.len());
    Ok(())
}
