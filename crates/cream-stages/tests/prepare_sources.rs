//! `[[data.sources]]`: your own prompts, SFT pairs and evaluation sets (README "Your own data").
//! No model and no fetched data: these run in plain `cargo test`.

use std::path::{Path, PathBuf};

use cream_core::{Artifact, ChoiceRow, PromptRow, read_table};
use cream_stages::config::{DataSection, DataSource, Pipeline, SourceFormat, SourceRole};
use cream_stages::ctx::Ctx;
use cream_stages::names::file::MC as MC_FILE;
use cream_stages::prepare::{self, EVAL_SUFFIX};
use polars::prelude::{Column, DataFrame, ParquetWriter};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write_jsonl(path: &Path, rows: &[Value]) -> PathBuf {
    std::fs::write(path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    path.to_path_buf()
}

fn source(path: &Path, task: &str, role: SourceRole) -> DataSource {
    DataSource { path: path.to_path_buf(), task: task.into(), role, format: SourceFormat::Generic, limit: None }
}

/// A `[data]` section with only `sources` (and `mc_per_task`).
fn data(sources: Vec<DataSource>, mc_per_task: Option<usize>) -> DataSection {
    let mut d: DataSection = toml::from_str("").unwrap();
    d.sources = sources;
    d.mc_per_task = mc_per_task;
    d
}

fn prompts_file(dir: &Path) -> PathBuf {
    let rows: Vec<Value> = (0..6).map(|i| json!({"prompt": format!("Question {i}: what is {i} + {i}?")})).collect();
    write_jsonl(&dir.join("prompts.jsonl"), &rows)
}

fn err(ctx: &Ctx, d: &DataSection) -> String {
    format!("{:#}", prepare::run(ctx, d).expect_err("prepare must refuse this data"))
}

fn table<T: cream_core::Table>(a: &Artifact, file: &str) -> Vec<T> {
    read_table(&a.path(file).unwrap()).unwrap()
}

/// The example of README "Your own data" (pipelines/own-data.toml and its files), end to end
/// through `prepare`: the config the README shows is the file, and every row lands in its table.
#[test]
fn own_data_example_prepares_prompts_sft_and_eval_tables() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("pipelines/own-data.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(&text), "README \"Your own data\" must show pipelines/own-data.toml as it is");
    let mut p = Pipeline::load(&root.join("pipelines/own-data.toml")).unwrap();
    for s in &mut p.data.sources {
        s.path = root.join(&s.path);
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Ctx::new(&tmp.path().join("artifacts"), true).unwrap();
    let a = prepare::run(&ctx, &p.data).unwrap();

    let pool: Vec<PromptRow> = table(&a, "pool.parquet");
    let mut ids: Vec<&str> = pool.iter().map(|r| r.prompt_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=12).map(|i| format!("p{i:02}")).collect::<Vec<_>>(), "every prompt, by its own id");
    assert!(pool.iter().all(|r| r.task == "mine" && r.answer.is_none()));
    let p04 = pool.iter().find(|r| r.prompt_id == "p04").unwrap();
    assert_eq!(p04.prompt, "A train travels 60 km per hour for 3 hours. How far does it go?");

    let sft: Vec<PromptRow> = table(&a, "sft.parquet");
    assert_eq!(sft.len(), 4);
    assert!(sft.iter().all(|r| r.answer.as_deref().is_some_and(|a| a.contains("\nAnswer: "))));

    // Items without choices are graded by generation: the prompt carries the eval suffix.
    let eval: Vec<PromptRow> = table(&a, "eval.parquet");
    let mut gold: Vec<(&str, &str)> = eval.iter().map(|r| (r.prompt_id.as_str(), r.answer.as_deref().unwrap())).collect();
    gold.sort_unstable();
    assert_eq!(gold, [("e01", "105"), ("e02", "15"), ("e03", "Paris"), ("e04", "carbon dioxide")]);
    let e03 = eval.iter().find(|r| r.prompt_id == "e03").unwrap();
    assert_eq!(e03.prompt, format!("What is the capital of France?{EVAL_SUFFIX}"));
    for r in &eval {
        // Every gold answer is gradable: a correct response scores.
        let response = format!("Let me think.\nAnswer: {}", r.answer.as_deref().unwrap());
        assert!(cream_stages::grade::grade(&r.task, &response, r.answer.as_deref().unwrap(), false).unwrap().1, "{r:?}");
    }

    // Items with choices are scored by log-likelihood; the gold is an index or a choice's text.
    let mc: Vec<ChoiceRow> = table(&a, MC_FILE);
    let gold: Vec<(&str, &str)> = mc.iter().filter(|r| r.gold).map(|r| (r.item_id.as_str(), r.choice.as_str())).collect();
    let mut gold = gold;
    gold.sort_unstable();
    assert_eq!(gold, [("e05", "0"), ("e06", "dolphin")]);
    assert_eq!(mc.len(), 3 + 4);
    assert!(mc.iter().all(|r| r.task == "mine"));
    assert!(mc.iter().any(|r| r.context == "Question: Which of these animals is a mammal?\nAnswer:"));

    // The key follows the values, not the file paths: the same files elsewhere give the same id.
    let moved = tmp.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    for s in &mut p.data.sources {
        let to = moved.join(s.path.file_name().unwrap());
        std::fs::copy(&s.path, &to).unwrap();
        s.path = to;
    }
    assert_eq!(prepare::run(&ctx, &p.data).unwrap().manifest.id, a.manifest.id);
}

