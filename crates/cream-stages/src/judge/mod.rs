//! The `judge` stage (spec step 3): rewards of samples, one file per mode.
//!
//! - [`dpo`]: S_policy - S_ref from two `score` artifacts (see [`crate::score`]).
//! - [`likelihood`]: the mean token log-prob under one model (the previous-model ranking at
//!   t = 1).
//! - [`llm_judge`]: the Self-Rewarding LM baseline (Yuan et al. 2024, Fig. 2): the policy model
//!   judges each sample with an additive 5-point rubric, k sampled judgements averaged.
//!
//! This file holds what the modes share: [`JudgeMode`], the dispatch ([`run`]) and the rewards
//! artifact of the two score-based modes ([`from_scores`]).

mod dpo;
mod likelihood;
mod llm_judge;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use cream_core::{Artifact, ArtifactSpec, ProduceOutput, RewardRow, ScoreRow, read_table, write_table};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Pipeline;
use crate::ctx::Ctx;
use crate::names;

pub use llm_judge::{JUDGE_TEMPLATE, PARSER_VERSION, judge_prompt, parse_score, tie_rate};

/// How rewards are computed. As a flag (`cream-judge --mode`) each variant is spelled as
/// [`JudgeMode::as_str`] gives it (clap's kebab-case of the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum JudgeMode {
    /// DPO implicit reward S_policy - S_ref (no beta, no length normalisation).
    Dpo,
    /// Mean token log-likelihood under the policy alone (previous-model ranking at t = 1).
    Likelihood,
    /// LLM-as-a-judge: the mean of k sampled rubric scores (0-5) given by the policy model
    /// (the Self-Rewarding LM baseline).
    LlmJudge,
}

impl JudgeMode {
    /// The mode's name in artifact parameters (part of the keys: never change one).
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeMode::Dpo => "dpo",
            JudgeMode::Likelihood => "likelihood",
            JudgeMode::LlmJudge => "llm-judge",
        }
    }
}

/// Rewards of `samples` under `policy` (and `reference` for `dpo`), as `rewards.parquet`.
///
/// `dpo` and `likelihood` use `p.judge.batch_tokens` and key their artifact on the mode alone.
/// `llm-judge` ignores `reference` and uses `p.seed`, the `judge_*` fields and `judgements` of
/// `p.judge` (all in its artifact key) and `p.generate.batch_size` (not in the key: sampling is
/// batch-size independent); its artifact also holds `judgements.parquet` (see [`llm_judge`]).
pub fn run(
    ctx: &Ctx,
    p: &Pipeline,
    samples: &str,
    mode: JudgeMode,
    policy: &Path,
    reference: Option<&Path>,
) -> Result<Artifact> {
    let samples = ctx.open(samples, names::stage::GENERATE)?;
    match mode {
        JudgeMode::Dpo => dpo::run(ctx, p, &samples, policy, reference),
        JudgeMode::Likelihood => likelihood::run(ctx, p, &samples, policy),
        JudgeMode::LlmJudge => {
            if reference.is_some() {
                ctx.log("judge: mode llm-judge uses no reference model; --reference is ignored");
            }
            llm_judge::run(ctx, p, &samples, policy)
        }
    }
}

/// How a score-based mode turns a sample's scores into its reward.
enum Reward<'a> {
    /// From the policy's score and the sample's summed log-prob in the reference `score`
    /// artifact.
    WithReference(&'a Artifact, fn(&ScoreRow, f64) -> f64),
    /// From the policy's score alone.
    PolicyOnly(fn(&ScoreRow) -> f64),
}

/// The `judge` artifact of a score-based `mode`: one [`RewardRow`] per row of the policy's `score`
/// artifact `policy` (in its order), keyed by the samples, the policy scores and, where the mode
/// has one, the reference scores.
fn from_scores(ctx: &Ctx, samples: &Artifact, mode: JudgeMode, policy: &Artifact, reward: Reward) -> Result<Artifact> {
    let mut inputs = vec![samples.as_input("samples"), policy.as_input("policy_scores")];
    if let Reward::WithReference(r, _) = &reward {
        inputs.push(r.as_input("reference_scores"));
    }
    let spec = ArtifactSpec {
        stage: names::stage::JUDGE.into(),
        schema_version: 1,
        params: json!({"mode": mode.as_str()}),
        inputs,
    };
    ctx.produce(spec, |dir| {
        let pol_rows: Vec<ScoreRow> = read_table(&policy.path(names::file::SCORES)?)?;
        let ref_map: Option<HashMap<(String, u32), f64>> = match &reward {
            Reward::WithReference(r, _) => Some(
                read_table::<ScoreRow>(&r.path(names::file::SCORES)?)?
                    .into_iter()
                    .map(|s| ((s.prompt_id, s.sample_idx), s.sum_logprob))
                    .collect(),
            ),
            Reward::PolicyOnly(_) => None,
        };
        let mut rewards = Vec::with_capacity(pol_rows.len());
        for s in pol_rows {
            ensure!(s.n_scored > 0, "scores.parquet: prompt {} sample {} has no scored tokens", s.prompt_id, s.sample_idx);
            let (s_ref, value) = match (&reward, &ref_map) {
                (Reward::WithReference(_, f), Some(m)) => {
                    let r = *m.get(&(s.prompt_id.clone(), s.sample_idx)).with_context(|| {
                        format!("reference scores lack prompt {} sample {}", s.prompt_id, s.sample_idx)
                    })?;
                    (Some(r), f(&s, r))
                }
                (Reward::PolicyOnly(f), _) => (None, f(&s)),
                (Reward::WithReference(..), None) => unreachable!("reference scores are read above"),
            };
            rewards.push(RewardRow {
                prompt_id: s.prompt_id,
                sample_idx: s.sample_idx,
                mode: mode.as_str().into(),
                s_policy: s.sum_logprob,
                s_ref,
                n_scored: s.n_scored,
                reward: value,
            });
        }
        let n = write_table(&dir.join(names::file::REWARDS), &rewards)?;
        Ok(ProduceOutput::default().with_rows(names::file::REWARDS, n))
    })
}

