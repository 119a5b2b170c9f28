//! The per-iteration report: one row per iteration of a pipeline run, gathered from the
//! iteration's artifacts (consistency, pair, train, eval). Not an artifact itself: `just report`
//! writes `report.parquet` and `report.md` into a directory and prints the frame.
//!
//! Values recorded in manifests' `extra` (consistency, pair, eval) are read from there; the
//! consistency statistics are recomputed from `consistency.parquet` only when an older manifest
//! lacks them. A missing artifact (e.g. iteration 0 = M1, which has only an evaluation) gives
//! nulls in its columns.
//!
//! Columns: pipeline, iteration, c_mean, c_std, tau_mean, tie_rate (current model),
//! tie_rate_prev, pairs, chosen_mean_len, rejected_mean_len, reward_accuracy and train_loss
//! (means over the last 10% of training steps, all steps when there are fewer than 10),
//! c_final and tau_final (last row only: the consistency of the final models M_T vs M_{T-1}),
//! acc_<task> with its 95% bootstrap interval acc_<task>_lo / _hi for gsm8k, socialiqa and any
//! other task an eval artifact reports (sorted), acc_mean (mean over the tasks of that row), and
//! for log-likelihood (multiple-choice) evaluation mc_<task>, mc_<task>_lo / _hi and
//! mc_<task>_norm (lm-evaluation-harness's acc and acc_norm, percent).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use cream_core::{Artifact, ConsistencyRow, read_table};
use polars::prelude::{AnyValue, ChunkAgg, Column, DataFrame, DataType, ParquetWriter, SortMultipleOptions};
use serde_json::Value;

use crate::ctx::Ctx;
use crate::frame::read_frame;
use crate::names;

/// The key in a report manifest's `extra` holding the `--config` of the run that produced it.
pub const CONFIG_KEY: &str = "config";
/// Tasks that always get an accuracy column, so reports of different runs line up.
pub const DEFAULT_TASKS: [&str; 2] = ["gsm8k", "socialiqa"];

/// The artifacts (paths or `<stage>/<id>`) of one iteration; `None` where there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IterationRecord {
    pub iteration: usize,
    pub consistency: Option<String>,
    pub pairs: Option<String>,
    pub train: Option<String>,
    pub eval: Option<String>,
    /// The log-likelihood (multiple-choice) eval artifact of this model.
    pub mc: Option<String>,
    /// On the last model's row: the consistency of the final models (the last iteration's
    /// samples ranked by M_T and M_{T-1}).
    pub final_consistency: Option<String>,
}

/// One report row before it becomes columns.
#[derive(Debug, Default)]
struct Row {
    iteration: u32,
    c_mean: Option<f64>,
    c_std: Option<f64>,
    tau_mean: Option<f64>,
    tie_rate: Option<f64>,
    tie_rate_prev: Option<f64>,
    pairs: Option<u64>,
    chosen_mean_len: Option<f64>,
    rejected_mean_len: Option<f64>,
    reward_accuracy: Option<f64>,
    train_loss: Option<f64>,
    c_final: Option<f64>,
    tau_final: Option<f64>,
    /// (task, accuracy %, 95% interval) of generative grading.
    accuracy: Vec<(String, f64, Option<(f64, f64)>)>,
    /// (task, acc %, interval, acc_norm %) of log-likelihood scoring.
    mc: Vec<(String, f64, Option<(f64, f64)>, f64)>,
}

