//! The Parquet tables stages exchange: the only module that knows Arrow/Parquet schemas.
//!
//! Each table is declared once, as a row struct with typed fields, by the `tables!` macro, which
//! derives its Arrow schema and its conversions from and to record batches. [`write_table`]
//! writes deterministic bytes; [`read_table`] validates the file's schema against the row type
//! and reports any mismatch by file and column.
//!
//! Field types map to Arrow as: `String` -> Utf8, `u32` -> UInt32, `u64` -> UInt64,
//! `i64` -> Int64, `f64` -> Float64, `bool` -> Boolean, `Vec<u32>` -> `List<UInt32>` (non-null
//! items), and `Option<T>` -> the type of `T`, nullable. All other columns are non-nullable.
//!
//! Reading accepts what other writers such as polars produce for the same data: strings stored as
//! LargeUtf8 or Utf8View, and columns declared nullable for a non-nullable field as long as they
//! hold no null (a null is reported with its row number), and zstd compression (polars' default
//! codec) as well as snappy (what [`write_table`] writes) or none; other codecs are refused with
//! an error naming the file. Lists must be `List<UInt32>` with non-null items.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListArray, PrimitiveArray, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt32Type,
    UInt64Type,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

/// Rows per Parquet row group; fixed so that the same rows always give the same bytes.
const ROW_GROUP_ROWS: usize = 64 * 1024;
/// The `created_by` of every file we write; fixed so that bytes do not depend on versions.
const CREATED_BY: &str = "cream";
/// File metadata key holding [`Table::NAME`].
const TABLE_KEY: &str = "cream.table";
/// File metadata key holding [`Table::SCHEMA_VERSION`].
const VERSION_KEY: &str = "cream.schema_version";
/// What to do about a file that does not have the expected shape.
const SCHEMA_HINT: &str =
    "the file was not written by this version of cream; rerun the stage that produced it";

/// A row type stored as a Parquet table.
pub trait Table: Sized {
    /// The table's name, stored in the file metadata as `cream.table`.
    const NAME: &'static str;
    /// The version of the table's schema, stored as `cream.schema_version`; bump it with any
    /// change of the columns.
    const SCHEMA_VERSION: u32;

    /// The Arrow schema: one column per field, in declaration order.
    fn schema() -> SchemaRef;

    /// The rows as one record batch with [`Table::schema`].
    fn to_batch(rows: &[Self]) -> RecordBatch;

    /// The rows of `batch`, after checking its schema against [`Table::schema`]; `file` is only
    /// used to name the source in errors.
    fn from_batch(batch: &RecordBatch, file: &Path) -> Result<Vec<Self>>;

    /// The conventional file name of the table inside an artifact, `<NAME>.parquet`.
    fn file_name() -> String {
        format!("{}.parquet", Self::NAME)
    }
}

/// A non-null value type that can be a column.
trait Scalar: Sized {
    type Array: Array + 'static;
    fn data_type() -> DataType;
    fn build<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef
    where
        Self: 'a;
    /// The value at a valid (non-null) `row`.
    fn value(array: &Self::Array, row: usize) -> Self;
}

/// A field type: a [`Scalar`] (non-nullable column) or an `Option` of one (nullable column).
trait Column: Sized {
    type Array: Array + 'static;
    const NULLABLE: bool;
    fn data_type() -> DataType;
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a;
    /// The value at `row`, or `None` if it is null where the type does not allow it.
    fn get(array: &Self::Array, row: usize) -> Option<Self>;
}

impl<T: Scalar> Column for T {
    type Array = T::Array;
    const NULLABLE: bool = false;
    fn data_type() -> DataType {
        T::data_type()
    }
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a,
    {
        T::build(values.map(Some))
    }
    fn get(array: &Self::Array, row: usize) -> Option<Self> {
        array.is_valid(row).then(|| T::value(array, row))
    }
}

