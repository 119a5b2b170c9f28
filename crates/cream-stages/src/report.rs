//! The `report` of one pipeline run: one row per model M_i, gathered from the artifacts of the
//! iteration that trained it (consistency, pair, train) and of its evaluations (eval). The
//! `cream-report` binary publishes it as a `report` artifact ([`spec`]) holding two typed tables
//! and their wide rendering:
//!
//! - `report.parquet` ([`ReportRow`], one row per model): pipeline, iteration, c_mean, c_std,
//!   tau_mean, tie_rate (current model), tie_rate_prev, pairs, chosen_mean_len,
//!   rejected_mean_len, reward_accuracy and train_loss (means over the last 10% of training
//!   steps, all steps when there are fewer than 10), c_final and tau_final (last row only: the
//!   consistency of the final models M_T vs M_{T-1}) and acc_mean (mean generative accuracy over
//!   the tasks of that row).
//! - `report_tasks.parquet` ([`ReportTaskRow`], one row per model, task and method): accuracy
//!   (percent) with its 95% bootstrap interval, for generative grading (`generate`) and for
//!   log-likelihood multiple choice (`loglik`, with lm-evaluation-harness's acc_norm).
//! - `report.md`: [`Report::frame`] as a markdown table, the wide view: the columns of
//!   `report.parquet` with, before acc_mean, acc_<task> / acc_<task>_lo / acc_<task>_hi for gsm8k,
//!   socialiqa and every other generative task (sorted), and after it mc_<task>, mc_<task>_lo /
//!   _hi and mc_<task>_norm for every log-likelihood task.
//!
//! Values recorded in manifests' `extra` (consistency, pair, eval) are read from there; the
//! consistency statistics are recomputed from `consistency.parquet` only when an older manifest
//! lacks them. A missing artifact (e.g. M0, which has only an evaluation) gives nulls.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use cream_core::{
    Artifact, ArtifactSpec, ConsistencyRow, InputRef, MetricRow, ReportRow, ReportTaskRow, read_table, write_table,
};
use polars::prelude::{AnyValue, Column, DataFrame};
use serde_json::{Value, json};

use crate::ctx::Ctx;
use crate::names;
use crate::names::report_role as role;
use crate::summary;

/// The key in a report manifest's `extra` holding the `--config` of the run that produced it.
pub const CONFIG_KEY: &str = "config";
/// Tasks that always get an accuracy column in the wide view, so reports of different runs line up.
pub const DEFAULT_TASKS: [&str; 2] = ["gsm8k", "socialiqa"];

/// Version of the `report` artifact's layout. 3: typed `report.parquet` ([`ReportRow`]) plus
/// `report_tasks.parquet` ([`ReportTaskRow`]) instead of one wide polars table; 2: charts,
/// intervals, log-likelihood and final-consistency columns.
pub const SCHEMA_VERSION: u32 = 3;

/// The spec of the report artifact of pipeline `name` over the run's artifacts `inputs` (by role;
/// see `cream-report`).
pub fn spec(name: &str, inputs: Vec<InputRef>) -> ArtifactSpec {
    ArtifactSpec {
        stage: names::stage::REPORT.into(),
        schema_version: SCHEMA_VERSION,
        params: json!({ "name": name }),
        inputs,
    }
}

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

impl IterationRecord {
    /// Its artifacts by report input role (see [`role`]), in a fixed order.
    pub fn roles(&self) -> Vec<(String, &str)> {
        let i = self.iteration;
        [
            (role::CONSISTENCY, &self.consistency),
            (role::PAIRS, &self.pairs),
            (role::TRAIN, &self.train),
            (role::EVAL, &self.eval),
            (role::MC, &self.mc),
        ]
        .into_iter()
        .filter_map(|(r, p)| p.as_deref().map(|p| (role::indexed(r, i), p)))
        .chain(self.final_consistency.as_deref().map(|p| (role::FINAL_CONSISTENCY.to_string(), p)))
        .collect()
    }
}

