//! The workloads' token ids, built once with cream's tokenizer and written to `inputs.json`, so
//! that cream and the PyTorch baseline run on identical ids.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use cream_lm::rng::SplitMix64;
use cream_lm::{ChatTokenizer, Conversation, LoadedModel, ModelConfig, ScoreOptions};
use serde::{Deserialize, Serialize};

/// Generation: prompts rendered with the chat template and the generation header.
pub const GEN_PROMPTS: usize = 64;
/// Scoring: conversations whose full length lies in this range.
pub const SCORE_SEQS: usize = 64;
pub const SCORE_LEN: (usize, usize) = (224, 288);
/// DPO: pairs whose two sides both lie in this range (~256 tokens each).
pub const DPO_PAIRS: usize = 4;
pub const DPO_LEN: (usize, usize) = (232, 280);
pub const DPO_C: [f64; DPO_PAIRS] = [1.0, 0.75, 0.5, 0.9];
pub const DPO_BETA: f64 = 0.1;
/// The learning rate of the measured AdamW step (the pipelines' DPO default).
pub const DPO_LR: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seq {
    pub ids: Vec<u32>,
    pub score_start: usize,
}

impl From<Conversation> for Seq {
    fn from(c: Conversation) -> Self {
        Seq { ids: c.ids, score_start: c.score_start }
    }
}