impl<T: Scalar> Column for Option<T> {
    type Array = T::Array;
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        T::data_type()
    }
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a,
    {
        T::build(values.map(Option::as_ref))
    }
    fn get(array: &Self::Array, row: usize) -> Option<Self> {
        Some(array.is_valid(row).then(|| T::value(array, row)))
    }
}

macro_rules! primitive_scalar {
    ($($rust:ty => $arrow:ty),* $(,)?) => {$(
        impl Scalar for $rust {
            type Array = PrimitiveArray<$arrow>;
            fn data_type() -> DataType {
                <$arrow as ArrowPrimitiveType>::DATA_TYPE
            }
            fn build<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
                Arc::new(values.map(|v| v.copied()).collect::<PrimitiveArray<$arrow>>())
            }
            fn value(array: &Self::Array, row: usize) -> Self {
                array.value(row)
            }
        }
    )*};
}

primitive_scalar!(u32 => UInt32Type, u64 => UInt64Type, i64 => Int64Type, f64 => Float64Type);

impl Scalar for bool {
    type Array = BooleanArray;
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn build<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
        Arc::new(values.map(|v| v.copied()).collect::<BooleanArray>())
    }
    fn value(array: &Self::Array, row: usize) -> Self {
        array.value(row)
    }
}

impl Scalar for String {
    type Array = StringArray;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn build<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
        Arc::new(
            values
                .map(|v| v.map(String::as_str))
                .collect::<StringArray>(),
        )
    }
    fn value(array: &Self::Array, row: usize) -> Self {
        array.value(row).to_owned()
    }
}

impl Scalar for Vec<u32> {
    type Array = ListArray;
    fn data_type() -> DataType {
        DataType::List(list_item())
    }
    fn build<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
        let values: Vec<_> = values.collect();
        let offsets = OffsetBuffer::from_lengths(values.iter().map(|v| v.map_or(0, Vec::len)));
        let items =
            UInt32Array::from_iter_values(values.iter().flatten().flat_map(|v| v.iter().copied()));
        let nulls = values
            .iter()
            .any(Option::is_none)
            .then(|| values.iter().map(Option::is_some).collect::<NullBuffer>());
        Arc::new(ListArray::new(list_item(), offsets, Arc::new(items), nulls))
    }
    fn value(array: &Self::Array, row: usize) -> Self {
        array
            .value(row)
            .as_primitive::<UInt32Type>()
            .values()
            .to_vec()
    }
}

fn list_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::UInt32, false))
}

/// The value of column `name` at `row`, or an error naming file, column and row for a null in a
/// non-nullable column.
fn value<C: Column>(array: &C::Array, row: usize, file: &Path, name: &str) -> Result<C> {
    C::get(array, row).ok_or_else(|| {
        anyhow!(
            "{}: column {name:?}, row {row}: null, but the column does not allow nulls; {SCHEMA_HINT}",
            file.display()
        )
    })
}

