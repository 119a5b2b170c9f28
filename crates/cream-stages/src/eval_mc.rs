//! Multiple-choice evaluation by log-likelihood, as lm-evaluation-harness scores it: each option
//! of an item (`prepare`'s `mc.parquet`) is scored as the continuation `" " + option` of the
//! item's context (teacher-forced, no chat template), and the model's answer is the option with
//! the highest summed log-prob (`acc`) or summed log-prob per character of the option
//! (`acc_norm`, lm-evaluation-harness's length normalisation). This sees differences that
//! generative grading cannot at small scale, where a model rarely writes "Answer: X".
//!
//! Tokenisation follows lm-evaluation-harness: the continuation's tokens are those of
//! `context + " " + option` after the context's own tokens (when the context's tokens are not a
//! prefix of the whole, the two are encoded separately and concatenated).
//!
//! The artifact is an `eval` artifact (params `{"method": "loglik", ...}`) holding
//! `mc_eval.parquet` (one row per item); its manifest's `extra` has, per task, `acc` and
//! `acc_norm` in percent with 95% bootstrap intervals and the item count.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cream_core::{Artifact, ArtifactSpec, ChoiceRow, InputRef, McEvalRow, ProduceOutput, read_table, write_table};
use cream_lm::{ChatTokenizer, Conversation, ScoreOptions};
use serde_json::{Value, json};

use crate::config::Pipeline;
use crate::ctx::Ctx;
use crate::names;
use crate::summary::accuracy_interval;

/// The `method` parameter that tells a log-likelihood eval artifact from a generative one.
pub const METHOD: &str = names::eval_method::LOGLIK;

/// The spec of the log-likelihood `eval` artifact of `model` on `prompts`.
pub fn spec(p: &Pipeline, prompts: &Artifact, model: InputRef) -> ArtifactSpec {
    ArtifactSpec {
        stage: names::stage::EVAL.into(),
        schema_version: 1,
        params: if p.eval.mc_items_per_task.is_empty() {
            json!({"method": METHOD, "mc_batch_tokens": p.eval.mc_batch_tokens})
        } else {
            json!({"method": METHOD, "mc_batch_tokens": p.eval.mc_batch_tokens, "mc_items_per_task": p.eval.mc_items_per_task})
        },
        inputs: vec![prompts.as_input("prompts"), model],
    }
}

/// One item: its options' rows, in option order.
struct Item<'a> {
    rows: Vec<&'a ChoiceRow>,
    gold: usize,
}

/// Groups `mc.parquet` rows into items (options consecutive, `choice_idx` 0, 1, ..., exactly one
/// gold option), naming the file and item on any violation.
fn items<'a>(rows: &'a [ChoiceRow], file: &str) -> Result<Vec<Item<'a>>> {
    let mut out: Vec<Item<'a>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut i = 0;
    while i < rows.len() {
        let id = &rows[i].item_id;
        ensure!(seen.insert(id.as_str()), "{file}: item {id} appears in two places; its options must be consecutive rows");
        let mut j = i;
        while j < rows.len() && rows[j].item_id == *id {
            ensure!(
                rows[j].choice_idx as usize == j - i,
                "{file} row {}: item {id} has choice_idx {} where {} was expected",
                j + 1,
                rows[j].choice_idx,
                j - i
            );
            j += 1;
        }
        let group: Vec<&ChoiceRow> = rows[i..j].iter().collect();
        ensure!(group.len() >= 2, "{file}: item {id} has {} option(s); need at least 2", group.len());
        let golds: Vec<usize> = group.iter().enumerate().filter(|(_, r)| r.gold).map(|(k, _)| k).collect();
        let [gold] = golds[..] else {
            bail!("{file}: item {id} has {} gold options; exactly one is needed", golds.len());
        };
        out.push(Item { rows: group, gold });
        i = j;
    }
    Ok(out)
}

/// The first `limits[task]` items of each task listed in `limits` (all items of other tasks),
/// in table order.
fn limit<'a>(items: Vec<Item<'a>>, limits: &BTreeMap<String, usize>) -> Vec<Item<'a>> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    items
        .into_iter()
        .filter(|it| {
            let task = &it.rows[0].task;
            let n = seen.entry(task.clone()).or_default();
            *n += 1;
            limits.get(task).is_none_or(|&max| *n <= max)
        })
        .collect()
}

