//! cream-lm: a trainable decoder-only language model (llama / qwen2 families) on candle.
//!
//! Layering: [`config`] (hyper-parameters) -> [`model`] (parameters as `Var`s, one forward with
//! a differentiable and a fused mode) -> [`score`] (teacher-forced log-probs) and [`generate`]
//! (KV-cache sampling). [`load`] reads GGUF files and Hugging Face directories and saves Hugging
//! Face layout; [`tokenizer`] renders the model's chat template and finds the scoring boundary.

pub mod checkpoint;
pub mod bf16;
pub mod config;
pub mod fused;
pub mod fused_train;
pub mod fused_infer;
pub mod generate;
pub mod golden;
pub mod load;
pub mod model;
pub mod precision;
pub mod prefix;
pub mod rng;
pub mod score;
pub mod tokenizer;
pub mod train;

pub use config::{Arch, ModelConfig};
pub use generate::{FinishReason, GenOutput, GenRequest, SamplingParams, generate, sample_token};
pub use load::{LoadedModel, load, save_hf_dir};
pub use model::{Frozen, Mode, Model};
pub use precision::Precision;
pub use prefix::score_shared_prefix;
pub use score::{ScoreOptions, Scored, TokenBatch, score, score_frozen, sequence_logprob_sums};
pub use tokenizer::{ChatTokenizer, Conversation, Message};

/// Thread setup of the CPU backend; call once at start-up, before any tensor op and before other
/// threads exist (it sets environment variables that candle reads lazily).
///
/// * `threads`: the number of threads of the matmul kernels (rayon's global pool; also
///   `RAYON_NUM_THREADS`, which candle reads to size its matmul calls). `None` keeps the
///   default (all cores, or `RAYON_NUM_THREADS`).
/// * candle 0.11 runs large elementwise ops on its own pool whose caller waits by spinning: on a
///   machine with few or shared cores that spinning burned 40-60% of the process's CPU time in a
///   DPO step (see bench/results.md). Unless `CANDLE_NUM_THREADS` is set, cream sets it to 1, so
///   elementwise ops run on the calling thread and only matmuls are parallel.
pub fn configure_threads(threads: Option<usize>) -> anyhow::Result<()> {
    // SAFETY: called at start-up while the process is single-threaded (see the doc comment).
    unsafe {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        if let Some(n) = threads {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
    if let Some(n) = threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    Ok(())
}

/// The device cream runs on: CUDA device 0 when built with the `cuda` feature and a GPU is
/// present (unless `CREAM_DEVICE=cpu`), else the CPU.
pub fn default_device() -> anyhow::Result<candle_core::Device> {
    #[cfg(feature = "cuda")]
    {
        if std::env::var("CREAM_DEVICE").as_deref() != Ok("cpu") {
            return Ok(candle_core::Device::new_cuda(0)?);
        }
    }
    Ok(candle_core::Device::Cpu)
}