/// The column arrays of `batch` in `T`'s field order, checked against `T::schema()` (and cast
/// where another writer stored strings differently).
fn conform<T: Table>(batch: &RecordBatch, file: &Path) -> Result<Vec<ArrayRef>> {
    let expected = T::schema();
    let found = batch.schema();
    let table = T::NAME;
    let file = file.display();
    if let Some(extra) = found
        .fields()
        .iter()
        .find(|f| expected.field_with_name(f.name()).is_err())
    {
        bail!(
            "{file}: unexpected column {:?} ({}) in a {table} table, which has columns {}; {SCHEMA_HINT}",
            extra.name(),
            extra.data_type(),
            expected
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    expected
        .fields()
        .iter()
        .map(|want| {
            let describe = |f: &Field| {
                format!(
                    "{}{}",
                    f.data_type(),
                    if f.is_nullable() { " (nullable)" } else { "" }
                )
            };
            let Some((i, have)) = found.column_with_name(want.name()) else {
                bail!(
                    "{file}: missing column {:?} (expected {}) of a {table} table; {SCHEMA_HINT}",
                    want.name(),
                    describe(want)
                );
            };
            let column = batch.column(i);
            let restring = *want.data_type() == DataType::Utf8
                && matches!(have.data_type(), DataType::LargeUtf8 | DataType::Utf8View);
            if have.data_type().equals_datatype(want.data_type()) {
                Ok(Arc::clone(column))
            } else if restring {
                cast(column, want.data_type()).with_context(|| {
                    format!("{file}: cannot read column {:?} as Utf8", want.name())
                })
            } else {
                bail!(
                    "{file}: column {:?} has type {} but a {table} table needs {}; {SCHEMA_HINT}",
                    want.name(),
                    describe(have),
                    describe(want)
                )
            }
        })
        .collect()
}

/// Declares row structs and their [`Table`] implementations.
macro_rules! tables {
    ($(
        #[table = $name:literal, version = $version:literal]
        $(#[$meta:meta])*
        pub struct $row:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    )*) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $row {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Table for $row {
            const NAME: &'static str = $name;
            const SCHEMA_VERSION: u32 = $version;

            fn schema() -> SchemaRef {
                Arc::new(Schema::new(vec![$(
                    Field::new(stringify!($field), <$ty as Column>::data_type(), <$ty as Column>::NULLABLE),
                )*]))
            }

            fn to_batch(rows: &[Self]) -> RecordBatch {
                let columns = vec![$( <$ty as Column>::build(rows.iter().map(|r| &r.$field)), )*];
                RecordBatch::try_new(Self::schema(), columns)
                    .expect("columns are built from the declared field types")
            }

            fn from_batch(batch: &RecordBatch, file: &Path) -> Result<Vec<Self>> {
                let columns = conform::<Self>(batch, file)?;
                let mut columns = columns.iter();
                $(
                    let $field = columns
                        .next()
                        .and_then(|c| c.as_any().downcast_ref::<<$ty as Column>::Array>())
                        .expect("conform checked every column's type");
                )*
                (0..batch.num_rows())
                    .map(|row| Ok(Self {
                        $( $field: value::<$ty>($field, row, file, stringify!($field))?, )*
                    }))
                    .collect()
            }
        }
    )*};
}

tables! {
    #[table = "prompts", version = 1]
    /// A prompt to sample responses for (or to evaluate on).
    pub struct PromptRow {
        /// Stable id: a hash of the prompt text and its source.
        pub prompt_id: String,
        /// Where the prompt comes from (data set name).
        pub source: String,
        /// The task family, e.g. `"gsm8k"`.
        pub task: String,
        /// The prompt text (the user message).
        pub prompt: String,
        /// The reference answer, where the source has one.
        pub answer: Option<String>,
    }

    #[table = "samples", version = 1]
    /// One sampled response to a prompt.
    pub struct SampleRow {
        /// The prompt's id.
        pub prompt_id: String,
        /// Index of this sample among the prompt's samples.
        pub sample_idx: u32,
        /// The prompt text.
        pub prompt: String,
        /// The generated response text.
        pub response: String,
        /// Token ids of the full rendered conversation (prompt and response).
        pub token_ids: Vec<u32>,
        /// Number of prompt tokens at the start of `token_ids`.
        pub prompt_tokens: u32,
        /// Number of response tokens at the end of `token_ids`.
        pub response_tokens: u32,
        /// Why generation stopped, e.g. `"stop"` or `"length"`.
        pub finish_reason: String,
        /// The RNG seed of this sample, derived from (run seed, prompt id, sample index).
        pub seed: u64,
    }

    #[table = "rewards", version = 1]
    /// The self-reward of one sample.
    pub struct RewardRow {
        /// The prompt's id.
        pub prompt_id: String,
        /// The sample's index.
        pub sample_idx: u32,
        /// How the reward was computed: the judge mode, `"dpo"`, `"likelihood"` or `"llm-judge"`.
        pub mode: String,
        /// Score under the policy model.
        pub s_policy: f64,
        /// Score under the reference model, where the mode uses one.
        pub s_ref: Option<f64>,
        /// Number of tokens scored; for mode `"llm-judge"`, the number of judgements whose score
        /// parsed (0: none did, and `reward` is the fallback 0.0).
        pub n_scored: u32,
        /// The reward.
        pub reward: f64,
    }

    #[table = "judgements", version = 1]
    /// One sampled LLM-as-a-judge judgement of one sample (the `llm-judge` mode of `judge`).
    pub struct JudgementRow {
        /// The prompt's id.
        pub prompt_id: String,
        /// The judged sample's index.
        pub sample_idx: u32,
        /// Index of this judgement among the sample's judgements.
        pub judgement_idx: u32,
        /// The judge model's raw text (stop tokens removed).
        pub text: String,
        /// The parsed score in [0, 5] (the last "Score: k"), if any.
        pub score: Option<f64>,
        /// `"ok"` when `score` parsed, `"no_score"` when it did not.
        pub status: String,
    }

    #[table = "consistency", version = 1]
    /// The rank consistency of two models' rewards for one prompt.
    pub struct ConsistencyRow {
        /// The prompt's id.
        pub prompt_id: String,
        /// Number of samples ranked.
        pub n: u32,
        /// Kendall's tau between the current and the previous model's rankings.
        pub tau: f64,
        /// The consistency weight derived from `tau`.
        pub c: f64,
        /// Tied pairs under the current model.
        pub ties_current: u32,
        /// Tied pairs under the previous model.
        pub ties_previous: u32,
    }

    #[table = "pairs", version = 1]
    /// A preference pair for DPO.
    pub struct PairRow {
        /// The prompt's id.
        pub prompt_id: String,
        /// The prompt text.
        pub prompt: String,
        /// The preferred response.
        pub chosen: String,
        /// The dispreferred response.
        pub rejected: String,
        /// Sample index of `chosen`.
        pub chosen_idx: u32,
        /// Sample index of `rejected`.
        pub rejected_idx: u32,
        /// Reward of `chosen`.
        pub chosen_reward: f64,
        /// Reward of `rejected`.
        pub rejected_reward: f64,
        /// The consistency weight of the prompt.
        pub c: f64,
    }

    #[table = "metrics", version = 2]
    /// Training metrics at one optimiser step. Deterministic: no wall-clock throughput (version 1
    /// had `tokens_per_s`, which made the file differ between identical runs; the stage's wall
    /// time is the manifest's `wall_time_s`).
    pub struct MetricRow {
        /// Optimiser step.
        pub step: u64,
        /// Fractional epoch.
        pub epoch: f64,
        /// Loss.
        pub loss: f64,
        /// Mean implicit reward margin (chosen minus rejected).
        pub reward_margin: f64,
        /// Fraction of pairs whose chosen response has the higher implicit reward.
        pub reward_accuracy: f64,
        /// Gradient norm before clipping.
        pub grad_norm: f64,
        /// Learning rate.
        pub lr: f64,
        /// Tokens processed in this step.
        pub tokens: u64,
    }

    #[table = "eval", version = 1]
    /// One evaluated response.
    pub struct EvalRow {
        /// The prompt's id.
        pub prompt_id: String,
        /// The task family.
        pub task: String,
        /// The prompt text.
        pub prompt: String,
        /// The model's response.
        pub response: String,
        /// The answer extracted from the response, if any.
        pub extracted: Option<String>,
        /// The reference answer.
        pub answer: String,
        /// Whether `extracted` matches `answer`.
        pub correct: bool,
    }

    #[table = "choices", version = 1]
    /// One answer option of a multiple-choice evaluation item (`prepare`'s `mc.parquet`, one row
    /// per option, options of an item consecutive and in letter order).
    pub struct ChoiceRow {
        /// The item's id (a prompt id of the question text).
        pub item_id: String,
        /// The task family, e.g. `"socialiqa"`.
        pub task: String,
        /// The text the options continue (lm-evaluation-harness style, e.g. `"Q: ...\nA:"`).
        pub context: String,
        /// The option's position (0 = A).
        pub choice_idx: u32,
        /// The option's text, without the leading space that joins it to the context.
        pub choice: String,
        /// Whether this option is the correct one (exactly one per item).
        pub gold: bool,
    }

    #[table = "mc_eval", version = 1]
    /// One multiple-choice item scored by log-likelihood under one model.
    pub struct McEvalRow {
        /// The item's id.
        pub item_id: String,
        /// The task family.
        pub task: String,
        /// Number of options.
        pub n_choices: u32,
        /// Index of the correct option.
        pub gold: u32,
        /// Argmax of the options' summed log-probs (first on ties).
        pub pred: u32,
        /// Argmax of the summed log-probs divided by the option's length in bytes (`acc_norm`).
        pub pred_norm: u32,
        /// `pred == gold`.
        pub correct: bool,
        /// `pred_norm == gold`.
        pub correct_norm: bool,
        /// Summed log-prob of the correct option.
        pub gold_logprob: f64,
    }

    #[table = "report", version = 1]
    /// One model M_i of a pipeline run in its report (`report.parquet`): the statistics of the
    /// iteration that trained it and of its evaluation. A null is a statistic the run has no
    /// artifact for (e.g. M0 and M1 have no consistency). Per-task accuracies are
    /// [`ReportTaskRow`]s.
    pub struct ReportRow {
        /// The pipeline's name.
        pub pipeline: String,
        /// The model index i of M_i (0 = the base model, 1 = SFT, t + 1 = trained in iteration t).
        pub iteration: u32,
        /// Mean consistency C of the iteration that trained M_i (the dataset C).
        pub c_mean: Option<f64>,
        /// Population standard deviation of the per-prompt C.
        pub c_std: Option<f64>,
        /// Mean Kendall tau over prompts.
        pub tau_mean: Option<f64>,
        /// Tied pairs / all pairs of the current model's rewards.
        pub tie_rate: Option<f64>,
        /// Tied pairs / all pairs of the previous model's rewards.
        pub tie_rate_prev: Option<f64>,
        /// Preference pairs trained on.
        pub pairs: Option<u64>,
        /// Mean response tokens of the chosen responses.
        pub chosen_mean_len: Option<f64>,
        /// Mean response tokens of the rejected responses.
        pub rejected_mean_len: Option<f64>,
        /// Mean reward accuracy over the last 10% of training steps (all when fewer than 10).
        pub reward_accuracy: Option<f64>,
        /// Mean loss over the same steps.
        pub train_loss: Option<f64>,
        /// Last model only: mean C of the final models (M_T vs M_{T-1} on iteration T's samples).
        pub c_final: Option<f64>,
        /// Last model only: mean Kendall tau of the final models.
        pub tau_final: Option<f64>,
        /// Mean generative accuracy (percent) over the tasks M_i was evaluated on.
        pub acc_mean: Option<f64>,
    }

    #[table = "report_tasks", version = 1]
    /// One task's accuracy of one model in a run's report (`report_tasks.parquet`).
    pub struct ReportTaskRow {
        /// The model index i of M_i (as [`ReportRow::iteration`]).
        pub iteration: u32,
        /// The task, e.g. `"gsm8k"`.
        pub task: String,
        /// `"generate"` (greedy answers graded by extraction) or `"loglik"` (multiple choice by
        /// log-likelihood).
        pub method: String,
        /// Accuracy in percent (`acc` of lm-evaluation-harness for `"loglik"`).
        pub acc: f64,
        /// Lower end of its 95% bootstrap interval, where the eval recorded one.
        pub lo: Option<f64>,
        /// Upper end of that interval.
        pub hi: Option<f64>,
        /// `"loglik"` only: the length-normalised accuracy `acc_norm`, percent.
        pub acc_norm: Option<f64>,
    }

    #[table = "scores", version = 1]
    /// The teacher-forced score of one sample under one model.
    pub struct ScoreRow {
        /// The prompt's id.
        pub prompt_id: String,
        /// The sample's index.
        pub sample_idx: u32,
        /// S = sum of the scored tokens' log-probs (everything after the user-only prefix).
        pub sum_logprob: f64,
        /// Number of scored tokens.
        pub n_scored: u32,
    }
}

/// Writes `rows` to `path` as a Parquet table and fsyncs it; returns the number of rows.
///
/// The same rows always give the same bytes: snappy compression, fixed row-group size, fixed
/// `created_by`, and file metadata `cream.table` and `cream.schema_version`.
pub fn write_table<T: Table>(path: &Path, rows: &[T]) -> Result<u64> {
    let context = || format!("cannot write the {} table {}", T::NAME, path.display());
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(CREATED_BY.to_owned())
        .set_key_value_metadata(Some(vec![
            KeyValue::new(TABLE_KEY.to_owned(), T::NAME.to_owned()),
            KeyValue::new(VERSION_KEY.to_owned(), T::SCHEMA_VERSION.to_string()),
        ]))
        .build();
    let file = File::create(path).with_context(context)?;
    let mut writer = ArrowWriter::try_new(&file, T::schema(), Some(props)).with_context(context)?;
    writer.write(&T::to_batch(rows)).with_context(context)?;
    if crate::store::failpoint_armed(crate::store::FAIL_MID_WRITE) {
        // Put the rows on disk without the footer: a half-written file, then halt.
        writer.flush().with_context(context)?;
        file.sync_all().with_context(context)?;
        crate::store::failpoint(crate::store::FAIL_MID_WRITE);
    }
    writer.close().with_context(context)?;
    file.sync_all().with_context(context)?;
    Ok(rows.len() as u64)
}

/// Reads the Parquet table at `path`, checking its metadata and schema against `T`.
///
/// Errors name the file and, for schema problems, the column with the expected and the found
/// type; a null in a non-nullable column names the row. A corrupt file is an error, not a panic.
pub fn read_table<T: Table>(path: &Path) -> Result<Vec<T>> {
    // The parquet crate panics on some corrupt files instead of returning an error (found by
    // fuzzing, e.g. "Decoder for dict should have been set"); that is an error here.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_table_unguarded(path))).unwrap_or_else(
        |panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            bail!(
                "{}: cannot read it as a Parquet {} table: the Parquet decoder failed ({what}); the \
                 file is corrupt, rerun the stage that wrote it",
                path.display(),
                T::NAME
            )
        },
    )
}

