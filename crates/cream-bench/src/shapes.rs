//! Named model shapes for randomly initialised benchmark models (`--random-shape`), so scaling
//! can be shown on a GPU without shipping weights. The baseline builds the same shape with
//! transformers' `LlamaConfig` (bench/baseline.py reads the `config.json` that `cream-bench
//! shape` prints).

use std::collections::HashMap;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use cream_lm::config::{Arch, ModelConfig};
use cream_lm::model::expected_shapes;
use cream_lm::Model;

/// The shapes `--random-shape` accepts:
/// * `llama3-8b-<N>l`: Llama-3-8B (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, head
///   dim 128, vocabulary 128256, RoPE theta 500000, untied head) with N layers;
/// * `smollm2-135m`: the default model's shape (30 layers);
/// * `tiny`: a few-layer toy, for tests.
pub fn named(name: &str) -> Result<ModelConfig> {
    let base = ModelConfig {
        arch: Arch::Llama,
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_layers: 0,
        num_heads: 0,
        num_kv_heads: 0,
        head_dim: 0,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        pad_token_id: None,
    };
    if let Some(layers) = name.strip_prefix("llama3-8b-").and_then(|s| s.strip_suffix('l')) {
        let Ok(n) = layers.parse::<usize>() else { bail!("--random-shape {name}: `{layers}` is not a layer count") };
        if n == 0 {
            bail!("--random-shape {name}: needs at least one layer");
        }
        return Ok(ModelConfig {
            vocab_size: 128256,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: n,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rope_theta: 500000.0,
            ..base
        });
    }
    Ok(match name {
        "smollm2-135m" => ModelConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_theta: 100000.0,
            tie_word_embeddings: true,
            ..base
        },
        "tiny" => ModelConfig {
            vocab_size: 4096,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            ..base
        },
        other => bail!("unknown --random-shape {other:?}: use llama3-8b-<N>l, smollm2-135m or tiny"),
    })
}

/// A random model of this shape on `device`: N(0, 0.02) weights, norms N(1, 0.1), drawn on the
/// device itself (fast on a GPU; not seeded, which the benchmark does not need).
pub fn random_model(cfg: ModelConfig, device: &Device) -> Result<Model> {
    let mut tensors = HashMap::new();
    for (name, shape) in expected_shapes(&cfg) {
        let t = if name.ends_with("norm.weight") {
            Tensor::randn(1f32, 0.1, shape, device)?
        } else {
            Tensor::randn(0f32, 0.02, shape, device)?
        };
        tensors.insert(name, t.to_dtype(DType::F32)?);
    }
    Model::from_tensors(cfg, tensors, device, "random model")
}
