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

use anyhow::{Context, Result, ensure};
use cream_algo::Method;
use cream_core::{Artifact, ArtifactSpec, ConsistencyRow, ProduceOutput, write_table};
use polars::prelude::{DataFrame, DataType};
use serde_json::json;

use crate::config::Pipeline;
use crate::ctx::{Ctx, params};
use crate::frame::{f64_values, full_join_complete, prompt_runs, read_frame, sort_unique_keys, str_values};
use crate::names;
use crate::summary;

/// Compute per-prompt consistency between two judge artifacts (paths or `<stage>/<id>`).
pub fn run(ctx: &Ctx, p: &Pipeline, current: &str, previous: &str) -> Result<Artifact> {
    let cur = ctx.open(current, names::stage::JUDGE).context("consistency: the current model's rewards")?;
    let prev = ctx.open(previous, names::stage::JUDGE).context("consistency: the previous model's rewards")?;
    let method = p.consistency.method;
    let spec = ArtifactSpec {
        stage: names::stage::CONSISTENCY.into(),
        schema_version: 1,
        params: params(&p.consistency)?,
        inputs: vec![cur.as_input("current"), prev.as_input("previous")],
    };
    ctx.produce(spec, |dir| {
        let joined = join_rewards(&cur, &prev)?;
        let rows = per_prompt(method, &joined)?;
        let mut extra = summary::consistency(&rows)?;
        extra["method"] = serde_json::to_value(method)?;
        extra["samples"] = json!(joined.height());
        let n = write_table(&dir.join(names::file::CONSISTENCY), &rows)?;
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows(names::file::CONSISTENCY, n))
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
    let path = a.path(names::file::REWARDS)?;
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
