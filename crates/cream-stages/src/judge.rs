//! The `score` and `judge` stages (spec steps 2-3).
//!
//! `score` computes S_m(x, y), the summed log-prob of the scored span, for every sample under one
//! model; it is its own artifact keyed by (samples, model), so the M0 scores that both judges of
//! an iteration need, and the reference log-probs of the DPO step, are computed once.
//! `judge` combines scores into rewards: `dpo` (S_policy - S_ref) or `likelihood` (mean token
//! log-prob under one model, the previous-model ranking at t = 1). Its third mode, `llm-judge`,
//! is the Self-Rewarding LM baseline (Yuan et al. 2024, Fig. 2): the policy model judges each
//! sample with an additive 5-point rubric, k sampled judgements averaged (see [`run`]).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cream_core::{
    Artifact, ArtifactSpec, InputRef, JudgementRow, ProduceOutput, RewardRow, SampleRow, ScoreRow, read_table,
    write_table,
};
use cream_lm::{GenRequest, SamplingParams, ScoreOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Pipeline;
use crate::ctx::Ctx;
use crate::shard::Shard;

pub const SCORE_STAGE: &str = "score";
pub const STAGE: &str = "judge";

/// Score every sample of `samples` under `model` (the unsharded [`score_shard`]).
pub fn score(ctx: &Ctx, samples: &Artifact, model: &Path, batch_tokens: usize) -> Result<Artifact> {
    score_shard(ctx, samples, model, batch_tokens, Shard::ALL)
}

/// The spec of the `score` artifact of `samples` under the model input `model` (shard `shard`;
/// [`Shard::ALL`] is the unsharded spec).
pub fn score_spec(samples: &Artifact, model: InputRef, batch_tokens: usize, shard: Shard) -> Result<ArtifactSpec> {
    shard.spec(&ArtifactSpec {
        stage: SCORE_STAGE.into(),
        schema_version: 1,
        params: json!({"batch_tokens": batch_tokens}),
        inputs: vec![samples.as_input("samples"), model],
    })
}

/// The position of each sample's prompt: prompts numbered in order of first appearance in
/// `rows` (the order a `score` shard selects by).
fn prompt_positions(rows: &[SampleRow]) -> Vec<usize> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    rows.iter()
        .map(|r| {
            let next = first.len();
            *first.entry(r.prompt_id.as_str()).or_insert(next)
        })
        .collect()
}

/// Score the samples of `samples` under `model`; for a shard `k/n`, only the samples of the
/// prompts at positions `p` with `p % n == k`, prompts numbered in order of first appearance in
/// `samples.parquet` (their rows are the unsharded run's rows; merge with [`merge_scores`]).
pub fn score_shard(ctx: &Ctx, samples: &Artifact, model: &Path, batch_tokens: usize, shard: Shard) -> Result<Artifact> {
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = score_spec(samples, model_in, batch_tokens, shard)?;
    ctx.produce(spec, |dir| {
        let rows: Vec<SampleRow> = read_table(&samples.path("samples.parquet")?)?;
        let rows: Vec<SampleRow> = if shard.is_all() {
            rows
        } else {
            let positions = prompt_positions(&rows);
            rows.into_iter().zip(positions).filter(|(_, pos)| shard.keeps(*pos)).map(|(r, _)| r).collect()
        };
        if rows.is_empty() && !shard.is_all() {
            // More shards than prompts: this shard has nothing to do.
            ctx.log(format!("score: shard {shard} has no prompts"));
            let n = write_table::<ScoreRow>(&dir.join("scores.parquet"), &[])?;
            return Ok(ProduceOutput::default().with_rows("scores.parquet", n));
        }
        let lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        let context = lm.model.cfg.max_position_embeddings;
        let mut truncated = 0u64;
        let convs = rows
            .iter()
            .map(|r| {
                let what = || format!("{}: prompt {} sample {}", samples.dir.join("samples.parquet").display(), r.prompt_id, r.sample_idx);
                let conv = lm.tokenizer.encode_conversation(&r.prompt, &r.response).with_context(what)?;
                let conv = fit_context(conv, context).with_context(what)?;
                truncated += u64::from(conv.1);
                Ok(conv.0)
            })
            .collect::<Result<Vec<_>>>()?;
        let opts = ScoreOptions { max_batch_tokens: batch_tokens, ..Default::default() };
        let scored = crate::progress::score(&lm.model, &convs, opts, 64, "score", ctx.quiet)?;
        let scores: Vec<ScoreRow> = rows
            .iter()
            .zip(scored)
            .map(|(r, s)| ScoreRow {
                prompt_id: r.prompt_id.clone(),
                sample_idx: r.sample_idx,
                sum_logprob: s.sum,
                n_scored: s.token_logprobs.len() as u32,
            })
            .collect();
        let n = write_table(&dir.join("scores.parquet"), &scores)?;
        let extra = if truncated > 0 { json!({"truncated_conversations": truncated}) } else { json!(null) };
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows("scores.parquet", n))
    })
}