/// The records of a report from its inputs, the inverse of [`IterationRecord::roles`]: one record
/// per model index (ascending), artifacts as `<stage>/<id>`, the final models' consistency on the
/// last record. Lets a report be rebuilt from an earlier one (`cream-report --from`).
pub fn records_from_inputs(inputs: &[InputRef]) -> Result<Vec<IterationRecord>> {
    let mut rows: std::collections::BTreeMap<usize, IterationRecord> = std::collections::BTreeMap::new();
    let mut final_consistency = None;
    for input in inputs {
        let key = format!("{}/{}", input.stage, input.id);
        if input.name == role::FINAL_CONSISTENCY {
            final_consistency = Some(key);
            continue;
        }
        let found = role::ITERATION.iter().chain(&role::MODEL).find_map(|r| Some((*r, role_index(&input.name, r)?)));
        let Some((r, i)) = found else {
            anyhow::bail!("report input {:?} ({key}) is not a report role (expected <role><model index>)", input.name)
        };
        let rec = rows.entry(i).or_insert_with(|| IterationRecord { iteration: i, ..Default::default() });
        let slot = match r {
            role::CONSISTENCY => &mut rec.consistency,
            role::PAIRS => &mut rec.pairs,
            role::TRAIN => &mut rec.train,
            role::EVAL => &mut rec.eval,
            _ => &mut rec.mc,
        };
        ensure!(slot.is_none(), "report input {:?} appears twice", input.name);
        *slot = Some(key);
    }
    ensure!(!rows.is_empty(), "the report has no per-model inputs");
    if let Some(last) = rows.values_mut().next_back() {
        last.final_consistency = final_consistency;
    }
    Ok(rows.into_values().collect())
}

/// A run's report: the two tables of the report artifact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// One row per model, in record order.
    pub rows: Vec<ReportRow>,
    /// Per model (record order): its generative tasks (sorted), then its log-likelihood tasks.
    pub tasks: Vec<ReportTaskRow>,
}

/// The report of the records of pipeline `pipeline_name`, one row per record, in the order given.
pub fn build(ctx: &Ctx, pipeline_name: &str, records: &[IterationRecord]) -> Result<Report> {
    let mut report = Report::default();
    for rec in records {
        ensure!(
            !report.rows.iter().any(|r| r.iteration as usize == rec.iteration),
            "report: model {} is given twice; give each model's artifacts in one record",
            rec.iteration
        );
        let (row, tasks) = model_row(ctx, pipeline_name, rec).with_context(|| format!("report: iteration {}", rec.iteration))?;
        report.rows.push(row);
        report.tasks.extend(tasks);
    }
    Ok(report)
}

