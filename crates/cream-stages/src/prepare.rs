//! The `prepare` stage: data files -> a `prompts` artifact with three tables:
//! `pool.parquet` (unlabeled prompts, split evenly across iterations by `generate`),
//! `eval.parquet` (held-out questions with answers) and `sft.parquet` (seed pairs: prompt +
//! reference response in `answer`).
//!
//! Defaults (see the README for why): unlabeled prompts = GSM8K train questions (answers dropped)
//! + the Social IQa rows not held out; eval = GSM8K test + held-out Social IQa rows (a
//! deterministic hash split, so no question is both a prompt and an eval item); SFT = GSM8K train
//! (question, worked solution) pairs not used as prompts.
//!
//! `mc.parquet` holds multiple-choice items for log-likelihood evaluation (one row per option):
//! the held-out Social IQa rows and, when `[data] quartz` is set, QuaRTz; every evaluation item
//! is checked to be disjoint from the pool.
//!
//! Data files are JSONL, or Parquet when the path ends in `.parquet` (see [`read_rows`]).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cream_algo::{gsm8k_gold, hash_fraction, prompt_id};
use cream_core::{Artifact, ArtifactSpec, ChoiceRow, InputRef, ProduceOutput, PromptRow, write_table};
use polars::prelude::{DataType, ParquetReader, SerReader};
use serde_json::{Value, json};

use crate::config::DataSection;
use crate::ctx::Ctx;
use crate::names;

/// Output schema version: 2 added `mc.parquet`.
const SCHEMA_VERSION: u32 = 2;
/// Appended to evaluation questions (spec, "Evaluation").
pub const EVAL_SUFFIX: &str = "\nAnswer the question by thinking step by step. At the end, output the final answer, starting with 'Answer:'.";

/// The rows of the data file `path`, each with where it is (`line N` for JSONL, `row N`,
/// 1-based, for Parquet) for error messages: JSONL, or Parquet when the path ends in `.parquet`.
fn read_rows(path: &Path) -> Result<Vec<(String, Value)>> {
    if is_parquet(path) { read_parquet(path) } else { read_jsonl(path) }
}

fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

fn read_jsonl(path: &Path) -> Result<Vec<(String, Value)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        anyhow::anyhow!(
            "{} line {line}: not valid UTF-8 (byte offset {at}); data files must be UTF-8 text, \
             re-encode or remove that line",
            path.display()
        )
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a JSON object", path.display(), i + 1))?;
        rows.push((format!("line {}", i + 1), v));
    }
    ensure!(!rows.is_empty(), "{}: no rows", path.display());
    Ok(rows)
}

/// A Parquet data file as the JSON objects [`read_jsonl`] would give: each row an object of its
/// String columns (a null is left out, so it reads as a missing field). Columns of other types
/// are ignored.
fn read_parquet(path: &Path) -> Result<Vec<(String, Value)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let df = ParquetReader::new(file)
        .finish()
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let mut rows: Vec<serde_json::Map<String, Value>> = vec![serde_json::Map::new(); df.height()];
    for col in df.columns() {
        if col.dtype() != &DataType::String {
            continue;
        }
        let values = col.str().with_context(|| format!("{}: column {:?}", path.display(), col.name().as_str()))?;
        for (row, value) in rows.iter_mut().zip(values.iter()) {
            if let Some(value) = value {
                row.insert(col.name().to_string(), Value::String(value.to_string()));
            }
        }
    }
    ensure!(!rows.is_empty(), "{}: no rows", path.display());
    Ok(rows.into_iter().enumerate().map(|(i, m)| (format!("row {}", i + 1), Value::Object(m))).collect())
}

fn field<'a>(v: &'a Value, path: &Path, at: &str, name: &str) -> Result<&'a str> {
    v[name].as_str().with_context(|| {
        format!("{} {at}: field `{name}` is missing or not a string", path.display())
    })
}

struct Gsm8kRow {
    id: String,
    question: String,
    solution: String,
    gold: String,
}

