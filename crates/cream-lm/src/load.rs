//! Loading models (GGUF files, Hugging Face directories) and saving them in Hugging Face layout.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use crate::config::{Arch, ModelConfig};
use crate::model::Model;
use crate::tokenizer::{ChatTokenizer, tokenizer_json_from_gguf};

/// A model ready for use: weights and its tokenizer + chat template.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: ChatTokenizer,
    pub path: PathBuf,
}

/// Load a GGUF file or a Hugging Face directory (config.json + *.safetensors + tokenizer.json).
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    let (model, tokenizer) = if path.is_dir() {
        load_hf_dir(path, device)?
    } else if path.is_file() {
        load_gguf(path, device)?
    } else {
        bail!(
            "model path {} does not exist; pass a .gguf file or a Hugging Face model directory \
             (run `just setup` to fetch the default model into data/models/)",
            path.display()
        );
    };
    let tv = tokenizer.vocab_size();
    ensure!(
        tv <= model.cfg.vocab_size,
        "{}: tokenizer/model vocabulary mismatch: the tokenizer has {tv} tokens but the model's \
         embedding has {} rows; the tokenizer files belong to another model",
        path.display(),
        model.cfg.vocab_size
    );
    Ok(LoadedModel { model, tokenizer, path: path.to_path_buf() })
}

struct Gguf<'a> {
    md: &'a HashMap<String, gguf_file::Value>,
    path: &'a Path,
}

impl Gguf<'_> {
    fn get(&self, key: &str) -> Result<&gguf_file::Value> {
        self.md
            .get(key)
            .with_context(|| format!("{}: GGUF metadata key `{key}` is missing", self.path.display()))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        Ok(v.to_u64().or_else(|_| v.to_u32().map(u64::from))? as usize)
    }
    fn f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        Ok(v.to_f32().map(f64::from).or_else(|_| v.to_f64())?)
    }
    fn str(&self, key: &str) -> Option<String> {
        self.md.get(key).and_then(|v| v.to_string().ok()).cloned()
    }
    fn u32(&self, key: &str) -> Option<u32> {
        self.md.get(key).and_then(|v| v.to_u32().ok())
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.get(key)?
            .to_vec()?
            .iter()
            .map(|v| Ok(v.to_string()?.clone()))
            .collect::<candle_core::Result<_>>()
            .with_context(|| format!("{}: GGUF key `{key}` is not a string array", self.path.display()))
    }
    fn ints(&self, key: &str) -> Result<Vec<i32>> {
        match self.md.get(key) {
            None => Ok(vec![]),
            Some(v) => Ok(v.to_vec()?.iter().map(|x| x.to_i32()).collect::<candle_core::Result<_>>()?),
        }
    }
}

/// GGUF tensor name -> Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp stores llama q/k rows interleaved for adjacent-pair RoPE:
/// HF row `h*D + half*(D/2) + i` == GGUF row `h*D + 2*i + half`. Undo it.
pub fn unpermute_qk(t: &Tensor, n_heads: usize) -> Result<Tensor> {
    let rows = t.dim(0)?;
    let d = rows / n_heads;
    let rest: Vec<usize> = t.dims()[1..].to_vec();
    let mut shape = vec![n_heads, d / 2, 2];
    shape.extend(&rest);
    let mut out_shape = vec![rows];
    out_shape.extend(&rest);
    Ok(t.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(out_shape)?)
}

