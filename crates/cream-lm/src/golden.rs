//! The golden reference vectors of `../shared/golden/` (computed with PyTorch/transformers on the
//! default model): parsing, and the checks that the tests and `cream-bench golden` run on them.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::score::{ScoreOptions, TokenBatch};
use crate::tokenizer::{Conversation, Message};
use crate::train::{DpoBatch, GradAccumulator, dpo_loss};
use crate::LoadedModel;

/// Tolerances the golden checks are held to (f32 on CPU).
pub const TOKEN_LOGPROB_TOL: f64 = 2e-4;
pub const SUM_LOGPROB_TOL: f64 = 1e-3;
pub const DPO_LOSS_TOL: f64 = 1e-4;
/// Relative to the largest |gradient| of the probed slice; elements under 1e-7 absolute pass.
pub const DPO_GRAD_REL_TOL: f64 = 1e-4;

/// Read one golden JSON file.
pub fn read(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the golden file (they live in ../shared/golden)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub fn u32s(v: &Value) -> Result<Vec<u32>> {
    v.as_array()
        .context("golden: expected an array of integers")?
        .iter()
        .map(|x| x.as_u64().map(|x| x as u32).context("golden: expected an integer"))
        .collect()
}

pub fn f64s(v: &Value) -> Result<Vec<f64>> {
    v.as_array()
        .context("golden: expected an array of numbers")?
        .iter()
        .map(|x| x.as_f64().context("golden: expected a number"))
        .collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key].as_str().with_context(|| format!("golden: missing string field `{key}`"))
}

fn f64_field(v: &Value, key: &str) -> Result<f64> {
    v[key].as_f64().with_context(|| format!("golden: missing number field `{key}`"))
}

fn usize_field(v: &Value, key: &str) -> Result<usize> {
    v[key].as_u64().map(|x| x as usize).with_context(|| format!("golden: missing integer field `{key}`"))
}

/// One case of `smollm2_logprobs.json`.
#[derive(Debug, Clone)]
pub struct LogprobCase {
    pub id: String,
    pub prompt: String,
    pub response: String,
    pub rendered_full: String,
    pub conv: Conversation,
    pub token_logprobs: Vec<f64>,
    pub sum_logprob: f64,
    pub mean_logprob: f64,
}

/// The `cases` of `smollm2_logprobs.json`.
pub fn logprob_cases(golden: &Value) -> Result<Vec<LogprobCase>> {
    golden["cases"]
        .as_array()
        .context("golden: no `cases` array")?
        .iter()
        .map(|c| {
            Ok(LogprobCase {
                id: str_field(c, "id")?.to_string(),
                prompt: str_field(c, "prompt")?.to_string(),
                response: str_field(c, "response")?.to_string(),
                rendered_full: str_field(c, "rendered_full")?.to_string(),
                conv: Conversation { ids: u32s(&c["token_ids"])?, score_start: usize_field(c, "score_start")? },
                token_logprobs: f64s(&c["token_logprobs"])?,
                sum_logprob: f64_field(c, "sum_logprob")?,
                mean_logprob: f64_field(c, "mean_logprob")?,
            })
        })
        .collect()
}

/// How far cream is from the golden log-probs (worst case over all cases).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogprobCheck {
    pub cases: usize,
    /// Every case renders and tokenises to the golden text, ids and scoring boundary.
    pub tokens_equal: bool,
    /// Cases whose rendering or token ids differ.
    pub token_mismatches: Vec<String>,
    pub max_token_diff: f64,
    pub max_sum_diff: f64,
    pub max_mean_diff: f64,
}

impl LogprobCheck {
    /// Within [`TOKEN_LOGPROB_TOL`] per token and [`SUM_LOGPROB_TOL`] per sum, identical ids.
    pub fn passes(&self) -> bool {
        self.tokens_equal
            && self.max_token_diff < TOKEN_LOGPROB_TOL
            && self.max_sum_diff < SUM_LOGPROB_TOL
            && self.max_mean_diff < TOKEN_LOGPROB_TOL
    }
}

