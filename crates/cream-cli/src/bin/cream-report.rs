//! `cream-report`: one table per pipeline run, one row per model M_i (M0, M1 = SFT, then one per
//! CREAM iteration): C mean/std, tau, tie rate, pairs, chosen/rejected lengths, reward accuracy,
//! train loss, eval accuracy. Printed with polars, and published as a `report` artifact
//! (report.parquet + report.md).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cream_cli::flags::{Stage, emit};
use cream_core::{ArtifactSpec, ProduceOutput};
use cream_stages::report::IterationRecord;
use serde_json::json;

/// Build the report from the artifacts of a run (the justfile's `iterate` passes them).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// `iteration=T,consistency=A,pairs=B,train=C` (the model trained in iteration T is M_{T+1})
    /// or `model=I,eval=D`; repeat for every iteration and model.
    #[arg(long = "record")]
    records: Vec<String>,
    #[command(flatten)]
    stage: Stage,
}

fn parse(s: &str) -> Result<BTreeMap<String, String>> {
    s.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').with_context(|| format!("--record {s:?}: expected key=value pairs"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn main() -> Result<()> {
    // Show every column and row of the report table (polars reads these when printing).
    // SAFETY: set before any other thread exists.
    unsafe {
        std::env::set_var("POLARS_FMT_MAX_COLS", "-1");
        std::env::set_var("POLARS_FMT_MAX_ROWS", "-1");
        std::env::set_var("POLARS_TABLE_WIDTH", "250");
    }
    let cli = Cli::parse();
    let (p, ctx) = cli.stage.init()?;
    let mut rows: BTreeMap<usize, IterationRecord> = BTreeMap::new();
    let some = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
    for r in &cli.records {
        let kv = parse(r)?;
        let (model, is_iter) = match (kv.get("model"), kv.get("iteration")) {
            (Some(m), None) => (m.parse::<usize>()?, false),
            (None, Some(t)) => (t.parse::<usize>()? + 1, true),
            _ => bail!("--record {r:?}: needs exactly one of model=I or iteration=T"),
        };
        let row = rows.entry(model).or_insert_with(|| IterationRecord { iteration: model, ..Default::default() });
        if is_iter {
            row.consistency = some(kv.get("consistency"));
            row.pairs = some(kv.get("pairs"));
            row.train = some(kv.get("train"));
        } else {
            row.eval = some(kv.get("eval"));
        }
    }
    let records: Vec<IterationRecord> = rows.into_values().collect();
    let mut inputs = Vec::new();
    for r in &records {
        for (role, path) in [("consistency", &r.consistency), ("pairs", &r.pairs), ("train", &r.train), ("eval", &r.eval)] {
            if let Some(path) = path {
                inputs.push(ctx.store.open_artifact(path, None)?.as_input(&format!("{role}{}", r.iteration)));
            }
        }
    }
    let spec = ArtifactSpec { stage: "report".into(), schema_version: 1, params: json!({"name": p.name}), inputs };
    let a = ctx.produce(spec, |dir| {
        let df = cream_stages::report::build(&ctx, &p.name, &records)?;
        cream_stages::report::write(&df, dir)?;
        Ok(ProduceOutput::default().with_rows("report.parquet", df.height() as u64))
    })?;
    println!("{}", cream_stages::report::render(&a)?);
    emit(&a);
    Ok(())
}
