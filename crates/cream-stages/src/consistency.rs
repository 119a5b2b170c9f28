//! The `consistency` stage (spec step 4, pitfalls 6-7): how far the current and the previous
//! model agree on the ranking of each prompt's responses.
//!
//! Input: two `judge` artifacts (`current` = r_t, `previous` = r_{t-1}) over the same samples.
//! Their `rewards.parquet` tables are joined on (prompt_id, sample_idx) with polars; every key of
//! either side must exist on the other (an error names the first missing key and both artifacts).
//! Per prompt, the two reward vectors ordered by sample_idx go to
//! [`cream_algo::prompt_consistency`]. Output: `consistency.parquet` ([`ConsistencyRow`], one row
//! per prompt, sorted by prompt id, so C_j is keyed by prompt id, never by position (pitfall 7)),
//! and manifest `extra` = {method, c_mean (the dataset C), c_std, tau_mean, tie_rate_current,
//! tie_rate_previous (tied pairs / all pairs), prompts, samples}.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cream_algo::Method;
use cream_core::{Artifact, ArtifactSpec, ConsistencyRow, ProduceOutput, write_table};
use polars::prelude::{
    DataFrame, DataFrameJoinOps, DataType, JoinArgs, JoinCoalesce, JoinType, ParquetReader, SerReader,
    SortMultipleOptions,
};
use serde_json::{Value, json};

use crate::config::Pipeline;
use crate::ctx::{Ctx, params};

pub const STAGE: &str = "consistency";
/// The output table.
pub const FILE: &str = "consistency.parquet";
/// The table of a `judge` artifact.
pub const REWARDS_FILE: &str = "rewards.parquet";

/// Compute per-prompt consistency between two judge artifacts (paths or `<stage>/<id>`).
pub fn run(ctx: &Ctx, p: &Pipeline, current: &str, previous: &str) -> Result<Artifact> {
    let cur = ctx.open(current, crate::judge::STAGE).context("consistency: the current model's rewards")?;
    let prev = ctx.open(previous, crate::judge::STAGE).context("consistency: the previous model's rewards")?;
    let method = p.consistency.method;
    let spec = ArtifactSpec {
        stage: STAGE.into(),
        schema_version: 1,
        params: params(&p.consistency)?,
        inputs: vec![cur.as_input("current"), prev.as_input("previous")],
    };
    ctx.produce(spec, |dir| {
        let joined = join_rewards(&cur, &prev)?;
        let rows = per_prompt(method, &joined)?;
        let mut extra = summarize(&rows)?;
        extra["method"] = serde_json::to_value(method)?;
        extra["samples"] = json!(joined.height());
        let n = write_table(&dir.join(FILE), &rows)?;
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows(FILE, n))
    })
}

/// The two artifacts' rewards joined on (prompt_id, sample_idx), sorted by that key, with
/// columns prompt_id, sample_idx, reward_current, reward_previous.
fn join_rewards(cur: &Artifact, prev: &Artifact) -> Result<DataFrame> {
    let left = keyed_rewards(cur, "reward_current")?;
    let right = keyed_rewards(prev, "reward_previous")?;
    let joined = full_join_complete(
        &left,
        &right,
        "reward_current",
        "reward_previous",
        &format!("the current model's rewards {}", cur.dir.display()),
        &format!("the previous model's rewards {}", prev.dir.display()),
    )?;
    ensure!(
        joined.height() > 0,
        "consistency: no samples to compare: {} and {} are empty",
        cur.dir.display(),
        prev.dir.display()
    );
    Ok(joined)
}

/// prompt_id, sample_idx and reward (renamed to `reward_col`) of a judge artifact, sorted by key,
/// with unique keys.
fn keyed_rewards(a: &Artifact, reward_col: &str) -> Result<DataFrame> {
    let path = a.path(REWARDS_FILE)?;
    let mut df = read_frame(
        &path,
        &[("prompt_id", DataType::String), ("sample_idx", DataType::UInt32), ("reward", DataType::Float64)],
    )?;
    df.rename("reward", reward_col.into())?;
    sort_unique_keys(df, &path)
}

/// One [`ConsistencyRow`] per prompt of a frame sorted by (prompt_id, sample_idx).
fn per_prompt(method: Method, joined: &DataFrame) -> Result<Vec<ConsistencyRow>> {
    let ids = str_values(joined, "prompt_id")?;
    let cur = f64_values(joined, "reward_current")?;
    let prev = f64_values(joined, "reward_previous")?;
    prompt_runs(&ids)
        .into_iter()
        .map(|run| {
            let id = &ids[run.start];
            let pc = cream_algo::prompt_consistency(method, &cur[run.clone()], &prev[run.clone()])
                .with_context(|| format!("consistency of prompt {id}"))?;
            Ok(ConsistencyRow {
                prompt_id: id.clone(),
                n: run.len() as u32,
                tau: pc.stat,
                c: pc.c,
                ties_current: pc.ties_current,
                ties_previous: pc.ties_previous,
            })
        })
        .collect()
}