/// Tokenise and score every golden case with `lm` (on its device) and compare. The log-probs
/// are those of the golden token ids, so a tokenizer mismatch shows as `tokens_equal == false`
/// without hiding the numeric comparison.
pub fn check_logprobs(lm: &LoadedModel, cases: &[LogprobCase], opts: ScoreOptions) -> Result<LogprobCheck> {
    let mut out = LogprobCheck { cases: cases.len(), tokens_equal: true, ..Default::default() };
    for c in cases {
        let rendered = lm.tokenizer.render(&[Message::user(&c.prompt), Message::assistant(&c.response)], false)?;
        let conv = lm.tokenizer.encode_conversation(&c.prompt, &c.response)?;
        if rendered != c.rendered_full || conv != c.conv {
            out.tokens_equal = false;
            out.token_mismatches.push(c.id.clone());
        }
    }
    let convs: Vec<Conversation> = cases.iter().map(|c| c.conv.clone()).collect();
    let scored = crate::score::score(&lm.model, &convs, opts)?;
    for (c, s) in cases.iter().zip(&scored) {
        ensure!(
            s.token_logprobs.len() == c.token_logprobs.len(),
            "golden case {}: {} scored tokens, golden has {}",
            c.id,
            s.token_logprobs.len(),
            c.token_logprobs.len()
        );
        for (a, b) in s.token_logprobs.iter().zip(&c.token_logprobs) {
            out.max_token_diff = out.max_token_diff.max((a - b).abs());
        }
        out.max_sum_diff = out.max_sum_diff.max((s.sum - c.sum_logprob).abs());
        out.max_mean_diff = out.max_mean_diff.max((s.mean - c.mean_logprob).abs());
    }
    Ok(out)
}

/// One gradient case of `smollm2_dpo.json`, checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DpoCheck {
    pub groups: Vec<usize>,
    pub loss: f64,
    pub golden_loss: f64,
    pub loss_diff: f64,
    /// Max over probed gradient elements of |diff| / max|golden| (elements with |diff| < 1e-7
    /// count as 0).
    pub max_rel_grad_diff: f64,
}

impl DpoCheck {
    pub fn passes(&self) -> bool {
        self.loss_diff < DPO_LOSS_TOL && self.max_rel_grad_diff < DPO_GRAD_REL_TOL
    }
}

/// The DPO loss and gradients of `smollm2_dpo.json`: policy P1 = the reference with
/// `model.norm.weight` scaled by 1.01 in f32. The model is restored before returning (also on
/// error).
pub fn check_dpo(lm: &LoadedModel, golden: &Value) -> Result<Vec<DpoCheck>> {
    with_scaled(lm, P1_PARAM, P1_FACTOR, || dpo_cases(lm, golden))
}

/// Policy P1 of `smollm2_dpo.json`: `model.norm.weight` times 1.01 (as f32).
const P1_PARAM: &str = "model.norm.weight";
const P1_FACTOR: f32 = 1.01;
/// Policy P2 of `smollm2_dpo.json`: `model.layers.10.self_attn.v_proj.weight` times 0.97 (as f32).
const P2_PARAM: &str = "model.layers.10.self_attn.v_proj.weight";
const P2_FACTOR: f32 = 0.97;

/// Run `f` with parameter `name` of `lm` multiplied elementwise by `factor` in f32 (the golden
/// file's perturbed policies), restoring the original values afterwards (also on error).
fn with_scaled<T>(lm: &LoadedModel, name: &str, factor: f32, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let var = lm
        .model
        .named_vars()
        .iter()
        .find(|(n, _)| n == name)
        .with_context(|| format!("the model has no {name}"))?
        .1
        .clone();
    let original = var.as_tensor().copy()?;
    var.set(&(var.as_tensor() * f64::from(factor))?)?;
    let result = f();
    var.set(&original)?;
    result
}

/// How far cream's implicit rewards of the `smollm2_dpo.json` groups are from the golden ones
/// (worst case over all responses). Every S here is computed by cream (scoring the golden token
/// ids under the reference, P1 and P2), and r1 = S_P1 - S_ref, r2 = S_P2 - S_ref are formed from
/// those sums before they are compared with the golden `r1` / `r2`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewardCheck {
    /// Responses compared (over all groups).
    pub responses: usize,
    /// Max |S_X(cream) - S_X(golden)| over X in {ref, P1, P2}.
    pub max_sum_diff: f64,
    /// Max |r(cream) - r(golden)| over r1 and r2, against both the per-response and the per-group
    /// golden values.
    pub max_reward_diff: f64,
}