/// Load a GGUF checkpoint, dequantising every tensor to f32.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(Model, ChatTokenizer)> {
    let file = File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
    let mut r = BufReader::new(file);
    let content = gguf_file::Content::read(&mut r).map_err(|e| {
        anyhow!("{}: not a readable GGUF file ({e}); the file is truncated or corrupt, fetch it again", path.display())
    })?;
    let g = Gguf { md: &content.metadata, path };
    let arch_name = g.str("general.architecture").unwrap_or_default();
    let arch = Arch::parse(&arch_name).with_context(|| format!("{}", path.display()))?;
    let a = |k: &str| format!("{arch_name}.{k}");
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let hidden = g.usize(&a("embedding_length"))?;
    let heads = g.usize(&a("attention.head_count"))?;
    let cfg = ModelConfig {
        arch,
        vocab_size: g.usize(&a("vocab_size")).unwrap_or(tokens.len()),
        hidden_size: hidden,
        intermediate_size: g.usize(&a("feed_forward_length"))?,
        num_layers: g.usize(&a("block_count"))?,
        num_heads: heads,
        num_kv_heads: g.usize(&a("attention.head_count_kv")).unwrap_or(heads),
        head_dim: g.usize(&a("attention.key_length")).unwrap_or(hidden / heads),
        rope_theta: g.f64(&a("rope.freq_base")).unwrap_or(10000.0),
        rms_norm_eps: g.f64(&a("attention.layer_norm_rms_epsilon"))?,
        max_position_embeddings: g.usize(&a("context_length")).unwrap_or(2048),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        bos_token_id: g.u32("tokenizer.ggml.bos_token_id"),
        eos_token_id: g.u32("tokenizer.ggml.eos_token_id"),
        pad_token_id: g.u32("tokenizer.ggml.padding_token_id"),
    };
    if content.metadata.contains_key(&a("rope.scaling.type")) {
        bail!("{}: RoPE scaling is not supported yet", path.display());
    }
    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let hf = hf_name(name).with_context(|| {
            format!("{}: unexpected GGUF tensor `{name}` for a {arch_name} model", path.display())
        })?;
        let q = content
            .tensor(&mut r, name, &Device::Cpu)
            .map_err(|e| anyhow!("{}: cannot read tensor `{name}`: {e}; the file is truncated or corrupt", path.display()))?;
        let mut t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        if arch == Arch::Llama {
            if name.contains(".attn_q.") {
                t = unpermute_qk(&t, cfg.num_heads)?;
            } else if name.contains(".attn_k.") {
                t = unpermute_qk(&t, cfg.num_kv_heads)?;
            }
        }
        tensors.insert(hf, t);
    }
    let model = Model::from_tensors(cfg.clone(), tensors, device, &path.display().to_string())?;

    let tok_json = tokenizer_json_from_gguf(
        &g.str("tokenizer.ggml.model").unwrap_or_default(),
        &g.str("tokenizer.ggml.pre").unwrap_or_default(),
        &tokens,
        &g.ints("tokenizer.ggml.token_type")?,
        &g.strings("tokenizer.ggml.merges")?,
    )
    .with_context(|| format!("{}", path.display()))?;
    let template = g.str("tokenizer.chat_template").with_context(|| {
        format!("{}: the GGUF carries no chat template (tokenizer.chat_template)", path.display())
    })?;
    let tok_str = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
    let bos = tok_str(cfg.bos_token_id);
    let eos = tok_str(cfg.eos_token_id);
    let tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": tok_str(cfg.pad_token_id),
        "unk_token": tok_str(g.u32("tokenizer.ggml.unknown_token_id")),
        "add_bos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
        "chat_template": template,
    });
    let stops: Vec<u32> = cfg.eos_token_id.into_iter().collect();
    let tokenizer = ChatTokenizer::new(tok_json, template, bos, eos, &stops, tok_config)?;
    Ok((model, tokenizer))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A special-token field of tokenizer_config.json: a string or `{"content": ...}`.
fn token_field(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| v["content"].as_str().map(str::to_string))
}

fn ids_field(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Value::Array(a) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

/// Load a Hugging Face directory: config.json, model.safetensors (or shards), tokenizer.json,
/// tokenizer_config.json (chat template), optional generation_config.json / chat_template.jinja.
pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<(Model, ChatTokenizer)> {
    let cfg = ModelConfig::from_hf_json(&read_json(&dir.join("config.json"))?)
        .with_context(|| format!("{}", dir.join("config.json").display()))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    ensure!(
        !files.is_empty(),
        "{}: no *.safetensors weights in this model directory",
        dir.display()
    );
    let mut tensors = HashMap::new();
    for f in &files {
        let part = candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| {
            anyhow!("{}: cannot read safetensors ({e}); the file is truncated or corrupt", f.display())
        })?;
        tensors.extend(part);
    }
    let model = Model::from_tensors(cfg.clone(), tensors, device, &dir.display().to_string())?;

    let tok_json = read_json(&dir.join("tokenizer.json"))?;
    let tok_config_path = dir.join("tokenizer_config.json");
    let tok_config = if tok_config_path.exists() { read_json(&tok_config_path)? } else { json!({}) };
    let template = match &tok_config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str().map(str::to_string)),
        _ => None,
    };
    let jinja = dir.join("chat_template.jinja");
    let template = match template {
        Some(t) => t,
        None if jinja.exists() => std::fs::read_to_string(&jinja)?,
        None => bail!(
            "{}: the model ships no chat template (tokenizer_config.json `chat_template` or \
             chat_template.jinja); cream needs the model's own template",
            dir.display()
        ),
    };
    let mut stops = cfg.eos_token_id.into_iter().collect::<Vec<_>>();
    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        stops.extend(ids_field(&read_json(&gen_path)?["eos_token_id"]));
    }
    let tokenizer = ChatTokenizer::new(
        tok_json,
        template,
        token_field(&tok_config["bos_token"]),
        token_field(&tok_config["eos_token"]),
        &stops,
        tok_config,
    )
    .with_context(|| format!("{}", dir.display()))?;
    Ok((model, tokenizer))
}

/// Write `model.safetensors` (f32, Hugging Face names), `config.json`, `generation_config.json`,
/// `tokenizer.json` and `tokenizer_config.json` into `dir` (which must exist).
pub fn save_hf_dir(model: &Model, tokenizer: &ChatTokenizer, dir: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = model
        .named_vars()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(tensors, Some(meta), &dir.join("model.safetensors"))
        .with_context(|| format!("writing {}", dir.join("model.safetensors").display()))?;
    let write = |name: &str, v: &Value| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))
    };
    write("config.json", &model.cfg.to_hf_json())?;
    write(
        "generation_config.json",
        &json!({
            "bos_token_id": model.cfg.bos_token_id,
            "eos_token_id": tokenizer.stop_ids(),
            "pad_token_id": model.cfg.pad_token_id,
        }),
    )?;
    write("tokenizer.json", tokenizer.tokenizer_json())?;
    let mut tc = tokenizer.tokenizer_config().clone();
    tc["chat_template"] = json!(tokenizer.chat_template());
    write("tokenizer_config.json", &tc)?;
    Ok(())
}
