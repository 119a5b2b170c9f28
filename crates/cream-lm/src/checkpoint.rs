//! Training checkpoints: everything an interrupted optimizer loop needs to continue exactly where
//! it stopped (the weights, the AdamW moments and step count, and the caller's own state such as
//! the next step and the metrics so far).
//!
//! Layout: `<dir>/step-<NNNNNNNN>/` with `weights.safetensors`, `optimizer.safetensors`,
//! `state.json` (written last) and whatever the caller adds. A checkpoint appears only by the
//! atomic rename of a complete, fsynced temporary directory, so a process killed while saving
//! leaves the previous checkpoint intact; older checkpoints are removed once a newer one is in
//! place. Only the latest is kept: the cost is one copy of the model and two of its moments on
//! disk, written every K steps (never every step).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, ensure};
use candle_core::{Device, Tensor};
use serde_json::{Value, json};

use crate::model::Model;
use crate::train::AdamW;

const PREFIX: &str = "step-";
const STATE_FILE: &str = "state.json";
const WEIGHTS_FILE: &str = "weights.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// A checkpoint found by [`load_latest`]: the step it was taken after, its directory (where the
/// caller's own files are) and the caller's `extra` state.
pub struct Restored {
    pub step: usize,
    pub dir: PathBuf,
    pub extra: Value,
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    safetensors::tensor::serialize_to_file(tensors, None, path).map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("cannot fsync {}", path.display()))
}

/// Saves a checkpoint taken after `step` optimizer steps into `dir` (created if needed):
/// `model`'s weights, `opt`'s state, `extra` (JSON) and the files `write_more` puts into the
/// checkpoint's directory. Replaces the previous checkpoint only once this one is complete.
pub fn save(
    dir: &Path,
    step: usize,
    model: &Model,
    opt: &AdamW,
    extra: &Value,
    write_more: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
    let name = format!("{PREFIX}{step:08}");
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let weights = model
        .named_vars()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    write_safetensors(&tmp.join(WEIGHTS_FILE), weights)?;
    write_safetensors(&tmp.join(OPTIMIZER_FILE), opt.state_tensors()?)?;
    write_more(&tmp)?;
    let state = json!({"step": step, "optimizer_steps": opt.steps(), "extra": extra});
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_vec_pretty(&state)?)
        .with_context(|| format!("cannot write {}", tmp.join(STATE_FILE).display()))?;
    for entry in std::fs::read_dir(&tmp)? {
        sync(&entry?.path())?;
    }
    sync(&tmp)?;
    let done = dir.join(&name);
    if done.exists() {
        std::fs::remove_dir_all(&done).with_context(|| format!("cannot replace {}", done.display()))?;
    }
    std::fs::rename(&tmp, &done).with_context(|| format!("cannot move {} to {}", tmp.display(), done.display()))?;
    sync(dir)?;
    for (_, old) in checkpoints(dir)?.into_iter().filter(|(s, _)| *s != step) {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
    }
    Ok(done)
}

