//! The `eval` stage (spec "Evaluation"): greedy answers to the `prepare` artifact's held-out
//! questions (`eval.parquet`, whose prompts already carry the eval suffix) under one model, graded
//! per task by exact match of the extracted final answer against the gold answer.
//!
//! GSM8K: the number after the highest-priority marker (else the last number), compared as
//! numbers ("18.0" == "18"). Multiple choice (Social IQa, ARC, OBQA): the letter after the first
//! `answer:`; the reference code's last-standalone-letter fallback only with
//! `[eval] compat_last_letter`. Other tasks (evaluation sets of `[[data.sources]]`): by the form
//! of the gold answer, see [`grade`]. Accuracy is reported per task in percent, with the unweighted mean
//! over tasks, in the manifest's `extra`.
//!
//! Like `generate`, eval can run as shard `k/n` ([`run_shard`]: the eval rows at positions `p`
//! with `p % n == k`) and the shards be merged ([`merge`]) into the unsharded artifact.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use cream_core::{Artifact, ArtifactSpec, EvalRow, InputRef, ProduceOutput, PromptRow, read_table, write_table};
use cream_lm::{GenRequest, SamplingParams};
use serde_json::json;

use crate::config::Pipeline;
use crate::grade::grade;
use crate::ctx::{Ctx, params};
use crate::names;
use crate::shard::{self, Shard};

/// Per-task counts of graded rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    n: u64,
    correct: u64,
    unparsed: u64,
}

/// The manifest statistics of graded rows: accuracy (percent) per task, its mean over tasks, and
/// row / unparsed counts per task.
fn summarize(rows: &[EvalRow]) -> serde_json::Value {
    let mut tally: BTreeMap<&str, Tally> = BTreeMap::new();
    for r in rows {
        let t = tally.entry(&r.task).or_default();
        t.n += 1;
        t.correct += u64::from(r.correct);
        t.unparsed += u64::from(r.extracted.is_none());
    }
    let accuracy: BTreeMap<&str, f64> =
        tally.iter().map(|(&k, t)| (k, 100.0 * t.correct as f64 / t.n as f64)).collect();
    let mean = if accuracy.is_empty() { 0.0 } else { accuracy.values().sum::<f64>() / accuracy.len() as f64 };
    let mut outcomes: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
    for r in rows {
        outcomes.entry(&r.task).or_default().push(r.correct);
    }
    let intervals: BTreeMap<&str, serde_json::Value> =
        outcomes.iter().map(|(&k, v)| (k, crate::summary::accuracy_interval(v, 0))).collect();
    json!({
        "accuracy": accuracy,
        "accuracy_ci95": intervals,
        "accuracy_mean": mean,
        "n": tally.iter().map(|(&k, t)| (k, t.n)).collect::<BTreeMap<_, _>>(),
        "unparsed": tally.iter().map(|(&k, t)| (k, t.unparsed)).collect::<BTreeMap<_, _>>(),
    })
}

/// The `[eval]` values that generative grading uses (the log-likelihood batch size is not one).
fn generation_params(p: &Pipeline) -> Result<serde_json::Value> {
    let mut v = params(&p.eval)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("mc_batch_tokens");
        o.remove("mc_items_per_task");
    }
    Ok(v)
}

/// The spec of the `eval` artifact of `model` (the input `model`) on `prompts` (shard `shard`;
/// [`Shard::ALL`] is the unsharded spec).
pub fn spec(p: &Pipeline, prompts: &Artifact, model: InputRef, shard: Shard) -> Result<ArtifactSpec> {
    let spec = ArtifactSpec {
        stage: names::stage::EVAL.into(),
        schema_version: 1,
        params: json!({"eval": generation_params(p)?, "max_prompt_tokens": p.generate.max_prompt_tokens}),
        inputs: vec![prompts.as_input("prompts"), model],
    };
    shard.spec(&spec)
}

/// Statistics of the manifest `extra` that a merge sums over the shards (the accuracy statistics
/// are recomputed from the merged rows).
const SUMMED_EXTRA: [&str; 2] = ["truncated_prompts", "cut_off_responses"];

/// The eval rows of `prompts` and their gold answers, checked before any generation.
/// Only the rows of `tasks` when it is not empty (`[eval] generate_tasks`).
fn eval_rows(prompts: &Artifact, tasks: &[String]) -> Result<Vec<PromptRow>> {
    let rows: Vec<PromptRow> = read_table(&prompts.path(names::file::EVAL_PROMPTS)?)?;
    let rows: Vec<PromptRow> =
        rows.into_iter().filter(|r| tasks.is_empty() || tasks.contains(&r.task)).collect();
    ensure!(
        !rows.is_empty(),
        "eval.parquet of {} has no rows{}",
        prompts.dir.display(),
        if tasks.is_empty() { String::new() } else { format!(" of the tasks [eval] generate_tasks = {tasks:?}") }
    );
    for r in &rows {
        let gold = r
            .answer
            .as_deref()
            .with_context(|| format!("eval.parquet: prompt {} ({}) has no gold answer", r.prompt_id, r.task))?;
        grade(&r.task, "", gold, false).with_context(|| format!("eval.parquet: prompt {}", r.prompt_id))?;
    }
    Ok(rows)
}