/// The scored sequence of `context` continued by `" " + choice` (lm-evaluation-harness's
/// tokenisation, see the module docs).
pub fn encode_choice(tok: &ChatTokenizer, context: &str, choice: &str) -> Result<Conversation> {
    let ctx_ids = tok.encode_plain(context)?;
    ensure!(!ctx_ids.is_empty(), "empty context");
    let whole = tok.encode_plain(&format!("{context} {choice}"))?;
    if whole.len() > ctx_ids.len() && whole[..ctx_ids.len()] == ctx_ids[..] {
        return Ok(Conversation { ids: whole, score_start: ctx_ids.len() });
    }
    let mut ids = ctx_ids.clone();
    ids.extend(tok.encode_plain(&format!(" {choice}"))?);
    Ok(Conversation { ids, score_start: ctx_ids.len() })
}

/// Index of the largest value, the first one on ties.
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (k, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = k;
        }
    }
    best
}

/// The graded row of one item from its options' summed log-probs.
fn grade(item: &Item, sums: &[f64]) -> McEvalRow {
    let norm: Vec<f64> = item
        .rows
        .iter()
        .zip(sums)
        .map(|(r, s)| s / r.choice.chars().count().max(1) as f64)
        .collect();
    let (pred, pred_norm) = (argmax(sums), argmax(&norm));
    McEvalRow {
        item_id: item.rows[0].item_id.clone(),
        task: item.rows[0].task.clone(),
        n_choices: item.rows.len() as u32,
        gold: item.gold as u32,
        pred: pred as u32,
        pred_norm: pred_norm as u32,
        correct: pred == item.gold,
        correct_norm: pred_norm == item.gold,
        gold_logprob: sums[item.gold],
    }
}

/// The manifest statistics: per task `{"n", "acc": {acc, lo, hi}, "acc_norm": {acc, lo, hi}}`.
pub fn summarize(rows: &[McEvalRow]) -> Value {
    let mut by_task: BTreeMap<&str, Vec<&McEvalRow>> = BTreeMap::new();
    for r in rows {
        by_task.entry(&r.task).or_default().push(r);
    }
    let tasks: serde_json::Map<String, Value> = by_task
        .into_iter()
        .map(|(task, rs)| {
            let acc: Vec<bool> = rs.iter().map(|r| r.correct).collect();
            let norm: Vec<bool> = rs.iter().map(|r| r.correct_norm).collect();
            let v = json!({
                "n": rs.len(),
                "acc": accuracy_interval(&acc, 0),
                "acc_norm": accuracy_interval(&norm, 0),
            });
            (task.to_string(), v)
        })
        .collect();
    json!({ "method": METHOD, "tasks": tasks })
}

