//! The `train` stage: SFT (M0 -> M1) and consistency-regularised DPO (M_t -> M_{t+1}).
//!
//! Output: a model in Hugging Face layout (model.safetensors + config.json + tokenizer files)
//! plus `metrics.parquet` (one row per optimizer step). The DPO reference log-probs are the
//! `score` artifact of (samples, M_t): the same artifact the current-model judge produced, so
//! they are computed once and a rerun reuses them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cream_core::{Artifact, ArtifactSpec, MetricRow, PairRow, PromptRow, ProduceOutput, ScoreRow, read_table, write_table};
use cream_lm::train::{AdamW, DpoBatch, GradAccumulator, dpo_loss, lr_at, sft_loss};
use cream_lm::{Conversation, LoadedModel, TokenBatch};
use serde_json::json;

use crate::config::{Pipeline, TrainSection};
use crate::ctx::{Ctx, params};
use crate::names;

/// Optimizer steps for `n` examples: ceil(n / global_batch) per epoch, capped by `max_steps`.
pub fn total_steps(n: usize, t: &TrainSection) -> usize {
    let steps = t.epochs * n.div_ceil(t.global_batch);
    if t.max_steps > 0 { steps.min(t.max_steps) } else { steps }
}

/// The examples of optimizer step `step`: epochs visit the examples in a deterministic
/// per-epoch shuffle (a salted hash of the example key).
fn step_indices(keys: &[String], t: &TrainSection, step: usize) -> Vec<usize> {
    let per_epoch = keys.len().div_ceil(t.global_batch);
    let epoch = step / per_epoch;
    let mut order: Vec<usize> = (0..keys.len()).collect();
    let salt = format!("epoch-{epoch}");
    order.sort_by(|&a, &b| {
        cream_algo::hash_fraction(&keys[a], &salt).total_cmp(&cream_algo::hash_fraction(&keys[b], &salt))
    });
    let start = (step % per_epoch) * t.global_batch;
    order[start..(start + t.global_batch).min(keys.len())].to_vec()
}

/// What one micro-batch contributes to a step's metrics.
struct Micro {
    loss: f64,
    margins: Vec<f64>,
    tokens: usize,
}

