//! Parquet tables: round trips, determinism, metadata and schema validation errors.

use std::fmt::Debug;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, LargeStringArray, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use cream_core::{
    ConsistencyRow, EvalRow, MetricRow, PairRow, PromptRow, ReportRow, ReportTaskRow, RewardRow, SampleRow,
    ScoreRow, Table, read_table, write_table,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use proptest::prelude::*;

/// Writes `rows`, reads them back, and checks equality and byte-identical rewrites.
fn roundtrip<T: Table + PartialEq + Debug>(rows: &[T]) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    assert_eq!(write_table(&a, rows).unwrap(), rows.len() as u64);
    assert_eq!(read_table::<T>(&a).unwrap(), rows);
    write_table(&b, rows).unwrap();
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "{} bytes differ",
        T::NAME
    );
}

const UNICODE: &str = "Ünïcödé 数学 🚀 \u{0} \"quotes\" \n tabs\t";

#[test]
fn prompts_roundtrip() {
    roundtrip(&[
        PromptRow {
            prompt_id: "p0".into(),
            source: "gsm8k".into(),
            task: "math".into(),
            prompt: UNICODE.into(),
            answer: Some("42".into()),
        },
        PromptRow {
            prompt_id: String::new(),
            source: String::new(),
            task: String::new(),
            prompt: String::new(),
            answer: None,
        },
        PromptRow {
            prompt_id: "p2".into(),
            source: "s".into(),
            task: "t".into(),
            prompt: "q".into(),
            answer: Some(String::new()),
        },
    ]);
    roundtrip::<PromptRow>(&[]);
}

#[test]
fn samples_roundtrip() {
    let row = |i: u32, tokens: Vec<u32>| SampleRow {
        prompt_id: format!("p{i}"),
        sample_idx: i,
        prompt: UNICODE.into(),
        response: "r".repeat(i as usize),
        prompt_tokens: tokens.len() as u32 / 2,
        response_tokens: tokens.len() as u32 - tokens.len() as u32 / 2,
        token_ids: tokens,
        finish_reason: "stop".into(),
        seed: u64::MAX - u64::from(i),
    };
    roundtrip(&[
        row(0, vec![]),
        row(1, vec![1, 2, 3]),
        row(2, vec![u32::MAX, 0]),
        row(3, vec![]),
    ]);
}

#[test]
fn other_tables_roundtrip() {
    roundtrip(&[
        RewardRow {
            prompt_id: "p".into(),
            sample_idx: 0,
            mode: "implicit".into(),
            s_policy: -1.25,
            s_ref: Some(-3.5),
            n_scored: 12,
            reward: 2.25,
        },
        RewardRow {
            prompt_id: "p".into(),
            sample_idx: 1,
            mode: "judge".into(),
            s_policy: f64::INFINITY,
            s_ref: None,
            n_scored: 0,
            reward: -0.0,
        },
    ]);
    roundtrip(&[ConsistencyRow {
        prompt_id: "p".into(),
        n: 4,
        tau: -0.5,
        c: 0.25,
        ties_current: 1,
        ties_previous: 0,
    }]);
    roundtrip(&[PairRow {
        prompt_id: "p".into(),
        prompt: UNICODE.into(),
        chosen: "a".into(),
        rejected: String::new(),
        chosen_idx: 3,
        rejected_idx: 0,
        chosen_reward: 1.0,
        rejected_reward: -1.0,
        c: 0.75,
    }]);
    roundtrip(&[MetricRow {
        step: u64::MAX,
        epoch: 0.5,
        loss: 0.69,
        reward_margin: 0.1,
        reward_accuracy: 0.6,
        grad_norm: 1e-300,
        lr: 5e-7,
        tokens: 1 << 40,
    }]);
    roundtrip(&[ScoreRow {
        prompt_id: "p".into(),
        sample_idx: 2,
        sum_logprob: -12.5,
        n_scored: 9,
    }]);
    roundtrip(&[
        EvalRow {
            prompt_id: "p".into(),
            task: "gsm8k".into(),
            prompt: "q".into(),
            response: UNICODE.into(),
            extracted: Some("7".into()),
            answer: "7".into(),
            correct: true,
        },
        EvalRow {
            prompt_id: "q".into(),
            task: "gsm8k".into(),
            prompt: "q".into(),
            response: String::new(),
            extracted: None,
            answer: "8".into(),
            correct: false,
        },
    ]);
}

