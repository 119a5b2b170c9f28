//! The `train` stage: SFT (M0 -> M1) and consistency-regularised DPO (M_t -> M_{t+1}).
//!
//! Output: a model in Hugging Face layout (model.safetensors + config.json + tokenizer files)
//! plus `metrics.parquet` (one row per optimizer step). The DPO reference log-probs are the
//! `score` artifact of (samples, M_t): the same artifact the current-model judge produced, so
//! they are computed once and a rerun reuses them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use cream_core::{Artifact, ArtifactSpec, MetricRow, PairRow, PromptRow, ProduceOutput, ScoreRow, read_table, write_table};
use cream_lm::train::{AdamW, DpoBatch, GradAccumulator, dpo_loss, lr_at, sft_loss};
use cream_lm::{Conversation, LoadedModel, TokenBatch};
use serde_json::json;

use crate::config::{Pipeline, TrainSection};
use crate::ctx::{Ctx, params};

pub const STAGE: &str = "train";

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
    for step in 0..total {
        let started = Instant::now();
        let idx = step_indices(keys, t, step);
        let (mut loss, mut margins, mut tokens) = (0.0, Vec::new(), 0usize);
        for chunk in idx.chunks(t.micro_batch) {
            let m = micro(chunk, chunk.len() as f64 / idx.len() as f64, &mut acc)?;
            if !m.loss.is_finite() {
                bail!(
                    "{what}: the loss became {} at step {step}; training stopped and nothing was \
                     published (the input model is unchanged). Lower the learning rate.",
                    m.loss
                );
            }
            loss += m.loss;
            margins.extend(m.margins);
            tokens += m.tokens;
        }
        let (grads, grad_norm) = acc.take_clipped(optim.max_grad_norm)?;
        let lr = lr_at(&optim, step, total);
        opt.step(&grads, lr)?;
        let secs = started.elapsed().as_secs_f64();
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
            tokens_per_s: tokens as f64 / secs,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(metrics)
}

fn publish(lm: &LoadedModel, metrics: &[MetricRow], dir: &Path) -> Result<ProduceOutput> {
    cream_lm::save_hf_dir(&lm.model, &lm.tokenizer, dir)?;
    let n = write_table(&dir.join("metrics.parquet"), metrics)?;
    let last = metrics.last().map(|m| m.loss).unwrap_or(f64::NAN);
    Ok(ProduceOutput { extra: json!({"steps": metrics.len(), "final_loss": last}), ..Default::default() }
        .with_rows("metrics.parquet", n))
}

fn load_train_model(path: &Path) -> Result<LoadedModel> {
    cream_lm::load(path, &cream_lm::default_device()?)
}

/// SFT on the `prepare` artifact's sft.parquet: cross-entropy on response tokens only.
pub fn sft(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path) -> Result<Artifact> {
    let prompts = ctx.open(prompts, crate::prepare::STAGE)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = ArtifactSpec {
        stage: STAGE.into(),
        schema_version: 1,
        params: json!({"mode": "sft", "train": params(&p.sft)?}),
        inputs: vec![prompts.as_input("data"), model_in],
    };
    let t = p.sft.clone();
    ctx.produce(spec, |dir| {
        let rows: Vec<PromptRow> = read_table(&prompts.path("sft.parquet")?)?;
        let lm = load_train_model(&model_path)?;
        let convs: Vec<Conversation> = rows
            .iter()
            .map(|r| {
                let answer = r.answer.as_deref().with_context(|| {
                    format!("sft.parquet: row {} has no reference response in `answer`", r.prompt_id)
                })?;
                lm.tokenizer.encode_conversation(&r.prompt, answer)
            })
            .collect::<Result<_>>()?;
        let keys: Vec<String> = rows.iter().map(|r| r.prompt_id.clone()).collect();
        let metrics = optimize(ctx, &lm, &keys, &t, "sft", |idx, weight, acc| {
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
    let pairs = ctx.open(pairs, "pair")?;
    let samples_ref = pairs
        .manifest
        .inputs
        .iter()
        .find(|i| i.name == "samples")
        .with_context(|| format!("pair artifact {} names no samples input", pairs.dir.display()))?;
    let samples = ctx.open(&format!("{}/{}", samples_ref.stage, samples_ref.id), crate::generate::STAGE)?;
    // Reference log-probs: S_{M_t} of every sample, the artifact the current-model judge made.
    let reference = crate::judge::score(ctx, &samples, model, p.judge.batch_tokens)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = ArtifactSpec {
        stage: STAGE.into(),
        schema_version: 1,
        params: json!({"mode": "dpo", "train": params(&p.train)?}),
        inputs: vec![pairs.as_input("pairs"), reference.as_input("reference_scores"), model_in],
    };
    let t = p.train.clone();
    ctx.produce(spec, |dir| {
        let rows: Vec<PairRow> = read_table(&pairs.path("pairs.parquet")?)?;
        ensure!(!rows.is_empty(), "{}: no preference pairs to train on", pairs.dir.display());
        let ref_s: HashMap<(String, u32), f64> = read_table::<ScoreRow>(&reference.path("scores.parquet")?)?
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
        let metrics = optimize(ctx, &lm, &keys, &t, "dpo", |idx, weight, acc| {
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
