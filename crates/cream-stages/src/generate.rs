//! The `generate` stage (spec step 1): N samples per prompt of this iteration's prompt subset.

use std::path::Path;

use anyhow::{Result, ensure};
use cream_core::{Artifact, ArtifactSpec, InputRef, ProduceOutput, PromptRow, SampleRow, read_table, write_table};
use cream_lm::{GenRequest, SamplingParams};
use serde_json::json;

use crate::config::Pipeline;
use crate::ctx::{Ctx, params};
use crate::names;
use crate::shard::{self, Shard};

/// The prompts of iteration `t` (1-based): the pool split across `iterations` stratified by task,
/// so every iteration gets the same task mix (each task's prompts, in pool order, split evenly).
pub fn iteration_prompts(pool: Vec<PromptRow>, t: usize, iterations: usize) -> Result<Vec<PromptRow>> {
    ensure!(t >= 1 && t <= iterations, "iteration {t} is outside 1..={iterations}");
    Ok(cream_algo::split_stratified(pool, iterations, |r| r.task.as_str()).swap_remove(t - 1))
}

/// Output schema version: 2 since iterations take a stratified share of every task (version 1
/// took consecutive chunks of the pool, one task per iteration on small pools).
const SCHEMA_VERSION: u32 = 2;

/// The spec of iteration `iteration`'s `generate` artifact from `prompts` and the model input
/// `model` (shard `shard`; [`Shard::ALL`] is the unsharded spec).
pub fn spec(p: &Pipeline, prompts: &Artifact, model: InputRef, iteration: usize, shard: Shard) -> Result<ArtifactSpec> {
    let spec = ArtifactSpec {
        stage: names::stage::GENERATE.into(),
        schema_version: SCHEMA_VERSION,
        params: json!({
            "generate": params(&p.generate)?,
            "seed": p.seed,
            "iteration": iteration,
            "iterations": p.iterations,
        }),
        inputs: vec![prompts.as_input("prompts"), model],
    };
    shard.spec(&spec)
}

/// Statistics of the manifest `extra` that a merge sums over the shards.
const SUMMED_EXTRA: [&str; 3] = ["prompts", "truncated_prompts", "new_tokens"];

/// Sample `[generate] n` responses for each prompt of iteration `iteration`'s prompt subset, or,
/// for a shard `k/n`, for the prompts at positions `p` of that subset with `p % n == k` (their
/// rows are the unsharded run's rows for those prompts; merge the shards with [`merge`]).
pub fn run(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path, iteration: usize, shard: Shard) -> Result<Artifact> {
    let prompts = ctx.open(prompts, names::stage::PREPARE)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = spec(p, &prompts, model_in, iteration, shard)?;
    let g = p.generate.clone();
    let seed = p.seed;
    ctx.produce(spec, |dir| {
        let pool_file = prompts.path(names::file::POOL)?;
        let pool: Vec<PromptRow> = read_table(&pool_file)?;
        let pool_rows = pool.len();
        let rows = iteration_prompts(pool, iteration, p.iterations)?;
        ensure!(
            !rows.is_empty(),
            "{}: iteration {iteration} has no prompts ({pool_rows} prompts split over {} iterations); \
             enlarge the prompt pool ([data] in the pipeline config) or lower `iterations`",
            pool_file.display(),
            p.iterations
        );
        let rows: Vec<PromptRow> =
            rows.into_iter().enumerate().filter(|(pos, _)| shard.keeps(*pos)).map(|(_, r)| r).collect();
        if rows.is_empty() {
            // More shards than prompts: this shard has nothing to do.
            ctx.log(format!("generate: shard {shard} has no prompts"));
            let n = write_table::<SampleRow>(&dir.join(names::file::SAMPLES), &[])?;
            return Ok(ProduceOutput {
                extra: json!({"prompts": 0, "truncated_prompts": 0, "new_tokens": 0}),
                ..Default::default()
            }
            .with_rows(names::file::SAMPLES, n));
        }
        let mut lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        lm.model.set_precision(g.precision);
        let mut reqs = Vec::with_capacity(rows.len() * g.n);
        let mut truncated = 0usize;
        let context = lm.model.cfg.max_position_embeddings;
        for r in &rows {
            let mut ids = lm.tokenizer.encode_prompt(&r.prompt)?;
            if ids.len() > g.max_prompt_tokens {
                ids.drain(..ids.len() - g.max_prompt_tokens);
                truncated += 1;
            }
            ensure!(
                ids.len() + g.max_new_tokens <= context,
                "{}: prompt {} has {} tokens (after truncation to [generate] max_prompt_tokens = {}); \
                 with max_new_tokens = {} that exceeds the model's context window of {context} tokens; \
                 lower [generate] max_prompt_tokens or max_new_tokens",
                prompts.dir.join(names::file::POOL).display(),
                r.prompt_id,
                ids.len(),
                g.max_prompt_tokens,
                g.max_new_tokens
            );
            for k in 0..g.n as u32 {
                let seed = cream_lm::rng::sample_seed(seed, &r.prompt_id, k);
                reqs.push(GenRequest { prompt_ids: ids.clone(), seed });
            }
        }
        let params = SamplingParams { temperature: g.temperature, top_p: g.top_p, max_new_tokens: g.max_new_tokens };
        let pb = crate::progress::bar(reqs.len(), "generate", ctx.quiet);
        let outs = cream_lm::generate(&lm.model, lm.tokenizer.stop_ids(), &reqs, &params, g.batch_size, &mut |n| {
            pb.set_position(n as u64)
        })?;
        pb.finish_and_clear();
        let stops = lm.tokenizer.stop_ids();
        let mut samples = Vec::with_capacity(outs.len());
        let mut new_tokens = 0u64;
        for (i, (req, out)) in reqs.iter().zip(&outs).enumerate() {
            let row = &rows[i / g.n];
            let text_ids: Vec<u32> = out.tokens.iter().copied().filter(|t| !stops.contains(t)).collect();
            let mut token_ids = req.prompt_ids.clone();
            token_ids.extend(&out.tokens);
            new_tokens += out.tokens.len() as u64;
            samples.push(SampleRow {
                prompt_id: row.prompt_id.clone(),
                sample_idx: (i % g.n) as u32,
                prompt: row.prompt.clone(),
                response: lm.tokenizer.decode(&text_ids)?,
                token_ids,
                prompt_tokens: req.prompt_ids.len() as u32,
                response_tokens: out.tokens.len() as u32,
                finish_reason: out.finish.as_str().into(),
                seed: req.seed,
            });
        }
        let n = write_table(&dir.join(names::file::SAMPLES), &samples)?;
        Ok(ProduceOutput {
            extra: json!({"prompts": rows.len(), "truncated_prompts": truncated, "new_tokens": new_tokens}),
            ..Default::default()
        }
        .with_rows(names::file::SAMPLES, n))
    })
}

