//! Scoring with a shared prompt prefix: the judge scores N sampled responses of one prompt, and
//! every one of them starts with the same rendered prompt. [`score_shared_prefix`] runs the
//! prefix through the model once, keeps its keys/values (a KV cache), and scores the N
//! continuations as right-padded rows that attend to those keys/values, read in place by
//! [`crate::fused_infer::prefix_causal_attention`] (not copied per row), plus causally to their
//! own tokens. The prompt's share of the work is done once instead of N times.
//!
//! The numbers equal [`crate::score()`]'s up to float rounding (the prefix goes through matrix
//! products of other shapes). Measured largest |per-token log-prob difference| shared vs
//! unshared: 3.2e-5 on the golden cases (each alone, the two of one prompt together, and four
//! responses to one prompt; `tests/default_model.rs`), 2.3e-5 on a smoke-size judge step of 8
//! prompts x 4 sampled responses of up to 128 tokens (`cream-bench prefix`; sums differ by at
//! most 1.1e-4). Against the golden vectors the shared path stays within their tolerances
//! (`golden::TOKEN_LOGPROB_TOL` 2e-4 per token, `SUM_LOGPROB_TOL` 1e-3 per sum), which the
//! tests check.
//!
//! A sample's score depends only on its own group of conversations (the shared prefix is a
//! function of the group, the rows are packed within the group), so the scoring-batch rule of
//! ARCHITECTURE.md holds when the group is one prompt's samples.

use anyhow::Result;
use candle_core::Tensor;

use crate::model::{Attention, Frozen};
use crate::score::{ScoreOptions, Scored, score_frozen, target_logprobs};
use crate::tokenizer::Conversation;

/// The length of the prefix `convs` share and may share in scoring: the longest common prefix
/// of their token ids, at most `score_start - 1` of each (the state predicting a conversation's
/// first scored token must be computed in its own row).
pub fn shared_prefix_len(convs: &[Conversation]) -> usize {
    let Some(first) = convs.first() else { return 0 };
    let mut p = convs.iter().map(|c| c.score_start.saturating_sub(1)).min().unwrap_or(0);
    for c in &convs[1..] {
        p = p.min(first.ids.iter().zip(&c.ids).take_while(|(a, b)| a == b).count());
    }
    p
}

/// Score conversations that share a prefix (one prompt's samples; any order, mixed lengths);
/// results come back in input order. The prefix ([`shared_prefix_len`]) is run once; the rest
/// of each conversation is scored against its keys/values, `opts.max_batch_tokens` padded
/// suffix tokens per forward pass. Without a shared prefix, or off the CPU (the prefix
/// attention kernel is a CPU kernel), this is [`score_frozen`].
pub fn score_shared_prefix(frozen: &Frozen, convs: &[Conversation], opts: ScoreOptions) -> Result<Vec<Scored>> {
    let model = frozen.model();
    let p = shared_prefix_len(convs);
    if p == 0 || !model.device().is_cpu() {
        return score_frozen(frozen, convs, opts);
    }
    let dev = model.device();
    for c in convs {
        crate::score::check_scorable(model, c)?;
    }

    // The prefix, once: its per-layer keys/values (after RoPE) from a KV cache of exactly p.
    let ids = Tensor::from_slice(&convs[0].ids[..p], (1, p), dev)?;
    let mut cache = model.new_cache(p);
    frozen.forward_hidden(&ids, &Tensor::arange(0u32, p as u32, dev)?, &Attention::Causal(vec![p]), Some(&mut cache))?;
    let prefix: Vec<(Tensor, Tensor)> = cache
        .iter()
        .map(|c| -> Result<(Tensor, Tensor)> {
            let k = c.k()?.expect("the prefix pass filled the cache");
            let v = c.v()?.expect("the prefix pass filled the cache");
            Ok((k.contiguous()?, v.contiguous()?))
        })
        .collect::<Result<_>>()?;

    // The suffixes (ids[p..]), longest first so the first row fixes the padded width.
    let mut order: Vec<usize> = (0..convs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(convs[i].ids.len()));
    let mut out: Vec<Option<Scored>> = vec![None; convs.len()];
    let mut i = 0;
    while i < order.len() {
        let s = convs[order[i]].ids.len() - p;
        let n_rows = (opts.max_batch_tokens / s).max(1);
        let group = &order[i..(i + n_rows).min(order.len())];
        let mut ids = vec![0u32; group.len() * s];
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let mut lens = Vec::with_capacity(group.len());
        for (b, &g) in group.iter().enumerate() {
            let c = &convs[g];
            ids[b * s..b * s + c.ids.len() - p].copy_from_slice(&c.ids[p..]);
            // Target at absolute position j is predicted by the state at j - 1, which is
            // suffix position j - 1 - p (>= 0 since p < score_start).
            for j in c.score_start..c.ids.len() {
                rows.push((b * s + j - 1 - p) as u32);
                targets.push(c.ids[j]);
            }
            lens.push(c.ids.len() - p);
        }
        let ids = Tensor::from_vec(ids, (group.len(), s), dev)?;
        let positions = Tensor::arange(p as u32, (p + s) as u32, dev)?;
        let attn = Attention::Prefixed { lens, prefix: prefix.clone() };
        let h = frozen.forward_hidden(&ids, &positions, &attn, None)?;
        let (b, t, d) = h.dims3()?;
        let hidden = h.reshape((b * t, d))?.index_select(&Tensor::from_vec(rows.clone(), rows.len(), dev)?, 0)?;
        let lps = target_logprobs(frozen, &hidden, &targets, opts.vocab_chunk_rows)?;
        let mut offset = 0;
        for &g in group {
            let n = convs[g].ids.len() - convs[g].score_start;
            out[g] = Some(Scored::new(lps[offset..offset + n].to_vec()));
            offset += n;
        }
        i += group.len();
    }
    Ok(out.into_iter().map(|s| s.expect("every conversation scored")).collect())
}