/// Drops repeated rows of one data file: a row whose prompt id (its question) appeared before
/// is dropped if `same` says it equals the first one (real data sets repeat rows, e.g. Social
/// IQa), and is an error naming both rows if it conflicts with it. Returns the kept rows.
fn drop_repeats<T>(path: &Path, rows: Vec<(String, T)>, id: impl Fn(&T) -> &str, same: impl Fn(&T, &T) -> bool) -> Result<Vec<T>> {
    let mut first: std::collections::HashMap<String, (String, usize)> = std::collections::HashMap::new();
    let mut kept: Vec<T> = Vec::with_capacity(rows.len());
    for (at, row) in rows {
        match first.get(id(&row)) {
            // An exact repeat: keep the first.
            Some((_, i)) if same(&kept[*i], &row) => {}
            Some((first_at, _)) => bail!(
                "{} {at}: duplicate prompt id {}: the same question as {first_at} with a different \
                 answer; remove one of the two rows",
                path.display(),
                id(&row)
            ),
            None => {
                first.insert(id(&row).to_string(), (at, kept.len()));
                kept.push(row);
            }
        }
    }
    Ok(kept)
}

fn gsm8k(path: &Path, source: &str) -> Result<Vec<Gsm8kRow>> {
    let rows = read_rows(path)?
        .into_iter()
        .map(|(at, v)| {
            let question = field(&v, path, &at, "question")?.to_string();
            let solution = field(&v, path, &at, "answer")?.to_string();
            let gold =
                gsm8k_gold(&solution).with_context(|| format!("{} {at}: field `answer`", path.display()))?;
            Ok((at, Gsm8kRow { id: prompt_id(source, &question), question, solution, gold }))
        })
        .collect::<Result<Vec<_>>>()?;
    drop_repeats(path, rows, |r| &r.id, |a, b| a.solution == b.solution)
}

/// The question of an evals-package row: the last user message of `input`, or for a flat
/// Parquet file the `question` (or `prompt`) column.
fn user_content<'a>(v: &'a Value, path: &Path, at: &str, parquet: bool) -> Result<&'a str> {
    if parquet {
        ["question", "prompt"].iter().find_map(|k| v[*k].as_str()).with_context(|| {
            format!("{} {at}: field `question` (or `prompt`) is missing or not a string", path.display())
        })
    } else {
        v["input"]
            .as_array()
            .and_then(|msgs| msgs.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .with_context(|| format!("{} {at}: field `input` has no user message", path.display()))
    }
}