fn read_table_unguarded<T: Table>(path: &Path) -> Result<Vec<T>> {
    let context = || {
        format!(
            "{}: cannot read it as a Parquet {} table (cause below); if it is corrupt or \
             truncated, rerun the stage that wrote it",
            path.display(),
            T::NAME
        )
    };
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(context)?;
    let meta = builder.metadata().file_metadata().key_value_metadata();
    let meta_value = |key: &str| {
        meta.and_then(|kv| kv.iter().find(|e| e.key == key))
            .and_then(|e| e.value.as_deref())
    };
    if let Some(name) = meta_value(TABLE_KEY).filter(|&n| n != T::NAME) {
        bail!(
            "{}: holds a {name} table, not a {} table; pass the right file",
            path.display(),
            T::NAME
        );
    }
    let version = T::SCHEMA_VERSION.to_string();
    if let Some(v) = meta_value(VERSION_KEY).filter(|&v| v != version) {
        bail!(
            "{}: {} table of schema version {v}, this version of cream reads {version}; rerun the \
             stage that produced it",
            path.display(),
            T::NAME
        );
    }
    let schema = Arc::clone(builder.schema());
    let batches = builder
        .build()
        .with_context(context)?
        .collect::<Result<Vec<_>, _>>()
        .with_context(context)?;
    let batch = concat_batches(&schema, &batches).with_context(context)?;
    T::from_batch(&batch, path)
}
