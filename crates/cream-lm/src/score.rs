//! Teacher-forced scoring: per-token log-probs of the scored span of each conversation.
//!
//! Sequences are right-padded into micro-batches (a causal mask suffices: a real token never
//! sees a pad to its right), and the vocabulary projection is applied only to the rows whose
//! next token is scored, a chunk of rows at a time, so no `(batch, time, vocab)` tensor exists.

use anyhow::{Result, ensure};
use candle_core::{D, DType, Tensor};

use crate::model::{Attention, Frozen, Mode, Model};
use crate::tokenizer::Conversation;

/// Log-probs of one conversation's scored tokens (`ids[score_start..]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub token_logprobs: Vec<f64>,
    pub sum: f64,
    pub mean: f64,
}

impl Scored {
    pub(crate) fn new(token_logprobs: Vec<f64>) -> Self {
        let sum: f64 = token_logprobs.iter().sum();
        Scored { mean: sum / token_logprobs.len() as f64, sum, token_logprobs }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Upper bound on padded tokens (rows x longest row) per forward pass.
    pub max_batch_tokens: usize,
    /// Rows of hidden states projected onto the vocabulary at once.
    pub vocab_chunk_rows: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions { max_batch_tokens: 4096, vocab_chunk_rows: 256 }
    }
}

/// Whether `model` can score `c`: a scoring boundary inside the sequence, the sequence within
/// the context window, every token id in the vocabulary.
pub(crate) fn check_scorable(model: &Model, c: &Conversation) -> Result<()> {
    let max_pos = model.cfg.max_position_embeddings;
    ensure!(
        c.score_start >= 1 && c.score_start < c.ids.len(),
        "scoring boundary {} is outside the sequence of {} tokens",
        c.score_start,
        c.ids.len()
    );
    ensure!(
        c.ids.len() <= max_pos,
        "sequence of {} tokens exceeds the model's context window of {max_pos}; truncate it",
        c.ids.len()
    );
    let vocab = model.cfg.vocab_size as u32;
    if let Some(bad) = c.ids.iter().find(|&&i| i >= vocab) {
        anyhow::bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    Ok(())
}

/// A right-padded batch and the flat (row, target) pairs of its scored tokens.
pub struct TokenBatch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub attn: Attention,
    /// Index into the flattened `(B*T, hidden)` states of the position predicting each target.
    pub rows: Tensor,
    pub targets: Vec<u32>,
    /// Number of scored tokens per sequence, in batch order.
    pub n_scored: Vec<usize>,
}

impl TokenBatch {
    pub fn new(model: &Model, convs: &[&Conversation]) -> Result<Self> {
        let dev = model.device();
        let t = convs.iter().map(|c| c.ids.len()).max().unwrap_or(0);
        ensure!(t > 0, "cannot score an empty batch");
        let mut ids = vec![0u32; convs.len() * t];
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let mut n_scored = Vec::with_capacity(convs.len());
        for (b, c) in convs.iter().enumerate() {
            check_scorable(model, c)?;
            ids[b * t..b * t + c.ids.len()].copy_from_slice(&c.ids);
            for pos in c.score_start..c.ids.len() {
                rows.push((b * t + pos - 1) as u32);
                targets.push(c.ids[pos]);
            }
            n_scored.push(c.ids.len() - c.score_start);
        }
        Ok(TokenBatch {
            ids: Tensor::from_vec(ids, (convs.len(), t), dev)?,
            positions: Tensor::arange(0u32, t as u32, dev)?,
            attn: Attention::Causal(convs.iter().map(|c| c.ids.len()).collect()),
            rows: Tensor::from_vec(rows.clone(), rows.len(), dev)?,
            targets,
            n_scored,
        })
    }

    fn hidden_rows(&self, model: &Model, mode: Mode) -> Result<Tensor> {
        let h = model.forward_hidden(&self.ids, &self.positions, &self.attn, None, mode)?;
        self.pick_rows(&h)
    }

    /// The rows of `(B, T, hidden)` states that predict a scored token.
    fn pick_rows(&self, h: &Tensor) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        Ok(h.reshape((b * t, d))?.index_select(&self.rows, 0)?)
    }
}

/// log p(target) for each hidden row, in chunks of rows; no graph is recorded.
pub(crate) fn target_logprobs(frozen: &Frozen, rows: &Tensor, targets: &[u32], chunk: usize) -> Result<Vec<f64>> {
    let n = rows.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let logits = frozen.logits(&rows.narrow(0, start, len)?)?;
        out.extend(logprobs_of_targets(&logits, &targets[start..start + len])?);
        start += len;
    }
    Ok(out)
}