/// An unchanged config keeps its serialization and its prepare parameters (so its artifact key):
/// no `sources` key appears when there are none.
#[test]
fn builtin_only_config_keeps_its_serialization_and_params() {
    let p = Pipeline::load(&repo_root().join("pipelines/smoke.toml")).unwrap();
    let v = serde_json::to_value(&p.data).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "gsm8k_train",
            "gsm8k_test",
            "socialiqa",
            "socialiqa_eval_fraction",
            "prompts_per_source",
            "sft_examples",
            "eval_per_task",
            "quartz",
            "mc_per_task"
        ]
    );
    assert_eq!(v["gsm8k_train"], "data/gsm8k/train.jsonl");

    // The prepare parameters of a built-in-only section (on small stand-in files).
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let gsm: Vec<Value> =
        (0..6).map(|i| json!({"question": format!("Tom has {i} apples; how many?"), "answer": format!("#### {i}")})).collect();
    let mut data = data(vec![], None);
    data.gsm8k_train = Some(write_jsonl(&d.join("train.jsonl"), &gsm));
    data.gsm8k_test = Some(write_jsonl(&d.join("test.jsonl"), &gsm[..2].iter().map(|r| {
        let mut r = r.clone();
        r["question"] = json!(format!("Test: {}", r["question"].as_str().unwrap()));
        r
    }).collect::<Vec<_>>()));
    data.sft_examples = 2;
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let a = prepare::run(&ctx, &data).unwrap();
    assert_eq!(
        a.manifest.params,
        json!({"socialiqa_eval_fraction": 0.5, "prompts_per_source": 0, "sft_examples": 2, "eval_per_task": 0, "mc_per_task": null})
    );
    assert_eq!(a.manifest.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["gsm8k_train", "gsm8k_test"]);
    // With a source, its task, role, format and limit are parameters (its file is an input).
    data.sources = vec![source(&prompts_file(d), "mine", SourceRole::Prompts)];
    let b = prepare::run(&ctx, &data).unwrap();
    assert_eq!(b.manifest.params["sources"], json!([{"task": "mine", "role": "prompts", "format": "generic"}]));
    assert_ne!(a.manifest.id, b.manifest.id);
}

