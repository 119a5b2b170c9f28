//! `cream-core`: the contract between cream's stages.
//!
//! - [`hash`]: canonical JSON, artifact keys and blake3 content hashes.
//! - [`store`]: the content-addressed artifact store: `<root>/<stage>/<id>/` directories with a
//!   `manifest.json` commit record, atomic publish, per-key locking, verification and gc.
//! - [`schema`]: the Parquet tables stages exchange, with typed, validating readers and
//!   deterministic writers. It is the only module that knows Parquet/Arrow schemas.
//!
//! A stage binary computes an [`ArtifactSpec`] from its parameters and its inputs' ids, calls
//! [`Store::produce`] with a function that writes its tables with [`write_table`], and hands the
//! resulting artifact's path to the next stage, which opens it with [`Store::open_artifact`] and
//! reads it with [`read_table`].

pub mod hash;
pub mod schema;
pub mod store;

pub use hash::{ArtifactId, InputRef, artifact_key, canonical_json, hash_bytes, hash_file};
pub use schema::{
    ChoiceRow, ConsistencyRow, EvalRow, McEvalRow, JudgementRow, MetricRow, PairRow, PromptRow, ReportRow,
    ReportTaskRow, RewardRow, SampleRow, ScoreRow, Table, read_table, write_table,
};
pub use store::{
    Artifact, ArtifactSpec, FileEntry, GcReport, Manifest, ProduceOutput, Produced, Store,
    StoreError, Verify, failpoint,
};