/// `log_softmax(logits)[target]` per row of `(N, V)` logits. The log-sum-exp accumulates in
/// f64: a 50k-term f32 sum is biased enough to move a 300-token sum by ~1e-3. On the CPU this
/// is one fused pass per row over the logits, rows in parallel.
pub fn logprobs_of_targets(logits: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
    let (n, v) = logits.dims2()?;
    ensure!(targets.len() == n, "{} targets for {n} rows of logits", targets.len());
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        anyhow::bail!("target id {bad} is outside the vocabulary of {v}");
    }
    if !logits.device().is_cpu() {
        let dev = logits.device();
        let logits = logits.to_dtype(DType::F64)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
        let idx = Tensor::from_slice(targets, (n, 1), dev)?;
        return Ok((logits.gather(&idx, D::Minus1)? - lse)?.flatten_all()?.to_vec1::<f64>()?);
    }
    let flat = logits.flatten_all()?.to_vec1::<f32>()?;
    use rayon::prelude::*;
    Ok(flat
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let (max, lse) = crate::fused::row_lse(row);
            f64::from(row[t as usize]) - f64::from(max) - lse
        })
        .collect())
}

/// Score conversations (any order, mixed lengths); results come back in input order.
pub fn score(model: &Model, convs: &[Conversation], opts: ScoreOptions) -> Result<Vec<Scored>> {
    score_frozen(&model.frozen()?, convs, opts)
}

/// [`score`] on a snapshot taken once by the caller (a stage scoring many groups).
pub fn score_frozen(frozen: &Frozen, convs: &[Conversation], opts: ScoreOptions) -> Result<Vec<Scored>> {
    let model = frozen.model();
    let mut order: Vec<usize> = (0..convs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(convs[i].ids.len()));
    let mut out: Vec<Option<Scored>> = vec![None; convs.len()];
    let mut i = 0;
    while i < order.len() {
        // Longest first, so the first row fixes the padded width of the micro-batch.
        let width = convs[order[i]].ids.len();
        let rows = (opts.max_batch_tokens / width.max(1)).max(1);
        let group: Vec<usize> = order[i..(i + rows).min(order.len())].to_vec();
        let batch_convs: Vec<&Conversation> = group.iter().map(|&g| &convs[g]).collect();
        let batch = TokenBatch::new(model, &batch_convs)?;
        let h = frozen.forward_hidden(&batch.ids, &batch.positions, &batch.attn, None)?;
        let hidden = batch.pick_rows(&h)?;
        let lps = target_logprobs(frozen, &hidden, &batch.targets, opts.vocab_chunk_rows)?;
        let mut offset = 0;
        for (&g, &n) in group.iter().zip(&batch.n_scored) {
            let token_logprobs = lps[offset..offset + n].to_vec();
            offset += n;
            out[g] = Some(Scored::new(token_logprobs));
        }
        i += group.len();
    }
    Ok(out.into_iter().map(|s| s.expect("every conversation scored")).collect())
}

/// Differentiable per-sequence sums of scored-token log-probs, shape `(B,)`, for training.
/// With [`Mode::Train`] gradients flow to every parameter.
pub fn sequence_logprob_sums(model: &Model, batch: &TokenBatch, mode: Mode) -> Result<Tensor> {
    let hidden = batch.hidden_rows(model, mode)?;
    let dev = model.device();
    let n = batch.targets.len();
    let train = mode == Mode::Train;
    let picked = if model.fused_for(&hidden) {
        // Head and log-softmax in one op over row chunks: no (N, vocab) logits, kept or not.
        let head = model.head_weight(mode);
        crate::fused_train::head_target_logprobs(&hidden, &head, &batch.targets, train)?.reshape((n, 1))?
    } else {
        let logits = model.logits(&hidden, mode)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let idx = Tensor::from_slice(&batch.targets, (n, 1), dev)?;
        logp.gather(&idx, D::Minus1)? // (N, 1)
    };
    // Segment sums: (B, N) 0/1 matrix times (N, 1).
    let b = batch.n_scored.len();
    let mut seg = vec![0f32; b * n];
    let mut offset = 0;
    for (row, &k) in batch.n_scored.iter().enumerate() {
        seg[row * n + offset..row * n + offset + k].fill(1.0);
        offset += k;
    }
    let seg = Tensor::from_vec(seg, (b, n), dev)?;
    Ok(seg.matmul(&picked)?.flatten_all()?)
}