#[test]
fn a_missing_column_names_the_file_row_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    // JSONL whose rows use `question` instead of `prompt`.
    let bad = write_jsonl(&d.join("mine.jsonl"), &[json!({"question": "What is 2 + 2?"})]);
    let e = err(&ctx, &data(vec![source(&bad, "mine", SourceRole::Prompts)], None));
    assert!(e.contains(&format!("{} line 1: field `prompt` is missing", bad.display())) && e.contains("`answer`, `choices`, `id`"), "{e}");
    // Parquet without the column.
    let bad = d.join("mine.parquet");
    let mut df = DataFrame::new_infer_height(vec![Column::new("text".into(), ["What is 2 + 2?"])]).unwrap();
    ParquetWriter::new(&mut std::fs::File::create(&bad).unwrap()).finish(&mut df).unwrap();
    let e = err(&ctx, &data(vec![source(&bad, "mine", SourceRole::Prompts)], None));
    assert!(e.contains(&format!("{} row 1: field `prompt` is missing", bad.display())), "{e}");
    // An evaluation item needs its gold answer.
    let prompts = prompts_file(d);
    let eval = write_jsonl(&d.join("eval.jsonl"), &[json!({"prompt": "Capital of Peru?", "answer": "Lima"}), json!({"prompt": "Capital of Chile?"})]);
    let e = err(&ctx, &data(vec![source(&prompts, "mine", SourceRole::Prompts), source(&eval, "mine", SourceRole::Eval)], None));
    assert!(e.contains(&format!("{} line 2: field `answer` is missing", eval.display())), "{e}");
    // An SFT pair needs its reference response.
    let e = err(&ctx, &data(vec![source(&prompts, "mine", SourceRole::Prompts), source(&prompts, "mine", SourceRole::Sft)], None));
    assert!(e.contains("line 1: field `answer` is missing or empty: an sft source needs the reference response"), "{e}");
}

#[test]
fn an_empty_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let empty = d.join("empty.jsonl");
    std::fs::write(&empty, "\n  \n").unwrap();
    let e = err(&ctx, &data(vec![source(&empty, "mine", SourceRole::Prompts)], None));
    assert!(e.contains(&format!("{}: no rows: the data file is empty", empty.display())), "{e}");
}

#[test]
fn duplicate_ids_are_refused_naming_both_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    // Within one file: even an exact repeat, when it carries an id.
    let rows = [json!({"id": 7, "prompt": "A?"}), json!({"id": "x", "prompt": "B?"}), json!({"id": "7", "prompt": "C?"})];
    let f = write_jsonl(&d.join("p.jsonl"), &rows);
    let e = err(&ctx, &data(vec![source(&f, "mine", SourceRole::Prompts)], None));
    assert!(e.contains(&format!("{} line 3: duplicate id \"7\": line 1 has the same id", f.display())), "{e}");
    // Across two files of the same table.
    let a = write_jsonl(&d.join("a.jsonl"), &[json!({"id": "q1", "prompt": "A?"})]);
    let b = write_jsonl(&d.join("b.jsonl"), &[json!({"id": "q1", "prompt": "B?"})]);
    let e = err(&ctx, &data(vec![source(&a, "one", SourceRole::Prompts), source(&b, "two", SourceRole::Prompts)], None));
    assert!(
        e.contains(&format!("{} line 1: duplicate id \"q1\" in pool.parquet: {} line 1 has the same id", b.display(), a.display())),
        "{e}"
    );
    // Without ids: the same question twice with different answers (an exact repeat is dropped).
    let rows = [json!({"prompt": "A?", "answer": "1"}), json!({"prompt": "A?", "answer": "1"}), json!({"prompt": "A?", "answer": "2"})];
    let f = write_jsonl(&d.join("e.jsonl"), &rows);
    let e = err(&ctx, &data(vec![source(&prompts_file(d), "mine", SourceRole::Prompts), source(&f, "mine", SourceRole::Eval)], None));
    assert!(e.contains(&format!("{} line 3: duplicate prompt id", f.display())) && e.contains("line 1"), "{e}");
}

#[test]
fn a_prompt_that_is_also_an_eval_item_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let prompts = prompts_file(d);
    // Line 2 is prompt 3 of prompts.jsonl (other spacing, other id, other task).
    let eval = write_jsonl(
        &d.join("eval.jsonl"),
        &[json!({"id": "e1", "prompt": "What is 9 + 9?", "answer": 18}), json!({"id": "e2", "prompt": "Question 3:  what is 3 + 3? ", "answer": 6})],
    );
    let e = err(&ctx, &data(vec![source(&prompts, "mine", SourceRole::Prompts), source(&eval, "mine-eval", SourceRole::Eval)], None));
    assert!(
        e.contains(&format!("{} line 2: evaluation item e2 is also a prompt of pool.parquet ({} line 4)", eval.display(), prompts.display()))
            && e.contains("remove the question from one of the two files"),
        "{e}"
    );
    // The same for a multiple-choice item.
    let mc = write_jsonl(&d.join("mc.jsonl"), &[json!({"prompt": "Question 0: what is 0 + 0?", "choices": ["0", "1"], "answer": 0})]);
    let e = err(&ctx, &data(vec![source(&prompts, "mine", SourceRole::Prompts), source(&mc, "mine", SourceRole::Eval)], Some(0)));
    assert!(e.contains(&format!("{} line 1: evaluation item", mc.display())) && e.contains("also a prompt"), "{e}");
}