/// The report frame: one row per record, in the order given.
pub fn build(ctx: &Ctx, pipeline_name: &str, records: &[IterationRecord]) -> Result<DataFrame> {
    let rows = records
        .iter()
        .map(|r| row(ctx, r).with_context(|| format!("report: iteration {}", r.iteration)))
        .collect::<Result<Vec<Row>>>()?;
    let mut tasks: BTreeSet<String> = DEFAULT_TASKS.iter().map(|t| t.to_string()).collect();
    tasks.extend(rows.iter().flat_map(|r| r.accuracy.iter().map(|(t, _, _)| t.clone())));
    let mc_tasks: BTreeSet<String> = rows.iter().flat_map(|r| r.mc.iter().map(|(t, ..)| t.clone())).collect();

    let f = |name: &str, get: &dyn Fn(&Row) -> Option<f64>| {
        Column::new(name.into(), rows.iter().map(get).collect::<Vec<Option<f64>>>())
    };
    let mut columns = vec![
        Column::new("pipeline".into(), vec![pipeline_name; rows.len()]),
        Column::new("iteration".into(), rows.iter().map(|r| r.iteration).collect::<Vec<u32>>()),
        f("c_mean", &|r| r.c_mean),
        f("c_std", &|r| r.c_std),
        f("tau_mean", &|r| r.tau_mean),
        f("tie_rate", &|r| r.tie_rate),
        f("tie_rate_prev", &|r| r.tie_rate_prev),
        Column::new("pairs".into(), rows.iter().map(|r| r.pairs).collect::<Vec<Option<u64>>>()),
        f("chosen_mean_len", &|r| r.chosen_mean_len),
        f("rejected_mean_len", &|r| r.rejected_mean_len),
        f("reward_accuracy", &|r| r.reward_accuracy),
        f("train_loss", &|r| r.train_loss),
        f("c_final", &|r| r.c_final),
        f("tau_final", &|r| r.tau_final),
    ];
    for task in &tasks {
        let acc = |r: &Row| r.accuracy.iter().find(|(t, ..)| t == task).cloned();
        columns.push(f(&format!("acc_{task}"), &|r| acc(r).map(|a| a.1)));
        columns.push(f(&format!("acc_{task}_lo"), &|r| acc(r).and_then(|a| a.2).map(|ci| ci.0)));
        columns.push(f(&format!("acc_{task}_hi"), &|r| acc(r).and_then(|a| a.2).map(|ci| ci.1)));
    }
    columns.push(f("acc_mean", &|r| {
        (!r.accuracy.is_empty())
            .then(|| r.accuracy.iter().map(|a| a.1).sum::<f64>() / r.accuracy.len() as f64)
    }));
    for task in &mc_tasks {
        let mc = |r: &Row| r.mc.iter().find(|(t, ..)| t == task).cloned();
        columns.push(f(&format!("mc_{task}"), &|r| mc(r).map(|m| m.1)));
        columns.push(f(&format!("mc_{task}_lo"), &|r| mc(r).and_then(|m| m.2).map(|ci| ci.0)));
        columns.push(f(&format!("mc_{task}_hi"), &|r| mc(r).and_then(|m| m.2).map(|ci| ci.1)));
        columns.push(f(&format!("mc_{task}_norm"), &|r| mc(r).map(|m| m.3)));
    }
    Ok(DataFrame::new(rows.len(), columns)?)
}