/// Social IQa rows as shipped by the evals package: `{"input": [{"role": "user", "content"}], "ideal"}`.
/// A Parquet file may instead be flat: a String column `question` (or `prompt`) holding the user
/// content, next to `ideal`.
fn socialiqa(path: &Path) -> Result<Vec<(String, String, String)>> {
    let parquet = is_parquet(path);
    read_rows(path)?
        .into_iter()
        .map(|(at, v)| {
            let content = user_content(&v, path, &at, parquet)?.to_string();
            let ideal = field(&v, path, &at, "ideal")?.trim().to_uppercase();
            Ok((at, (prompt_id("socialiqa", &content), content, ideal)))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|rows| drop_repeats(path, rows, |r| &r.0, |a, b| a.2 == b.2))
}

/// The options of a Social IQa item in the evals package's form
/// `"<context> <question> A: <a>; B: <b>; C: <c>."`: (the text before the options, [a, b, c]).
pub fn socialiqa_choices(content: &str) -> Option<(String, Vec<String>)> {
    let body = content.strip_suffix('.').unwrap_or(content);
    let c = body.rfind("; C: ")?;
    let b = body[..c].rfind("; B: ")?;
    let a = body[..b].rfind(" A: ")?;
    let options = [&body[a + 4..b], &body[b + 5..c], &body[c + 5..]];
    let stem = body[..a].trim();
    (!stem.is_empty() && options.iter().all(|o| !o.trim().is_empty()))
        .then(|| (stem.to_string(), options.iter().map(|o| o.trim().to_string()).collect()))
}

/// The options of a QuaRTz item in the evals package's form `"<question>\n\n A: <a>\n B: <b>"`.
pub fn quartz_choices(content: &str) -> Option<(String, Vec<String>)> {
    let (stem, rest) = content.rsplit_once("\n\n A: ")?;
    let (a, b) = rest.split_once("\n B: ")?;
    let (stem, a, b) = (stem.trim(), a.trim(), b.trim());
    (!stem.is_empty() && !a.is_empty() && !b.is_empty()).then(|| (stem.to_string(), vec![a.to_string(), b.to_string()]))
}

/// One multiple-choice item: id, question stem, options, gold index.
struct McItem {
    id: String,
    stem: String,
    options: Vec<String>,
    gold: usize,
}

/// Multiple-choice items of an evals-package file (the last user message holds stem and options,
/// `ideal` the gold letter), parsed by `parse`, and how many distinct items were dropped because
/// their repeated copies disagree on the answer (QuaRTz has 16: the same question labelled A
/// once and B once; such an item cannot be graded). Exact repeats are kept once.
fn mc_items(path: &Path, task: &str, parse: fn(&str) -> Option<(String, Vec<String>)>) -> Result<(Vec<McItem>, usize)> {
    let parquet = is_parquet(path);
    let rows = read_rows(path)?
        .into_iter()
        .map(|(at, v)| {
            let content = user_content(&v, path, &at, parquet)?;
            let (stem, options) = parse(content).with_context(|| {
                format!("{} {at}: field `input`: cannot find the {task} answer options in {content:?}", path.display())
            })?;
            let ideal = field(&v, path, &at, "ideal")?.trim().to_uppercase();
            let gold = match ideal.as_bytes() {
                [l @ b'A'..=b'D'] if usize::from(l - b'A') < options.len() => usize::from(l - b'A'),
                _ => bail!("{} {at}: field `ideal` is {ideal:?}, not one of the {} option letters", path.display(), options.len()),
            };
            Ok(McItem { id: prompt_id(task, content), stem, options, gold })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut gold: std::collections::HashMap<String, Option<usize>> = std::collections::HashMap::new();
    for r in &rows {
        let g = gold.entry(r.id.clone()).or_insert(Some(r.gold));
        if *g != Some(r.gold) {
            *g = None;
        }
    }
    let conflicting = gold.values().filter(|g| g.is_none()).count();
    let mut seen = std::collections::HashSet::new();
    let kept = rows.into_iter().filter(|r| gold[&r.id].is_some() && seen.insert(r.id.clone())).collect();
    Ok((kept, conflicting))
}

/// The context an option continues, per task, as lm-evaluation-harness writes it
/// (Social IQa: `"Q: {context} {question}\nA:"`; others: `"Question: {question}\nAnswer:"`).
fn mc_context(task: &str, stem: &str) -> String {
    if task == "socialiqa" { format!("Q: {stem}\nA:") } else { format!("Question: {stem}\nAnswer:") }
}

fn choice_rows(task: &str, items: Vec<McItem>) -> Vec<ChoiceRow> {
    items
        .into_iter()
        .flat_map(|it| {
            let context = mc_context(task, &it.stem);
            let (id, gold) = (it.id, it.gold);
            it.options.into_iter().enumerate().map(move |(k, choice)| ChoiceRow {
                item_id: id.clone(),
                task: task.into(),
                context: context.clone(),
                choice_idx: k as u32,
                choice,
                gold: k == gold,
            })
        })
        .collect()
}

/// Sort by a salted hash of the id (a deterministic shuffle) and keep `limit` (0 = all).
fn hash_order<T>(mut rows: Vec<T>, id: impl Fn(&T) -> &str, salt: &str, limit: usize) -> Vec<T> {
    rows.sort_by(|a, b| hash_fraction(id(a), salt).total_cmp(&hash_fraction(id(b), salt)));
    if limit > 0 {
        rows.truncate(limit);
    }
    rows
}

fn dedup(rows: &[PromptRow], file: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for r in rows {
        if !seen.insert(&r.prompt_id) {
            bail!("{file}: duplicate prompt id {} (the same question appears twice in {})", r.prompt_id, r.source);
        }
    }
    Ok(())
}

/// Fails when an evaluation item (by id: the same question from the same data set) is also a
/// prompt of the pool, which would let the loop train on it.
fn disjoint<'a>(pool: &[PromptRow], eval_ids: impl Iterator<Item = &'a str>) -> Result<()> {
    let pool_ids: std::collections::HashSet<&str> = pool.iter().map(|r| r.prompt_id.as_str()).collect();
    for id in eval_ids {
        ensure!(
            !pool_ids.contains(id),
            "evaluation item {id} is also a prompt of pool.parquet; an evaluation set must be disjoint \
             from the prompts the loop trains on"
        );
    }
    Ok(())
}

pub fn run(ctx: &Ctx, data: &DataSection) -> Result<Artifact> {
    let inputs = vec![
        InputRef::source("gsm8k_train", &data.gsm8k_train)
            .with_context(|| format!("data file {} (run `just setup`)", data.gsm8k_train.display()))?,
        InputRef::source("gsm8k_test", &data.gsm8k_test)
            .with_context(|| format!("data file {} (run `just setup`)", data.gsm8k_test.display()))?,
        InputRef::source("socialiqa", &data.socialiqa)
            .with_context(|| format!("data file {} (run `just setup`)", data.socialiqa.display()))?,
    ];
    let mut inputs = inputs;
    if let Some(quartz) = &data.quartz {
        inputs.push(
            InputRef::source("quartz", quartz)
                .with_context(|| format!("data file {} (run `just setup`)", quartz.display()))?,
        );
    }
    let params = json!({
        "socialiqa_eval_fraction": data.socialiqa_eval_fraction,
        "prompts_per_source": data.prompts_per_source,
        "sft_examples": data.sft_examples,
        "eval_per_task": data.eval_per_task,
        "mc_per_task": data.mc_per_task,
    });
    let spec = ArtifactSpec { stage: names::stage::PREPARE.into(), schema_version: SCHEMA_VERSION, params, inputs };
    ctx.produce(spec, |dir| {
        let train = hash_order(gsm8k(&data.gsm8k_train, "gsm8k")?, |r| &r.id, "gsm8k-train", 0);
        ensure!(train.len() > data.sft_examples, "gsm8k train has only {} rows", train.len());
        let (sft_rows, prompt_rows) = train.split_at(data.sft_examples);
        let mut pool: Vec<PromptRow> = prompt_rows
            .iter()
            .take(if data.prompts_per_source == 0 { usize::MAX } else { data.prompts_per_source })
            .map(|r| PromptRow {
                prompt_id: r.id.clone(),
                source: "gsm8k_train".into(),
                task: "gsm8k".into(),
                prompt: r.question.clone(),
                answer: None,
            })
            .collect();
        let sft: Vec<PromptRow> = sft_rows
            .iter()
            .map(|r| PromptRow {
                prompt_id: r.id.clone(),
                source: "gsm8k_train".into(),
                task: "sft".into(),
                prompt: r.question.clone(),
                answer: Some(r.solution.clone()),
            })
            .collect();
        let siqa = socialiqa(&data.socialiqa)?;
        let frac = data.socialiqa_eval_fraction;
        let (siqa_eval, siqa_pool): (Vec<_>, Vec<_>) =
            siqa.into_iter().partition(|(id, _, _)| hash_fraction(id, "socialiqa-eval") < frac);
        pool.extend(hash_order(siqa_pool, |r| &r.0, "socialiqa-pool", data.prompts_per_source).into_iter().map(
            |(id, content, _)| PromptRow {
                prompt_id: id,
                source: "socialiqa".into(),
                task: "socialiqa".into(),
                prompt: content,
                answer: None,
            },
        ));
        let mut eval: Vec<PromptRow> = hash_order(gsm8k(&data.gsm8k_test, "gsm8k-test")?, |r| &r.id, "gsm8k-test", data.eval_per_task)
            .into_iter()
            .map(|r| PromptRow {
                prompt_id: r.id,
                source: "gsm8k_test".into(),
                task: "gsm8k".into(),
                prompt: format!("{}{EVAL_SUFFIX}", r.question),
                answer: Some(r.gold),
            })
            .collect();
        eval.extend(hash_order(siqa_eval, |r| &r.0, "socialiqa-eval-order", data.eval_per_task).into_iter().map(
            |(id, content, ideal)| PromptRow {
                prompt_id: id,
                source: "socialiqa".into(),
                task: "socialiqa".into(),
                prompt: format!("{content}{EVAL_SUFFIX}"),
                answer: Some(ideal),
            },
        ));
        // Multiple choice: the held-out Social IQa items (the same hash split as eval.parquet, so
        // never a prompt) and QuaRTz (evaluation only).
        let mut mc = Vec::new();
        let mut dropped = serde_json::Map::new();
        if let Some(limit) = data.mc_per_task {
            let (siqa_mc, n) = mc_items(&data.socialiqa, "socialiqa", socialiqa_choices)?;
            dropped.insert("socialiqa".into(), json!(n));
            let siqa_mc: Vec<McItem> =
                siqa_mc.into_iter().filter(|it| hash_fraction(&it.id, "socialiqa-eval") < frac).collect();
            mc = choice_rows("socialiqa", hash_order(siqa_mc, |r| &r.id, "socialiqa-mc-order", limit));
            if let Some(quartz) = &data.quartz {
                let (items, n) = mc_items(quartz, "quartz", quartz_choices)?;
                dropped.insert("quartz".into(), json!(n));
                mc.extend(choice_rows("quartz", hash_order(items, |r| &r.id, "quartz-mc-order", limit)));
            }
            for (task, n) in &dropped {
                if n.as_u64().unwrap_or(0) > 0 {
                    ctx.log(format!("prepare: {task}: dropped {n} multiple-choice item(s) whose repeated copies disagree on the answer"));
                }
            }
        }
        ensure!(!pool.is_empty(), "the prompt pool is empty; check [data] in the pipeline config");
        dedup(&pool, names::file::POOL)?;
        dedup(&eval, names::file::EVAL_PROMPTS)?;
        disjoint(&pool, eval.iter().map(|r| r.prompt_id.as_str()).chain(mc.iter().map(|r| r.item_id.as_str())))?;
        let n_pool = write_table(&dir.join(names::file::POOL), &pool)?;
        let n_eval = write_table(&dir.join(names::file::EVAL_PROMPTS), &eval)?;
        let n_sft = write_table(&dir.join(names::file::SFT), &sft)?;
        let n_mc = write_table(&dir.join(names::file::MC), &mc)?;
        let extra = json!({ "mc_conflicting_items_dropped": dropped });
        Ok(ProduceOutput { extra, ..Default::default() }
            .with_rows(names::file::MC, n_mc)
            .with_rows(names::file::POOL, n_pool)
            .with_rows(names::file::EVAL_PROMPTS, n_eval)
            .with_rows(names::file::SFT, n_sft))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socialiqa_options_parse() {
        let (stem, opts) = socialiqa_choices(
            "Alex found a ring on the beach. What will Alex want to do next? A: throw it in the ocean; B: turn it in; C: leave; then rest.",
        )
        .unwrap();
        assert_eq!(stem, "Alex found a ring on the beach. What will Alex want to do next?");
        // The last "; C: " starts option C, so a ';' inside option C stays in it.
        assert_eq!(opts, ["throw it in the ocean", "turn it in", "leave; then rest"]);
        assert!(socialiqa_choices("No options here.").is_none());
        assert!(socialiqa_choices(" A: x; B: y; C: z.").is_none(), "an empty stem is refused");
        assert!(socialiqa_choices("Q? A: x; B: ; C: z.").is_none(), "an empty option is refused");
    }

    #[test]
    fn quartz_options_parse() {
        let (stem, opts) = quartz_choices("Eric adds more resistors. The resistance\n\n A: increases\n B: decreases").unwrap();
        assert_eq!((stem.as_str(), opts), ("Eric adds more resistors. The resistance", vec!["increases".to_string(), "decreases".to_string()]));
        assert!(quartz_choices("Eric adds more resistors. A: up B: down").is_none());
    }

    #[test]
    fn contexts_follow_lm_evaluation_harness() {
        assert_eq!(mc_context("socialiqa", "Why? "), "Q: Why? \nA:");
        assert_eq!(mc_context("quartz", "The resistance"), "Question: The resistance\nAnswer:");
        let item = McItem { id: "i".into(), stem: "S".into(), options: vec!["a".into(), "b".into()], gold: 1 };
        let rows = choice_rows("quartz", vec![item]);
        assert_eq!(rows.iter().map(|r| (r.choice_idx, r.gold)).collect::<Vec<_>>(), [(0, false), (1, true)]);
        assert!(rows.iter().all(|r| r.item_id == "i" && r.context == "Question: S\nAnswer:"));
    }

    #[test]
    fn an_eval_item_that_is_also_a_prompt_is_an_error() {
        let row = |id: &str| PromptRow {
            prompt_id: id.into(),
            source: "s".into(),
            task: "t".into(),
            prompt: "p".into(),
            answer: None,
        };
        let pool = [row("a"), row("b")];
        assert!(disjoint(&pool, ["c", "d"].into_iter()).is_ok());
        let err = disjoint(&pool, ["c", "b"].into_iter()).unwrap_err().to_string();
        assert!(err.contains("evaluation item b") && err.contains("pool.parquet"), "{err}");
    }
}
