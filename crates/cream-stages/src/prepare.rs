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
//! Data files are JSONL, or Parquet when the path ends in `.parquet` (see [`read_rows`]).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cream_algo::{gsm8k_gold, hash_fraction, prompt_id};
use cream_core::{Artifact, ArtifactSpec, InputRef, ProduceOutput, PromptRow, write_table};
use polars::prelude::{DataType, ParquetReader, SerReader};
use serde_json::{Value, json};

use crate::config::DataSection;
use crate::ctx::Ctx;

pub const STAGE: &str = "prepare";
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

/// Social IQa rows as shipped by the evals package: `{"input": [{"role": "user", "content"}], "ideal"}`.
/// A Parquet file may instead be flat: a String column `question` (or `prompt`) holding the user
/// content, next to `ideal`.
fn socialiqa(path: &Path) -> Result<Vec<(String, String, String)>> {
    let parquet = is_parquet(path);
    read_rows(path)?
        .into_iter()
        .map(|(at, v)| {
            let content = if parquet {
                ["question", "prompt"].iter().find_map(|k| v[*k].as_str()).with_context(|| {
                    format!("{} {at}: field `question` (or `prompt`) is missing or not a string", path.display())
                })?
            } else {
                v["input"]
                    .as_array()
                    .and_then(|msgs| msgs.iter().rev().find(|m| m["role"] == "user"))
                    .and_then(|m| m["content"].as_str())
                    .with_context(|| format!("{} {at}: field `input` has no user message", path.display()))?
            }
            .to_string();
            let ideal = field(&v, path, &at, "ideal")?.trim().to_uppercase();
            Ok((at, (prompt_id("socialiqa", &content), content, ideal)))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|rows| drop_repeats(path, rows, |r| &r.0, |a, b| a.2 == b.2))
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

pub fn run(ctx: &Ctx, data: &DataSection) -> Result<Artifact> {
    let inputs = vec![
        InputRef::source("gsm8k_train", &data.gsm8k_train)
            .with_context(|| format!("data file {} (run `just setup`)", data.gsm8k_train.display()))?,
        InputRef::source("gsm8k_test", &data.gsm8k_test)
            .with_context(|| format!("data file {} (run `just setup`)", data.gsm8k_test.display()))?,
        InputRef::source("socialiqa", &data.socialiqa)
            .with_context(|| format!("data file {} (run `just setup`)", data.socialiqa.display()))?,
    ];
    let params = json!({
        "socialiqa_eval_fraction": data.socialiqa_eval_fraction,
        "prompts_per_source": data.prompts_per_source,
        "sft_examples": data.sft_examples,
        "eval_per_task": data.eval_per_task,
    });
    let spec = ArtifactSpec { stage: STAGE.into(), schema_version: 1, params, inputs };
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
        ensure!(!pool.is_empty(), "the prompt pool is empty; check [data] in the pipeline config");
        dedup(&pool, "pool.parquet")?;
        dedup(&eval, "eval.parquet")?;
        let n_pool = write_table(&dir.join("pool.parquet"), &pool)?;
        let n_eval = write_table(&dir.join("eval.parquet"), &eval)?;
        let n_sft = write_table(&dir.join("sft.parquet"), &sft)?;
        Ok(ProduceOutput::default()
            .with_rows("pool.parquet", n_pool)
            .with_rows("eval.parquet", n_eval)
            .with_rows("sft.parquet", n_sft))
    })
}