/// Evaluate `model` on the `eval.parquet` of the `prepare` artifact `prompts`.
pub fn run(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path) -> Result<Artifact> {
    run_shard(ctx, p, prompts, model, Shard::ALL)
}

/// [`run`] for shard `shard`: evaluates only the eval rows at positions `p` with
/// `p % n == k` (their rows are the unsharded run's rows; merge the shards with [`merge`]).
/// [`Shard::ALL`] is [`run`].
pub fn run_shard(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path, shard: Shard) -> Result<Artifact> {
    let prompts = ctx.open(prompts, names::stage::PREPARE)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let max_prompt_tokens = p.generate.max_prompt_tokens;
    let spec = spec(p, &prompts, model_in, shard)?;
    let e = p.eval.clone();
    ctx.produce(spec, |dir| {
        let rows: Vec<PromptRow> =
            eval_rows(&prompts, &p.eval.generate_tasks)?.into_iter().enumerate().filter(|(pos, _)| shard.keeps(*pos)).map(|(_, r)| r).collect();
        if rows.is_empty() {
            // More shards than eval rows: this shard has nothing to do.
            ctx.log(format!("eval: shard {shard} has no rows"));
            let n = write_table::<EvalRow>(&dir.join(names::file::EVAL), &[])?;
            let mut extra = summarize(&[]);
            extra["truncated_prompts"] = json!(0);
            extra["cut_off_responses"] = json!(0);
            return Ok(ProduceOutput { extra, ..Default::default() }.with_rows(names::file::EVAL, n));
        }
        let golds: Vec<&str> = rows.iter().map(|r| r.answer.as_deref().unwrap_or_default()).collect();
        let lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        let mut reqs = Vec::with_capacity(rows.len());
        let mut truncated = 0usize;
        for r in &rows {
            let mut ids = lm.tokenizer.encode_prompt(&r.prompt)?;
            if ids.len() > max_prompt_tokens {
                ids.drain(..ids.len() - max_prompt_tokens);
                truncated += 1;
            }
            reqs.push(GenRequest { prompt_ids: ids, seed: 0 });
        }
        let sampling = SamplingParams::greedy(e.max_new_tokens);
        let pb = crate::progress::bar(reqs.len(), "eval", ctx.quiet);
        let outs = cream_lm::generate(&lm.model, lm.tokenizer.stop_ids(), &reqs, &sampling, e.batch_size, &mut |n| {
            pb.set_position(n as u64)
        })?;
        pb.finish_and_clear();
        let stops = lm.tokenizer.stop_ids();
        let mut evals = Vec::with_capacity(rows.len());
        for ((r, gold), out) in rows.iter().zip(golds).zip(&outs) {
            let text_ids: Vec<u32> = out.tokens.iter().copied().filter(|t| !stops.contains(t)).collect();
            let response = lm.tokenizer.decode(&text_ids)?;
            let (extracted, correct) = grade(&r.task, &response, gold, e.compat_last_letter)?;
            evals.push(EvalRow {
                prompt_id: r.prompt_id.clone(),
                task: r.task.clone(),
                prompt: r.prompt.clone(),
                response,
                extracted,
                answer: gold.to_string(),
                correct,
            });
        }
        let n = write_table(&dir.join(names::file::EVAL), &evals)?;
        let mut extra = summarize(&evals);
        extra["truncated_prompts"] = json!(truncated);
        // Answers that hit `max_new_tokens` before the end-of-turn token: a high rate means the
        // limit, not the model, decided the grade.
        extra["cut_off_responses"] =
            json!(outs.iter().filter(|o| o.finish == cream_lm::FinishReason::Length).count());
        for (task, acc) in extra["accuracy"].as_object().into_iter().flatten() {
            ctx.log(format!("eval: {task} {:.2}%", acc.as_f64().unwrap_or(f64::NAN)));
        }
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows(names::file::EVAL, n))
    })
}