#[test]
fn report_tables_roundtrip() {
    let row = |iteration: u32, some: bool| ReportRow {
        pipeline: "cream".into(),
        iteration,
        c_mean: some.then_some(0.75),
        c_std: some.then_some(0.1),
        tau_mean: some.then_some(0.5),
        tie_rate: some.then_some(0.0),
        tie_rate_prev: some.then_some(0.25),
        pairs: some.then_some(u64::MAX),
        chosen_mean_len: some.then_some(23.5),
        rejected_mean_len: some.then_some(40.0),
        reward_accuracy: some.then_some(0.6),
        train_loss: some.then_some(0.69),
        c_final: None,
        tau_final: some.then_some(-1.0),
        acc_mean: Some(45.0),
    };
    roundtrip(&[row(0, false), row(1, true)]);
    roundtrip::<ReportRow>(&[]);
    roundtrip(&[
        ReportTaskRow {
            iteration: 0,
            task: "gsm8k".into(),
            method: "generate".into(),
            acc: 40.0,
            lo: Some(35.0),
            hi: Some(44.0),
            acc_norm: None,
        },
        ReportTaskRow {
            iteration: 1,
            task: UNICODE.into(),
            method: "loglik".into(),
            acc: 25.0,
            lo: None,
            hi: None,
            acc_norm: Some(100.0),
        },
    ]);
    let report = ReportRow::schema();
    assert!(!report.field_with_name("iteration").unwrap().is_nullable());
    assert!(report.field_with_name("pairs").unwrap().is_nullable());
    assert_eq!(report.field_with_name("pairs").unwrap().data_type(), &DataType::UInt64);
    assert_eq!(ReportTaskRow::file_name(), "report_tasks.parquet");
}

fn sample_row() -> impl Strategy<Value = SampleRow> {
    (
        ("\\PC{0,8}", any::<u32>(), "\\PC{0,40}", "\\PC{0,40}"),
        (
            prop::collection::vec(any::<u32>(), 0..50),
            any::<u32>(),
            any::<u32>(),
            "[a-z]{0,6}",
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (prompt_id, sample_idx, prompt, response),
                (token_ids, prompt_tokens, response_tokens, finish_reason, seed),
            )| {
                SampleRow {
                    prompt_id,
                    sample_idx,
                    prompt,
                    response,
                    token_ids,
                    prompt_tokens,
                    response_tokens,
                    finish_reason,
                    seed,
                }
            },
        )
}

fn reward_row() -> impl Strategy<Value = RewardRow> {
    (
        "\\PC{0,8}",
        any::<u32>(),
        "\\PC{0,8}",
        -1e300f64..1e300,
        prop::option::of(-1e3f64..1e3),
        any::<u32>(),
        any::<f64>().prop_filter("not NaN", |x| !x.is_nan()),
    )
        .prop_map(
            |(prompt_id, sample_idx, mode, s_policy, s_ref, n_scored, reward)| RewardRow {
                prompt_id,
                sample_idx,
                mode,
                s_policy,
                s_ref,
                n_scored,
                reward,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn samples_roundtrip_prop(rows in prop::collection::vec(sample_row(), 0..20)) {
        roundtrip(&rows);
    }

    #[test]
    fn rewards_roundtrip_prop(rows in prop::collection::vec(reward_row(), 0..20)) {
        roundtrip(&rows);
    }
}

#[test]
fn schemas_declare_types_and_nullability() {
    let prompts = PromptRow::schema();
    assert!(prompts.field_with_name("answer").unwrap().is_nullable());
    assert!(!prompts.field_with_name("prompt").unwrap().is_nullable());
    let names: Vec<_> = prompts.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["prompt_id", "source", "task", "prompt", "answer"]);
    let samples = SampleRow::schema();
    assert_eq!(
        samples.field_with_name("token_ids").unwrap().data_type(),
        &DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, false)))
    );
    assert_eq!(
        samples.field_with_name("seed").unwrap().data_type(),
        &DataType::UInt64
    );
    let rewards = RewardRow::schema();
    assert!(rewards.field_with_name("s_ref").unwrap().is_nullable());
    assert!(!rewards.field_with_name("reward").unwrap().is_nullable());
    assert_eq!(
        EvalRow::schema()
            .field_with_name("correct")
            .unwrap()
            .data_type(),
        &DataType::Boolean
    );
    assert_eq!(RewardRow::file_name(), "rewards.parquet");
    for schema in [
        ConsistencyRow::schema(),
        PairRow::schema(),
        MetricRow::schema(),
        samples,
    ] {
        assert!(schema.fields().iter().all(|f| !f.is_nullable()));
    }
}