/// Merge the shard artifacts `shards` of a `--shard K/N` generate run into the unsharded artifact
/// of (`p`, `prompts`, `model`, `iteration`): the same id and the same `samples.parquet` bytes
/// as [`run`] with [`Shard::ALL`] (a cache hit if that artifact exists). The shards must be
/// exactly `0..n` of one `n`, each of the same config and inputs; every prompt of the iteration
/// must have its `[generate] n` samples in the shard that owns it. The manifest `extra` records
/// the shard ids as `merged_from`.
pub fn merge(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path, iteration: usize, shards: &[&str]) -> Result<Artifact> {
    let prompts = ctx.open(prompts, names::stage::PREPARE)?;
    let (model_in, _) = ctx.model_input("model", model)?;
    let spec = spec(p, &prompts, model_in, iteration, Shard::ALL)?;
    let shards = shard::open_shards(ctx, &spec, shards)?;
    let n = p.generate.n;
    ctx.produce(spec, |dir| {
        let pool: Vec<PromptRow> = read_table(&prompts.path(names::file::POOL)?)?;
        let rows = iteration_prompts(pool, iteration, p.iterations)?;
        let layout = shard::Layout {
            // Row pos * n + k of the unsharded table: sample k of the prompt at position pos.
            keys: rows
                .iter()
                .enumerate()
                .flat_map(|(pos, r)| (0..n as u32).map(move |k| ((r.prompt_id.clone(), k), pos)))
                .collect(),
            source: format!("the [generate] n = {n} samples of each prompt of iteration {iteration}"),
        };
        let samples = shard::merge_rows(
            &shards,
            names::file::SAMPLES,
            &layout,
            |r: &SampleRow| (r.prompt_id.clone(), r.sample_idx),
            shard::show_sample,
        )?;
        let count = write_table(&dir.join(names::file::SAMPLES), &samples)?;
        Ok(ProduceOutput { extra: shard::merged_extra(&shards, &SUMMED_EXTRA), ..Default::default() }
            .with_rows(names::file::SAMPLES, count))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(task: &str, i: usize) -> PromptRow {
        PromptRow {
            prompt_id: format!("{task}-{i}"),
            source: task.into(),
            task: task.into(),
            prompt: format!("question {i}"),
            answer: None,
        }
    }

    /// Every iteration gets the same share of every task (prepare writes the pool task by task).
    #[test]
    fn every_iteration_gets_every_task_in_the_same_share() {
        for (n_gsm, n_siqa, iterations) in [(4, 4, 2), (128, 128, 2), (96, 96, 3), (10, 30, 3)] {
            let pool: Vec<PromptRow> =
                (0..n_gsm).map(|i| row("gsm8k", i)).chain((0..n_siqa).map(|i| row("socialiqa", i))).collect();
            let mut seen = std::collections::HashSet::new();
            for t in 1..=iterations {
                let rows = iteration_prompts(pool.clone(), t, iterations).unwrap();
                for (task, n) in [("gsm8k", n_gsm), ("socialiqa", n_siqa)] {
                    let got = rows.iter().filter(|r| r.task == task).count();
                    let want = n as f64 / iterations as f64;
                    assert!((got as f64 - want).abs() < 1.0, "iteration {t}: {got} {task} prompts, want ~{want}");
                }
                for r in rows {
                    assert!(seen.insert(r.prompt_id.clone()), "{} in two iterations", r.prompt_id);
                }
            }
            assert_eq!(seen.len(), n_gsm + n_siqa, "every prompt in some iteration");
        }
    }
}
