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

/// Build the report from the artifacts of a run (the justfile's `iterate` passes them), list the
/// runs in the store (`--list`), or print one of them again (`--show`).
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
    /// Build the report again from the artifacts an earlier report lists (a path or
    /// `report/<id>`), e.g. after an update of cream changed the report's layout: no --record, no
    /// rerun of the loop. Same inputs and layout give the same report (a cache hit).
    #[arg(long, value_name = "REPORT", conflicts_with_all = ["records", "list"])]
    from: Option<String>,
    /// Print an existing report (a path or `report/<id>`, as `--list` shows them) and where its
    /// run's time went, without building anything.
    #[arg(long, value_name = "REPORT", conflicts_with_all = ["records", "list", "from"])]
    show: Option<String>,
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

/// The `--record` arguments as one record per model index (ascending).
fn records_of(args: &[String]) -> Result<Vec<IterationRecord>> {
    let mut rows: BTreeMap<usize, IterationRecord> = BTreeMap::new();
    let some = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
    let mut final_consistency = None;
    for r in args {
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
    Ok(rows.into_values().collect())
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
    if let Some(report) = &cli.show {
        cli.stage.common.init()?;
        let store = cli.stage.store.open()?;
        let a = store.open_artifact(report, Some(names::stage::REPORT))?;
        print_report(&store, &a)?;
        emit(&a);
        return Ok(());
    }
    let (name, config, records, ctx) = match &cli.from {
        Some(from) => {
            cli.stage.common.init()?;
            let mut ctx = cream_stages::ctx::Ctx::new(&cli.stage.store.artifacts, cli.stage.common.quiet)?;
            ctx.cached_only = cli.stage.cached_only;
            let old = ctx.store.open_artifact(from, Some(names::stage::REPORT))?;
            let m = &old.manifest;
            let name = m.params.get("name").and_then(|v| v.as_str()).context("the report's params lack its pipeline name")?;
            let config = m.extra.get(report::CONFIG_KEY).and_then(|v| v.as_str()).map(str::to_string);
            let records = report::records_from_inputs(&m.inputs).with_context(|| format!("report {}", old.dir.display()))?;
            (name.to_string(), config, records, ctx)
        }
        None => {
            let (p, ctx) = cli.stage.init()?;
            let config = cli.stage.config.given_or_default().display().to_string();
            (p.name, Some(config), records_of(&cli.records)?, ctx)
        }
    };
    let mut inputs = Vec::new();
    for r in &records {
        for (role, path) in r.roles() {
            inputs.push(ctx.store.open_artifact(path, None)?.as_input(&role));
        }
    }
    let spec = report::spec(&name, inputs);
    let run_inputs = spec.inputs.clone();
    let a = ctx.produce(spec, |dir| {
        let rep = report::build(&ctx, &name, &records)?;
        report::write(&rep, dir)?;
        // Charts: accuracy per model with 95% intervals, consistency per iteration, training curves.
        let run = cream_stages::experiment::read_run(&ctx.store, &name, &run_inputs)?;
        let charts = cream_stages::experiment::draw(std::slice::from_ref(&run), dir)?;
        ctx.log(format!("report: charts {}", charts.join(", ")));
        // Not in the key: which config file asked for this report, for `--list`.
        let extra = json!({ report::CONFIG_KEY: config });
        Ok(ProduceOutput { extra, ..Default::default() }
            .with_rows(names::file::REPORT, rep.rows.len() as u64)
            .with_rows(names::file::REPORT_TASKS, rep.tasks.len() as u64))
    })?;
    print_report(&ctx.store, &a)?;
    emit(&a);
    Ok(())
}

/// The report's table, then where its run's time went, per stage, from the manifests of every
/// artifact the report depends on. The costs are printed, not stored: a report's bytes depend
/// only on its inputs' keys and contents, never on how long they took (a Slurm run and a local
/// run give the same report).
fn print_report(store: &cream_core::Store, a: &cream_core::Artifact) -> Result<()> {
    println!("{}", report::render(a)?);
    let costs = cream_stages::experiment::stage_costs(store, &a.manifest.inputs)?;
    println!("Where the time went (as recorded when each artifact was produced):\n");
    println!("{}", cream_stages::experiment::cost_table(&costs));
    Ok(())
}