/// The row of one model and its per-task rows.
fn model_row(ctx: &Ctx, pipeline_name: &str, rec: &IterationRecord) -> Result<(ReportRow, Vec<ReportTaskRow>)> {
    let iteration = u32::try_from(rec.iteration)?;
    let mut row = empty_row(pipeline_name, iteration);
    if let Some(path) = &rec.consistency {
        consistency_stats(ctx, path, &mut row)?;
    }
    if let Some(path) = &rec.pairs {
        pair_stats(ctx, path, &mut row)?;
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
    let mut tasks = Vec::new();
    if let Some(path) = &rec.eval {
        tasks.extend(generative_tasks(ctx, path, iteration)?);
        row.acc_mean = (!tasks.is_empty()).then(|| tasks.iter().map(|t| t.acc).sum::<f64>() / tasks.len() as f64);
    }
    if let Some(path) = &rec.mc {
        tasks.extend(loglik_tasks(ctx, path, iteration)?);
    }
    Ok((row, tasks))
}

fn empty_row(pipeline: &str, iteration: u32) -> ReportRow {
    ReportRow {
        pipeline: pipeline.into(),
        iteration,
        c_mean: None,
        c_std: None,
        tau_mean: None,
        tie_rate: None,
        tie_rate_prev: None,
        pairs: None,
        chosen_mean_len: None,
        rejected_mean_len: None,
        reward_accuracy: None,
        train_loss: None,
        c_final: None,
        tau_final: None,
        acc_mean: None,
    }
}

/// c_mean, c_std, tau_mean and the tie rates of the consistency artifact `path`: from its
/// manifest, or recomputed from its table when an older manifest lacks them.
fn consistency_stats(ctx: &Ctx, path: &str, row: &mut ReportRow) -> Result<()> {
    let a = ctx.open(path, names::stage::CONSISTENCY)?;
    let mut extra = a.manifest.extra.clone();
    let keys = ["c_mean", "c_std", "tau_mean", "tie_rate_current", "tie_rate_previous"];
    if keys.iter().any(|k| extra.get(k).and_then(Value::as_f64).is_none()) {
        let rows: Vec<ConsistencyRow> = read_table(&a.path(names::file::CONSISTENCY)?)?;
        extra = summary::consistency(&rows).with_context(|| format!("consistency artifact {}", a.dir.display()))?;
    }
    let get = |k: &str| extra.get(k).and_then(Value::as_f64);
    row.c_mean = get("c_mean");
    row.c_std = get("c_std");
    row.tau_mean = get("tau_mean");
    row.tie_rate = get("tie_rate_current");
    row.tie_rate_prev = get("tie_rate_previous");
    Ok(())
}

/// The pair count and mean chosen / rejected lengths of the pair artifact `path`.
fn pair_stats(ctx: &Ctx, path: &str, row: &mut ReportRow) -> Result<()> {
    let a = ctx.open(path, names::stage::PAIR)?;
    let extra = &a.manifest.extra;
    row.pairs = extra
        .get("pairs")
        .and_then(Value::as_u64)
        .or_else(|| a.manifest.files.get(names::file::PAIRS).and_then(|f| f.rows));
    row.chosen_mean_len = extra.get("chosen_mean_len").and_then(Value::as_f64);
    row.rejected_mean_len = extra.get("rejected_mean_len").and_then(Value::as_f64);
    Ok(())
}

/// The per-task accuracies of the generative eval artifact `path`, sorted by task.
fn generative_tasks(ctx: &Ctx, path: &str, iteration: u32) -> Result<Vec<ReportTaskRow>> {
    let a = ctx.open(path, names::stage::EVAL)?;
    let extra = &a.manifest.extra;
    let acc = extra.get("accuracy").and_then(Value::as_object).with_context(|| {
        format!("eval artifact {}: its manifest has no extra.accuracy object", a.dir.display())
    })?;
    let mut tasks: Vec<ReportTaskRow> = acc
        .iter()
        .filter(|(task, _)| task.as_str() != "mean")
        .filter_map(|(task, v)| {
            let (lo, hi) = interval(&extra["accuracy_ci95"][task], "acc").unzip();
            Some(ReportTaskRow {
                iteration,
                task: task.clone(),
                method: names::eval_method::GENERATE.into(),
                acc: v.as_f64()?,
                lo,
                hi,
                acc_norm: None,
            })
        })
        .collect();
    tasks.sort_by(|a, b| a.task.cmp(&b.task));
    Ok(tasks)
}

/// The per-task acc and acc_norm of the log-likelihood eval artifact `path`.
fn loglik_tasks(ctx: &Ctx, path: &str, iteration: u32) -> Result<Vec<ReportTaskRow>> {
    let a = ctx.open(path, names::stage::EVAL)?;
    let tasks = a.manifest.extra.get("tasks").and_then(Value::as_object).with_context(|| {
        format!("eval artifact {}: not a log-likelihood eval (its manifest has no extra.tasks)", a.dir.display())
    })?;
    Ok(tasks
        .iter()
        .filter_map(|(task, v)| {
            let (lo, hi) = interval(&v["acc"], "acc").unzip();
            Some(ReportTaskRow {
                iteration,
                task: task.clone(),
                method: names::eval_method::LOGLIK.into(),
                acc: v["acc"]["acc"].as_f64()?,
                lo,
                hi,
                acc_norm: v["acc_norm"]["acc"].as_f64(),
            })
        })
        .collect())
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
    let mut rows: Vec<MetricRow> = read_table(&a.path(names::file::METRICS)?)?;
    let n = rows.len();
    if n == 0 {
        return Ok((None, None));
    }
    rows.sort_by_key(|r| r.step);
    let k = if n < 10 { n } else { n.div_ceil(10) };
    let tail = &rows[n - k..];
    let mean = |get: fn(&MetricRow) -> f64| {
        Some(tail.iter().map(get).sum::<f64>() / k as f64).filter(|v| v.is_finite())
    };
    Ok((mean(|r| r.loss), mean(|r| r.reward_accuracy)))
}

impl Report {
    /// The wide view (see the module docs): one row per model, the per-task accuracies as
    /// columns.
    pub fn frame(&self) -> Result<DataFrame> {
        let rows = &self.rows;
        let tasks_of = |method: &str| -> BTreeSet<&str> {
            self.tasks.iter().filter(|t| t.method == method).map(|t| t.task.as_str()).collect()
        };
        let mut gen_tasks = tasks_of(names::eval_method::GENERATE);
        gen_tasks.extend(DEFAULT_TASKS);
        let mc_tasks = tasks_of(names::eval_method::LOGLIK);
        let f = |name: &str, get: &dyn Fn(&ReportRow) -> Option<f64>| {
            Column::new(name.into(), rows.iter().map(get).collect::<Vec<Option<f64>>>())
        };
        let mut columns = vec![
            Column::new("pipeline".into(), rows.iter().map(|r| r.pipeline.as_str()).collect::<Vec<&str>>()),
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
        columns.extend(self.task_columns("acc", names::eval_method::GENERATE, &gen_tasks));
        columns.push(f("acc_mean", &|r| r.acc_mean));
        columns.extend(self.task_columns("mc", names::eval_method::LOGLIK, &mc_tasks));
        Ok(DataFrame::new(rows.len(), columns)?)
    }

    /// `<prefix>_<task>`, `_lo` and `_hi` (and `_norm` for log-likelihood) of every task of
    /// `method` in `tasks`, one value per row (null where that model has no such task row).
    fn task_columns(&self, prefix: &str, method: &str, tasks: &BTreeSet<&str>) -> Vec<Column> {
        let mut columns = Vec::new();
        for task in tasks {
            let values = |get: &dyn Fn(&ReportTaskRow) -> Option<f64>| -> Vec<Option<f64>> {
                self.rows
                    .iter()
                    .map(|r| {
                        self.tasks
                            .iter()
                            .find(|t| t.iteration == r.iteration && t.task == *task && t.method == method)
                            .and_then(get)
                    })
                    .collect()
            };
            columns.push(Column::new(format!("{prefix}_{task}").into(), values(&|t| Some(t.acc))));
            columns.push(Column::new(format!("{prefix}_{task}_lo").into(), values(&|t| t.lo)));
            columns.push(Column::new(format!("{prefix}_{task}_hi").into(), values(&|t| t.hi)));
            if method == names::eval_method::LOGLIK {
                columns.push(Column::new(format!("{prefix}_{task}_norm").into(), values(&|t| t.acc_norm)));
            }
        }
        columns
    }
}

/// Writes `report.parquet`, `report_tasks.parquet` and `report.md` into `out_dir` (created if
/// needed), each through a temporary file and a rename, so a reader never sees half a report.
pub fn write(report: &Report, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let publish = |name: &str, write: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        let (path, tmp) = (out_dir.join(name), out_dir.join(format!(".{name}.tmp")));
        write(&tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    };
    publish(names::file::REPORT, &|tmp| write_table(tmp, &report.rows).map(drop))?;
    publish(names::file::REPORT_TASKS, &|tmp| write_table(tmp, &report.tasks).map(drop))?;
    let md = markdown(&report.frame()?)?;
    publish(names::file::REPORT_MD, &|tmp| {
        std::fs::write(tmp, &md).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// The report of a published `report` artifact, read from its tables.
pub fn read(report: &Artifact) -> Result<Report> {
    Ok(Report {
        rows: read_table(&report.path(names::file::REPORT)?)?,
        tasks: read_table(&report.path(names::file::REPORT_TASKS)?)?,
    })
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

/// The published report (a `report` artifact) as its wide view formatted by polars. (Which
/// columns polars shows is set by its `POLARS_FMT_*` environment variables.)
pub fn render(report: &Artifact) -> Result<String> {
    Ok(format!("{}", read(report)?.frame()?))
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
                iterations: count(&role::ITERATION),
                models: count(&role::MODEL),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, parts: &[(&str, &str)]) -> IterationRecord {
        let mut r = IterationRecord { iteration: i, ..Default::default() };
        for (role, key) in parts {
            let slot = match *role {
                role::CONSISTENCY => &mut r.consistency,
                role::PAIRS => &mut r.pairs,
                role::TRAIN => &mut r.train,
                role::EVAL => &mut r.eval,
                role::MC => &mut r.mc,
                _ => &mut r.final_consistency,
            };
            *slot = Some(key.to_string());
        }
        r
    }

    fn inputs_of(records: &[IterationRecord]) -> Vec<InputRef> {
        records
            .iter()
            .flat_map(|r| r.roles())
            .map(|(name, key)| {
                let (stage, id) = key.split_once('/').unwrap();
                InputRef { name, stage: stage.into(), id: id.into() }
            })
            .collect()
    }

    #[test]
    fn report_roles_round_trip_through_the_inputs() {
        let records = vec![
            rec(0, &[(role::EVAL, "eval/e0"), (role::MC, "eval/m0")]),
            rec(1, &[(role::EVAL, "eval/e1")]),
            rec(2, &[(role::CONSISTENCY, "consistency/c2"), (role::PAIRS, "pair/p2"), (role::TRAIN, "train/t2"), (role::MC, "eval/m2")]),
            rec(3, &[(role::TRAIN, "train/t3"), (role::EVAL, "eval/e3"), (role::FINAL_CONSISTENCY, "consistency/f")]),
        ];
        let inputs = inputs_of(&records);
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["eval0", "mc0", "eval1", "consistency2", "pairs2", "train2", "mc2", "train3", "eval3", "final_consistency"]
        );
        assert_eq!(records_from_inputs(&inputs).unwrap(), records);
    }

    #[test]
    fn unknown_or_repeated_report_roles_are_refused() {
        let mut inputs = inputs_of(&[rec(2, &[(role::TRAIN, "train/t2")])]);
        inputs.push(InputRef { name: "samples2".into(), stage: "generate".into(), id: "g".into() });
        let e = records_from_inputs(&inputs).unwrap_err().to_string();
        assert!(e.contains("\"samples2\"") && e.contains("generate/g"), "{e}");
        let twice = inputs_of(&[rec(2, &[(role::TRAIN, "train/a")]), rec(2, &[(role::TRAIN, "train/b")])]);
        assert!(records_from_inputs(&twice).unwrap_err().to_string().contains("twice"));
        assert!(records_from_inputs(&[]).is_err(), "no per-model inputs");
    }
}