#[test]
fn choices_need_a_valid_answer_and_mc_per_task() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let prompts = source(&prompts_file(d), "mine", SourceRole::Prompts);
    let mc = |answer: Value| {
        let f = write_jsonl(&d.join("mc.jsonl"), &[json!({"prompt": "Pick.", "choices": ["red", "blue"], "answer": answer})]);
        source(&f, "mine", SourceRole::Eval)
    };
    let e = err(&ctx, &data(vec![prompts.clone(), mc(json!(1))], None));
    assert!(e.contains("line 1: field `choices`: multiple-choice items are scored by log-likelihood") && e.contains("mc_per_task"), "{e}");
    let e = err(&ctx, &data(vec![prompts.clone(), mc(json!("green"))], Some(0)));
    assert!(e.contains("field `answer` is \"green\", neither one of the 2 choices nor an index 0..1"), "{e}");
    let e = err(&ctx, &data(vec![prompts.clone(), mc(json!(2))], Some(0)));
    assert!(e.contains("neither one of the 2 choices"), "{e}");
    // A numeric-looking answer is a choice's text before an index.
    let f = write_jsonl(&d.join("n.jsonl"), &[json!({"prompt": "Pick.", "choices": ["1", "0"], "answer": "0"})]);
    let a = prepare::run(&ctx, &data(vec![prompts.clone(), source(&f, "mine", SourceRole::Eval)], Some(0))).unwrap();
    let rows: Vec<ChoiceRow> = table(&a, MC_FILE);
    assert_eq!(rows.iter().map(|r| r.gold).collect::<Vec<_>>(), [false, true]);
    // Choices belong to evaluation items only.
    let f = write_jsonl(&d.join("pc.jsonl"), &[json!({"prompt": "Pick.", "choices": ["a", "b"]})]);
    let e = err(&ctx, &data(vec![source(&f, "mine", SourceRole::Prompts)], None));
    assert!(e.contains("only evaluation items (role = \"eval\") take choices"), "{e}");
}

/// The built-in shapes work as sources too, under any task name; `limit` keeps a hash-ordered subset.
#[test]
fn builtin_formats_as_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let gsm: Vec<Value> =
        (0..5).map(|i| json!({"question": format!("Ann has {i} pens and gets 2. How many?"), "answer": format!("{i} + 2\n#### {}", i + 2)})).collect();
    let gsm = write_jsonl(&d.join("math.jsonl"), &gsm);
    let quartz = write_jsonl(
        &d.join("quartz.jsonl"),
        &[json!({"input": [{"role": "system", "content": "s"}, {"role": "user", "content": "More heat makes ice\n\n A: melt\n B: grow"}], "ideal": "A"})],
    );
    let sources = vec![
        source(&prompts_file(d), "mine", SourceRole::Prompts),
        DataSource { format: SourceFormat::Gsm8k, limit: Some(3), ..source(&gsm, "math", SourceRole::Eval) },
        DataSource { format: SourceFormat::Quartz, ..source(&quartz, "physics", SourceRole::Eval) },
    ];
    let a = prepare::run(&ctx, &data(sources.clone(), Some(0))).unwrap();
    let eval: Vec<PromptRow> = table(&a, "eval.parquet");
    assert_eq!(eval.len(), 3);
    assert!(eval.iter().all(|r| r.task == "math" && r.prompt.ends_with(EVAL_SUFFIX)));
    // GSM8K gold: the number after ####, graded as a number under the custom task name.
    let r = &eval[0];
    let gold = r.answer.as_deref().unwrap();
    assert!(cream_stages::grade::grade("math", &format!("Answer: {gold}.0"), gold, false).unwrap().1);
    let mc: Vec<ChoiceRow> = table(&a, MC_FILE);
    assert_eq!(mc.iter().map(|r| (r.task.as_str(), r.choice.as_str(), r.gold)).collect::<Vec<_>>(), [
        ("physics", "melt", true),
        ("physics", "grow", false)
    ]);
    // QuaRTz is multiple choice only: without mc_per_task the config is refused.
    let e = format!("{:#}", prepare::run(&ctx, &data(sources, None)).unwrap_err());
    assert!(e.contains("QuaRTz items are scored by log-likelihood only; set [data] mc_per_task"), "{e}");
}

