//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`, and written
//! back as `config.json` when a model is saved in Hugging Face layout.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Decoder families we implement. Both are pre-norm RMSNorm + SwiGLU + rotate-half RoPE decoders;
/// qwen2 adds biases on the q/k/v projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "llama" | "LlamaForCausalLM" | "mistral" | "MistralForCausalLM" => Ok(Arch::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            other => bail!(
                "unsupported model architecture {other:?}: cream implements llama and qwen2 decoders"
            ),
        }
    }
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            bail!(
                "model config: num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if self.head_dim % 2 != 0 {
            bail!("model config: head_dim {} must be even for RoPE", self.head_dim);
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            bail!("model config: vocab_size, hidden_size and num_hidden_layers must be positive");
        }
        Ok(())
    }

    /// Parse a Hugging Face `config.json` value.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let arch_name = v["architectures"]
            .get(0)
            .and_then(Value::as_str)
            .or_else(|| v["model_type"].as_str())
            .context("config.json has neither `architectures` nor `model_type`")?;
        let arch = Arch::parse(arch_name)?;
        let get = |k: &str| -> Result<usize> {
            v[k].as_u64()
                .map(|x| x as usize)
                .with_context(|| format!("config.json: missing or non-integer field `{k}`"))
        };
        let num_heads = get("num_attention_heads")?;
        let hidden_size = get("hidden_size")?;
        let tok = |k: &str| match &v[k] {
            Value::Number(n) => n.as_u64().map(|x| x as u32),
            Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
            _ => None,
        };
        if !v["rope_scaling"].is_null() {
            bail!("config.json: rope_scaling is not supported yet (found {})", v["rope_scaling"]);
        }
        let cfg = ModelConfig {
            arch,
            vocab_size: get("vocab_size")?,
            hidden_size,
            intermediate_size: get("intermediate_size")?,
            num_layers: get("num_hidden_layers")?,
            num_heads,
            num_kv_heads: v["num_key_value_heads"].as_u64().map(|x| x as usize).unwrap_or(num_heads),
            head_dim: v["head_dim"].as_u64().map(|x| x as usize).unwrap_or(hidden_size / num_heads),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10000.0),
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            max_position_embeddings: v["max_position_embeddings"].as_u64().unwrap_or(2048) as usize,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            attention_bias: v["attention_bias"].as_bool().unwrap_or(arch == Arch::Qwen2),
            bos_token_id: tok("bos_token_id"),
            eos_token_id: tok("eos_token_id"),
            pad_token_id: tok("pad_token_id"),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `config.json` transformers expects for this model.
    pub fn to_hf_json(&self) -> Value {
        json!({
            "architectures": [self.arch.hf_architecture()],
            "model_type": self.arch.hf_model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        })
    }

    /// A small random-weight config for unit tests (llama shape, GQA, tied embeddings).
    pub fn tiny(vocab_size: usize) -> Self {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: Some(1),
            pad_token_id: None,
        }
    }

    pub fn n_params(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = h * self.num_heads * d * 2 + h * self.num_kv_heads * d * 2;
        let bias = if self.attention_bias { (self.num_heads + 2 * self.num_kv_heads) * d } else { 0 };
        let per_layer = attn + bias + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_layers * per_layer + h + head
    }
}