#[test]
fn files_carry_table_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.parquet");
    write_table::<SampleRow>(&path, &[]).unwrap();
    let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
    let meta = reader.metadata().file_metadata();
    assert_eq!(meta.created_by(), Some("cream"));
    let kv: Vec<_> = meta
        .key_value_metadata()
        .unwrap()
        .iter()
        .filter(|e| e.key.starts_with("cream."))
        .map(|e| (e.key.as_str(), e.value.as_deref().unwrap()))
        .collect();
    assert_eq!(
        kv,
        [("cream.table", "samples"), ("cream.schema_version", "1")]
    );
}

/// Writes a Parquet file with the given columns, as another writer might.
fn write_raw(dir: &Path, columns: Vec<(&str, ArrayRef, bool)>) -> PathBuf {
    write_raw_with(dir, columns, None)
}

/// [`write_raw`] with the given writer properties (e.g. a compression codec).
fn write_raw_with(
    dir: &Path,
    columns: Vec<(&str, ArrayRef, bool)>,
    props: Option<WriterProperties>,
) -> PathBuf {
    let path = dir.join("odd.parquet");
    let fields: Vec<_> = columns
        .iter()
        .map(|(n, a, null)| Field::new(*n, a.data_type().clone(), *null))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|c| c.1).collect(),
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), props).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

fn strings(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// The columns of a valid two-row prompts table.
fn prompt_columns() -> Vec<(&'static str, ArrayRef, bool)> {
    vec![
        ("prompt_id", strings(&[Some("a"), Some("b")]), false),
        ("source", strings(&[Some("s"), Some("s")]), false),
        ("task", strings(&[Some("t"), Some("t")]), false),
        ("prompt", strings(&[Some("x"), Some("y")]), false),
        ("answer", strings(&[None, Some("1")]), true),
    ]
}

fn read_err(path: &Path) -> String {
    format!("{:#}", read_table::<PromptRow>(path).unwrap_err())
}

fn assert_mentions(msg: &str, needles: &[&str]) {
    for needle in needles {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }
}

#[test]
fn foreign_but_compatible_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // Column order differs, strings are LargeUtf8, non-nullable fields declared nullable (as
    // polars writes them) but holding no null.
    let mut columns = prompt_columns();
    columns.reverse();
    columns[1] = (
        "prompt",
        Arc::new(LargeStringArray::from(vec!["x", "y"])),
        true,
    );
    let path = write_raw(dir.path(), columns);
    let rows = read_table::<PromptRow>(&path).unwrap();
    assert_eq!(rows[1].prompt, "y");
    assert_eq!(rows[1].answer.as_deref(), Some("1"));
    assert_eq!(rows[0].answer, None);
}

/// zstd is polars' default codec (`ParquetWriter`, e.g. the report table), so files polars writes
/// are readable.
#[test]
fn zstd_compressed_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let path = write_raw_with(dir.path(), prompt_columns(), Some(props));
    let meta = SerializedFileReader::new(File::open(&path).unwrap())
        .unwrap()
        .metadata()
        .row_group(0)
        .column(0)
        .compression();
    assert!(matches!(meta, Compression::ZSTD(_)), "{meta:?}");
    let rows = read_table::<PromptRow>(&path).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].prompt, "y");
    assert_eq!(rows[1].answer.as_deref(), Some("1"));
}