/// The shared optimizer loop: `micro(indices, weight)` backpropagates a micro-batch's loss
/// (scaled by `weight`, its share of the step) into the accumulator and returns its metrics.
fn optimize(
    ctx: &Ctx,
    lm: &LoadedModel,
    keys: &[String],
    t: &TrainSection,
    what: &str,
    dirs: &RunDirs,
    mut micro: impl FnMut(&[usize], f64, &mut GradAccumulator) -> Result<Micro>,
) -> Result<Vec<MetricRow>> {
    let total = total_steps(keys.len(), t);
    ensure!(total > 0, "{what}: no training examples");
    let optim = t.optim();
    let mut opt = AdamW::new(&lm.model, optim)?;
    let mut acc = GradAccumulator::new(&lm.model);
    let pb = crate::progress::bar(total, what, ctx.quiet);
    let per_epoch = keys.len().div_ceil(t.global_batch);
    let mut metrics = Vec::with_capacity(total);
    // The weights of the last step whose loss and gradients were finite (None: the input model).
    let mut last_good: Option<(usize, Vec<candle_core::Tensor>)> = None;
    let mut start = 0;
    if let Some(r) = cream_lm::checkpoint::load_latest(&dirs.checkpoints, &lm.model, &mut opt)? {
        ensure!(
            r.step < total && r.extra["total_steps"].as_u64() == Some(total as u64),
            "checkpoint {} was taken at step {} of {:?} steps, this run has {total}; delete it to start over",
            r.dir.display(),
            r.step,
            r.extra["total_steps"]
        );
        metrics = read_table(&r.dir.join(names::file::METRICS))?;
        ensure!(metrics.len() == r.step, "checkpoint {}: {} metric rows for step {}", r.dir.display(), metrics.len(), r.step);
        ctx.log(format!("{what}: resuming after step {} of {total} from {}", r.step, r.dir.display()));
        start = r.step;
        last_good = Some((start - 1, weight_copy(lm)?));
        pb.inc(start as u64);
    }
    for step in start..total {
        let idx = step_indices(keys, t, step);
        let (mut loss, mut margins, mut tokens) = (0.0, Vec::new(), 0usize);
        for chunk in idx.chunks(t.micro_batch) {
            let m = micro(chunk, chunk.len() as f64 / idx.len() as f64, &mut acc)?;
            if !m.loss.is_finite() {
                return Err(diverged(lm, what, step, &format!("the loss became {}", m.loss), last_good, &dirs.recovery));
            }
            loss += m.loss;
            margins.extend(m.margins);
            tokens += m.tokens;
        }
        // take_clipped refuses a non-finite gradient norm ("training diverged").
        let (grads, grad_norm) = match acc.take_clipped(optim.max_grad_norm) {
            Ok(g) => g,
            Err(e) => return Err(diverged(lm, what, step, &format!("{e:#}"), last_good, &dirs.recovery)),
        };
        if step + 1 < total {
            // Only needed if a later step diverges; a copy, since the update writes in place.
            last_good = Some((step, weight_copy(lm)?));
        }
        let lr = lr_at(&optim, step, total);
        opt.step(&grads, lr)?;
        let n = margins.len().max(1) as f64;
        metrics.push(MetricRow {
            step: step as u64,
            epoch: (step + 1) as f64 / per_epoch as f64,
            loss,
            reward_margin: margins.iter().sum::<f64>() / n,
            reward_accuracy: margins.iter().filter(|&&m| m > 0.0).count() as f64 / n,
            grad_norm,
            lr,
            tokens: tokens as u64,
        });
        pb.inc(1);
        let done = step + 1;
        if t.checkpoint_every > 0 && done % t.checkpoint_every == 0 && done < total {
            cream_lm::checkpoint::save(&dirs.checkpoints, done, &lm.model, &opt, &json!({"total_steps": total}), |d| {
                write_table(&d.join(names::file::METRICS), &metrics).map(|_| ())
            })?;
        }
    }
    pb.finish_and_clear();
    Ok(metrics)
}

