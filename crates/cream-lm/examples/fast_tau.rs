//! Rewards of samples under exact f32 and the bf16 fast mode, for the README's Kendall tau.
//!
//! `fast_tau SAMPLES.json POLICY REFERENCE OUT.json`: SAMPLES.json is a list of
//! `{"prompt_id", "sample_idx", "prompt", "response"}` (e.g. a generate artifact's
//! samples.parquet exported); writes, per sample, the DPO implicit reward S_policy - S_ref under
//! each precision. Each prompt's samples are scored together, as the `score` stage does.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use cream_lm::{Precision, ScoreOptions};
use serde_json::{Value, json};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 5, "usage: fast_tau SAMPLES.json POLICY REFERENCE OUT.json");
    cream_lm::configure_threads(None)?;
    let samples: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&args[1])?)?;
    let dev = candle_core::Device::Cpu;
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        groups.entry(s["prompt_id"].as_str().unwrap_or_default().to_string()).or_default().push(i);
    }
    let mut sums = HashMap::new();
    for (role, path) in [("policy", &args[2]), ("reference", &args[3])] {
        let mut lm = cream_lm::load(Path::new(path), &dev)?;
        let convs = samples
            .iter()
            .map(|s| lm.tokenizer.encode_conversation(s["prompt"].as_str().unwrap(), s["response"].as_str().unwrap()))
            .collect::<Result<Vec<_>>>()?;
        for p in Precision::ALL {
            lm.model.set_precision(p);
            let mut out = vec![0f64; samples.len()];
            for idx in groups.values() {
                let g: Vec<_> = idx.iter().map(|&i| convs[i].clone()).collect();
                for (&i, s) in idx.iter().zip(cream_lm::score(&lm.model, &g, ScoreOptions::default())?) {
                    out[i] = s.sum;
                }
            }
            eprintln!("{role} {p}: scored {} samples", out.len());
            sums.insert((role, p), out);
        }
    }
    let rows: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let r = |p| sums[&("policy", p)][i] - sums[&("reference", p)][i];
            json!({"prompt_id": s["prompt_id"], "sample_idx": s["sample_idx"],
                   "reward_f32": r(Precision::F32), "reward_bf16": r(Precision::Bf16)})
        })
        .collect();
    std::fs::write(&args[4], serde_json::to_string_pretty(&rows)?)?;
    Ok(())
}
