//! `cream-report`: one table per pipeline run, one row per model M_i (M0, M1 = SFT, then one per
//! CREAM iteration): C mean/std, tau, tie rate, pairs, chosen/rejected lengths, reward accuracy,
//! train loss, eval accuracy with 95% intervals. Printed with polars, and published as a `report`
//! artifact (report.parquet + report_tasks.parquet + report.md + PNG charts: accuracy.png,
//! consistency.png, training.png).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cream_cli::flags::{Stage, emit};
use cream_core::ProduceOutput;
use cream_stages::names;
use cream_stages::report::{self, IterationRecord};
use serde_json::json;

/// Build the report from the artifacts of a run (the justfile's `iterate` passes them), or list
/// the runs in the store (`--list`).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// `iteration=T,consistency=A,pairs=B,train=C` (the model trained in iteration T is M_{T+1}),
    /// `model=I,eval=D[,mc=E]` (E: the `--method loglik` eval) or `final_consistency=F` (the last
    /// iteration's samples ranked by M_T and M_{T-1}); repeat for every iteration and model.
    #[arg(long = "record")]
    records: Vec<String>,
    /// List the pipeline runs in the store (their report artifacts), newest first: when, pipeline
    /// name, iterations, models evaluated, the --config of the run and the report's directory.
    #[arg(long, conflicts_with = "records")]
    list: bool,
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
    if cli.list {
        cli.stage.common.init()?;
        let runs = report::list_runs(&cli.stage.store.open()?)?;
        if runs.is_empty() {
            tracing::warn!("no pipeline runs (report artifacts) in {}", cli.stage.store.artifacts.display());
        } else {
            print!("{}", report::runs_table(&runs));
        }
        return Ok(());
    }
    let (p, ctx) = cli.stage.init()?;
    let mut rows: BTreeMap<usize, IterationRecord> = BTreeMap::new();
    let some = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
    let mut final_consistency = None;
    for r in &cli.records {
        let kv = parse(r)?;
        if let Some(f) = kv.get("final_consistency") {
            final_consistency = some(Some(f));
            continue;
        }
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
            row.mc = some(kv.get("mc"));
        }
    }
    if let Some(last) = rows.values_mut().next_back() {
        last.final_consistency = final_consistency;
    }
    let records: Vec<IterationRecord> = rows.into_values().collect();
    let mut inputs = Vec::new();
    for r in &records {
        for (role, path) in [
            ("consistency", &r.consistency),
            ("pairs", &r.pairs),
            ("train", &r.train),
            ("eval", &r.eval),
            ("mc", &r.mc),
            ("final_consistency", &r.final_consistency),
        ] {
            if let Some(path) = path {
                // Per-model roles carry the model index; the final models' consistency is one role.
                let name = if role == "final_consistency" { role.to_string() } else { format!("{role}{}", r.iteration) };
                inputs.push(ctx.store.open_artifact(path, None)?.as_input(&name));
            }
        }
    }
    let spec = report::spec(&p.name, inputs);
    let config = cli.stage.config.given_or_default().display().to_string();
    let run_inputs = spec.inputs.clone();
    let a = ctx.produce(spec, |dir| {
        let rep = report::build(&ctx, &p.name, &records)?;
        report::write(&rep, dir)?;
        // Charts: accuracy per model with 95% intervals, consistency per iteration, training curves.
        let run = cream_stages::experiment::read_run(&ctx.store, &p.name, &run_inputs)?;
        let charts = cream_stages::experiment::draw(std::slice::from_ref(&run), dir)?;
        ctx.log(format!("report: charts {}", charts.join(", ")));
        // Not in the key: which config file asked for this report, for `--list`.
        let extra = json!({ report::CONFIG_KEY: config });
        Ok(ProduceOutput { extra, ..Default::default() }
            .with_rows(names::file::REPORT, rep.rows.len() as u64)
            .with_rows(names::file::REPORT_TASKS, rep.tasks.len() as u64))
    })?;
    println!("{}", report::render(&a)?);
    emit(&a);
    Ok(())
}