fn row(ctx: &Ctx, rec: &IterationRecord) -> Result<Row> {
    let mut row = Row { iteration: u32::try_from(rec.iteration)?, ..Default::default() };
    if let Some(path) = &rec.consistency {
        let a = ctx.open(path, names::stage::CONSISTENCY)?;
        let mut extra = a.manifest.extra.clone();
        let keys = ["c_mean", "c_std", "tau_mean", "tie_rate_current", "tie_rate_previous"];
        if keys.iter().any(|k| extra.get(k).and_then(Value::as_f64).is_none()) {
            let rows: Vec<ConsistencyRow> = read_table(&a.path(names::file::CONSISTENCY)?)?;
            extra = crate::summary::consistency(&rows)
                .with_context(|| format!("consistency artifact {}", a.dir.display()))?;
        }
        let get = |k: &str| extra.get(k).and_then(Value::as_f64);
        row.c_mean = get("c_mean");
        row.c_std = get("c_std");
        row.tau_mean = get("tau_mean");
        row.tie_rate = get("tie_rate_current");
        row.tie_rate_prev = get("tie_rate_previous");
    }
    if let Some(path) = &rec.pairs {
        let a = ctx.open(path, names::stage::PAIR)?;
        let extra = &a.manifest.extra;
        row.pairs = extra
            .get("pairs")
            .and_then(Value::as_u64)
            .or_else(|| a.manifest.files.get(names::file::PAIRS).and_then(|f| f.rows));
        row.chosen_mean_len = extra.get("chosen_mean_len").and_then(Value::as_f64);
        row.rejected_mean_len = extra.get("rejected_mean_len").and_then(Value::as_f64);
    }
    if let Some(path) = &rec.train {
        let a = ctx.open(path, names::stage::TRAIN)?;
        (row.train_loss, row.reward_accuracy) = final_metrics(&a)?;
    }
    if let Some(path) = &rec.final_consistency {
        let a = ctx.open(path, names::stage::CONSISTENCY)?;
        let get = |k: &str| a.manifest.extra.get(k).and_then(Value::as_f64);
        (row.c_final, row.tau_final) = (get("c_mean"), get("tau_mean"));
    }
    if let Some(path) = &rec.eval {
        let a = ctx.open(path, names::stage::EVAL)?;
        let extra = &a.manifest.extra;
        let acc = extra.get("accuracy").and_then(Value::as_object).with_context(|| {
            format!("eval artifact {}: its manifest has no extra.accuracy object", a.dir.display())
        })?;
        row.accuracy = acc
            .iter()
            .filter(|(task, _)| task.as_str() != "mean")
            .filter_map(|(task, v)| v.as_f64().map(|v| (task.clone(), v, interval(&extra["accuracy_ci95"][task], "acc"))))
            .collect();
        row.accuracy.sort_by(|a, b| a.0.cmp(&b.0));
    }
    if let Some(path) = &rec.mc {
        let a = ctx.open(path, names::stage::EVAL)?;
        let tasks = a.manifest.extra.get("tasks").and_then(Value::as_object).with_context(|| {
            format!("eval artifact {}: not a log-likelihood eval (its manifest has no extra.tasks)", a.dir.display())
        })?;
        row.mc = tasks
            .iter()
            .filter_map(|(task, v)| {
                let acc = v["acc"]["acc"].as_f64()?;
                Some((task.clone(), acc, interval(&v["acc"], "acc"), v["acc_norm"]["acc"].as_f64().unwrap_or(f64::NAN)))
            })
            .collect();
    }
    Ok(row)
}

/// The `(lo, hi)` of an interval object `{key, "lo", "hi"}` written by the eval stages.
fn interval(v: &Value, key: &str) -> Option<(f64, f64)> {
    v.get(key)?;
    Some((v.get("lo")?.as_f64()?, v.get("hi")?.as_f64()?))
}

/// Mean loss and mean reward accuracy over the last 10% of a train artifact's steps (all steps
/// when there are fewer than 10); non-finite means (e.g. SFT's undefined reward accuracy) are
/// `None`.
fn final_metrics(a: &Artifact) -> Result<(Option<f64>, Option<f64>)> {
    let path = a.path(names::file::METRICS)?;
    let df = read_frame(
        &path,
        &[("step", DataType::UInt64), ("loss", DataType::Float64), ("reward_accuracy", DataType::Float64)],
    )?;
    let n = df.height();
    if n == 0 {
        return Ok((None, None));
    }
    let k = if n < 10 { n } else { n.div_ceil(10) };
    let tail = df.sort(["step"], SortMultipleOptions::default().with_maintain_order(true))?.tail(Some(k));
    let mean = |name: &str| -> Result<Option<f64>> {
        Ok(tail.column(name)?.f64()?.mean().filter(|v| v.is_finite()))
    };
    Ok((mean("loss")?, mean("reward_accuracy")?))
}

/// Writes `report.parquet` and `report.md` into `out_dir` (created if needed), each through a
/// temporary file and a rename, so a reader never sees half a report.
pub fn write(df: &DataFrame, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let parquet = out_dir.join(names::file::REPORT);
    let tmp = out_dir.join(".report.parquet.tmp");
    {
        let file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        ParquetWriter::new(&file)
            .finish(&mut df.clone())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &parquet).with_context(|| format!("cannot write {}", parquet.display()))?;
    let md = out_dir.join(names::file::REPORT_MD);
    let tmp = out_dir.join(".report.md.tmp");
    std::fs::write(&tmp, markdown(df)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &md).with_context(|| format!("cannot write {}", md.display()))?;
    Ok(())
}