#[test]
fn missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut columns = prompt_columns();
    columns.remove(2);
    let msg = read_err(&write_raw(dir.path(), columns));
    assert_mentions(
        &msg,
        &[
            "odd.parquet",
            "missing column \"task\"",
            "Utf8",
            "rerun the stage",
        ],
    );
}

#[test]
fn extra_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut columns = prompt_columns();
    columns.push((
        "bogus",
        Arc::new(BooleanArray::from(vec![true, false])),
        false,
    ));
    let msg = read_err(&write_raw(dir.path(), columns));
    assert_mentions(
        &msg,
        &[
            "odd.parquet",
            "unexpected column \"bogus\"",
            "Boolean",
            "prompt_id, source",
        ],
    );
}

#[test]
fn wrong_type_is_named_with_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut columns = prompt_columns();
    columns[2] = ("task", Arc::new(Int64Array::from(vec![1, 2])), false);
    let msg = read_err(&write_raw(dir.path(), columns));
    assert_mentions(
        &msg,
        &["odd.parquet", "column \"task\"", "Int64", "needs Utf8"],
    );

    let columns = vec![
        ("prompt_id", strings(&[Some("p")]), false),
        ("n", Arc::new(Int64Array::from(vec![3])) as ArrayRef, false),
        (
            "tau",
            Arc::new(arrow::array::Float64Array::from(vec![0.5])),
            false,
        ),
        (
            "c",
            Arc::new(arrow::array::Float32Array::from(vec![0.5])),
            false,
        ),
        ("ties_current", Arc::new(UInt32Array::from(vec![0])), false),
        ("ties_previous", Arc::new(UInt32Array::from(vec![0])), false),
    ];
    let err = read_table::<ConsistencyRow>(&write_raw(dir.path(), columns)).unwrap_err();
    assert_mentions(
        &format!("{err:#}"),
        &["odd.parquet", "column \"n\"", "Int64", "UInt32"],
    );
}

#[test]
fn null_in_non_nullable_column_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut columns = prompt_columns();
    columns[3] = ("prompt", strings(&[Some("x"), None]), true);
    let msg = read_err(&write_raw(dir.path(), columns));
    assert_mentions(&msg, &["odd.parquet", "column \"prompt\"", "row 1", "null"]);
}

#[test]
fn a_table_of_another_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rewards.parquet");
    write_table::<RewardRow>(&path, &[]).unwrap();
    let err = read_table::<SampleRow>(&path).unwrap_err();
    assert_mentions(
        &format!("{err:#}"),
        &["rewards.parquet", "rewards table, not a samples table"],
    );
}

#[test]
fn corrupt_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    let rows: Vec<_> = (0..500)
        .map(|i| PromptRow {
            prompt_id: format!("p{i}"),
            source: "s".into(),
            task: "t".into(),
            prompt: "q".repeat(i % 50),
            answer: None,
        })
        .collect();
    write_table(&good, &rows).unwrap();
    let bytes = fs::read(&good).unwrap();
    let mut variants: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "garbage",
            b"this is not parquet at all, not even close".repeat(10),
        ),
        ("truncated", bytes[..bytes.len() - 10].to_vec()),
        ("headless", bytes[bytes.len() / 2..].to_vec()),
    ];
    // Flip bytes inside the data pages (the footer stays intact).
    for at in [4, 8, 100, bytes.len() / 3, bytes.len() / 2] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0xff;
        variants.push(("flipped", flipped));
    }
    for (i, (what, data)) in variants.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.parquet"));
        fs::write(&path, data).unwrap();
        match read_table::<PromptRow>(&path) {
            Err(err) => assert_mentions(&format!("{err:#}"), &[&format!("bad{i}.parquet")]),
            // A flip may hit a byte whose change still decodes (e.g. inside a string).
            Ok(read) => assert!(
                what == "flipped" && read.len() == rows.len(),
                "{what} was read"
            ),
        }
    }
    let err = read_table::<PromptRow>(&dir.path().join("absent.parquet")).unwrap_err();
    assert_mentions(&format!("{err:#}"), &["absent.parquet"]);
}
