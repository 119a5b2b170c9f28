//! The `llm-judge` mode of `judge`: the Self-Rewarding LM baseline (Yuan et al. 2024, Fig. 2).
//! The policy model judges each sample with an additive 5-point rubric ([`JUDGE_TEMPLATE`]); the
//! reward is the mean of k sampled judgements' parsed scores ([`parse_score`]).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, ensure};
use cream_core::{
    Artifact, ArtifactSpec, InputRef, JudgementRow, ProduceOutput, RewardRow, SampleRow, read_table, write_table,
};
use cream_lm::{ChatTokenizer, GenOutput, GenRequest, LoadedModel, SamplingParams};
use serde_json::{Value, json};

use super::JudgeMode;
use crate::config::Pipeline;
use crate::ctx::Ctx;
use crate::names;

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

/// Rewards of `samples` by the `llm-judge` mode. For every sample, `p.judge.judgements` judgements are sampled from the
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
pub(super) fn run(ctx: &Ctx, p: &Pipeline, samples: &Artifact, policy: &Path) -> Result<Artifact> {
    let (model_in, model_path) = ctx.model_input("policy", policy)?;
    let spec = spec(p, samples, model_in);
    let k = p.judge.judgements;
    ctx.produce(spec, |dir| {
        let rows: Vec<SampleRow> = read_table(&samples.path(names::file::SAMPLES)?)?;
        let mut lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        lm.model.set_precision(p.judge.precision);
        let reqs = requests(&lm, &rows, p)?;
        let pb = crate::progress::bar(reqs.len(), "llm-judge", ctx.quiet);
        let outs = cream_lm::generate(&lm.model, lm.tokenizer.stop_ids(), &reqs, &sampling(p), p.generate.batch_size, &mut |n| {
            pb.set_position(n as u64)
        })?;
        pb.finish_and_clear();
        let mut judged = Judged::default();
        for (r, outs) in rows.iter().zip(outs.chunks(k)) {
            judged.add(&lm.tokenizer, r, outs)?;
        }
        let extra = judged.summary(k);
        ctx.log(format!(
            "llm-judge: {} judgements of {} samples, parse failures {} ({:.1}%), failed samples {}, tie \
             rate {:.1}%, mean reward {:.3}",
            judged.judgements.len(),
            rows.len(),
            judged.judgements.iter().filter(|j| j.score.is_none()).count(),
            100.0 * extra["parse_failure_rate"].as_f64().unwrap_or(f64::NAN),
            extra["failed_samples"],
            100.0 * extra["tie_rate"].as_f64().unwrap_or(f64::NAN),
            extra["mean_reward"].as_f64().unwrap_or(f64::NAN),
        ));
        let n_rewards = write_table(&dir.join(names::file::REWARDS), &judged.rewards)?;
        let n_judgements = write_table(&dir.join(names::file::JUDGEMENTS), &judged.judgements)?;
        Ok(ProduceOutput { extra, ..Default::default() }
            .with_rows(names::file::REWARDS, n_rewards)
            .with_rows(names::file::JUDGEMENTS, n_judgements))
    })
}

/// The judge's sampling parameters (`[judge] judge_*`).
fn sampling(p: &Pipeline) -> SamplingParams {
    SamplingParams {
        temperature: p.judge.judge_temperature,
        top_p: p.judge.judge_top_p,
        max_new_tokens: p.judge.judge_max_new_tokens,
    }
}

/// The artifact spec: everything that decides the judgements (seed, k, sampling, the template's
/// blake3 and the parser version) and the samples and policy model.
fn spec(p: &Pipeline, samples: &Artifact, model: InputRef) -> ArtifactSpec {
    let j = &p.judge;
    let mut params = json!({
        "mode": JudgeMode::LlmJudge.as_str(),
        "seed": p.seed,
        "judgements": j.judgements,
        "temperature": j.judge_temperature,
        "top_p": j.judge_top_p,
        "max_new_tokens": j.judge_max_new_tokens,
        "template_blake3": cream_core::hash_bytes(JUDGE_TEMPLATE.as_bytes()),
        "parser": PARSER_VERSION,
    });
    // Not f32: in the key (f32 keeps the keys made before the fast mode existed).
    if !j.precision.is_f32() {
        params["precision"] = json!(j.precision.as_str());
    }
    ArtifactSpec { stage: names::stage::JUDGE.into(), schema_version: 1, params, inputs: vec![samples.as_input("samples"), model] }
}

