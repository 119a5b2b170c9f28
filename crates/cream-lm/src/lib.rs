//! cream-lm: a trainable decoder-only language model (llama / qwen2 families) on candle.
//!
//! Layering: [`config`] (hyper-parameters) -> [`model`] (parameters as `Var`s, one forward with
//! a differentiable and a fused mode) -> [`score`] (teacher-forced log-probs) and [`generate`]
//! (KV-cache sampling). [`load`] reads GGUF files and Hugging Face directories and saves Hugging
//! Face layout; [`tokenizer`] renders the model's chat template and finds the scoring boundary.

pub mod config;
pub mod generate;
pub mod golden;
pub mod load;
pub mod model;
pub mod rng;
pub mod score;
pub mod tokenizer;
pub mod train;

pub use config::{Arch, ModelConfig};
pub use generate::{FinishReason, GenOutput, GenRequest, SamplingParams, generate, sample_token};
pub use load::{LoadedModel, load, save_hf_dir};
pub use model::{Mode, Model};
pub use score::{ScoreOptions, Scored, TokenBatch, score, sequence_logprob_sums};
pub use tokenizer::{ChatTokenizer, Conversation, Message};

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
