//! Batched sampling with a KV cache.
//!
//! Prompts are left-padded into a micro-batch; each row has its own RoPE positions and a
//! padding-aware causal mask, so a row's numbers do not depend on its neighbours. Every request
//! carries its own RNG seed (see [`crate::rng::sample_seed`]) and draws exactly one uniform per
//! sampled token, so results do not depend on batch size or order.

use anyhow::{Result, ensure};
use candle_core::Tensor;

use crate::model::{Attention, Frozen, Model, attention_mask};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, max_new_tokens }
    }
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "temperature must be >= 0 (got {})",
            self.temperature
        );
        ensure!(self.top_p > 0.0 && self.top_p <= 1.0, "top_p must be in (0, 1] (got {})", self.top_p);
        ensure!(self.max_new_tokens > 0, "max_new_tokens must be at least 1");
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt_ids: Vec<u32>,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS / end-of-turn token was produced (it is the last generated token).
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenOutput {
    /// Generated tokens, including the stop token when `finish == Stop`.
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Pick the next token from one row of logits. Greedy takes the first maximum. Otherwise
/// softmax(logits / T) in f64, keep the smallest set of most likely tokens whose mass reaches
/// `top_p` (ties ordered by token id), renormalise and draw with one uniform from `rng`.
pub fn sample_token(logits: &[f32], params: &SamplingParams, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if params.temperature <= 0.0 {
        return argmax();
    }
    let u = rng.uniform();
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let inv_t = 1.0 / params.temperature;
    let mut probs: Vec<(f64, u32)> =
        logits.iter().enumerate().map(|(i, &v)| (((v as f64 - max) * inv_t).exp(), i as u32)).collect();
    let total: f64 = probs.iter().map(|p| p.0).sum();
    let cmp = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    // Sort only as many of the most likely tokens as the nucleus needs.
    let mut k = 64.min(probs.len());
    let kept = loop {
        if k < probs.len() {
            probs.select_nth_unstable_by(k - 1, cmp);
        }
        probs[..k].sort_unstable_by(cmp);
        let mut mass = 0.0;
        let mut cut = None;
        for (j, p) in probs[..k].iter().enumerate() {
            mass += p.0;
            if mass >= params.top_p * total {
                cut = Some(j + 1);
                break;
            }
        }
        match cut {
            Some(c) => break c,
            None if k == probs.len() => break k,
            None => k = (k * 4).min(probs.len()),
        }
    };
    let nucleus = &probs[..kept];
    let mass: f64 = nucleus.iter().map(|p| p.0).sum();
    let target = u * mass;
    let mut acc = 0.0;
    for p in nucleus {
        acc += p.0;
        if target < acc {
            return p.1;
        }
    }
    nucleus[kept - 1].1
}

/// Generate for every request, `batch_size` rows at a time; outputs come back in input order.
/// `on_finished` is called with the number of requests completed so far.
pub fn generate(
    model: &Model,
    stop_ids: &[u32],
    requests: &[GenRequest],
    params: &SamplingParams,
    batch_size: usize,
    on_finished: &mut dyn FnMut(usize),
) -> Result<Vec<GenOutput>> {
    params.validate()?;
    ensure!(batch_size > 0, "batch size must be at least 1");
    let max_pos = model.cfg.max_position_embeddings;
    for (i, r) in requests.iter().enumerate() {
        ensure!(!r.prompt_ids.is_empty(), "request {i}: empty prompt");
        ensure!(
            r.prompt_ids.len() + params.max_new_tokens <= max_pos,
            "request {i}: prompt of {} tokens + {} new tokens exceeds the context window of {max_pos}; \
             truncate the prompt or lower max_new_tokens",
            r.prompt_ids.len(),
            params.max_new_tokens
        );
    }
    // Similar lengths together waste less padding; results are order independent.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].prompt_ids.len());
    let mut out: Vec<Option<GenOutput>> = vec![None; requests.len()];
    let mut done = 0;
    let frozen = model.frozen()?;
    for chunk in order.chunks(batch_size) {
        let reqs: Vec<&GenRequest> = chunk.iter().map(|&i| &requests[i]).collect();
        for (&i, o) in chunk.iter().zip(generate_batch(&frozen, stop_ids, &reqs, params)?) {
            out[i] = Some(o);
            done += 1;
            on_finished(done);
        }
    }
    Ok(out.into_iter().map(|o| o.expect("every request generated")).collect())
}

/// Sample the next token of every unfinished row of `logits` `(B, vocab)` and append it to
/// `outs[row]`; a row whose token is in `stop_ids` becomes finished. Returns the next input
/// token of each row (0 for finished rows, which are masked out anyway).
///
/// Rows are sampled in parallel (rayon, one task per row): each row reads only its own logits
/// and advances only its own RNG, so the tokens are those of a row-by-row loop, whatever the
/// thread count. On the CPU the logits are read in place, without a copy.
fn sample_rows(
    logits: &Tensor,
    params: &SamplingParams,
    stop_ids: &[u32],
    rngs: &mut [SplitMix64],
    outs: &mut [Vec<u32>],
    finished: &mut [bool],
) -> Result<Vec<u32>> {
    use rayon::prelude::*;
    let (b, v) = logits.dims2()?;
    ensure!(rngs.len() == b && outs.len() == b && finished.len() == b, "one RNG, output and flag per row");
    let logits = logits.contiguous()?;
    let copied;
    let (storage, layout) = logits.storage_and_layout();
    let flat: &[f32] = match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((start, end))) => &data[start..end],
        _ => {
            copied = logits.flatten_all()?.to_vec1::<f32>()?;
            &copied
        }
    };
    let mut next = vec![0u32; b];
    flat.par_chunks(v)
        .zip(rngs.par_iter_mut())
        .zip(outs.par_iter_mut())
        .zip(finished.par_iter_mut())
        .zip(next.par_iter_mut())
        .for_each(|((((row, rng), out), done), next)| {
            if *done {
                return;
            }
            let tok = sample_token(row, params, rng);
            out.push(tok);
            *next = tok;
            *done = stop_ids.contains(&tok);
        });
    Ok(next)
}

