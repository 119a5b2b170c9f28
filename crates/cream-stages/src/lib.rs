//! cream-stages: every pipeline stage as a library function over the artifact store.
//!
//! Each stage opens its input artifacts, derives an [`cream_core::ArtifactSpec`] from its
//! parameters and input ids, and produces its output through [`ctx::Ctx::produce`] (a cache hit
//! when the same spec ran before). The binaries in `cream-cli` are thin wrappers over `run`.

pub mod config;
pub mod consistency;
pub mod ctx;
pub mod eval;
pub mod eval_mc;
pub mod experiment;
mod frame;
pub mod generate;
pub mod grade;
pub mod judge;
pub mod names;
pub mod pair;
pub mod prepare;
pub mod progress;
pub mod report;
pub mod score;
pub mod shard;
pub mod summary;
pub mod train;
