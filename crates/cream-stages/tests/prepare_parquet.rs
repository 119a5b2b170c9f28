//! The `prepare` stage reads data files in Parquet (paths ending in `.parquet`) as well as JSONL:
//! the same data in either form gives the same pool / eval / SFT rows (same prompt ids).

use std::path::{Path, PathBuf};

use cream_core::{PromptRow, read_table};
use cream_stages::config::DataSection;
use cream_stages::ctx::Ctx;
use polars::prelude::{Column, DataFrame, ParquetWriter};
use serde_json::json;

fn gsm8k_rows(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let (a, b) = (i + 2, 3 * i + 1);
            (
                format!("{prefix} {i}: Tom has {a} apples and buys {b} more. How many apples does he have?"),
                format!("{a} + {b} = {}\n#### {}", a + b, a + b),
            )
        })
        .collect()
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn write_parquet(path: &Path, columns: Vec<Column>) {
    let mut df = DataFrame::new_infer_height(columns).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    ParquetWriter::new(&mut file).finish(&mut df).unwrap();
}

fn gsm8k_parquet(path: &Path, rows: &[(String, String)]) {
    let q: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let a: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    write_parquet(path, vec![Column::new("question".into(), q), Column::new("answer".into(), a)]);
}

fn gsm8k_jsonl(path: &Path, rows: &[(String, String)]) {
    write_jsonl(path, &rows.iter().map(|(q, a)| json!({"question": q, "answer": a})).collect::<Vec<_>>());
}

fn siqa_rows() -> Vec<(String, &'static str)> {
    (0..8)
        .map(|i| (format!("Person {i} helped a friend. Why? A: to be kind; B: to be mean; C: by accident"), "a"))
        .collect()
}

fn data(train: PathBuf, test: PathBuf, socialiqa: PathBuf) -> DataSection {
    DataSection {
        gsm8k_train: Some(train),
        gsm8k_test: Some(test),
        socialiqa: Some(socialiqa),
        socialiqa_eval_fraction: 0.5,
        prompts_per_source: 0,
        sft_examples: 2,
        eval_per_task: 0,
        quartz: None,
        mc_per_task: None,
        sources: Vec::new(),
    }
}

fn tables(a: &cream_core::Artifact) -> [Vec<PromptRow>; 3] {
    ["pool.parquet", "eval.parquet", "sft.parquet"].map(|f| read_table(&a.path(f).unwrap()).unwrap())
}

#[test]
fn parquet_data_files_give_the_jsonl_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (train, test) = (gsm8k_rows("train", 6), gsm8k_rows("test", 3));
    gsm8k_jsonl(&d.join("train.jsonl"), &train);
    gsm8k_jsonl(&d.join("test.jsonl"), &test);
    gsm8k_parquet(&d.join("train.parquet"), &train);
    gsm8k_parquet(&d.join("test.parquet"), &test);
    let siqa = siqa_rows();
    write_jsonl(
        &d.join("siqa.jsonl"),
        &siqa.iter().map(|(c, i)| json!({"input": [{"role": "user", "content": c}], "ideal": i})).collect::<Vec<_>>(),
    );
    // The flat Parquet form of Social IQa: the user content in `question`, next to `ideal`.
    let contents: Vec<&str> = siqa.iter().map(|r| r.0.as_str()).collect();
    let ideals: Vec<&str> = siqa.iter().map(|r| r.1).collect();
    write_parquet(
        &d.join("siqa.parquet"),
        vec![Column::new("question".into(), contents), Column::new("ideal".into(), ideals)],
    );

    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let from_jsonl =
        cream_stages::prepare::run(&ctx, &data(d.join("train.jsonl"), d.join("test.jsonl"), d.join("siqa.jsonl")))
            .unwrap();
    let from_parquet =
        cream_stages::prepare::run(&ctx, &data(d.join("train.parquet"), d.join("test.parquet"), d.join("siqa.jsonl")))
            .unwrap();
    let all_parquet =
        cream_stages::prepare::run(&ctx, &data(d.join("train.parquet"), d.join("test.parquet"), d.join("siqa.parquet")))
            .unwrap();
    assert_ne!(from_jsonl.manifest.id, from_parquet.manifest.id, "the input files differ");
    let want = tables(&from_jsonl);
    assert_eq!(want[0].len(), 4 + 8 - want[1].len() + 3, "pool: 4 GSM8K prompts + held-in Social IQa");
    assert_eq!(want[2].len(), 2);
    assert!(want[1].iter().any(|r| r.task == "socialiqa") && want[1].iter().any(|r| r.task == "gsm8k"));
    assert_eq!(tables(&from_parquet), want);
    assert_eq!(tables(&all_parquet), want);
}

#[test]
fn parquet_errors_name_the_file_row_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ctx = Ctx::new(&d.join("artifacts"), true).unwrap();
    let train = gsm8k_rows("train", 6);
    gsm8k_parquet(&d.join("train.parquet"), &train);
    gsm8k_jsonl(&d.join("test.jsonl"), &gsm8k_rows("test", 3));
    write_jsonl(&d.join("siqa.jsonl"), &[json!({"input": [{"role": "user", "content": "Q? A: x; B: y"}], "ideal": "A"})]);

    // A null answer in row 2 of the test file.
    let bad = d.join("bad_test.parquet");
    write_parquet(
        &bad,
        vec![
            Column::new("question".into(), ["q1", "q2"]),
            Column::new("answer".into(), [Some("1 + 1 = 2\n#### 2"), None]),
        ],
    );
    let err = cream_stages::prepare::run(&ctx, &data(d.join("train.parquet"), bad.clone(), d.join("siqa.jsonl")))
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(&bad.display().to_string()) && err.contains("row 2") && err.contains("`answer`"), "{err}");

    // No `question` column at all.
    let bad = d.join("no_question.parquet");
    write_parquet(&bad, vec![Column::new("text".into(), ["q1"]), Column::new("answer".into(), ["#### 2"])]);
    let err = cream_stages::prepare::run(&ctx, &data(d.join("train.parquet"), bad.clone(), d.join("siqa.jsonl")))
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(&bad.display().to_string()) && err.contains("row 1") && err.contains("`question`"), "{err}");

    // Not Parquet at all.
    let bad = d.join("garbage.parquet");
    std::fs::write(&bad, "not parquet").unwrap();
    let err = cream_stages::prepare::run(&ctx, &data(d.join("train.parquet"), bad.clone(), d.join("siqa.jsonl")))
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
}