#[cfg(test)]
mod tests {
    use cream_core::{ArtifactSpec, ProduceOutput, RewardRow, SampleRow, ScoreRow, read_table, write_table};
    use serde_json::json;

    use super::*;

    /// An artifact of `stage` holding `rows` as `file`; `case` keeps artifacts apart.
    fn artifact<T: cream_core::Table>(ctx: &Ctx, stage: &str, case: &str, file: &str, rows: &[T]) -> Artifact {
        let spec = ArtifactSpec { stage: stage.into(), schema_version: 1, params: json!({"case": case}), inputs: vec![] };
        ctx.produce(spec, |dir| {
            let n = write_table(&dir.join(file), rows)?;
            Ok(ProduceOutput::default().with_rows(file, n))
        })
        .unwrap()
    }

    fn scores(ctx: &Ctx, case: &str, rows: &[(u32, f64, u32)]) -> Artifact {
        let rows: Vec<ScoreRow> = rows
            .iter()
            .map(|&(k, sum, n)| ScoreRow { prompt_id: "p".into(), sample_idx: k, sum_logprob: sum, n_scored: n })
            .collect();
        artifact(ctx, names::stage::SCORE, case, names::file::SCORES, &rows)
    }

    #[test]
    fn score_based_modes_turn_scores_into_rewards() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = Ctx::new(tmp.path(), true).unwrap();
        let samples = artifact::<SampleRow>(&ctx, names::stage::GENERATE, "s", names::file::SAMPLES, &[]);
        let policy = scores(&ctx, "policy", &[(0, -10.0, 5), (1, -4.0, 2)]);
        // The reference table in another order: rewards are matched by key.
        let reference = scores(&ctx, "reference", &[(1, -5.0, 2), (0, -12.0, 5)]);
        let rewards = |a: &Artifact| -> Vec<(Option<f64>, f64, String)> {
            read_table::<RewardRow>(&a.path(names::file::REWARDS).unwrap())
                .unwrap()
                .into_iter()
                .map(|r| (r.s_ref, r.reward, r.mode))
                .collect()
        };
        let dpo = from_scores(&ctx, &samples, JudgeMode::Dpo, &policy, Reward::WithReference(&reference, dpo::reward))
            .unwrap();
        assert_eq!(rewards(&dpo), [(Some(-12.0), 2.0, "dpo".into()), (Some(-5.0), 1.0, "dpo".into())]);
        assert_eq!(dpo.manifest.params, json!({"mode": "dpo"}));
        let roles: Vec<&str> = dpo.manifest.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(roles, ["samples", "policy_scores", "reference_scores"]);

        let lik = from_scores(&ctx, &samples, JudgeMode::Likelihood, &policy, Reward::PolicyOnly(likelihood::reward))
            .unwrap();
        assert_eq!(rewards(&lik), [(None, -2.0, "likelihood".into()), (None, -2.0, "likelihood".into())]);
        assert_eq!(lik.manifest.inputs.len(), 2);

        let partial = scores(&ctx, "partial", &[(0, -12.0, 5)]);
        let err = from_scores(&ctx, &samples, JudgeMode::Dpo, &policy, Reward::WithReference(&partial, dpo::reward))
            .unwrap_err();
        assert!(format!("{err:#}").contains("reference scores lack prompt p sample 1"), "{err:#}");
        let empty = scores(&ctx, "empty", &[(0, 0.0, 0)]);
        let err = from_scores(&ctx, &samples, JudgeMode::Likelihood, &empty, Reward::PolicyOnly(likelihood::reward))
            .unwrap_err();
        assert!(format!("{err:#}").contains("prompt p sample 0 has no scored tokens"), "{err:#}");
    }
}
