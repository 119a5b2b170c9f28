//! The `likelihood` judge mode: the mean token log-prob of a sample under one model, the
//! previous-model ranking at t = 1 (where there is no earlier DPO model).

use std::path::Path;

use anyhow::Result;
use cream_core::{Artifact, ScoreRow};

use super::{JudgeMode, Reward, from_scores};
use crate::config::Pipeline;
use crate::ctx::Ctx;
use crate::score::score;

/// Rewards of `samples` under `policy` alone.
pub(super) fn run(ctx: &Ctx, p: &Pipeline, samples: &Artifact, policy: &Path) -> Result<Artifact> {
    let pol = score(ctx, samples, policy, p.judge.batch_tokens, p.judge.precision)?;
    from_scores(ctx, samples, JudgeMode::Likelihood, &pol, Reward::PolicyOnly(reward))
}

/// S / (number of scored tokens); `from_scores` has checked that there is at least one.
pub(super) fn reward(policy: &ScoreRow) -> f64 {
    policy.sum_logprob / policy.n_scored as f64
}