impl Seq {
    pub fn conversation(&self) -> Conversation {
        Conversation { ids: self.ids.clone(), score_start: self.score_start }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenInputs {
    pub prompts: Vec<Vec<u32>>,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Generation stops after any of these (counted as generated).
    pub stop_ids: Vec<u32>,
    /// Left padding for the baseline's batches.
    pub pad_id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoPair {
    pub chosen: Seq,
    pub rejected: Seq,
    /// Summed log-probs of the scored tokens under the reference (= the loaded model).
    pub ref_chosen: f64,
    pub ref_rejected: f64,
    pub c: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoInputs {
    pub pairs: Vec<DpoPair>,
    pub beta: f64,
    pub lr: f64,
    pub max_grad_norm: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// Where the ids come from: the model path, or `random:<shape>`.
    pub source: String,
    pub vocab_size: usize,
    #[serde(rename = "gen")]
    pub generation: GenInputs,
    pub score: Vec<Seq>,
    /// Padded tokens per scoring forward (cream's default, used by both sides).
    pub score_batch_tokens: usize,
    pub dpo: DpoInputs,
}

impl Inputs {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a cream-bench inputs file", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string(self)? + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// A GSM8K record (question + worked answer).
#[derive(Debug, Clone, Deserialize)]
pub struct Gsm8k {
    pub question: String,
    pub answer: String,
}

pub fn read_gsm8k(path: &Path) -> Result<Vec<Gsm8k>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} (GSM8K lives in ../shared/data/gsm8k)", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1)))
        .collect()
}

fn in_range(n: usize, (lo, hi): (usize, usize)) -> bool {
    (lo..=hi).contains(&n)
}

/// The token ids picked from GSM8K, before the DPO reference log-probs are computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub prompts: Vec<Vec<u32>>,
    pub score: Vec<Seq>,
    /// (chosen, rejected) of each DPO pair.
    pub dpo: Vec<(Conversation, Conversation)>,
}

/// Build the inputs from GSM8K (`dir/test.jsonl`, `dir/train.jsonl`) with the model's tokenizer;
/// the DPO reference log-probs are the model's own scores of each side.
pub fn build(lm: &LoadedModel, gsm8k_dir: &Path) -> Result<Inputs> {
    let Selection { prompts, score, dpo: sides } = select(&lm.tokenizer, gsm8k_dir)?;
    let all: Vec<Conversation> = sides.iter().flat_map(|(c, r)| [c.clone(), r.clone()]).collect();
    let refs = cream_lm::score(&lm.model, &all, ScoreOptions::default())?;
    let pairs = sides
        .into_iter()
        .enumerate()
        .map(|(k, (c, r))| DpoPair {
            chosen: c.into(),
            rejected: r.into(),
            ref_chosen: refs[2 * k].sum,
            ref_rejected: refs[2 * k + 1].sum,
            c: DPO_C[k],
        })
        .collect();

    let stop_ids = lm.tokenizer.stop_ids().to_vec();
    let cfg = &lm.model.cfg;
    Ok(Inputs {
        source: lm.path.display().to_string(),
        vocab_size: cfg.vocab_size,
        generation: GenInputs {
            prompts,
            temperature: 0.8,
            top_p: 0.95,
            max_new_tokens: 128,
            pad_id: cfg.pad_token_id.unwrap_or(stop_ids[0]),
            stop_ids,
        },
        score,
        score_batch_tokens: ScoreOptions::default().max_batch_tokens,
        dpo: DpoInputs { pairs, beta: DPO_BETA, lr: DPO_LR, max_grad_norm: 1.0 },
    })
}

/// Pick the workloads' sequences from GSM8K with `tok` (deterministic: file order).
pub fn select(tok: &ChatTokenizer, gsm8k_dir: &Path) -> Result<Selection> {
    let test = read_gsm8k(&gsm8k_dir.join("test.jsonl"))?;
    let train = read_gsm8k(&gsm8k_dir.join("train.jsonl"))?;
    ensure!(test.len() >= GEN_PROMPTS, "GSM8K test has {} questions, need {GEN_PROMPTS}", test.len());
    let prompts = test[..GEN_PROMPTS].iter().map(|r| tok.encode_prompt(&r.question)).collect::<Result<Vec<_>>>()?;

    // Each train record's own conversation, tokenised on first use.
    let mut own: Vec<Option<Conversation>> = vec![None; train.len()];
    let mut conv_of = |i: usize| -> Result<Conversation> {
        if own[i].is_none() {
            own[i] = Some(tok.encode_conversation(&train[i].question, &train[i].answer)?);
        }
        Ok(own[i].clone().expect("just set"))
    };

    // Scoring: the first train records (in file order) whose conversation fits SCORE_LEN.
    let mut score = Vec::with_capacity(SCORE_SEQS);
    let mut used = vec![false; train.len()];
    for i in 0..train.len() {
        if score.len() == SCORE_SEQS {
            break;
        }
        let conv = conv_of(i)?;
        if in_range(conv.ids.len(), SCORE_LEN) {
            score.push(Seq::from(conv));
            used[i] = true;
        }
    }
    ensure!(score.len() == SCORE_SEQS, "only {} GSM8K train records fit {SCORE_LEN:?} tokens", score.len());

    // DPO: chosen = a question's own answer, rejected = a later unused record's answer under the
    // same question; both sides must fit DPO_LEN. The template puts special tokens around each
    // message, so a conversation's length is (its prompt part) + (the answer's part): candidates
    // are picked by that sum and then tokenised for real.
    let mut sides = Vec::with_capacity(DPO_PAIRS);
    let mut i = 0;
    while sides.len() < DPO_PAIRS && i + 1 < train.len() {
        let chosen = conv_of(i)?;
        if used[i] || !in_range(chosen.ids.len(), DPO_LEN) {
            i += 1;
            continue;
        }
        let mut found = None;
        for j in i + 1..train.len().min(i + 400) {
            if used[j] {
                continue;
            }
            let other = conv_of(j)?;
            let estimate = chosen.score_start + (other.ids.len() - other.score_start);
            if !in_range(estimate, (DPO_LEN.0 + 2, DPO_LEN.1 - 2)) {
                continue;
            }
            let rejected = tok.encode_conversation(&train[i].question, &train[j].answer)?;
            if in_range(rejected.ids.len(), DPO_LEN) {
                found = Some((j, rejected));
                break;
            }
        }
        if let Some((j, rejected)) = found {
            used[i] = true;
            used[j] = true;
            sides.push((chosen, rejected));
        }
        i += 1;
    }
    ensure!(sides.len() == DPO_PAIRS, "found only {} DPO pairs of {DPO_LEN:?} tokens", sides.len());
    Ok(Selection { prompts, score, dpo: sides })
}


/// Inputs for a random model of the given shape: uniformly random token ids (never a stop id)
/// with the same lengths as the GSM8K workloads use (prompts 80-160 tokens, scoring sequences
/// in SCORE_LEN with a 100-token prompt, DPO sides in DPO_LEN). Reference log-probs are
/// `-ln(vocab)` per scored token: the random model's order of magnitude; their value does not
/// change the work.
pub fn random(cfg: &ModelConfig, shape: &str, seed: u64) -> Result<Inputs> {
    let vocab = cfg.vocab_size;
    let stop = cfg.eos_token_id.unwrap_or(0);
    let mut rng = SplitMix64::new(seed);
    let prompts: Vec<Vec<u32>> = (0..GEN_PROMPTS)
        .map(|_| {
            let n = 80 + below(&mut rng, 81);
            random_ids(&mut rng, n, vocab, stop)
        })
        .collect();
    let mut seq = |range: (usize, usize)| {
        let n = range.0 + below(&mut rng, range.1 - range.0 + 1);
        Seq { ids: random_ids(&mut rng, n, vocab, stop), score_start: 100 }
    };
    let score: Vec<Seq> = (0..SCORE_SEQS).map(|_| seq(SCORE_LEN)).collect();
    let per_token = -(vocab as f64).ln();
    let pairs = (0..DPO_PAIRS)
        .map(|k| {
            let (c, r) = (seq(DPO_LEN), seq(DPO_LEN));
            DpoPair {
                ref_chosen: per_token * (c.ids.len() - c.score_start) as f64,
                ref_rejected: per_token * (r.ids.len() - r.score_start) as f64,
                chosen: c,
                rejected: r,
                c: DPO_C[k],
            }
        })
        .collect();
    Ok(Inputs {
        source: format!("random:{shape}"),
        vocab_size: vocab,
        generation: GenInputs { prompts, temperature: 0.8, top_p: 0.95, max_new_tokens: 128, stop_ids: vec![stop], pad_id: stop },
        score,
        score_batch_tokens: ScoreOptions::default().max_batch_tokens,
        dpo: DpoInputs { pairs, beta: DPO_BETA, lr: DPO_LR, max_grad_norm: 1.0 },
    })
}

/// Uniform in `0..n`.
fn below(rng: &mut SplitMix64, n: usize) -> usize {
    ((rng.uniform() * n as f64) as usize).min(n - 1)
}

/// `n` uniformly random token ids in `0..vocab`, none equal to `stop`.
pub fn random_ids(rng: &mut SplitMix64, n: usize, vocab: usize, stop: u32) -> Vec<u32> {
    (0..n)
        .map(|_| loop {
            let t = below(rng, vocab) as u32;
            if t != stop {
                break t;
            }
        })
        .collect()
}
