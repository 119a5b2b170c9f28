//! The `score` sub-stage (spec steps 2-3): S_m(x, y), the summed log-prob of the scored span,
//! for every sample under one model. It is its own artifact keyed by (samples, model), so the M0
//! scores that both judges of an iteration need, and the reference log-probs of the DPO step
//! (`train`), are computed once. Shared by `judge` and `train`, it imports neither.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use cream_core::{Artifact, ArtifactSpec, InputRef, ProduceOutput, SampleRow, ScoreRow, read_table, write_table};
use cream_lm::{Precision, ScoreOptions};
use serde_json::json;

use crate::ctx::Ctx;
use crate::names;
use crate::shard::{self, Shard};

/// Score every sample of `samples` under `model` (the unsharded [`score_shard`]).
pub fn score(ctx: &Ctx, samples: &Artifact, model: &Path, batch_tokens: usize, precision: Precision) -> Result<Artifact> {
    score_shard(ctx, samples, model, batch_tokens, precision, Shard::ALL)
}

/// The spec of the `score` artifact of `samples` under the model input `model` (shard `shard`;
/// [`Shard::ALL`] is the unsharded spec). A precision other than f32 enters the parameters;
/// f32 keeps the parameters (and so the keys) of the scores made before the fast mode existed.
pub fn score_spec(
    samples: &Artifact,
    model: InputRef,
    batch_tokens: usize,
    precision: Precision,
    shard: Shard,
) -> Result<ArtifactSpec> {
    let mut params = json!({"batch_tokens": batch_tokens});
    if !precision.is_f32() {
        params["precision"] = json!(precision.as_str());
    }
    shard.spec(&ArtifactSpec {
        stage: names::stage::SCORE.into(),
        // 2: batches never mix prompts (v1 packed samples of several prompts into one batch, so
        // a sharded run could differ from an unsharded one in the last bits).
        // 3: each prompt's prefix is run once and shared by its samples
        // (`cream_lm::score_shared_prefix`); values change in the last bits.
        schema_version: 3,
        params,
        inputs: vec![samples.as_input("samples"), model],
    })
}

/// The position of each sample's prompt: prompts numbered in order of first appearance in
/// `rows` (the order a `score` shard selects by).
fn prompt_positions(rows: &[SampleRow]) -> Vec<usize> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    rows.iter()
        .map(|r| {
            let next = first.len();
            *first.entry(r.prompt_id.as_str()).or_insert(next)
        })
        .collect()
}

/// The row indices of each prompt's samples, prompts in order of first appearance.
fn prompt_groups(rows: &[SampleRow]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, pos) in prompt_positions(rows).into_iter().enumerate() {
        if pos == groups.len() {
            groups.push(Vec::new());
        }
        groups[pos].push(i);
    }
    groups
}

/// Score the samples of `samples` under `model`; for a shard `k/n`, only the samples of the
/// prompts at positions `p` with `p % n == k`, prompts numbered in order of first appearance in
/// `samples.parquet` (their rows are the unsharded run's rows; merge with [`merge_scores`]).
pub fn score_shard(
    ctx: &Ctx,
    samples: &Artifact,
    model: &Path,
    batch_tokens: usize,
    precision: Precision,
    shard: Shard,
) -> Result<Artifact> {
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = score_spec(samples, model_in, batch_tokens, precision, shard)?;
    ctx.produce(spec, |dir| {
        let rows: Vec<SampleRow> = read_table(&samples.path(names::file::SAMPLES)?)?;
        let rows: Vec<SampleRow> = if shard.is_all() {
            rows
        } else {
            let positions = prompt_positions(&rows);
            rows.into_iter().zip(positions).filter(|(_, pos)| shard.keeps(*pos)).map(|(r, _)| r).collect()
        };
        if rows.is_empty() && !shard.is_all() {
            // More shards than prompts: this shard has nothing to do.
            ctx.log(format!("score: shard {shard} has no prompts"));
            let n = write_table::<ScoreRow>(&dir.join(names::file::SCORES), &[])?;
            return Ok(ProduceOutput::default().with_rows(names::file::SCORES, n));
        }
        let mut lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        lm.model.set_precision(precision);
        let context = lm.model.cfg.max_position_embeddings;
        let mut truncated = 0u64;
        let convs = rows
            .iter()
            .map(|r| {
                let what = || format!("{}: prompt {} sample {}", samples.dir.join(names::file::SAMPLES).display(), r.prompt_id, r.sample_idx);
                let conv = lm.tokenizer.encode_conversation(&r.prompt, &r.response).with_context(what)?;
                let conv = fit_context(conv, context).with_context(what)?;
                truncated += u64::from(conv.1);
                Ok(conv.0)
            })
            .collect::<Result<Vec<_>>>()?;
        let pb = crate::progress::bar(convs.len(), "score", ctx.quiet);
        let frozen = lm.model.frozen()?;
        let opts = ScoreOptions { max_batch_tokens: batch_tokens, ..Default::default() };
        let mut scores: Vec<Option<ScoreRow>> = vec![None; rows.len()];
        // Batches never mix prompts: the samples of one prompt are scored together (packed by
        // batch_tokens among themselves). A sample's numbers depend on the shapes of the batch it
        // is in (matrix products round differently for other row counts), so this keeps them a
        // function of its own prompt's samples: a shard (whole prompts) scores every sample in
        // exactly the batch an unsharded run uses, and the merge is bit-identical. The prompt,
        // which every sample of the group starts with, is run through the model once and its
        // keys/values are shared by the samples' rows.
        for group in prompt_groups(&rows) {
            let convs: Vec<_> = group.iter().map(|&i| convs[i].clone()).collect();
            let s = cream_lm::score_shared_prefix(&frozen, &convs, opts)?;
            for (&i, s) in group.iter().zip(s) {
                scores[i] = Some(ScoreRow {
                    prompt_id: rows[i].prompt_id.clone(),
                    sample_idx: rows[i].sample_idx,
                    sum_logprob: s.sum,
                    n_scored: s.token_logprobs.len() as u32,
                });
            }
            pb.inc(group.len() as u64);
        }
        pb.finish_and_clear();
        let scores: Vec<ScoreRow> = scores.into_iter().map(|s| s.expect("every sample is in one group")).collect();
        let n = write_table(&dir.join(names::file::SCORES), &scores)?;
        let extra = if truncated > 0 { json!({"truncated_conversations": truncated}) } else { json!(null) };
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows(names::file::SCORES, n))
    })
}