/// A copy of the model's weights (the update writes in place).
fn weight_copy(lm: &LoadedModel) -> Result<Vec<candle_core::Tensor>> {
    Ok(lm.model.named_vars().iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
}

/// Where a training run keeps what outlives a failure: the last good weights of a diverged run
/// ([`cream_core::Store::recovery_dir`]) and the checkpoints that let a killed run resume
/// ([`cream_core::Store::checkpoint_dir`]; removed once the model is published).
struct RunDirs {
    recovery: PathBuf,
    checkpoints: PathBuf,
}

impl RunDirs {
    fn new(ctx: &Ctx, spec: &ArtifactSpec) -> Self {
        RunDirs { recovery: ctx.store.recovery_dir(spec), checkpoints: ctx.store.checkpoint_dir(spec) }
    }

    /// Produce `spec` with `work`, then drop the checkpoints (the published model supersedes them).
    fn produce(self, ctx: &Ctx, spec: ArtifactSpec, work: impl FnOnce(&Path, &RunDirs) -> Result<ProduceOutput>) -> Result<Artifact> {
        let a = ctx.produce(spec, |dir| work(dir, &self))?;
        if self.checkpoints.exists() {
            std::fs::remove_dir_all(&self.checkpoints)
                .with_context(|| format!("cannot remove the finished run's checkpoints {}", self.checkpoints.display()))?;
        }
        Ok(a)
    }
}

/// The error of a training run that diverged at `step`. Nothing is published; the weights of the
/// last good step (`last_good`: the weights its finite loss was computed on) are saved in Hugging
/// Face layout into `recovery` (see [`cream_core::Store::recovery_dir`]), which the error names.
fn diverged(
    lm: &LoadedModel,
    what: &str,
    step: usize,
    problem: &str,
    last_good: Option<(usize, Vec<candle_core::Tensor>)>,
    recovery: &Path,
) -> anyhow::Error {
    let head = format!("{what}: {problem} at step {step}; training stopped and nothing was published");
    let Some((good, weights)) = last_good else {
        return anyhow::anyhow!("{head}. The input model is the last good state (unchanged). Lower the learning rate.");
    };
    let saved = (|| -> Result<()> {
        for ((_, var), w) in lm.model.named_vars().iter().zip(&weights) {
            var.set(w)?;
        }
        if recovery.exists() {
            std::fs::remove_dir_all(recovery).with_context(|| format!("cannot replace {}", recovery.display()))?;
        }
        std::fs::create_dir_all(recovery).with_context(|| format!("cannot create {}", recovery.display()))?;
        cream_lm::save_hf_dir(&lm.model, &lm.tokenizer, recovery)
    })();
    match saved {
        Ok(()) => anyhow::anyhow!(
            "{head}. The last good weights (those of step {good}, the last with a finite loss) are \
             saved in {} (a Hugging Face model directory, usable as --model). Lower the learning rate.",
            recovery.display()
        ),
        Err(e) => anyhow::anyhow!("{head}. Saving the last good weights (step {good}) failed: {e:#}"),
    }
}

fn publish(lm: &LoadedModel, metrics: &[MetricRow], dir: &Path) -> Result<ProduceOutput> {
    cream_lm::save_hf_dir(&lm.model, &lm.tokenizer, dir)?;
    let n = write_table(&dir.join(names::file::METRICS), metrics)?;
    let last = metrics.last().map(|m| m.loss).unwrap_or(f64::NAN);
    Ok(ProduceOutput { extra: json!({"steps": metrics.len(), "final_loss": last}), ..Default::default() }
        .with_rows(names::file::METRICS, n))
}

fn load_train_model(path: &Path) -> Result<LoadedModel> {
    cream_lm::load(path, &cream_lm::default_device()?)
}

/// SFT on the `prepare` artifact's sft.parquet: cross-entropy on response tokens only.
pub fn sft(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path) -> Result<Artifact> {
    let prompts = ctx.open(prompts, names::stage::PREPARE)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = ArtifactSpec {
        stage: names::stage::TRAIN.into(),
        // 2: metrics.parquet v2 (no wall-clock column).
        schema_version: 2,
        params: json!({"mode": "sft", "train": params(&p.sft)?}),
        inputs: vec![prompts.as_input("data"), model_in],
    };
    let t = p.sft.clone();
    RunDirs::new(ctx, &spec).produce(ctx, spec, |dir, dirs| {
        let rows: Vec<PromptRow> = read_table(&prompts.path(names::file::SFT)?)?;
        let lm = load_train_model(&model_path)?;
        let convs: Vec<Conversation> = rows
            .iter()
            .map(|r| {
                let answer = r.answer.as_deref().with_context(|| {
                    format!("sft.parquet: row {} has no reference response in `answer`", r.prompt_id)
                })?;
                let conv = lm.tokenizer.encode_conversation(&r.prompt, answer)?;
                let context = lm.model.cfg.max_position_embeddings;
                ensure!(
                    conv.ids.len() <= context,
                    "{}: row {}: prompt + answer are {} tokens, more than the model's context window \
                     of {context}; shorten or drop that SFT example",
                    prompts.dir.join(names::file::SFT).display(),
                    r.prompt_id,
                    conv.ids.len()
                );
                Ok(conv)
            })
            .collect::<Result<_>>()?;
        let keys: Vec<String> = rows.iter().map(|r| r.prompt_id.clone()).collect();
        let metrics = optimize(ctx, &lm, &keys, &t, "sft", dirs, |idx, weight, acc| {
            let batch_convs: Vec<&Conversation> = idx.iter().map(|&i| &convs[i]).collect();
            let batch = TokenBatch::new(&lm.model, &batch_convs)?;
            let loss = sft_loss(&lm.model, &batch)?;
            acc.backward(&(&loss * weight)?, &lm.model)?;
            Ok(Micro {
                loss: loss.to_scalar::<f32>()? as f64 * weight,
                margins: vec![],
                tokens: batch_convs.iter().map(|c| c.ids.len()).sum(),
            })
        })?;
        publish(&lm, &metrics, dir)
    })
}

/// DPO on a `pair` artifact, starting from (and referenced to) `model` = M_t.
pub fn dpo(ctx: &Ctx, p: &Pipeline, pairs: &str, model: &Path) -> Result<Artifact> {
    let pairs = ctx.open(pairs, names::stage::PAIR)?;
    let samples_ref = pairs
        .manifest
        .inputs
        .iter()
        .find(|i| i.name == "samples")
        .with_context(|| format!("pair artifact {} names no samples input", pairs.dir.display()))?;
    let samples = ctx.open(&format!("{}/{}", samples_ref.stage, samples_ref.id), names::stage::GENERATE)?;
    // Reference log-probs: S_{M_t} of every sample, the artifact the current-model judge made.
    let reference = crate::score::score(ctx, &samples, model, p.judge.batch_tokens, cream_lm::Precision::F32)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = ArtifactSpec {
        stage: names::stage::TRAIN.into(),
        // 2: metrics.parquet v2 (no wall-clock column).
        schema_version: 2,
        params: json!({"mode": "dpo", "train": params(&p.train)?}),
        inputs: vec![pairs.as_input("pairs"), reference.as_input("reference_scores"), model_in],
    };
    let t = p.train.clone();
    RunDirs::new(ctx, &spec).produce(ctx, spec, |dir, dirs| {
        let rows: Vec<PairRow> = read_table(&pairs.path(names::file::PAIRS)?)?;
        ensure!(!rows.is_empty(), "{}: no preference pairs to train on", pairs.dir.display());
        let ref_s: HashMap<(String, u32), f64> = read_table::<ScoreRow>(&reference.path(names::file::SCORES)?)?
            .into_iter()
            .map(|s| ((s.prompt_id, s.sample_idx), s.sum_logprob))
            .collect();
        let lookup = |id: &str, k: u32| -> Result<f64> {
            ref_s.get(&(id.to_string(), k)).copied().with_context(|| {
                format!("reference scores lack prompt {id} sample {k}; the pairs and samples disagree")
            })
        };
        let lm = load_train_model(&model_path)?;
        let mut chosen = Vec::with_capacity(rows.len());
        let mut rejected = Vec::with_capacity(rows.len());
        let mut ref_c = Vec::with_capacity(rows.len());
        let mut ref_r = Vec::with_capacity(rows.len());
        for r in &rows {
            ensure!((0.0..=1.0).contains(&r.c), "pairs.parquet: prompt {} has C = {} outside [0, 1]", r.prompt_id, r.c);
            chosen.push(lm.tokenizer.encode_conversation(&r.prompt, &r.chosen)?);
            rejected.push(lm.tokenizer.encode_conversation(&r.prompt, &r.rejected)?);
            ref_c.push(lookup(&r.prompt_id, r.chosen_idx)?);
            ref_r.push(lookup(&r.prompt_id, r.rejected_idx)?);
        }
        let keys: Vec<String> = rows.iter().map(|r| r.prompt_id.clone()).collect();
        let metrics = optimize(ctx, &lm, &keys, &t, "dpo", dirs, |idx, weight, acc| {
            let pick = |v: &[Conversation]| idx.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
            let (cc, rc) = (pick(&chosen), pick(&rejected));
            let cb = TokenBatch::new(&lm.model, &cc.iter().collect::<Vec<_>>())?;
            let rb = TokenBatch::new(&lm.model, &rc.iter().collect::<Vec<_>>())?;
            let f = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let cs: Vec<f64> = idx.iter().map(|&i| rows[i].c).collect();
            let out = dpo_loss(
                &lm.model,
                &DpoBatch { chosen: &cb, rejected: &rb, ref_chosen: &f(&ref_c), ref_rejected: &f(&ref_r), c: &cs },
                t.beta,
            )?;
            acc.backward(&(&out.loss * weight)?, &lm.model)?;
            let tokens = cc.iter().chain(&rc).map(|c| c.ids.len()).sum();
            Ok(Micro { loss: out.loss.to_scalar::<f32>()? as f64 * weight, margins: out.margins, tokens })
        })?;
        publish(&lm, &metrics, dir)
    })
}
