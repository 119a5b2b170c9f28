//! Manifest statistics that more than one stage computes: the dataset-level consistency
//! statistics (the `consistency` stage's manifest, recomputed by the report for older manifests)
//! and accuracy intervals (both `eval` methods).

use anyhow::{Context, Result};
use cream_core::ConsistencyRow;
use serde_json::{Value, json};

/// Bootstrap resamples for the accuracy intervals in eval manifests.
pub const BOOTSTRAP_REPS: usize = 2000;

/// The dataset-level statistics of per-prompt rows (the manifest `extra`, without `method`):
/// c_mean (the dataset C of the "avg" mode), c_std (population), tau_mean, tie_rate_current and
/// tie_rate_previous (tied pairs over all pairs), prompts.
pub fn consistency(rows: &[ConsistencyRow]) -> Result<Value> {
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

/// Accuracy in percent with its 95% bootstrap interval: `{"acc", "lo", "hi"}`.
pub fn accuracy_interval(outcomes: &[bool], seed: u64) -> Value {
    let x: Vec<f64> = outcomes.iter().map(|&c| f64::from(u8::from(c))).collect();
    match cream_algo::stats::bootstrap_mean_ci(&x, BOOTSTRAP_REPS, 0.95, seed) {
        Some(ci) => json!({"acc": 100.0 * ci.estimate, "lo": 100.0 * ci.lo, "hi": 100.0 * ci.hi}),
        None => Value::Null,
    }
}