/// Merge the shard artifacts `shards` of a `--shard K/N` eval run into the unsharded artifact of
/// (`p`, `prompts`, `model`): the same id and the same `eval.parquet` bytes as [`run`] (a cache
/// hit if that artifact exists). The shards must be exactly `0..n` of one `n`, each of the same
/// config and inputs; every eval row must be in the shard that owns it. The accuracy statistics
/// of the manifest `extra` are recomputed from the merged rows (equal to the unsharded run's);
/// `truncated_prompts` is summed and the shard ids are recorded as `merged_from`.
pub fn merge(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path, shards: &[&str]) -> Result<Artifact> {
    let prompts = ctx.open(prompts, names::stage::PREPARE)?;
    let (model_in, _) = ctx.model_input("model", model)?;
    let spec = spec(p, &prompts, model_in, Shard::ALL)?;
    let shards = shard::open_shards(ctx, &spec, shards)?;
    ctx.produce(spec, |dir| {
        let rows = eval_rows(&prompts, &p.eval.generate_tasks)?;
        let layout = shard::Layout {
            keys: rows.iter().enumerate().map(|(pos, r)| (r.prompt_id.clone(), pos)).collect(),
            source: format!("the eval prompts of {}", prompts.dir.display()),
        };
        let evals = shard::merge_rows(&shards, names::file::EVAL, &layout, |r: &EvalRow| r.prompt_id.clone(), |id| {
            format!("eval prompt {id}")
        })?;
        let n = write_table(&dir.join(names::file::EVAL), &evals)?;
        let mut extra = summarize(&evals);
        let summed = shard::merged_extra(&shards, &SUMMED_EXTRA);
        for (k, v) in summed.as_object().into_iter().flatten() {
            extra[k.as_str()] = v.clone();
        }
        for (task, acc) in extra["accuracy"].as_object().into_iter().flatten() {
            ctx.log(format!("eval: {task} {:.2}%", acc.as_f64().unwrap_or(f64::NAN)));
        }
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows(names::file::EVAL, n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::CHOICE_TASKS;

    #[test]
    fn gsm8k_marker_and_numeric_equality() {
        let (x, ok) = grade("gsm8k", "2 + 3 = 5.\nAnswer: 5.0", "5", false).unwrap();
        assert_eq!((x.as_deref(), ok), (Some("5"), true));
        let (x, ok) = grade("gsm8k", "The total is 1,234 apples.", "1234", false).unwrap();
        assert_eq!((x.as_deref(), ok), (Some("1234"), true));
        let (x, ok) = grade("gsm8k", "#### 7", "5", false).unwrap();
        assert_eq!((x.as_deref(), ok), (Some("7"), false));
    }

    #[test]
    fn multiple_choice_letters() {
        for task in CHOICE_TASKS {
            let (x, ok) = grade(task, "Because of that.\nAnswer: (b)", "B", false).unwrap();
            assert_eq!((x.as_deref(), ok), (Some("B"), true), "{task}");
            let (x, ok) = grade(task, "**Answer:** C.", "a", false).unwrap();
            assert_eq!((x.as_deref(), ok), (Some("C"), false), "{task}");
        }
    }

    #[test]
    fn unparsed_responses() {
        assert_eq!(grade("gsm8k", "I do not know.", "5", false).unwrap(), (None, false));
        // A marker with no number after it does not fall back to earlier numbers.
        assert_eq!(grade("gsm8k", "3 or 4? Answer: unclear", "3", false).unwrap(), (None, false));
        assert_eq!(grade("socialiqa", "It is a hard one.", "A", false).unwrap(), (None, false));
        // The compatibility fallback reads the article "a" as A.
        assert_eq!(
            grade("socialiqa", "It is a hard one.", "A", true).unwrap(),
            (Some("A".to_string()), true)
        );
    }

    #[test]
    fn other_tasks_are_graded_by_the_form_of_the_gold_answer() {
        // A number: as GSM8K.
        assert_eq!(grade("mine", "So 3 + 4.\nAnswer: 7.0", "7", false).unwrap(), (Some("7".into()), true));
        // A letter: as multiple choice.
        assert_eq!(grade("mine", "Answer: (c)", "C", false).unwrap(), (Some("C".into()), true));
        // Free text: exact match of the extracted line, case and markdown aside.
        assert_eq!(grade("capitals", "Hmm.\n**Answer:** Paris.", "paris", false).unwrap(), (Some("paris".into()), true));
        assert_eq!(grade("capitals", "Answer: Paris, France", "Paris", false).unwrap(), (Some("paris, france".into()), false));
        assert_eq!(grade("capitals", "Paris", "Paris", false).unwrap(), (None, false));
        assert!(grade("capitals", "Answer: x", "two\nlines", false).is_err());
    }

    #[test]
    fn bad_gold_is_an_error() {
        assert!(grade("gsm8k", "5", "five", false).is_err());
        assert!(grade("socialiqa", "Answer: A", "E", false).is_err());
        assert!(grade("obqa", "Answer: A", "7", false).is_err());
    }

    #[test]
    fn summary_counts_and_mean() {
        let row = |task: &str, extracted: Option<&str>, correct: bool| EvalRow {
            prompt_id: "p".into(),
            task: task.into(),
            prompt: String::new(),
            response: String::new(),
            extracted: extracted.map(String::from),
            answer: "x".into(),
            correct,
        };
        let s = summarize(&[
            row("gsm8k", Some("5"), true),
            row("gsm8k", None, false),
            row("socialiqa", Some("A"), true),
        ]);
        assert_eq!(s["accuracy"]["gsm8k"], 50.0);
        assert_eq!(s["accuracy"]["socialiqa"], 100.0);
        assert_eq!(s["accuracy_mean"], 75.0);
        assert_eq!(s["n"]["gsm8k"], 2);
        assert_eq!(s["unparsed"]["gsm8k"], 1);
        assert_eq!(s["unparsed"]["socialiqa"], 0);
    }
}
