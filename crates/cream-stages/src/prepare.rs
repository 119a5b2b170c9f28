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

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use cream_algo::{gsm8k_gold, hash_fraction, prompt_id};
use cream_core::{Artifact, ArtifactSpec, ChoiceRow, InputRef, ProduceOutput, PromptRow, write_table};
use polars::prelude::{DataType, ParquetReader, SerReader};
use serde_json::{Value, json};

use crate::config::{DataSection, DataSource, SourceFormat, SourceRole};
use crate::ctx::Ctx;
use crate::names;

/// Output schema version: 2 added `mc.parquet`.
const SCHEMA_VERSION: u32 = 2;
/// Appended to evaluation questions (spec, "Evaluation").
pub const EVAL_SUFFIX: &str = "\nAnswer the question by thinking step by step. At the end, output the final answer, starting with 'Answer:'.";

/// The rows of the data file `path`, each with where it is (`line N` for JSONL, `row N`,
/// 1-based, for Parquet) for error messages: JSONL, or Parquet when the path ends in `.parquet`.
fn read_rows(path: &Path) -> Result<Vec<(String, Value)>> {
    let rows = if is_parquet(path) { read_parquet(path)? } else { read_jsonl(path)? };
    ensure!(
        !rows.is_empty(),
        "{}: no rows: the data file is empty; put one JSON object per line in it (or rows in the \
         Parquet file), or remove it from [data]",
        path.display()
    );
    Ok(rows)
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
    Ok(rows)
}

/// A Parquet data file as the JSON objects [`read_jsonl`] would give: each row an object of its
/// String, integer and list-of-String columns (a null is left out, so it reads as a missing
/// field). Columns of other types are ignored.
fn read_parquet(path: &Path) -> Result<Vec<(String, Value)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let df = ParquetReader::new(file)
        .finish()
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let mut rows: Vec<serde_json::Map<String, Value>> = vec![serde_json::Map::new(); df.height()];
    for col in df.columns() {
        let name = col.name().to_string();
        let what = || format!("{}: column {name:?}", path.display());
        let values: Vec<Option<Value>> = match col.dtype() {
            DataType::String => col.str().with_context(what)?.iter().map(|v| v.map(Value::from)).collect(),
            t if t.is_integer() => {
                col.cast(&DataType::Int64).with_context(what)?.i64().with_context(what)?.iter().map(|v| v.map(Value::from)).collect()
            }
            DataType::List(inner) if **inner == DataType::String => col
                .list()
                .with_context(what)?
                .amortized_iter()
                .map(|v| v.map(|s| s.as_ref().str().map(|s| s.iter().map(|x| x.map_or(Value::Null, Value::from)).collect())))
                .map(Option::transpose)
                .collect::<std::result::Result<_, _>>()
                .with_context(what)?,
            _ => continue,
        };
        for (row, value) in rows.iter_mut().zip(values) {
            if let Some(value) = value {
                row.insert(name.clone(), value);
            }
        }
    }
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

/// One multiple-choice item: id, the question as a prompt would hold it, question stem,
/// options, gold index.
#[derive(Clone, PartialEq)]
struct McItem {
    id: String,
    question: String,
    stem: String,
    options: Vec<String>,
    gold: usize,
}

/// The multiple-choice item of an evals-package row whose user message is `content`: stem and
/// options parsed by `parse`, the gold letter from `ideal`.
fn evals_mc_item(
    v: &Value,
    path: &Path,
    at: &str,
    task: &str,
    content: &str,
    parse: fn(&str) -> Option<(String, Vec<String>)>,
) -> Result<McItem> {
    let (stem, options) = parse(content).with_context(|| {
        format!("{} {at}: field `input`: cannot find the {task} answer options in {content:?}", path.display())
    })?;
    let ideal = field(v, path, at, "ideal")?.trim().to_uppercase();
    let gold = match ideal.as_bytes() {
        [l @ b'A'..=b'D'] if usize::from(l - b'A') < options.len() => usize::from(l - b'A'),
        _ => bail!("{} {at}: field `ideal` is {ideal:?}, not one of the {} option letters", path.display(), options.len()),
    };
    Ok(McItem { id: prompt_id(task, content), question: content.to_string(), stem, options, gold })
}