/// A conversation longer than the model's context window keeps its last `context` tokens (the
/// start of the prompt is dropped, as `generate` truncates prompts); the scored response must
/// fit with at least one prompt token before it. Returns whether it was truncated.
fn fit_context(mut conv: cream_lm::Conversation, context: usize) -> Result<(cream_lm::Conversation, bool)> {
    let len = conv.ids.len();
    if len <= context {
        return Ok((conv, false));
    }
    let drop = len - context;
    ensure!(
        conv.score_start > drop,
        "the response alone has {} tokens, more than the model's context window of {context} allows; \
         it cannot be scored (lower [generate] max_new_tokens)",
        len - conv.score_start
    );
    conv.ids.drain(..drop);
    conv.score_start -= drop;
    Ok((conv, true))
}

/// Merge the shard artifacts `shards` of a sharded [`score_shard`] run into the unsharded `score`
/// artifact of (`samples`, `model`, `batch_tokens`): the same id and the same `scores.parquet`
/// bytes as [`score`] (a cache hit if that artifact exists). The shards must be exactly `0..n`
/// of one `n`, each of the same samples, model and batch_tokens; every sample must be scored by
/// the shard that owns its prompt. The manifest `extra` records the shard ids as `merged_from`.
pub fn merge_scores(
    ctx: &Ctx,
    samples: &Artifact,
    model: &Path,
    batch_tokens: usize,
    precision: Precision,
    shards: &[&str],
) -> Result<Artifact> {
    let (model_in, _) = ctx.model_input("model", model)?;
    let spec = score_spec(samples, model_in, batch_tokens, precision, Shard::ALL)?;
    let shards = shard::open_shards(ctx, &spec, shards)?;
    ctx.produce(spec, |dir| {
        let rows: Vec<SampleRow> = read_table(&samples.path(names::file::SAMPLES)?)?;
        let positions = prompt_positions(&rows);
        let layout = shard::Layout {
            keys: rows.iter().zip(positions).map(|(r, pos)| ((r.prompt_id.clone(), r.sample_idx), pos)).collect(),
            source: format!("the samples {}", samples.dir.display()),
        };
        let scores = shard::merge_rows(
            &shards,
            names::file::SCORES,
            &layout,
            |r: &ScoreRow| (r.prompt_id.clone(), r.sample_idx),
            shard::show_sample,
        )?;
        let n = write_table(&dir.join(names::file::SCORES), &scores)?;
        Ok(ProduceOutput { extra: shard::merged_extra(&shards, &[]), ..Default::default() }
            .with_rows(names::file::SCORES, n))
    })
}

#[cfg(test)]
mod tests {
    use cream_core::{ArtifactSpec, ProduceOutput, write_table};

    use super::*;

    #[test]
    fn the_fast_mode_enters_the_score_key_and_f32_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = Ctx::new(tmp.path(), true).unwrap();
        let spec = ArtifactSpec { stage: names::stage::GENERATE.into(), schema_version: 1, params: json!({}), inputs: vec![] };
        let samples = ctx
            .produce(spec, |dir| {
                let n = write_table::<SampleRow>(&dir.join(names::file::SAMPLES), &[])?;
                Ok(ProduceOutput::default().with_rows(names::file::SAMPLES, n))
            })
            .unwrap();
        let model = InputRef { name: "model".into(), stage: "source".into(), id: "m".into() };
        let f32 = score_spec(&samples, model.clone(), 4096, Precision::F32, Shard::ALL).unwrap();
        assert_eq!(f32.params, json!({"batch_tokens": 4096}), "f32 keeps the keys made before the fast mode");
        let bf16 = score_spec(&samples, model.clone(), 4096, Precision::Bf16, Shard::ALL).unwrap();
        assert_eq!(bf16.params, json!({"batch_tokens": 4096, "precision": "bf16"}));
        assert_ne!(f32.id(), bf16.id());
        let shard = score_spec(&samples, model, 4096, Precision::Bf16, Shard::new(0, 2).unwrap()).unwrap();
        assert_ne!(shard.id(), bf16.id());
    }
}
