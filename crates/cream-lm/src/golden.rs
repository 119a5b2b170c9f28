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
    let norm = lm
        .model
        .named_vars()
        .iter()
        .find(|(n, _)| n == "model.norm.weight")
        .context("the model has no model.norm.weight")?
        .1
        .clone();
    let original = norm.as_tensor().copy()?;
    norm.set(&(norm.as_tensor() * f64::from(1.01f32))?)?;
    let result = dpo_cases(lm, golden);
    norm.set(&original)?;
    result
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