#[test]
fn config_errors_name_the_source() {
    let no_prompts = "[[sources]]\npath = \"e.jsonl\"\ntask = \"mine\"\nrole = \"eval\"\n";
    let d: DataSection = toml::from_str(no_prompts).unwrap();
    assert!(format!("{:#}", d.validate().unwrap_err()).contains("[data] has no prompts"));
    let bad_task = "[[sources]]\npath = \"p.jsonl\"\ntask = \"my task\"\nrole = \"prompts\"\n";
    let d: DataSection = toml::from_str(bad_task).unwrap();
    let e = format!("{:#}", d.validate().unwrap_err());
    assert!(e.contains("[[data.sources]] #1 (p.jsonl): task"), "{e}");
    let sft_siqa = "[[sources]]\npath = \"s.jsonl\"\ntask = \"s\"\nrole = \"sft\"\nformat = \"socialiqa\"\n";
    let d: DataSection = toml::from_str(sft_siqa).unwrap();
    assert!(format!("{:#}", d.validate().unwrap_err()).contains("role = \"sft\" needs reference responses, which format \"socialiqa\" does not have"));
    let unknown = "[[sources]]\npath = \"p.jsonl\"\ntask = \"t\"\nrole = \"prompt\"\n";
    let e = toml::from_str::<DataSection>(unknown).unwrap_err().to_string();
    assert!(e.contains("prompt") && e.contains("prompts"), "{e}");
}

/// A generic source in Parquet: `id` and `answer` may be integer columns, `choices` a list of
/// strings; the rows are those of the same data in JSONL.
#[test]
fn generic_parquet_with_integer_and_list_columns() {
    use polars::prelude::{NamedFrom, Series};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let prompts = source(&prompts_file(d), "mine", SourceRole::Prompts);
    let pq = d.join("eval.parquet");
    let choices = [Series::new("".into(), ["red", "blue"]), Series::new("".into(), ["up", "down", "left"])];
    let mut df = DataFrame::new_infer_height(vec![
        Column::new("id".into(), [11i64, 12]),
        Column::new("prompt".into(), ["Sky colour?", "Which way is north on a map?"]),
        Column::new("choices".into(), Series::new("choices".into(), choices)),
        Column::new("answer".into(), [1i64, 0]),
    ])
    .unwrap();
    ParquetWriter::new(&mut std::fs::File::create(&pq).unwrap()).finish(&mut df).unwrap();
    let jsonl = write_jsonl(
        &d.join("eval.jsonl"),
        &[
            json!({"id": 11, "prompt": "Sky colour?", "choices": ["red", "blue"], "answer": 1}),
            json!({"id": 12, "prompt": "Which way is north on a map?", "choices": ["up", "down", "left"], "answer": "up"}),
        ],
    );
    let run = |f: &Path| {
        let a = prepare::run(&ctx, &data(vec![prompts.clone(), source(f, "mine", SourceRole::Eval)], Some(0))).unwrap();
        table::<ChoiceRow>(&a, MC_FILE)
    };
    let rows = run(&pq);
    assert_eq!(rows.len(), 5);
    let gold: Vec<(&str, &str)> = rows.iter().filter(|r| r.gold).map(|r| (r.item_id.as_str(), r.choice.as_str())).collect();
    assert_eq!(gold.len(), 2);
    assert!(gold.contains(&("11", "blue")) && gold.contains(&("12", "up")), "{gold:?}");
    assert_eq!(run(&jsonl), rows);
}
