//! The `dpo` judge mode: the DPO implicit reward S_policy - S_ref (no beta, no length
//! normalisation), rewards against the reference model M0 (spec pitfall 1).

use std::path::Path;

use anyhow::{Result, bail};
use cream_core::{Artifact, ScoreRow};

use super::{JudgeMode, Reward, from_scores};
use crate::config::Pipeline;
use crate::ctx::Ctx;
use crate::score::score;

/// Rewards of `samples` under `policy` against `reference` (required).
pub(super) fn run(ctx: &Ctx, p: &Pipeline, samples: &Artifact, policy: &Path, reference: Option<&Path>) -> Result<Artifact> {
    let batch_tokens = p.judge.batch_tokens;
    let pol = score(ctx, samples, policy, batch_tokens, p.judge.precision)?;
    let Some(reference) = reference else {
        bail!("judge mode dpo needs a reference model (M0)");
    };
    let reference = score(ctx, samples, reference, batch_tokens, p.judge.precision)?;
    from_scores(ctx, samples, JudgeMode::Dpo, &pol, Reward::WithReference(&reference, reward))
}

/// S_policy - S_ref.
pub(super) fn reward(policy: &ScoreRow, s_ref: f64) -> f64 {
    policy.sum_logprob - s_ref
}