/// The dataset-level statistics of per-prompt rows (the manifest `extra`, without `method`):
/// c_mean (the dataset C of the "avg" mode), c_std (population), tau_mean, tie_rate_current and
/// tie_rate_previous (tied pairs over all pairs), prompts.
pub fn summarize(rows: &[ConsistencyRow]) -> Result<Value> {
    let cs: Vec<f64> = rows.iter().map(|r| r.c).collect();
    let c_mean = cream_algo::dataset_c(&cs).context("consistency: no prompts")?;
    let c_std = (cs.iter().map(|c| (c - c_mean).powi(2)).sum::<f64>() / cs.len() as f64).sqrt();
    let tau_mean = rows.iter().map(|r| r.tau).sum::<f64>() / rows.len() as f64;
    let pairs: u64 = rows.iter().map(|r| u64::from(r.n) * u64::from(r.n.saturating_sub(1)) / 2).sum();
    let rate = |ties: u64| if pairs == 0 { 0.0 } else { ties as f64 / pairs as f64 };
    let ties_current: u64 = rows.iter().map(|r| u64::from(r.ties_current)).sum();
    let ties_previous: u64 = rows.iter().map(|r| u64::from(r.ties_previous)).sum();
    Ok(json!({
        "c_mean": c_mean,
        "c_std": c_std,
        "tau_mean": tau_mean,
        "tie_rate_current": rate(ties_current),
        "tie_rate_previous": rate(ties_previous),
        "prompts": rows.len(),
    }))
}

// ---- polars helpers shared by the consistency, pair and report stages ----

/// Reads the Parquet file at `path` with polars, keeping only `columns`, which must exist with
/// the given types and hold no nulls. Errors name the file and the column.
pub(crate) fn read_frame(path: &Path, columns: &[(&str, DataType)]) -> Result<DataFrame> {
    let hint = "rerun the stage that produced it";
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = ParquetReader::new(file);
    let schema = reader
        .schema()
        .with_context(|| format!("{}: not a readable Parquet file; {hint}", path.display()))?;
    for (name, _) in columns {
        if schema.get(*name).is_none() {
            let have: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
            bail!("{}: missing column {name:?} (it has: {}); {hint}", path.display(), have.join(", "));
        }
    }
    let df = reader
        .with_columns(Some(columns.iter().map(|(n, _)| n.to_string()).collect()))
        .finish()
        .with_context(|| format!("{}: cannot read it with polars; {hint}", path.display()))?;
    for (name, dtype) in columns {
        let col = df.column(name)?;
        ensure!(
            col.dtype() == dtype,
            "{}: column {name:?} has type {} but {dtype} is needed; {hint}",
            path.display(),
            col.dtype()
        );
        if col.null_count() > 0 {
            let row = (0..col.len()).find(|&i| col.get(i).is_ok_and(|v| v.is_null())).unwrap_or(0);
            bail!("{}: column {name:?}, row {row}: null, but the column does not allow nulls; {hint}", path.display());
        }
    }
    Ok(df)
}

/// `df` sorted by (prompt_id, sample_idx), after checking that no key appears twice.
pub(crate) fn sort_unique_keys(df: DataFrame, path: &Path) -> Result<DataFrame> {
    let df = df.sort(["prompt_id", "sample_idx"], SortMultipleOptions::default().with_maintain_order(true))?;
    let ids = str_values(&df, "prompt_id")?;
    let idx = u32_values(&df, "sample_idx")?;
    if let Some(i) = (1..df.height()).find(|&i| ids[i] == ids[i - 1] && idx[i] == idx[i - 1]) {
        bail!(
            "{}: prompt {} sample {} appears more than once; every (prompt_id, sample_idx) must be unique",
            path.display(),
            ids[i],
            idx[i]
        );
    }
    Ok(df)
}

/// Full join of two frames sorted and unique on (prompt_id, sample_idx), failing on the first key
/// (in key order) that only one side has; `left_marker` / `right_marker` are non-null columns of
/// each side (null after the join exactly where that side lacks the key). The result is sorted by
/// key.
pub(crate) fn full_join_complete(
    left: &DataFrame,
    right: &DataFrame,
    left_marker: &str,
    right_marker: &str,
    left_name: &str,
    right_name: &str,
) -> Result<DataFrame> {
    let keys = ["prompt_id", "sample_idx"];
    let mut args = JoinArgs::new(JoinType::Full);
    args.coalesce = JoinCoalesce::CoalesceColumns;
    let joined = left
        .join(right, keys, keys, args, None)?
        .sort(keys, SortMultipleOptions::default().with_maintain_order(true))?;
    let lm = joined.column(left_marker)?;
    let rm = joined.column(right_marker)?;
    if lm.null_count() + rm.null_count() > 0 {
        let ids = joined.column("prompt_id")?.str()?.clone();
        let idx = joined.column("sample_idx")?.u32()?.clone();
        for i in 0..joined.height() {
            let (in_left, in_right) = (!lm.get(i)?.is_null(), !rm.get(i)?.is_null());
            if in_left && in_right {
                continue;
            }
            let (has, lacks) = if in_left { (left_name, right_name) } else { (right_name, left_name) };
            bail!(
                "prompt {} sample {} is in {has} but not in {lacks}; both must cover the same samples",
                ids.get(i).unwrap_or("?"),
                idx.get(i).map_or_else(|| "?".to_string(), |v| v.to_string()),
            );
        }
    }
    Ok(joined)
}

/// The row ranges of equal prompt ids in ids sorted by prompt id.
pub(crate) fn prompt_runs(ids: &[String]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=ids.len() {
        if i == ids.len() || ids[i] != ids[start] {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

pub(crate) fn str_values(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    df.column(name)?
        .str()?
        .iter()
        .enumerate()
        .map(|(i, v)| v.map(str::to_owned).with_context(|| format!("column {name:?}, row {i}: null")))
        .collect()
}

pub(crate) fn u32_values(df: &DataFrame, name: &str) -> Result<Vec<u32>> {
    df.column(name)?
        .u32()?
        .iter()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("column {name:?}, row {i}: null")))
        .collect()
}

pub(crate) fn f64_values(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    df.column(name)?
        .f64()?
        .iter()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("column {name:?}, row {i}: null")))
        .collect()
}