/// A conversation longer than the model's context window keeps its last `context` tokens (the
/// start of the prompt is dropped, as `generate` truncates prompts); the scored response must
/// fit with at least one prompt token before it. Returns whether it was truncated.
fn fit_context(mut conv: cream_lm::Conversation, context: usize) -> Result<(cream_lm::Conversation, bool)> {
    let len = conv.ids.len();
    if len <= context {
        return Ok((conv, false));
    }
    let drop = len - context;
    ensure!(
        conv.score_start > drop,
        "the response alone has {} tokens, more than the model's context window of {context} allows; \
         it cannot be scored (lower [generate] max_new_tokens)",
        len - conv.score_start
    );
    conv.ids.drain(..drop);
    conv.score_start -= drop;
    Ok((conv, true))
}

/// Merge the shard artifacts `shards` of a sharded [`score_shard`] run into the unsharded `score`
/// artifact of (`samples`, `model`, `batch_tokens`): the same id and the same `scores.parquet`
/// bytes as [`score`] (a cache hit if that artifact exists). The shards must be exactly `0..n`
/// of one `n`, each of the same samples, model and batch_tokens; every sample must be scored by
/// the shard that owns its prompt. The manifest `extra` records the shard ids as `merged_from`.
pub fn merge_scores(
    ctx: &Ctx,
    samples: &Artifact,
    model: &Path,
    batch_tokens: usize,
    shards: &[&str],
) -> Result<Artifact> {
    let (model_in, _) = ctx.model_input("model", model)?;
    let spec = score_spec(samples, model_in, batch_tokens, Shard::ALL)?;
    let shards = crate::shard::open_shards(ctx, &spec, shards)?;
    ctx.produce(spec, |dir| {
        let rows: Vec<SampleRow> = read_table(&samples.path("samples.parquet")?)?;
        let positions = prompt_positions(&rows);
        let index: HashMap<(&str, u32), usize> =
            rows.iter().enumerate().map(|(i, r)| ((r.prompt_id.as_str(), r.sample_idx), i)).collect();
        ensure!(index.len() == rows.len(), "{}: a (prompt_id, sample_idx) appears twice", samples.dir.display());
        // slots[i]: the score of samples.parquet row i (the unsharded row order).
        let mut slots: Vec<Option<ScoreRow>> = vec![None; rows.len()];
        for (s, a) in &shards {
            let file = a.path("scores.parquet")?;
            for row in read_table::<ScoreRow>(&file)? {
                let what = || format!("{}: prompt {} sample {}", file.display(), row.prompt_id, row.sample_idx);
                let Some(&i) = index.get(&(row.prompt_id.as_str(), row.sample_idx)) else {
                    bail!("{}: not a sample of {}", what(), samples.dir.display());
                };
                ensure!(s.keeps(positions[i]), "{}: prompt position {} does not belong to shard {s}", what(), positions[i]);
                ensure!(slots[i].is_none(), "{}: appears twice", what());
                slots[i] = Some(row);
            }
        }
        let scores = slots
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                row.ok_or_else(|| {
                    let owner = shards.iter().find(|(s, _)| s.keeps(positions[i])).map(|(_, a)| a.dir.display().to_string());
                    anyhow::anyhow!(
                        "shard artifact {} lacks the score of prompt {} sample {}",
                        owner.unwrap_or_default(),
                        rows[i].prompt_id,
                        rows[i].sample_idx
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let n = write_table(&dir.join("scores.parquet"), &scores)?;
        Ok(ProduceOutput { extra: crate::shard::merged_extra(&shards, &[]), ..Default::default() }
            .with_rows("scores.parquet", n))
    })
}

/// How rewards are computed from scores. As a flag (`cream-judge --mode`) each variant is spelled
/// as [`JudgeMode::as_str`] gives it (clap's kebab-case of the name).
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
/// batch-size independent); its artifact also holds `judgements.parquet` (see the private `llm_judge`).
pub fn run(
    ctx: &Ctx,
    p: &Pipeline,
    samples: &str,
    mode: JudgeMode,
    policy: &Path,
    reference: Option<&Path>,
) -> Result<Artifact> {
    let batch_tokens = p.judge.batch_tokens;
    let samples = ctx.open(samples, crate::generate::STAGE)?;
    if mode == JudgeMode::LlmJudge {
        if reference.is_some() {
            ctx.log("judge: mode llm-judge uses no reference model; --reference is ignored");
        }
        return llm_judge(ctx, p, &samples, policy);
    }
    let pol = score(ctx, &samples, policy, batch_tokens)?;
    let reference = match (mode, reference) {
        (JudgeMode::Dpo, Some(r)) => Some(score(ctx, &samples, r, batch_tokens)?),
        (JudgeMode::Dpo, None) => bail!("judge mode dpo needs a reference model (M0)"),
        (JudgeMode::Likelihood | JudgeMode::LlmJudge, _) => None,
    };
    let mut inputs = vec![samples.as_input("samples"), pol.as_input("policy_scores")];
    if let Some(r) = &reference {
        inputs.push(r.as_input("reference_scores"));
    }
    let spec = ArtifactSpec { stage: STAGE.into(), schema_version: 1, params: json!({"mode": mode.as_str()}), inputs };
    ctx.produce(spec, |dir| {
        let pol_rows: Vec<ScoreRow> = read_table(&pol.path("scores.parquet")?)?;
        let ref_map: Option<HashMap<(String, u32), f64>> = match &reference {
            Some(r) => Some(
                read_table::<ScoreRow>(&r.path("scores.parquet")?)?
                    .into_iter()
                    .map(|s| ((s.prompt_id, s.sample_idx), s.sum_logprob))
                    .collect(),
            ),
            None => None,
        };
        let mut rewards = Vec::with_capacity(pol_rows.len());
        for s in pol_rows {
            ensure!(s.n_scored > 0, "scores.parquet: prompt {} sample {} has no scored tokens", s.prompt_id, s.sample_idx);
            let (s_ref, reward) = match &ref_map {
                Some(m) => {
                    let r = *m.get(&(s.prompt_id.clone(), s.sample_idx)).with_context(|| {
                        format!("reference scores lack prompt {} sample {}", s.prompt_id, s.sample_idx)
                    })?;
                    (Some(r), s.sum_logprob - r)
                }
                None => (None, s.sum_logprob / s.n_scored as f64),
            };
            rewards.push(RewardRow {
                prompt_id: s.prompt_id,
                sample_idx: s.sample_idx,
                mode: mode.as_str().into(),
                s_policy: s.sum_logprob,
                s_ref,
                n_scored: s.n_scored,
                reward,
            });
        }
        let n = write_table(&dir.join("rewards.parquet"), &rewards)?;
        Ok(ProduceOutput::default().with_rows("rewards.parquet", n))
    })
}

/// The judge prompt of the `llm-judge` mode, a close paraphrase of Yuan et al. 2024 ("Self-Rewarding
/// Language Models"), Fig. 2: an additive 5-point rubric. `{question}` and `{response}` are
/// replaced once each by [`judge_prompt`]. Its blake3 is part of the artifact key.
pub const JUDGE_TEMPLATE: &str = "\
Review the user's question and the corresponding response using the additive 5-point scoring \
system described below. Points accumulate according to which criteria the response satisfies:
- Add 1 point if the response is relevant and provides some information related to the user's \
inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but \
does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a \
useful way, regardless of whether it seems to have been written by an AI Assistant or has \
elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, \
addresses the user's question directly and comprehensively, and is well-organized and helpful, \
even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an \
AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a \
high-quality, engaging and insightful answer.

User: {question}
<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: \"Score: <total points>\"
Remember to assess from the AI Assistant perspective. To evaluate the response in alignment with \
this additive scoring model, we'll systematically attribute points based on the outlined criteria.";

/// Version of [`parse_score`]'s rules; part of the `llm-judge` artifact key (bump on change).
pub const PARSER_VERSION: u32 = 1;

/// [`JUDGE_TEMPLATE`] with the question and the response filled in. Each placeholder is replaced
/// exactly once, in the template only, so text inside the question or response that looks like a
/// placeholder stays as it is.
pub fn judge_prompt(question: &str, response: &str) -> String {
    let (head, rest) = JUDGE_TEMPLATE.split_once("{question}").expect("template has {question}");
    let (mid, tail) = rest.split_once("{response}").expect("template has {response}");
    format!("{head}{question}{mid}{response}{tail}")
}

/// The judge's score: the value of the LAST "Score: k" in `text`, or `None`.
///
/// A match is the word "score" (ASCII case-insensitive, not preceded by a letter or digit, so
/// "Subscore: 3" does not count), optional spaces or tabs, ':', optional spaces or tabs, and a
/// number: digits with an optional decimal part ("4", "4.5"; a trailing '.' ends the sentence,
/// "5." is 5). Text such as "a score of" or "Score:" without a number is not a match. The last
/// match decides: if its value is above 5 (a judge that left the 0-5 scale), the result is
/// `None` even when an earlier match was in range.
pub fn parse_score(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let mut last: Option<Option<f64>> = None;
    let mut i = 0;
    while i + 5 <= b.len() {
        if b[i..i + 5].eq_ignore_ascii_case(b"score") && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            if let Some((value, end)) = score_after(b, i + 5) {
                last = Some(value);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    last.flatten()
}

/// After "score" at byte `j`: the in-range value (or `None` if above 5) and the end of the match.
fn score_after(b: &[u8], mut j: usize) -> Option<(Option<f64>, usize)> {
    let skip_blank = |j: &mut usize| {
        while *j < b.len() && (b[*j] == b' ' || b[*j] == b'\t') {
            *j += 1;
        }
    };
    skip_blank(&mut j);
    if b.get(j) != Some(&b':') {
        return None;
    }
    j += 1;
    skip_blank(&mut j);
    let start = j;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    if j == start {
        return None;
    }
    if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    let v: f64 = std::str::from_utf8(&b[start..j]).ok()?.parse().ok()?;
    Some(((0.0..=5.0).contains(&v).then_some(v), j))
}

/// Fraction of prompts (by `prompt_id`) whose samples' rewards contain at least one exact tie.
pub fn tie_rate(rewards: &[RewardRow]) -> f64 {
    let mut by_prompt: HashMap<&str, Vec<f64>> = HashMap::new();
    for r in rewards {
        by_prompt.entry(&r.prompt_id).or_default().push(r.reward);
    }
    let tied = by_prompt
        .values_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v.windows(2).any(|w| w[0] == w[1])
        })
        .filter(|&tied| tied)
        .count();
    ratio(tied, by_prompt.len())
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// The `llm-judge` mode. For every sample, `p.judge.judgements` judgements are sampled from the
/// policy model on [`judge_prompt`] (rendered as one user turn with the model's chat template),
/// judgement j of sample (x, i) with seed `sample_seed(p.seed, "<prompt_id>:<i>", j)`.
///
/// Outputs:
/// - `judgements.parquet` ([`JudgementRow`]): every raw judge text, its [`parse_score`] and a
///   status, `"ok"` (score parsed) or `"no_score"` (score is null).
/// - `rewards.parquet` ([`RewardRow`], mode `"llm-judge"`): `reward` = `s_policy` = the mean of
///   the sample's parsed scores, `s_ref` = null, `n_scored` = the number of parsed judgements.
///   When no judgement of a sample parses, `n_scored` = 0 marks the failure and the reward is
///   0.0, the bottom of the scale (never NaN, which downstream ranking cannot order).
/// - manifest extra: `judgements` (total), `judgements_per_sample`, `parse_failure_rate`
///   (fraction of judgements without a score), `failed_samples` (samples with `n_scored` = 0),
///   `tie_rate` (fraction of prompts whose samples' rewards contain a tie), `mean_reward`,
///   `length_stops` (judgements cut by `judge_max_new_tokens`) and `new_tokens`.
fn llm_judge(ctx: &Ctx, p: &Pipeline, samples: &Artifact, policy: &Path) -> Result<Artifact> {
    let j = p.judge.clone();
    let (model_in, model_path) = ctx.model_input("policy", policy)?;
    let params = SamplingParams {
        temperature: j.judge_temperature,
        top_p: j.judge_top_p,
        max_new_tokens: j.judge_max_new_tokens,
    };
    let spec = ArtifactSpec {
        stage: STAGE.into(),
        schema_version: 1,
        params: json!({
            "mode": JudgeMode::LlmJudge.as_str(),
            "seed": p.seed,
            "judgements": j.judgements,
            "temperature": j.judge_temperature,
            "top_p": j.judge_top_p,
            "max_new_tokens": j.judge_max_new_tokens,
            "template_blake3": cream_core::hash_bytes(JUDGE_TEMPLATE.as_bytes()),
            "parser": PARSER_VERSION,
        }),
        inputs: vec![samples.as_input("samples"), model_in],
    };
    let (seed, batch_size, k) = (p.seed, p.generate.batch_size, j.judgements);
    ctx.produce(spec, |dir| {
        let rows: Vec<SampleRow> = read_table(&samples.path("samples.parquet")?)?;
        let lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        let max_pos = lm.model.cfg.max_position_embeddings;
        let mut reqs = Vec::with_capacity(rows.len() * k);
        for r in &rows {
            let ids = lm.tokenizer.encode_prompt(&judge_prompt(&r.prompt, &r.response))?;
            ensure!(
                ids.len() + params.max_new_tokens <= max_pos,
                "llm-judge: the judge prompt of prompt {} sample {} has {} tokens; with \
                 judge_max_new_tokens = {} it exceeds the context window of {max_pos}; lower \
                 [judge] judge_max_new_tokens or [generate] max_new_tokens / max_prompt_tokens",
                r.prompt_id,
                r.sample_idx,
                ids.len(),
                params.max_new_tokens
            );
            let key = format!("{}:{}", r.prompt_id, r.sample_idx);
            for jdx in 0..k as u32 {
                let seed = cream_lm::rng::sample_seed(seed, &key, jdx);
                reqs.push(GenRequest { prompt_ids: ids.clone(), seed });
            }
        }
        let pb = crate::progress::bar(reqs.len(), "llm-judge", ctx.quiet);
        let outs = cream_lm::generate(&lm.model, lm.tokenizer.stop_ids(), &reqs, &params, batch_size, &mut |n| {
            pb.set_position(n as u64)
        })?;
        pb.finish_and_clear();
        let stops = lm.tokenizer.stop_ids();
        let mut judgements = Vec::with_capacity(outs.len());
        let mut rewards = Vec::with_capacity(rows.len());
        let (mut new_tokens, mut length_stops) = (0u64, 0usize);
        for (r, outs) in rows.iter().zip(outs.chunks(k)) {
            let mut parsed = Vec::with_capacity(k);
            for (jdx, out) in outs.iter().enumerate() {
                new_tokens += out.tokens.len() as u64;
                length_stops += usize::from(out.finish == cream_lm::FinishReason::Length);
                let text_ids: Vec<u32> = out.tokens.iter().copied().filter(|t| !stops.contains(t)).collect();
                let text = lm.tokenizer.decode(&text_ids)?;
                let score = parse_score(&text);
                parsed.extend(score);
                judgements.push(JudgementRow {
                    prompt_id: r.prompt_id.clone(),
                    sample_idx: r.sample_idx,
                    judgement_idx: jdx as u32,
                    text,
                    score,
                    status: if score.is_some() { "ok" } else { "no_score" }.into(),
                });
            }
            let reward = if parsed.is_empty() { 0.0 } else { parsed.iter().sum::<f64>() / parsed.len() as f64 };
            rewards.push(RewardRow {
                prompt_id: r.prompt_id.clone(),
                sample_idx: r.sample_idx,
                mode: JudgeMode::LlmJudge.as_str().into(),
                s_policy: reward,
                s_ref: None,
                n_scored: parsed.len() as u32,
                reward,
            });
        }
        let failures = judgements.iter().filter(|j| j.score.is_none()).count();
        let failed_samples = rewards.iter().filter(|r| r.n_scored == 0).count();
        let parse_failure_rate = ratio(failures, judgements.len());
        let tie_rate = tie_rate(&rewards);
        let mean_reward =
            if rewards.is_empty() { 0.0 } else { rewards.iter().map(|r| r.reward).sum::<f64>() / rewards.len() as f64 };
        ctx.log(format!(
            "llm-judge: {} judgements of {} samples, parse failures {failures} ({:.1}%), failed samples \
             {failed_samples}, tie rate {:.1}%, mean reward {mean_reward:.3}",
            judgements.len(),
            rows.len(),
            100.0 * parse_failure_rate,
            100.0 * tie_rate
        ));
        let n_rewards = write_table(&dir.join("rewards.parquet"), &rewards)?;
        let n_judgements = write_table(&dir.join("judgements.parquet"), &judgements)?;
        Ok(ProduceOutput {
            extra: json!({
                "judgements": judgements.len(),
                "judgements_per_sample": k,
                "parse_failure_rate": parse_failure_rate,
                "failed_samples": failed_samples,
                "tie_rate": tie_rate,
                "mean_reward": mean_reward,
                "length_stops": length_stops,
                "new_tokens": new_tokens,
            }),
            ..Default::default()
        }
        .with_rows("rewards.parquet", n_rewards)
        .with_rows("judgements.parquet", n_judgements))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_score_takes_the_last_match() {
        assert_eq!(parse_score("Score: 2\nOn reflection... Score: 4"), Some(4.0));
        assert_eq!(parse_score("The response is relevant. Score: 3"), Some(3.0));
        assert_eq!(parse_score("Score: 1. Then again, Total score: 5."), Some(5.0));
    }

    #[test]
    fn parse_score_formats() {
        assert_eq!(parse_score("score: 4.5"), Some(4.5));
        assert_eq!(parse_score("Score:5"), Some(5.0));
        assert_eq!(parse_score("SCORE :  0"), Some(0.0));
        assert_eq!(parse_score("Score:\t3/5"), Some(3.0));
        assert_eq!(parse_score("Score: 5."), Some(5.0));
        assert_eq!(parse_score("(Score: 2)"), Some(2.0));
    }

    #[test]
    fn parse_score_rejects_out_of_range_and_missing() {
        assert_eq!(parse_score("Score: 7"), None);
        assert_eq!(parse_score("Score: 5.5"), None);
        // The last match decides, even when an earlier one was in range.
        assert_eq!(parse_score("Score: 3 ... Score: 10"), None);
        assert_eq!(parse_score(""), None);
        assert_eq!(parse_score("The response is helpful and relevant."), None);
        assert_eq!(parse_score("I would give this a high score; the score is good. Score:"), None);
        assert_eq!(parse_score("Score: four"), None);
        assert_eq!(parse_score("Score: -1"), None);
        // "score" inside a word is not a match; a number-less match does not hide an earlier one.
        assert_eq!(parse_score("Subscore: 3"), None);
        assert_eq!(parse_score("Score: 2. Final score: pending"), Some(2.0));
        // Non-ASCII text around a match.
        assert_eq!(parse_score("Réponse utile — Score: 4 ✓"), Some(4.0));
    }

    #[test]
    fn judge_prompt_embeds_question_and_response_once() {
        let q = "What is {response}?";
        let r = "It is {question}.";
        let text = judge_prompt(q, r);
        assert!(text.contains("User: What is {response}?\n<response>It is {question}.</response>"));
        assert!(text.starts_with("Review the user's question"));
        assert!(text.contains("\"Score: <total points>\""));
        assert_eq!(text.matches("{question}").count(), 1);
    }

    #[test]
    fn tie_rate_counts_prompts_with_a_tie() {
        let row = |p: &str, i: u32, reward: f64| RewardRow {
            prompt_id: p.into(),
            sample_idx: i,
            mode: "llm-judge".into(),
            s_policy: reward,
            s_ref: None,
            n_scored: 1,
            reward,
        };
        let rows = [row("a", 0, 3.0), row("a", 1, 3.0), row("b", 0, 1.0), row("b", 1, 2.5), row("c", 0, 4.0)];
        assert!((tie_rate(&rows) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(tie_rate(&[]), 0.0);
    }
}