/// Multiple-choice items of an evals-package file (the last user message holds stem and options,
/// `ideal` the gold letter), parsed by `parse`, and how many distinct items were dropped because
/// their repeated copies disagree on the answer (QuaRTz has 16: the same question labelled A
/// once and B once; such an item cannot be graded). Exact repeats are kept once.
fn mc_items(path: &Path, task: &str, parse: fn(&str) -> Option<(String, Vec<String>)>) -> Result<(Vec<McItem>, usize)> {
    let parquet = is_parquet(path);
    let rows = read_rows(path)?
        .into_iter()
        .map(|(at, v)| evals_mc_item(&v, path, &at, task, user_content(&v, path, &at, parquet)?, parse))
        .collect::<Result<Vec<_>>>()?;
    let (rows, conflicting) = drop_conflicting(rows, |r| &r.id, |a, b| a.gold == b.gold);
    let mut seen = std::collections::HashSet::new();
    let kept = rows.into_iter().filter(|r| seen.insert(r.id.clone())).collect();
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

/// Where a row came from, for error messages: `"<file> line 3"` / `"<file> row 3"`, or
/// `"<file> (<data set>)"` for the built-in data sets.
type Origin = String;

/// Whitespace-normalised text, for comparing questions across files.
fn norm_text(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The output tables being built. Every row is added with its origin, so that a duplicate id,
/// or an evaluation question that is also a prompt, is reported naming both places.
#[derive(Default)]
struct Tables {
    pool: Vec<PromptRow>,
    eval: Vec<PromptRow>,
    sft: Vec<PromptRow>,
    mc: Vec<ChoiceRow>,
    /// (table, id) -> origin of the row with that id.
    ids: HashMap<(&'static str, String), Origin>,
    /// Normalised pool prompt -> origin.
    pool_text: HashMap<String, Origin>,
    /// Pool ids that are content hashes (not an `id` given in a data file) -> origin.
    pool_hash_ids: HashMap<String, Origin>,
    /// Evaluation items (eval.parquet and mc.parquet): id, whether the id was given in the file,
    /// the question, origin.
    eval_questions: Vec<(String, bool, String, Origin)>,
}

impl Tables {
    fn claim(&mut self, table: &'static str, id: &str, origin: &str) -> Result<()> {
        if let Some(first) = self.ids.insert((table, id.to_string()), origin.to_string()) {
            bail!(
                "{origin}: duplicate id {id:?} in {table}: {first} has the same id; ids must be unique, \
                 remove one of the two rows or give it another `id`"
            );
        }
        Ok(())
    }

    /// A prompt of `pool.parquet`; `given_id`: its id is the data file's `id`, not a content hash.
    fn prompt(&mut self, row: PromptRow, given_id: bool, origin: Origin) -> Result<()> {
        self.claim(names::file::POOL, &row.prompt_id, &origin)?;
        if !given_id {
            self.pool_hash_ids.insert(row.prompt_id.clone(), origin.clone());
        }
        self.pool_text.entry(norm_text(&row.prompt)).or_insert(origin);
        self.pool.push(row);
        Ok(())
    }

    fn sft(&mut self, row: PromptRow, origin: Origin) -> Result<()> {
        self.claim(names::file::SFT, &row.prompt_id, &origin)?;
        self.sft.push(row);
        Ok(())
    }

    /// An item of `eval.parquet` whose question (its prompt before [`EVAL_SUFFIX`]) is `question`.
    fn eval(&mut self, row: PromptRow, question: &str, given_id: bool, origin: Origin) -> Result<()> {
        self.claim(names::file::EVAL_PROMPTS, &row.prompt_id, &origin)?;
        self.eval_questions.push((row.prompt_id.clone(), given_id, question.to_string(), origin));
        self.eval.push(row);
        Ok(())
    }

    /// A multiple-choice item of `mc.parquet` (one row per option).
    fn mc(&mut self, task: &str, item: McItem, given_id: bool, origin: Origin) -> Result<()> {
        self.claim(names::file::MC, &item.id, &origin)?;
        self.eval_questions.push((item.id.clone(), given_id, item.question.clone(), origin));
        self.mc.extend(choice_rows(task, vec![item]));
        Ok(())
    }

    /// Fails when an evaluation item is also a prompt of the pool (the same question text, or
    /// the same content-hash id: the same question of the same data set), which would let the
    /// loop train on it.
    fn check_disjoint(&self) -> Result<()> {
        for (id, given_id, question, origin) in &self.eval_questions {
            let hash_id = if *given_id { None } else { self.pool_hash_ids.get(id) };
            if let Some(prompt) = self.pool_text.get(&norm_text(question)).or(hash_id) {
                bail!(
                    "{origin}: evaluation item {id} is also a prompt of pool.parquet ({prompt}); an evaluation \
                     set must be disjoint from the prompts the loop trains on: remove the question from one \
                     of the two files"
                );
            }
        }
        Ok(())
    }
}

/// A row of a `[[data.sources]]` file, whatever its format, in the form the roles take it.
#[derive(PartialEq)]
struct SourceItem {
    /// Where in the file (`line N` / `row N`).
    at: String,
    id: String,
    /// Whether `id` is the row's `id` field (else the content hash of task and question).
    given_id: bool,
    /// The question: the prompt (of an evaluation item: before [`EVAL_SUFFIX`]).
    question: String,
    /// The reference response (role sft).
    reference: Option<String>,
    /// The gold answer graded by generation (role eval: `eval.parquet`).
    gold: Option<String>,
    /// The multiple-choice form (role eval: `mc.parquet`).
    mc: Option<McItem>,
}

/// A field that may be a string or a number (a JSON number, a Parquet integer column).
fn scalar(v: &Value, path: &Path, at: &str, name: &str) -> Result<Option<String>> {
    match &v[name] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => bail!("{} {at}: field `{name}` is {other}, not a string or a number", path.display()),
    }
}

/// A row of a generic source: `{"prompt", "answer"?, "choices"?, "id"?}`.
fn generic_item(v: &Value, path: &Path, at: &str, s: &DataSource, mc: bool) -> Result<SourceItem> {
    let here = |msg: &str| anyhow::anyhow!("{} {at}: {msg}", path.display());
    let question = match v["prompt"].as_str() {
        Some(p) if !p.trim().is_empty() => p.to_string(),
        _ => {
            return Err(here(
                "field `prompt` is missing, empty or not a string; every row of a generic source needs its \
                 question in `prompt` (optional fields: `answer`, `choices`, `id`)",
            ));
        }
    };
    let given = scalar(v, path, at, "id")?;
    if given.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return Err(here("field `id` is empty; give the row an id or leave the field out"));
    }
    let answer = scalar(v, path, at, "answer")?.filter(|a| !a.trim().is_empty());
    let choices = match &v["choices"] {
        Value::Null => None,
        Value::Array(a) => Some(
            a.iter()
                .map(|c| c.as_str().map(str::trim).filter(|c| !c.is_empty()).map(String::from))
                .collect::<Option<Vec<_>>>()
                .filter(|c| c.len() >= 2)
                .ok_or_else(|| here("field `choices` must be a list of at least two non-empty strings"))?,
        ),
        other => return Err(here(&format!("field `choices` is {other}, not a list of strings"))),
    };
    let id = given.clone().unwrap_or_else(|| prompt_id(&s.task, &question));
    let mut item = SourceItem { at: at.into(), id, given_id: given.is_some(), question, reference: None, gold: None, mc: None };
    match (s.role, choices) {
        (SourceRole::Eval, Some(options)) => {
            if !mc {
                return Err(here(
                    "field `choices`: multiple-choice items are scored by log-likelihood (mc.parquet); set [data] \
                     mc_per_task (0 = all) to evaluate them",
                ));
            }
            let answer = answer.ok_or_else(|| {
                here("field `answer` is missing: an item with `choices` needs the gold choice in `answer`, as its 0-based index or its text")
            })?;
            let answer = answer.trim();
            let gold = options
                .iter()
                .position(|o| o == answer)
                .or_else(|| answer.parse::<usize>().ok().filter(|&i| i < options.len()))
                .ok_or_else(|| {
                    let n = options.len();
                    here(&format!("field `answer` is {answer:?}, neither one of the {n} choices nor an index 0..{}", n - 1))
                })?;
            let (id, question) = (item.id.clone(), item.question.clone());
            item.mc = Some(McItem { id, stem: question.clone(), question, options, gold });
        }
        (SourceRole::Eval, None) => {
            item.gold = Some(answer.ok_or_else(|| {
                here("field `answer` is missing or empty: an evaluation item needs its gold answer in `answer` (or `choices` and the gold choice, for multiple choice)")
            })?);
        }
        (role, Some(_)) => {
            return Err(here(&format!(
                "field `choices`: only evaluation items (role = \"eval\") take choices, this source has role = \"{}\"; \
                 remove the field or put the options into `prompt`",
                role.name()
            )));
        }
        (SourceRole::Sft, None) => {
            item.reference =
                Some(answer.ok_or_else(|| here("field `answer` is missing or empty: an sft source needs the reference response in `answer`"))?);
        }
        // Prompts are unlabeled: an answer is dropped.
        (SourceRole::Prompts, None) => {}
    }
    Ok(item)
}

/// The rows of a `[[data.sources]]` file (`mc`: whether multiple-choice items are wanted, i.e.
/// `[data] mc_per_task` is set), and how many multiple-choice items were dropped because their
/// repeated copies disagree on the answer (the shipped QuaRTz has such items). An `id` given
/// twice is an error; a repeated question (same content id) is dropped when it is an exact
/// repeat and an error otherwise.
fn source_items(s: &DataSource, mc: bool) -> Result<(Vec<SourceItem>, usize)> {
    let path = &s.path;
    let parquet = is_parquet(path);
    let eval = s.role == SourceRole::Eval;
    let items = read_rows(path)?
        .into_iter()
        .map(|(at, v)| {
            let content_item = |question: String| SourceItem {
                at: at.clone(),
                id: prompt_id(&s.task, &question),
                given_id: false,
                question,
                reference: None,
                gold: None,
                mc: None,
            };
            Ok(match s.format {
                SourceFormat::Generic => generic_item(&v, path, &at, s, mc)?,
                SourceFormat::Gsm8k => {
                    let solution = field(&v, path, &at, "answer")?.to_string();
                    let mut item = content_item(field(&v, path, &at, "question")?.to_string());
                    if eval {
                        item.gold = Some(gsm8k_gold(&solution).with_context(|| format!("{} {at}: field `answer`", path.display()))?);
                    }
                    item.reference = Some(solution);
                    item
                }
                SourceFormat::Socialiqa | SourceFormat::Quartz => {
                    let content = user_content(&v, path, &at, parquet)?.to_string();
                    let siqa = s.format == SourceFormat::Socialiqa;
                    let mut item = content_item(content.clone());
                    if eval && siqa {
                        item.gold = Some(field(&v, path, &at, "ideal")?.trim().to_uppercase());
                    }
                    if eval && mc {
                        let parse = if siqa { socialiqa_choices } else { quartz_choices };
                        item.mc = Some(evals_mc_item(&v, path, &at, &s.task, &content, parse)?);
                    }
                    item
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut given: HashMap<&str, &str> = HashMap::new();
    for it in items.iter().filter(|it| it.given_id) {
        if let Some(first) = given.insert(&it.id, &it.at) {
            bail!(
                "{} {}: duplicate id {:?}: {first} has the same id; ids must be unique, remove one of the two \
                 rows or give it another `id`",
                path.display(),
                it.at,
                it.id
            );
        }
    }
    let same = |a: &SourceItem, b: &SourceItem| (&a.question, &a.reference, &a.gold, &a.mc) == (&b.question, &b.reference, &b.gold, &b.mc);
    // Multiple-choice-only items (QuaRTz) whose copies disagree cannot be graded: dropped, counted.
    let (items, conflicting) = if s.format == SourceFormat::Quartz {
        drop_conflicting(items, |it| &it.id, same)
    } else {
        (items, 0)
    };
    let rows = items.into_iter().map(|it| (it.at.clone(), it)).collect();
    Ok((drop_repeats(path, rows, |it| &it.id, same)?, conflicting))
}

/// Removes every copy of an id whose copies are not all `same`; returns the rest (exact
/// repeats still repeated) and the number of such ids.
fn drop_conflicting<T>(rows: Vec<T>, id: impl Fn(&T) -> &str, same: impl Fn(&T, &T) -> bool) -> (Vec<T>, usize) {
    let mut first: HashMap<&str, (usize, bool)> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let e = first.entry(id(r)).or_insert((i, true));
        e.1 &= same(&rows[e.0], r);
    }
    let bad: std::collections::HashSet<String> = first.into_iter().filter(|(_, (_, ok))| !ok).map(|(k, _)| k.to_string()).collect();
    let n = bad.len();
    (rows.into_iter().filter(|r| !bad.contains(id(r))).collect(), n)
}

/// The artifact input of a data file.
fn data_input(name: &str, path: &Path, hint: &str) -> Result<InputRef> {
    InputRef::source(name, path).with_context(|| format!("data file {} ({hint})", path.display()))
}

pub fn run(ctx: &Ctx, data: &DataSection) -> Result<Artifact> {
    data.validate()?;
    let mut inputs = Vec::new();
    let builtin =
        [("gsm8k_train", &data.gsm8k_train), ("gsm8k_test", &data.gsm8k_test), ("socialiqa", &data.socialiqa), ("quartz", &data.quartz)];
    for (name, path) in builtin {
        if let Some(path) = path {
            inputs.push(data_input(name, path, "run `just setup`")?);
        }
    }
    for (i, s) in data.sources.iter().enumerate() {
        inputs.push(data_input(&format!("sources.{i}"), &s.path, "a [[data.sources]] path: check it")?);
    }
    let mut params = json!({
        "socialiqa_eval_fraction": data.socialiqa_eval_fraction,
        "prompts_per_source": data.prompts_per_source,
        "sft_examples": data.sft_examples,
        "eval_per_task": data.eval_per_task,
        "mc_per_task": data.mc_per_task,
    });
    if !data.sources.is_empty() {
        // The files are inputs (by content), so their paths are not parameters.
        let mut sources = serde_json::to_value(&data.sources)?;
        for s in sources.as_array_mut().into_iter().flatten() {
            s.as_object_mut().map(|o| o.remove("path"));
        }
        params["sources"] = sources;
    }
    let spec = ArtifactSpec { stage: names::stage::PREPARE.into(), schema_version: SCHEMA_VERSION, params, inputs };
    ctx.produce(spec, |dir| {
        let mut t = Tables::default();
        let origin = |path: &Path, set: &str| format!("{} ({set})", path.display());
        if let Some(path) = &data.gsm8k_train {
            let train = hash_order(gsm8k(path, "gsm8k")?, |r| &r.id, "gsm8k-train", 0);
            ensure!(
                train.len() > data.sft_examples,
                "gsm8k train has only {} rows; [data] sft_examples = {} leaves no prompts",
                train.len(),
                data.sft_examples
            );
            let (sft_rows, prompt_rows) = train.split_at(data.sft_examples);
            let n = if data.prompts_per_source == 0 { usize::MAX } else { data.prompts_per_source };
            for r in prompt_rows.iter().take(n) {
                let row = PromptRow {
                    prompt_id: r.id.clone(),
                    source: "gsm8k_train".into(),
                    task: "gsm8k".into(),
                    prompt: r.question.clone(),
                    answer: None,
                };
                t.prompt(row, false, origin(path, "gsm8k_train"))?;
            }
            for r in sft_rows {
                let row = PromptRow {
                    prompt_id: r.id.clone(),
                    source: "gsm8k_train".into(),
                    task: "sft".into(),
                    prompt: r.question.clone(),
                    answer: Some(r.solution.clone()),
                };
                t.sft(row, origin(path, "gsm8k_train"))?;
            }
        }
        let siqa = data.socialiqa.as_deref().map(socialiqa).transpose()?.unwrap_or_default();
        let siqa_origin = || origin(data.socialiqa.as_deref().unwrap_or(Path::new("")), "socialiqa");
        let frac = data.socialiqa_eval_fraction;
        let (siqa_eval, siqa_pool): (Vec<_>, Vec<_>) =
            siqa.into_iter().partition(|(id, _, _)| hash_fraction(id, "socialiqa-eval") < frac);
        for (id, content, _) in hash_order(siqa_pool, |r| &r.0, "socialiqa-pool", data.prompts_per_source) {
            let row = PromptRow { prompt_id: id, source: "socialiqa".into(), task: "socialiqa".into(), prompt: content, answer: None };
            t.prompt(row, false, siqa_origin())?;
        }
        if let Some(path) = &data.gsm8k_test {
            for r in hash_order(gsm8k(path, "gsm8k-test")?, |r| &r.id, "gsm8k-test", data.eval_per_task) {
                let row = PromptRow {
                    prompt_id: r.id,
                    source: "gsm8k_test".into(),
                    task: "gsm8k".into(),
                    prompt: format!("{}{EVAL_SUFFIX}", r.question),
                    answer: Some(r.gold),
                };
                t.eval(row, &r.question, false, origin(path, "gsm8k_test"))?;
            }
        }
        for (id, content, ideal) in hash_order(siqa_eval, |r| &r.0, "socialiqa-eval-order", data.eval_per_task) {
            let row = PromptRow {
                prompt_id: id,
                source: "socialiqa".into(),
                task: "socialiqa".into(),
                prompt: format!("{content}{EVAL_SUFFIX}"),
                answer: Some(ideal),
            };
            t.eval(row, &content, false, siqa_origin())?;
        }
        // Multiple choice: the held-out Social IQa items (the same hash split as eval.parquet, so
        // never a prompt) and QuaRTz (evaluation only).
        let mut dropped = serde_json::Map::new();
        if let Some(limit) = data.mc_per_task {
            if let Some(path) = &data.socialiqa {
                let (siqa_mc, n) = mc_items(path, "socialiqa", socialiqa_choices)?;
                dropped.insert("socialiqa".into(), json!(n));
                let siqa_mc: Vec<McItem> =
                    siqa_mc.into_iter().filter(|it| hash_fraction(&it.id, "socialiqa-eval") < frac).collect();
                for it in hash_order(siqa_mc, |r| &r.id, "socialiqa-mc-order", limit) {
                    t.mc("socialiqa", it, false, siqa_origin())?;
                }
            }
            if let Some(quartz) = &data.quartz {
                let (items, n) = mc_items(quartz, "quartz", quartz_choices)?;
                dropped.insert("quartz".into(), json!(n));
                for it in hash_order(items, |r| &r.id, "quartz-mc-order", limit) {
                    t.mc("quartz", it, false, origin(quartz, "quartz"))?;
                }
            }
        }
        for s in &data.sources {
            let (items, n) = source_items(s, data.mc_per_task.is_some())?;
            if n > 0 {
                let before = dropped.get(&s.task).and_then(Value::as_u64).unwrap_or(0);
                dropped.insert(s.task.clone(), json!(before + n as u64));
            }
            let origin = |it: &SourceItem| format!("{} {}", s.path.display(), it.at);
            let salt = format!("source-{}-{}", s.role.name(), s.task);
            let row = |id: String, prompt: String, answer: Option<String>| PromptRow {
                prompt_id: id,
                source: s.task.clone(),
                task: s.task.clone(),
                prompt,
                answer,
            };
            match s.role {
                SourceRole::Prompts => {
                    for it in hash_order(items, |it| &it.id, &salt, s.limit.unwrap_or(data.prompts_per_source)) {
                        let o = origin(&it);
                        t.prompt(row(it.id, it.question, None), it.given_id, o)?;
                    }
                }
                SourceRole::Sft => {
                    for it in hash_order(items, |it| &it.id, &salt, s.limit.unwrap_or(0)) {
                        let o = origin(&it);
                        t.sft(row(it.id, it.question, it.reference), o)?;
                    }
                }
                SourceRole::Eval => {
                    let (mut generative, mut choice) = (Vec::new(), Vec::new());
                    for mut it in items {
                        if let Some(m) = it.mc.take() {
                            choice.push((m, it.given_id, origin(&it)));
                        }
                        if it.gold.is_some() {
                            generative.push(it);
                        }
                    }
                    for it in hash_order(generative, |it| &it.id, &salt, s.limit.unwrap_or(data.eval_per_task)) {
                        let (o, gold) = (origin(&it), it.gold.unwrap_or_default());
                        // A gold answer the eval stage could not grade is refused now, not after generation.
                        crate::grade::grade(&s.task, "", &gold, false).with_context(|| format!("{o}: the gold answer"))?;
                        let prompt = format!("{}{EVAL_SUFFIX}", it.question);
                        t.eval(row(it.id, prompt, Some(gold)), &it.question, it.given_id, o)?;
                    }
                    let limit = s.limit.unwrap_or(data.mc_per_task.unwrap_or(0));
                    for (m, given_id, o) in hash_order(choice, |c| &c.0.id, &format!("{salt}-mc"), limit) {
                        t.mc(&s.task, m, given_id, o)?;
                    }
                }
            }
        }
        for (task, n) in &dropped {
            if n.as_u64().unwrap_or(0) > 0 {
                ctx.log(format!("prepare: {task}: dropped {n} multiple-choice item(s) whose repeated copies disagree on the answer"));
            }
        }
        ensure!(!t.pool.is_empty(), "the prompt pool is empty; check [data] in the pipeline config");
        t.check_disjoint()?;
        let n_pool = write_table(&dir.join(names::file::POOL), &t.pool)?;
        let n_eval = write_table(&dir.join(names::file::EVAL_PROMPTS), &t.eval)?;
        let n_sft = write_table(&dir.join(names::file::SFT), &t.sft)?;
        let n_mc = write_table(&dir.join(names::file::MC), &t.mc)?;
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
        let item = McItem { id: "i".into(), question: "Q".into(), stem: "S".into(), options: vec!["a".into(), "b".into()], gold: 1 };
        let rows = choice_rows("quartz", vec![item]);
        assert_eq!(rows.iter().map(|r| (r.choice_idx, r.gold)).collect::<Vec<_>>(), [(0, false), (1, true)]);
        assert!(rows.iter().all(|r| r.item_id == "i" && r.context == "Question: S\nAnswer:"));
    }

    #[test]
    fn an_eval_item_that_is_also_a_prompt_is_an_error() {
        let row = |id: &str, prompt: &str| PromptRow {
            prompt_id: id.into(),
            source: "s".into(),
            task: "t".into(),
            prompt: prompt.into(),
            answer: None,
        };
        let tables = |eval_id: &str, given_id: bool, question: &str| {
            let mut t = Tables::default();
            t.prompt(row("a", "What is 2 + 2?"), false, "p.jsonl line 1".into()).unwrap();
            t.prompt(row("b", "Name a colour."), given_id, "p.jsonl line 2".into()).unwrap();
            t.eval(row(eval_id, &format!("{question}{EVAL_SUFFIX}")), question, given_id, "e.jsonl line 4".into()).unwrap();
            t.check_disjoint()
        };
        assert!(tables("c", false, "What is 3 + 3?").is_ok());
        // The same content-hash id: the same question of the same data set.
        let err = tables("a", false, "What is 3 + 3?").unwrap_err().to_string();
        assert!(err.contains("e.jsonl line 4: evaluation item a") && err.contains("pool.parquet (p.jsonl line 1)"), "{err}");
        // The same question text (whitespace aside), whatever the ids.
        let err = tables("c", false, " What is  2 + 2? ").unwrap_err().to_string();
        assert!(err.contains("also a prompt") && err.contains("p.jsonl line 1"), "{err}");
        // Ids given in the data files name rows, not questions: the same id, another question is fine.
        assert!(tables("b", true, "Name a fruit.").is_ok());
        // A duplicate id within one table names both rows.
        let mut t = Tables::default();
        t.prompt(row("a", "x"), true, "p.jsonl line 1".into()).unwrap();
        let err = t.prompt(row("a", "y"), true, "q.jsonl line 9".into()).unwrap_err().to_string();
        assert!(err.contains("q.jsonl line 9: duplicate id \"a\" in pool.parquet: p.jsonl line 1"), "{err}");
    }
}