impl RewardCheck {
    /// At least one response, every S and every reward within [`SUM_LOGPROB_TOL`].
    pub fn passes(&self) -> bool {
        self.responses > 0 && self.max_sum_diff < SUM_LOGPROB_TOL && self.max_reward_diff < SUM_LOGPROB_TOL
    }
}

/// Score every response of the `groups` of `smollm2_dpo.json` with `lm` under the reference model
/// and under the golden policies P1 and P2 (see the file's `how`), and compare the sums and the
/// implicit rewards r1 = S_P1 - S_ref, r2 = S_P2 - S_ref with the golden ones. The model is
/// restored before returning (also on error).
pub fn check_rewards(lm: &LoadedModel, golden: &Value, opts: ScoreOptions) -> Result<RewardCheck> {
    let groups = golden["groups"].as_array().context("golden: no `groups`")?;
    let mut convs = Vec::new();
    let mut want = Vec::new(); // (S_ref, S_P1, S_P2, r1, r2, group r1, group r2) per response
    for (gi, grp) in groups.iter().enumerate() {
        let resp = grp["responses"].as_array().context("golden: group without responses")?;
        let (gr1, gr2) = (f64s(&grp["r1"])?, f64s(&grp["r2"])?);
        ensure!(
            gr1.len() == resp.len() && gr2.len() == resp.len(),
            "golden: group {gi} has {} responses but {} r1 and {} r2 values",
            resp.len(),
            gr1.len(),
            gr2.len()
        );
        for (k, r) in resp.iter().enumerate() {
            convs.push(Conversation { ids: u32s(&r["token_ids"])?, score_start: usize_field(r, "score_start")? });
            want.push([
                f64_field(r, "S_ref")?,
                f64_field(r, "S_P1")?,
                f64_field(r, "S_P2")?,
                f64_field(r, "r1")?,
                f64_field(r, "r2")?,
                gr1[k],
                gr2[k],
            ]);
        }
    }
    ensure!(!convs.is_empty(), "golden: the groups have no responses");
    let sums = |scored: Vec<crate::score::Scored>| -> Vec<f64> { scored.into_iter().map(|s| s.sum).collect() };
    let s_ref = sums(crate::score::score(&lm.model, &convs, opts)?);
    let s_p1 = sums(with_scaled(lm, P1_PARAM, P1_FACTOR, || crate::score::score(&lm.model, &convs, opts))?);
    let s_p2 = sums(with_scaled(lm, P2_PARAM, P2_FACTOR, || crate::score::score(&lm.model, &convs, opts))?);
    let mut out = RewardCheck { responses: convs.len(), ..Default::default() };
    for (i, w) in want.iter().enumerate() {
        let (r1, r2) = (s_p1[i] - s_ref[i], s_p2[i] - s_ref[i]);
        for (got, golden) in [(s_ref[i], w[0]), (s_p1[i], w[1]), (s_p2[i], w[2])] {
            out.max_sum_diff = out.max_sum_diff.max((got - golden).abs());
        }
        for (got, golden) in [(r1, w[3]), (r2, w[4]), (r1, w[5]), (r2, w[6])] {
            out.max_reward_diff = out.max_reward_diff.max((got - golden).abs());
        }
    }
    Ok(out)
}