/// Score every multiple-choice item of `prompts` (`mc.parquet`) under `model`.
pub fn run(ctx: &Ctx, p: &Pipeline, prompts: &str, model: &Path) -> Result<Artifact> {
    let prompts = ctx.open(prompts, names::stage::PREPARE)?;
    let (model_in, model_path) = ctx.model_input("model", model)?;
    let spec = spec(p, &prompts, model_in);
    let batch_tokens = p.eval.mc_batch_tokens;
    ctx.produce(spec, |dir| {
        let path = prompts.path(names::file::MC).with_context(|| {
            format!(
                "prepare artifact {} has no {}: it was made before multiple-choice evaluation existed; \
                 rerun `cream-prepare` and set [data] mc_per_task",
                prompts.dir.display(),
                names::file::MC
            )
        })?;
        let rows: Vec<ChoiceRow> = read_table(&path)?;
        let file = path.display().to_string();
        ensure!(
            !rows.is_empty(),
            "{file} has no multiple-choice items; set [data] mc_per_task in the pipeline config to evaluate by log-likelihood"
        );
        let items = limit(items(&rows, &file)?, &p.eval.mc_items_per_task);
        let lm = cream_lm::load(&model_path, &cream_lm::default_device()?)?;
        let convs = items
            .iter()
            .flat_map(|it| &it.rows)
            .map(|r| {
                encode_choice(&lm.tokenizer, &r.context, &r.choice)
                    .with_context(|| format!("{file}: item {} option {}", r.item_id, r.choice_idx))
            })
            .collect::<Result<Vec<_>>>()?;
        let opts = ScoreOptions { max_batch_tokens: batch_tokens, ..Default::default() };
        // Chunks of options, so the bar moves; `score` batches within a chunk by length.
        let sums: Vec<f64> = crate::progress::score(&lm.model, &convs, opts, 256, "eval-mc", ctx.quiet)?
            .into_iter()
            .map(|s| s.sum)
            .collect();
        let mut graded = Vec::with_capacity(items.len());
        let mut offset = 0;
        for item in &items {
            let n = item.rows.len();
            graded.push(grade(item, &sums[offset..offset + n]));
            offset += n;
        }
        let n = write_table(&dir.join(names::file::MC_EVAL), &graded)?;
        let extra = summarize(&graded);
        for (task, v) in extra["tasks"].as_object().into_iter().flatten() {
            ctx.log(format!(
                "eval-mc: {task} acc {:.2}% [{:.2}, {:.2}], acc_norm {:.2}% (n = {})",
                v["acc"]["acc"].as_f64().unwrap_or(f64::NAN),
                v["acc"]["lo"].as_f64().unwrap_or(f64::NAN),
                v["acc"]["hi"].as_f64().unwrap_or(f64::NAN),
                v["acc_norm"]["acc"].as_f64().unwrap_or(f64::NAN),
                v["n"]
            ));
        }
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows(names::file::MC_EVAL, n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(item: &str, k: u32, text: &str, gold: bool) -> ChoiceRow {
        ChoiceRow {
            item_id: item.into(),
            task: "socialiqa".into(),
            context: "Q: x\nA:".into(),
            choice_idx: k,
            choice: text.into(),
            gold,
        }
    }

    #[test]
    fn acc_and_acc_norm_pick_different_options_when_lengths_differ() {
        let rows = vec![choice("i", 0, "no", false), choice("i", 1, "a much longer option", true)];
        let items = items(&rows, "mc.parquet").unwrap();
        // Sum favours the short option; per character the long one wins.
        let r = grade(&items[0], &[-3.0, -8.0]);
        assert_eq!((r.pred, r.pred_norm, r.correct, r.correct_norm), (0, 1, false, true));
        assert_eq!(r.gold_logprob, -8.0);
        // Ties go to the first option.
        let r = grade(&items[0], &[-2.0, -2.0]);
        assert_eq!(r.pred, 0);
    }

    #[test]
    fn item_limits_per_task_keep_the_first_items() {
        let mut rows = Vec::new();
        for (task, n) in [("socialiqa", 3), ("quartz", 4)] {
            for i in 0..n {
                let id = format!("{task}{i}");
                for k in 0..2u32 {
                    rows.push(ChoiceRow { task: task.into(), ..choice(&id, k, "x", k == 0) });
                }
            }
        }
        let all = items(&rows, "mc.parquet").unwrap();
        assert_eq!(all.len(), 7);
        let limits = BTreeMap::from([("quartz".to_string(), 2)]);
        let kept: Vec<String> = limit(all, &limits).iter().map(|it| it.rows[0].item_id.clone()).collect();
        assert_eq!(kept, ["socialiqa0", "socialiqa1", "socialiqa2", "quartz0", "quartz1"]);
    }

    #[test]
    fn malformed_items_are_errors_naming_the_item() {
        let two_golds = vec![choice("i", 0, "a", true), choice("i", 1, "b", true)];
        let err = items(&two_golds, "mc.parquet").err().unwrap().to_string();
        assert!(err.contains("item i") && err.contains("2 gold"), "{err}");
        let gap = vec![choice("i", 0, "a", true), choice("i", 2, "b", false)];
        let err = items(&gap, "mc.parquet").err().unwrap().to_string();
        assert!(err.contains("choice_idx 2"), "{err}");
        let split = vec![choice("i", 0, "a", true), choice("j", 0, "b", true), choice("i", 1, "c", false)];
        assert!(items(&split, "mc.parquet").is_err());
        let single = vec![choice("i", 0, "a", true)];
        assert!(items(&single, "mc.parquet").is_err());
    }

    #[test]
    fn summary_has_intervals_around_the_accuracy() {
        let row = |correct: bool| McEvalRow {
            item_id: "i".into(),
            task: "quartz".into(),
            n_choices: 2,
            gold: 0,
            pred: u32::from(!correct),
            pred_norm: 0,
            correct,
            correct_norm: true,
            gold_logprob: -1.0,
        };
        let rows: Vec<McEvalRow> = (0..100).map(|i| row(i % 4 == 0)).collect();
        let s = summarize(&rows);
        let acc = &s["tasks"]["quartz"]["acc"];
        assert_eq!(acc["acc"].as_f64().unwrap(), 25.0);
        let (lo, hi) = (acc["lo"].as_f64().unwrap(), acc["hi"].as_f64().unwrap());
        assert!(lo < 25.0 && hi > 25.0 && lo > 10.0 && hi < 40.0, "[{lo}, {hi}]");
        assert_eq!(s["tasks"]["quartz"]["acc_norm"]["acc"].as_f64().unwrap(), 100.0);
        assert_eq!(s["tasks"]["quartz"]["n"], 100);
    }
}
