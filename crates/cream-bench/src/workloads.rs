//! The measured workloads: batched sampling, teacher-forced scoring and one DPO optimizer step,
//! each exactly as the pipeline's stages run them (cream-stages generate / judge / train).

use anyhow::{Result, ensure};
use cream_lm::train::{AdamW, DpoBatch, GradAccumulator, OptimConfig, dpo_loss};
use cream_lm::{Conversation, GenRequest, Model, SamplingParams, ScoreOptions, TokenBatch};

use crate::inputs::Inputs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Gen,
    Score,
    Dpo,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Gen => "gen",
            Workload::Score => "score",
            Workload::Dpo => "dpo",
        }
    }
}

/// What one run did: the tokens it counts, decoding steps or forward passes, prompt tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Work {
    pub tokens: usize,
    pub steps: usize,
    pub prompt_tokens: usize,
}

/// The first `batch` generation prompts (cycling when `batch` exceeds them), each with the seed
/// the generate stage would derive for it.
pub fn gen_requests(inputs: &Inputs, batch: usize) -> Vec<GenRequest> {
    let prompts = &inputs.generation.prompts;
    (0..batch)
        .map(|i| GenRequest {
            prompt_ids: prompts[i % prompts.len()].clone(),
            seed: cream_lm::rng::sample_seed(0, &format!("bench-{i}"), 0),
        })
        .collect()
}

/// Sample `new_tokens` tokens (T, top_p from the inputs) for `batch` prompts in one batch;
/// tokens = generated tokens up to and including the stop token.
pub fn run_gen(model: &Model, inputs: &Inputs, batch: usize, new_tokens: usize) -> Result<Work> {
    let reqs = gen_requests(inputs, batch);
    let params = SamplingParams { temperature: inputs.generation.temperature, top_p: inputs.generation.top_p, max_new_tokens: new_tokens };
    let out = cream_lm::generate(model, &inputs.generation.stop_ids, &reqs, &params, batch, &mut |_| {})?;
    Ok(Work {
        tokens: out.iter().map(|o| o.tokens.len()).sum(),
        steps: out.iter().map(|o| o.tokens.len()).max().unwrap_or(0),
        prompt_tokens: reqs.iter().map(|r| r.prompt_ids.len()).sum(),
    })
}

/// Score every scoring sequence; tokens = all tokens of the sequences.
pub fn run_score(model: &Model, inputs: &Inputs) -> Result<Work> {
    let convs: Vec<Conversation> = inputs.score.iter().map(|s| s.conversation()).collect();
    let opts = ScoreOptions { max_batch_tokens: inputs.score_batch_tokens, ..ScoreOptions::default() };
    let scored = cream_lm::score(model, &convs, opts)?;
    ensure!(scored.iter().all(|s| s.sum.is_finite()), "scoring produced a non-finite log-prob");
    Ok(Work { tokens: convs.iter().map(|c| c.ids.len()).sum(), steps: 0, prompt_tokens: 0 })
}

/// The optimizer of the DPO workload, created outside the measured region (as a trainer does
/// once per run).
pub fn dpo_optimizer(model: &Model, inputs: &Inputs) -> Result<AdamW> {
    AdamW::new(model, OptimConfig { lr: inputs.dpo.lr, max_grad_norm: inputs.dpo.max_grad_norm, ..OptimConfig::default() })
}

/// One DPO optimizer step over all pairs as one micro-batch, as cream-stages' train does it:
/// policy log-prob sums of chosen and rejected, the conservative DPO loss against the stored
/// reference sums, backward, global-norm clip, AdamW. Tokens = all tokens of both sides.
pub fn run_dpo(model: &Model, inputs: &Inputs, opt: &mut AdamW) -> Result<Work> {
    let d = &inputs.dpo;
    let chosen: Vec<Conversation> = d.pairs.iter().map(|p| p.chosen.conversation()).collect();
    let rejected: Vec<Conversation> = d.pairs.iter().map(|p| p.rejected.conversation()).collect();
    let cb = TokenBatch::new(model, &chosen.iter().collect::<Vec<_>>())?;
    let rb = TokenBatch::new(model, &rejected.iter().collect::<Vec<_>>())?;
    let ref_c: Vec<f64> = d.pairs.iter().map(|p| p.ref_chosen).collect();
    let ref_r: Vec<f64> = d.pairs.iter().map(|p| p.ref_rejected).collect();
    let cs: Vec<f64> = d.pairs.iter().map(|p| p.c).collect();
    let batch = DpoBatch { chosen: &cb, rejected: &rb, ref_chosen: &ref_c, ref_rejected: &ref_r, c: &cs };
    let out = dpo_loss(model, &batch, d.beta)?;
    let mut acc = GradAccumulator::new(model);
    acc.backward(&out.loss, model)?;
    let loss = out.loss.to_scalar::<f32>()?;
    ensure!(loss.is_finite(), "DPO loss is {loss}");
    let (grads, _norm) = acc.take_clipped(d.max_grad_norm)?;
    opt.step(&grads, d.lr)?;
    model.device().synchronize()?;
    let tokens = chosen.iter().chain(&rejected).map(|c| c.ids.len()).sum();
    Ok(Work { tokens, steps: 1, prompt_tokens: 0 })
}