fn generate_batch(
    frozen: &Frozen,
    stop_ids: &[u32],
    reqs: &[&GenRequest],
    params: &SamplingParams,
) -> Result<Vec<GenOutput>> {
    let model = frozen.model();
    let dev = model.device();
    let b = reqs.len();
    let l = reqs.iter().map(|r| r.prompt_ids.len()).max().unwrap_or(0);
    let pads: Vec<usize> = reqs.iter().map(|r| l - r.prompt_ids.len()).collect();
    let mut ids = vec![0u32; b * l];
    let mut pos = vec![0u32; b * l];
    for (row, r) in reqs.iter().enumerate() {
        ids[row * l + pads[row]..(row + 1) * l].copy_from_slice(&r.prompt_ids);
        for (j, p) in pos[row * l + pads[row]..(row + 1) * l].iter_mut().enumerate() {
            *p = j as u32;
        }
    }
    let mut cache = model.new_cache(l + params.max_new_tokens);
    let mut rngs: Vec<SplitMix64> = reqs.iter().map(|r| SplitMix64::new(r.seed)).collect();
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut finished = vec![false; b];

    let mut input = Tensor::from_vec(ids, (b, l), dev)?;
    let mut positions = Tensor::from_vec(pos, (b, l), dev)?;
    let mut mask = Attention::Masked(attention_mask(&pads, 0, l, dev)?);
    for step in 0..params.max_new_tokens {
        let h = frozen.forward_hidden(&input, &positions, &mask, Some(&mut cache))?;
        let t = h.dim(1)?;
        // Contiguous: CUDA's matmul takes no strided operands.
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?;
        let logits = frozen.logits(&last)?;
        let next = sample_rows(&logits, params, stop_ids, &mut rngs, &mut outs, &mut finished)?;
        if finished.iter().all(|&f| f) || step + 1 == params.max_new_tokens {
            break;
        }
        let past = l + step;
        let next_pos: Vec<u32> = reqs.iter().map(|r| (r.prompt_ids.len() + step) as u32).collect();
        input = Tensor::from_vec(next, (b, 1), dev)?;
        positions = Tensor::from_vec(next_pos, (b, 1), dev)?;
        mask = Attention::Masked(attention_mask(&pads, past, 1, dev)?);
    }
    Ok(outs
        .into_iter()
        .zip(finished)
        .map(|(tokens, f)| GenOutput {
            tokens,
            finish: if f { FinishReason::Stop } else { FinishReason::Length },
        })
        .collect())
}