/// The generation requests: `[judge] judgements` per sample, in sample order, judgement j of
/// sample (x, i) seeded by `sample_seed(p.seed, "<prompt_id>:<i>", j)`. A judge prompt that
/// cannot fit its answer into the context window is an error naming the sample.
fn requests(lm: &LoadedModel, rows: &[SampleRow], p: &Pipeline) -> Result<Vec<GenRequest>> {
    let (k, max_new_tokens) = (p.judge.judgements, p.judge.judge_max_new_tokens);
    let max_pos = lm.model.cfg.max_position_embeddings;
    let mut reqs = Vec::with_capacity(rows.len() * k);
    for r in rows {
        let ids = lm.tokenizer.encode_prompt(&judge_prompt(&r.prompt, &r.response))?;
        ensure!(
            ids.len() + max_new_tokens <= max_pos,
            "llm-judge: the judge prompt of prompt {} sample {} has {} tokens; with \
             judge_max_new_tokens = {} it exceeds the context window of {max_pos}; lower \
             [judge] judge_max_new_tokens or [generate] max_new_tokens / max_prompt_tokens",
            r.prompt_id,
            r.sample_idx,
            ids.len(),
            max_new_tokens
        );
        let key = format!("{}:{}", r.prompt_id, r.sample_idx);
        for jdx in 0..k as u32 {
            let seed = cream_lm::rng::sample_seed(p.seed, &key, jdx);
            reqs.push(GenRequest { prompt_ids: ids.clone(), seed });
        }
    }
    Ok(reqs)
}

/// The judgements and rewards gathered so far, with the generation counts of the manifest.
#[derive(Default)]
struct Judged {
    judgements: Vec<JudgementRow>,
    rewards: Vec<RewardRow>,
    new_tokens: u64,
    length_stops: usize,
}

impl Judged {
    /// Adds sample `r`'s judgements `outs` (in judgement order) and its reward: the mean of the
    /// parsed scores, or 0.0 with `n_scored` = 0 when none parsed.
    fn add(&mut self, tok: &ChatTokenizer, r: &SampleRow, outs: &[GenOutput]) -> Result<()> {
        let stops = tok.stop_ids();
        let mut parsed = Vec::with_capacity(outs.len());
        for (jdx, out) in outs.iter().enumerate() {
            self.new_tokens += out.tokens.len() as u64;
            self.length_stops += usize::from(out.finish == cream_lm::FinishReason::Length);
            let text_ids: Vec<u32> = out.tokens.iter().copied().filter(|t| !stops.contains(t)).collect();
            let text = tok.decode(&text_ids)?;
            let score = parse_score(&text);
            parsed.extend(score);
            self.judgements.push(JudgementRow {
                prompt_id: r.prompt_id.clone(),
                sample_idx: r.sample_idx,
                judgement_idx: jdx as u32,
                text,
                score,
                status: if score.is_some() { "ok" } else { "no_score" }.into(),
            });
        }
        let reward = if parsed.is_empty() { 0.0 } else { parsed.iter().sum::<f64>() / parsed.len() as f64 };
        self.rewards.push(RewardRow {
            prompt_id: r.prompt_id.clone(),
            sample_idx: r.sample_idx,
            mode: JudgeMode::LlmJudge.as_str().into(),
            s_policy: reward,
            s_ref: None,
            n_scored: parsed.len() as u32,
            reward,
        });
        Ok(())
    }

    /// The manifest `extra` (see [`run`]); `k` judgements per sample.
    fn summary(&self, k: usize) -> Value {
        let failures = self.judgements.iter().filter(|j| j.score.is_none()).count();
        let rewards = &self.rewards;
        let mean_reward =
            if rewards.is_empty() { 0.0 } else { rewards.iter().map(|r| r.reward).sum::<f64>() / rewards.len() as f64 };
        json!({
            "judgements": self.judgements.len(),
            "judgements_per_sample": k,
            "parse_failure_rate": ratio(failures, self.judgements.len()),
            "failed_samples": rewards.iter().filter(|r| r.n_scored == 0).count(),
            "tie_rate": tie_rate(rewards),
            "mean_reward": mean_reward,
            "length_stops": self.length_stops,
            "new_tokens": self.new_tokens,
        })
    }
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