/// A short warm-up before the measured run: a 2-token generation, a short score, or a short
/// forward + backward of the DPO loss (no optimizer step).
pub fn warm_up(model: &Model, inputs: &Inputs, workload: Workload) -> Result<()> {
    let short = |s: &crate::inputs::Seq| {
        let n = s.ids.len().min(s.score_start + 16);
        Conversation { ids: s.ids[..n].to_vec(), score_start: s.score_start }
    };
    match workload {
        Workload::Gen => {
            run_gen(model, inputs, 1, 2)?;
        }
        Workload::Score => {
            cream_lm::score(model, &[short(&inputs.score[0])], ScoreOptions::default())?;
        }
        Workload::Dpo => {
            let p = &inputs.dpo.pairs[0];
            let (c, r) = (short(&p.chosen), short(&p.rejected));
            let (cb, rb) = (TokenBatch::new(model, &[&c])?, TokenBatch::new(model, &[&r])?);
            let batch = DpoBatch {
                chosen: &cb,
                rejected: &rb,
                ref_chosen: &[p.ref_chosen],
                ref_rejected: &[p.ref_rejected],
                c: &[p.c],
            };
            let out = dpo_loss(model, &batch, inputs.dpo.beta)?;
            GradAccumulator::new(model).backward(&out.loss, model)?;
        }
    }
    model.device().synchronize()?;
    Ok(())
}

/// What [`judge_prefix`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrefixRecord {
    pub prompts: usize,
    pub samples: usize,
    /// Tokens of all scored conversations (prompt + response each).
    pub tokens: usize,
    pub shared_wall_s: f64,
    pub shared_cpu_per_wall: f64,
    pub unshared_wall_s: f64,
    pub unshared_cpu_per_wall: f64,
    /// unshared / shared median wall time.
    pub speedup: f64,
    pub max_token_logprob_diff: f64,
    pub max_sum_diff: f64,
}

/// The judge's scoring of one smoke-size step: `prompts` generation prompts, `samples` responses
/// of up to `new_tokens` sampled for each (seeds as the generate stage derives them), each
/// prompt's samples scored as one group, as cream-stages' score does, with the prompt prefix
/// shared and unshared, alternating for `repeat` rounds (medians; the frozen snapshot is taken
/// once, outside the timing).
pub fn judge_prefix(model: &Model, inputs: &Inputs, prompts: usize, samples: usize, new_tokens: usize, repeat: usize) -> Result<PrefixRecord> {
    ensure!(repeat > 0 && prompts > 0 && samples > 0, "prompts, samples and repeat must be at least 1");
    let g = &inputs.generation;
    let reqs: Vec<GenRequest> = (0..prompts)
        .flat_map(|p| {
            (0..samples).map(move |s| GenRequest {
                prompt_ids: g.prompts[p % g.prompts.len()].clone(),
                seed: cream_lm::rng::sample_seed(0, &format!("bench-{p}"), s as u32),
            })
        })
        .collect();
    let params = SamplingParams { temperature: g.temperature, top_p: g.top_p, max_new_tokens: new_tokens };
    let out = cream_lm::generate(model, &g.stop_ids, &reqs, &params, reqs.len(), &mut |_| {})?;
    let groups: Vec<Vec<Conversation>> = reqs
        .chunks(samples)
        .zip(out.chunks(samples))
        .map(|(rs, os)| {
            rs.iter()
                .zip(os)
                .map(|(r, o)| {
                    let mut ids = r.prompt_ids.clone();
                    ids.extend(&o.tokens);
                    Conversation { ids, score_start: r.prompt_ids.len() }
                })
                .collect()
        })
        .collect();
    let frozen = model.frozen()?;
    let opts = ScoreOptions::default();
    let run = |shared: bool| -> Result<(Vec<cream_lm::Scored>, crate::measure::Timing)> {
        crate::measure::timed(|| {
            let mut all = Vec::new();
            for convs in &groups {
                all.extend(if shared {
                    cream_lm::score_shared_prefix(&frozen, convs, opts)?
                } else {
                    cream_lm::score_frozen(&frozen, convs, opts)?
                });
            }
            Ok(all)
        })
    };
    let (mut ts, mut tu) = (Vec::new(), Vec::new());
    let (mut max_tok, mut max_sum) = (0f64, 0f64);
    for _ in 0..repeat {
        let (a, t) = run(false)?;
        tu.push(t);
        let (b, t) = run(true)?;
        ts.push(t);
        for (x, y) in a.iter().zip(&b) {
            max_sum = max_sum.max((x.sum - y.sum).abs());
            for (p, q) in x.token_logprobs.iter().zip(&y.token_logprobs) {
                max_tok = max_tok.max((p - q).abs());
            }
        }
    }
    let median = |ts: &mut Vec<crate::measure::Timing>| {
        ts.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
        let m = ts[ts.len() / 2];
        (m.wall_s, m.cpu_s / m.wall_s)
    };
    let ((sw, sc), (uw, uc)) = (median(&mut ts), median(&mut tu));
    Ok(PrefixRecord {
        prompts,
        samples,
        tokens: groups.iter().flatten().map(|c| c.ids.len()).sum(),
        shared_wall_s: sw,
        shared_cpu_per_wall: sc,
        unshared_wall_s: uw,
        unshared_cpu_per_wall: uc,
        speedup: uw / sw,
        max_token_logprob_diff: max_tok,
        max_sum_diff: max_sum,
    })
}
