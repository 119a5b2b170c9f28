//! The `score` and `judge` stages (spec steps 2-3).
//!
//! `score` computes S_m(x, y), the summed log-prob of the scored span, for every sample under one
//! model; it is its own artifact keyed by (samples, model), so the M0 scores that both judges of
//! an iteration need, and the reference log-probs of the DPO step, are computed once.
//! `judge` combines scores into rewards: `dpo` (S_policy - S_ref) or `likelihood` (mean token
//! log-prob under one model, the previous-model ranking at t = 1).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cream_core::{Artifact, ArtifactSpec, ProduceOutput, RewardRow, SampleRow, ScoreRow, read_table, write_table};
use cream_lm::ScoreOptions;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ctx::Ctx;

pub const SCORE_STAGE: &str = "score";
pub const STAGE: &str = "judge";

/// Score every sample of `samples` under `model`.
pub fn score(ctx: &Ctx, samples: &Artifact, model: &Path, batch_tokens: usize) -> Result<Artifact> {
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = ArtifactSpec {
        stage: SCORE_STAGE.into(),
        schema_version: 1,
        params: json!({"batch_tokens": batch_tokens}),
        inputs: vec![samples.as_input("samples"), model_in],
    };
    ctx.produce(spec, |dir| {
        let rows: Vec<SampleRow> = read_table(&samples.path("samples.parquet")?)?;
        let lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        let convs = rows
            .iter()
            .map(|r| {
                lm.tokenizer.encode_conversation(&r.prompt, &r.response).with_context(|| {
                    format!("samples.parquet: prompt {} sample {}", r.prompt_id, r.sample_idx)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let pb = crate::progress::bar(convs.len(), "score", ctx.quiet);
        let mut scores = Vec::with_capacity(convs.len());
        // Chunks keep the progress bar moving; results do not depend on the chunking.
        for (chunk_rows, chunk) in rows.chunks(64).zip(convs.chunks(64)) {
            let s = cream_lm::score(&lm.model, chunk, ScoreOptions { max_batch_tokens: batch_tokens, ..Default::default() })?;
            for (r, s) in chunk_rows.iter().zip(s) {
                scores.push(ScoreRow {
                    prompt_id: r.prompt_id.clone(),
                    sample_idx: r.sample_idx,
                    sum_logprob: s.sum,
                    n_scored: s.token_logprobs.len() as u32,
                });
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        let n = write_table(&dir.join("scores.parquet"), &scores)?;
        Ok(ProduceOutput::default().with_rows("scores.parquet", n))
    })
}

/// How rewards are computed from scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JudgeMode {
    /// DPO implicit reward S_policy - S_ref (no beta, no length normalisation).
    Dpo,
    /// Mean token log-likelihood under the policy alone (previous-model ranking at t = 1).
    Likelihood,
}

impl JudgeMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dpo" => Ok(JudgeMode::Dpo),
            "likelihood" => Ok(JudgeMode::Likelihood),
            "llm-judge" => bail!("judge mode llm-judge is not implemented yet; use dpo or likelihood"),
            other => bail!("unknown judge mode {other:?}; expected dpo or likelihood"),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeMode::Dpo => "dpo",
            JudgeMode::Likelihood => "likelihood",
        }
    }
}

/// Rewards of `samples` under `policy` (and `reference` for `dpo`).
pub fn run(
    ctx: &Ctx,
    samples: &str,
    mode: JudgeMode,
    policy: &Path,
    reference: Option<&Path>,
    batch_tokens: usize,
) -> Result<Artifact> {
    let samples = ctx.open(samples, crate::generate::STAGE)?;
    let pol = score(ctx, &samples, policy, batch_tokens)?;
    let reference = match (mode, reference) {
        (JudgeMode::Dpo, Some(r)) => Some(score(ctx, &samples, r, batch_tokens)?),
        (JudgeMode::Dpo, None) => bail!("judge mode dpo needs a reference model (M0)"),
        (JudgeMode::Likelihood, _) => None,
    };
    let mut inputs = vec![samples.as_input("samples"), pol.as_input("policy_scores")];
    if let Some(r) = &reference {
        inputs.push(r.as_input("reference_scores"));
    }
    let spec = ArtifactSpec { stage: STAGE.into(), schema_version: 1, params: json!({"mode": mode.as_str()}), inputs };
    ctx.produce(spec, |dir| {
        let pol_rows: Vec<ScoreRow> = read_table(&pol.path("scores.parquet")?)?;
        let ref_map: Option<HashMap<(String, u32), f64>> = match &reference {
            Some(r) => Some(
                read_table::<ScoreRow>(&r.path("scores.parquet")?)?
                    .into_iter()
                    .map(|s| ((s.prompt_id, s.sample_idx), s.sum_logprob))
                    .collect(),
            ),
            None => None,
        };
        let mut rewards = Vec::with_capacity(pol_rows.len());
        for s in pol_rows {
            ensure!(s.n_scored > 0, "scores.parquet: prompt {} sample {} has no scored tokens", s.prompt_id, s.sample_idx);
            let (s_ref, reward) = match &ref_map {
                Some(m) => {
                    let r = *m.get(&(s.prompt_id.clone(), s.sample_idx)).with_context(|| {
                        format!("reference scores lack prompt {} sample {}", s.prompt_id, s.sample_idx)
                    })?;
                    (Some(r), s.sum_logprob - r)
                }
                None => (None, s.sum_logprob / s.n_scored as f64),
            };
            rewards.push(RewardRow {
                prompt_id: s.prompt_id,
                sample_idx: s.sample_idx,
                mode: mode.as_str().into(),
                s_policy: s.sum_logprob,
                s_ref,
                n_scored: s.n_scored,
                reward,
            });
        }
        let n = write_table(&dir.join("rewards.parquet"), &rewards)?;
        Ok(ProduceOutput::default().with_rows("rewards.parquet", n))
    })
}
