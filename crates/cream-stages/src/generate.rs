//! The `generate` stage (spec step 1): N samples per prompt of this iteration's prompt subset.

use std::path::Path;

use anyhow::{Result, ensure};
use cream_core::{Artifact, ArtifactSpec, ProduceOutput, PromptRow, SampleRow, read_table, write_table};
use cream_lm::{GenRequest, SamplingParams};
use serde_json::json;

use crate::config::Pipeline;
use crate::ctx::{Ctx, params};

pub const STAGE: &str = "generate";

/// The prompts of iteration `t` (1-based): the pool split evenly across `iterations`.
pub fn iteration_prompts(pool: Vec<PromptRow>, t: usize, iterations: usize) -> Result<Vec<PromptRow>> {
    ensure!(t >= 1 && t <= iterations, "iteration {t} is outside 1..={iterations}");
    Ok(cream_algo::split_evenly(pool, iterations).swap_remove(t - 1))
}

pub fn run(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path, iteration: usize) -> Result<Artifact> {
    let prompts = ctx.open(prompts, crate::prepare::STAGE)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = ArtifactSpec {
        stage: STAGE.into(),
        schema_version: 1,
        params: json!({
            "generate": params(&p.generate)?,
            "seed": p.seed,
            "iteration": iteration,
            "iterations": p.iterations,
        }),
        inputs: vec![prompts.as_input("prompts"), model_in],
    };
    let g = p.generate.clone();
    let seed = p.seed;
    ctx.produce(spec, |dir| {
        let pool: Vec<PromptRow> = read_table(&prompts.path("pool.parquet")?)?;
        let rows = iteration_prompts(pool, iteration, p.iterations)?;
        ensure!(!rows.is_empty(), "iteration {iteration} has no prompts; enlarge the prompt pool");
        let lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        let mut reqs = Vec::with_capacity(rows.len() * g.n);
        let mut truncated = 0usize;
        for r in &rows {
            let mut ids = lm.tokenizer.encode_prompt(&r.prompt)?;
            if ids.len() > g.max_prompt_tokens {
                ids.drain(..ids.len() - g.max_prompt_tokens);
                truncated += 1;
            }
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
        let n = write_table(&dir.join("samples.parquet"), &samples)?;
        Ok(ProduceOutput {
            extra: json!({"prompts": rows.len(), "truncated_prompts": truncated, "new_tokens": new_tokens}),
            ..Default::default()
        }
        .with_rows("samples.parquet", n))
    })
}