/// The frame as a GitHub-flavoured markdown table: floats with 4 decimals, nulls as "-".
pub fn markdown(df: &DataFrame) -> Result<String> {
    let mut out = String::new();
    let names: Vec<&str> = df.columns().iter().map(|c| c.name().as_str()).collect();
    writeln!(out, "| {} |", names.join(" | "))?;
    writeln!(out, "|{}", names.iter().map(|_| "---|").collect::<String>())?;
    for i in 0..df.height() {
        let cells = df.columns().iter().map(|c| Ok(cell(&c.get(i)?))).collect::<Result<Vec<_>>>()?;
        writeln!(out, "| {} |", cells.join(" | "))?;
    }
    Ok(out)
}

fn cell(v: &AnyValue) -> String {
    match v {
        AnyValue::Null => "-".into(),
        AnyValue::Float64(x) => format!("{x:.4}"),
        AnyValue::Float32(x) => format!("{x:.4}"),
        AnyValue::String(s) => s.replace('|', "\\|"),
        AnyValue::StringOwned(s) => s.replace('|', "\\|"),
        other => other.to_string(),
    }
}

/// The published report table (`report.parquet` of a `report` artifact) formatted by polars.
/// (Which columns polars shows is set by its `POLARS_FMT_*` environment variables.)
pub fn render(report: &Artifact) -> Result<String> {
    use polars::prelude::SerReader as _;
    let path = report.path(names::file::REPORT)?;
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let df = polars::prelude::ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: cannot read it with polars: {e}", path.display()))?;
    Ok(format!("{df}"))
}

/// One pipeline run in a store, as its `report` artifact records it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// When the report was produced (RFC 3339 UTC).
    pub created_at: String,
    /// The pipeline's `name`.
    pub name: String,
    /// The `--config` of the run that produced the report (reports made before it was recorded
    /// have none). The report's key does not depend on it: a later run of another config file
    /// with the same name and artifacts finds this report.
    pub config: Option<String>,
    /// CREAM iterations (those whose consistency, pairs or trained model the report lists).
    pub iterations: usize,
    /// Models evaluated (M0, M1 = SFT, one per iteration).
    pub models: usize,
    /// The report artifact's directory.
    pub dir: std::path::PathBuf,
}

/// The index `i` of a report input role `<prefix><i>` (e.g. `pairs2`).
fn role_index(role: &str, prefix: &str) -> Option<usize> {
    role.strip_prefix(prefix)?.parse().ok()
}

/// Every pipeline run in `store` (its `report` artifacts), newest first.
pub fn list_runs(store: &cream_core::Store) -> Result<Vec<RunSummary>> {
    let mut runs: Vec<(RunSummary, String)> = store
        .list(names::stage::REPORT)?
        .into_iter()
        .map(|a| {
            let m = &a.manifest;
            let count = |prefixes: &[&str]| {
                m.inputs
                    .iter()
                    .filter_map(|i| prefixes.iter().find_map(|p| role_index(&i.name, p)))
                    .collect::<BTreeSet<_>>()
                    .len()
            };
            let summary = RunSummary {
                created_at: m.created_at.clone(),
                name: m.params.get("name").and_then(Value::as_str).unwrap_or("?").to_string(),
                config: m.extra.get(CONFIG_KEY).and_then(Value::as_str).map(str::to_string),
                iterations: count(&["consistency", "pairs", "train"]),
                models: count(&["eval", "mc"]),
                dir: a.dir.clone(),
            };
            (summary, m.id.to_string())
        })
        .collect();
    // RFC 3339 UTC strings sort as times; ties (same second) by id, for a stable order.
    runs.sort_by(|(a, ia), (b, ib)| b.created_at.cmp(&a.created_at).then_with(|| ia.cmp(ib)));
    Ok(runs.into_iter().map(|(s, _)| s).collect())
}

/// [`list_runs`] as an aligned text table, one run per line under a header.
pub fn runs_table(runs: &[RunSummary]) -> String {
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|r| {
            [
                r.created_at.clone(),
                r.name.clone(),
                r.iterations.to_string(),
                r.models.to_string(),
                r.config.clone().unwrap_or_else(|| "-".into()),
                r.dir.display().to_string(),
            ]
        })
        .collect();
    let header = ["created (UTC)", "pipeline", "iterations", "models", "config", "report"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        writeln!(out, "{}", cells.join("  ").trim_end()).expect("writing to a String");
    }
    out
}