/// The complete checkpoints in `dir` (step, path), oldest first; unfinished temporaries are skipped.
fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(out) };
    for entry in entries {
        let path = entry?.path();
        let Some(step) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if let Ok(step) = step.parse::<usize>()
            && path.join(STATE_FILE).is_file()
        {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Restores the latest checkpoint in `dir` into `model` and `opt`, or returns None when there is
/// none. A checkpoint that does not fit the model (another shape, a missing tensor) is an error
/// naming it: delete the directory to start over.
pub fn load_latest(dir: &Path, model: &Model, opt: &mut AdamW) -> Result<Option<Restored>> {
    let Some((step, path)) = checkpoints(dir)?.pop() else { return Ok(None) };
    let mut restore = || -> Result<Restored> {
        let state: Value = serde_json::from_slice(&std::fs::read(path.join(STATE_FILE))?)?;
        let optimizer_steps = state["optimizer_steps"].as_u64().context("state.json lacks optimizer_steps")? as usize;
        let weights = candle_core::safetensors::load(path.join(WEIGHTS_FILE), &Device::Cpu)?;
        for (name, var) in model.named_vars() {
            let w = weights.get(name).with_context(|| format!("no weights for {name}"))?;
            ensure!(w.dims() == var.as_tensor().dims(), "{name} has shape {:?}, the model {:?}", w.dims(), var.as_tensor().dims());
            var.set(&w.to_device(var.as_tensor().device())?.to_dtype(var.as_tensor().dtype())?)?;
        }
        let moments: HashMap<String, Tensor> = candle_core::safetensors::load(path.join(OPTIMIZER_FILE), &Device::Cpu)?;
        opt.load_state(optimizer_steps, &moments)?;
        Ok(Restored { step, dir: path.clone(), extra: state["extra"].clone() })
    };
    restore()
        .map(Some)
        .with_context(|| format!("cannot resume from checkpoint {}; delete it to start over", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{GradAccumulator, OptimConfig, sft_loss};
    use crate::{Conversation, ModelConfig, TokenBatch};

    fn model() -> Model {
        Model::random(ModelConfig::tiny(64), 7, &Device::Cpu).unwrap()
    }

    /// One SFT step on a batch that depends on the step (so the data position matters).
    fn step(m: &Model, opt: &mut AdamW, s: usize) {
        let conv = Conversation { ids: vec![3, 17 + s as u32, 5, 9, 22, 41, 1], score_start: 2 };
        let batch = TokenBatch::new(m, &[&conv]).unwrap();
        let mut acc = GradAccumulator::new(m);
        acc.backward(&sft_loss(m, &batch).unwrap(), m).unwrap();
        let (grads, _) = acc.take_clipped(1.0).unwrap();
        opt.step(&grads, 1e-2 / (1 + s) as f64).unwrap();
    }

    fn weights(m: &Model) -> Vec<Vec<f32>> {
        m.named_vars().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    #[test]
    fn a_run_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights() {
        let cfg = OptimConfig { weight_decay: 0.1, ..OptimConfig::default() };
        let whole = model();
        let mut opt = AdamW::new(&whole, cfg).unwrap();
        for s in 0..5 {
            step(&whole, &mut opt, s);
        }

        let dir = tempfile::tempdir().unwrap();
        let first = model();
        let mut opt = AdamW::new(&first, cfg).unwrap();
        for s in 0..2 {
            step(&first, &mut opt, s);
            save(dir.path(), s + 1, &first, &opt, &json!({"note": s + 1}), |d| Ok(std::fs::write(d.join("x"), "y")?)).unwrap();
        }
        let saved: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(saved, vec![std::ffi::OsString::from("step-00000002")], "only the latest checkpoint is kept");
        step(&first, &mut opt, 2); // lost: the process dies here

        let resumed = model();
        let mut opt = AdamW::new(&resumed, cfg).unwrap();
        assert_ne!(weights(&resumed), weights(&whole));
        let r = load_latest(dir.path(), &resumed, &mut opt).unwrap().expect("a checkpoint");
        assert_eq!((r.step, r.extra["note"].as_u64()), (2, Some(2)));
        assert_eq!(std::fs::read_to_string(r.dir.join("x")).unwrap(), "y");
        assert_eq!(opt.steps(), 2);
        for s in r.step..5 {
            step(&resumed, &mut opt, s);
        }
        assert_eq!(weights(&resumed), weights(&whole), "bit-identical to the uninterrupted run");
    }

    #[test]
    fn no_checkpoint_is_none_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = model();
        let mut opt = AdamW::new(&m, OptimConfig::default()).unwrap();
        assert!(load_latest(&dir.path().join("absent"), &m, &mut opt).unwrap().is_none());
        save(dir.path(), 1, &m, &opt, &json!({}), |_| Ok(())).unwrap();
        let other = Model::random(ModelConfig::tiny(32), 7, &Device::Cpu).unwrap();
        let mut other_opt = AdamW::new(&other, OptimConfig::default()).unwrap();
        let err = format!("{:#}", load_latest(dir.path(), &other, &mut other_opt).err().expect("a shape mismatch"));
        assert!(err.contains("step-00000001") && err.contains("delete it to start over"), "{err}");
    }
}