fn dpo_cases(lm: &LoadedModel, g: &Value) -> Result<Vec<DpoCheck>> {
    let beta = f64_field(g, "beta")?;
    let groups = g["groups"].as_array().context("golden: no `groups`")?;
    let mut out = Vec::new();
    for case in g["grad_cases"].as_array().context("golden: no `grad_cases`")? {
        let c_val = f64_field(case, "C")?;
        let group_ids: Vec<usize> = u32s(&case["groups"])?.into_iter().map(|x| x as usize).collect();
        let (mut chosen, mut rejected, mut ref_c, mut ref_r) = (vec![], vec![], vec![], vec![]);
        for &gi in &group_ids {
            let grp = groups.get(gi).with_context(|| format!("golden: no group {gi}"))?;
            let resp = grp["responses"].as_array().context("golden: group without responses")?;
            let conv = |r: &Value| -> Result<Conversation> {
                Ok(Conversation { ids: u32s(&r["token_ids"])?, score_start: usize_field(r, "score_start")? })
            };
            let (ci, ri) = (usize_field(grp, "chosen_index")?, usize_field(grp, "rejected_index")?);
            chosen.push(conv(&resp[ci])?);
            rejected.push(conv(&resp[ri])?);
            ref_c.push(f64_field(&resp[ci], "S_ref")?);
            ref_r.push(f64_field(&resp[ri], "S_ref")?);
        }
        let cb = TokenBatch::new(&lm.model, &chosen.iter().collect::<Vec<_>>())?;
        let rb = TokenBatch::new(&lm.model, &rejected.iter().collect::<Vec<_>>())?;
        let cs = vec![c_val; chosen.len()];
        let batch = DpoBatch { chosen: &cb, rejected: &rb, ref_chosen: &ref_c, ref_rejected: &ref_r, c: &cs };
        let res = dpo_loss(&lm.model, &batch, beta)?;
        let loss = res.loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let golden_loss = f64_field(case, "loss")?;
        let mut acc = GradAccumulator::new(&lm.model);
        acc.backward(&res.loss, &lm.model)?;
        let (grads, _) = acc.take_clipped(0.0)?;
        let mut worst: f64 = 0.0;
        for (name, want) in case["grads"].as_object().context("golden: `grads` is not an object")? {
            let i = lm
                .model
                .named_vars()
                .iter()
                .position(|(n, _)| n == name)
                .with_context(|| format!("golden: gradient of unknown parameter {name}"))?;
            let got: Vec<f32> = grads[i].flatten_all()?.to_vec1()?;
            let want = f64s(want)?;
            let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (j, w) in want.iter().enumerate() {
                let diff = (got[j] as f64 - w).abs();
                if diff >= 1e-7 {
                    worst = worst.max(diff / scale);
                }
            }
        }
        out.push(DpoCheck { groups: group_ids, loss, golden_loss, loss_diff: (loss - golden_loss).abs(), max_rel_grad_diff: worst });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The default model (fetched by `just setup`) on the CPU.
    fn default_model() -> LoadedModel {
        let path = repo_root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.is_file(), "{} is missing: run `just setup` first", path.display());
        crate::load(&path, &candle_core::Device::Cpu).unwrap()
    }

    /// The golden implicit rewards against rewards computed here: cream scores the golden groups'
    /// token ids under the reference and the two perturbed policies, and r = S_policy - S_ref from
    /// those sums must match the golden r1 / r2 (not the golden S values subtracted again).
    #[test]
    #[ignore = "needs `just setup`: the default model in data/models"]
    fn golden_rewards_match_cream_scoring() {
        let lm = default_model();
        let golden = read(&repo_root().join("../shared/golden/smollm2_dpo.json")).unwrap();
        let before: Vec<Vec<f32>> = [P1_PARAM, P2_PARAM]
            .iter()
            .map(|name| {
                let v = &lm.model.named_vars().iter().find(|(n, _)| n == name).unwrap().1;
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
            })
            .collect();
        let check = check_rewards(&lm, &golden, ScoreOptions::default()).unwrap();
        eprintln!("golden rewards: {check:?}");
        assert_eq!(check.responses, 10);
        assert!(check.passes(), "golden rewards: {check:?}");
        // The perturbed parameters are restored exactly.
        for (name, want) in [P1_PARAM, P2_PARAM].iter().zip(&before) {
            let v = &lm.model.named_vars().iter().find(|(n, _)| n == name).unwrap().1;
            let got: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            assert!(got == *want, "{name} was not restored");
        }
    }

    #[test]
    fn golden_reward_check_fails_outside_tolerance() {
        let ok = RewardCheck { responses: 10, max_sum_diff: 0.5 * SUM_LOGPROB_TOL, max_reward_diff: 0.5 * SUM_LOGPROB_TOL };
        assert!(ok.passes());
        assert!(!RewardCheck { max_reward_diff: 2.0 * SUM_LOGPROB_TOL, ..ok.clone() }.passes());
        assert!(!RewardCheck { max_sum_diff: 2.0 * SUM_LOGPROB_TOL, ..ok.clone() }.passes());
        assert!(!RewardCheck { responses: 0, ..ok }.passes());
    }
}
