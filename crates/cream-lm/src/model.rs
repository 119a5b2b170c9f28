//! The decoder itself: parameters held as trainable [`Var`]s and one forward pass with two
//! execution modes.
//!
//! * [`Mode::Train`] builds the graph from differentiable candle ops only (`rms_norm_slow`-style
//!   norm, explicit rotate-half RoPE, `softmax` over an additive mask), so `backward()` reaches
//!   every parameter. candle's fused ops (`ops::rms_norm`, `rotary_emb::rope`,
//!   `softmax_last_dim`) have no backward and would silently drop gradients.
//!   On f32 CPU tensors the Train path uses cream's fused kernels with their own backward
//!   instead (`fused`: causal attention; `fused_train`: RMSNorm, head split + RoPE, SwiGLU +
//!   down projection, output head + target log-probs); the op-by-op graph stays the path
//!   elsewhere (CUDA) and the reference the tests compare against.
//! * [`Mode::Infer`] uses the fused ops on detached weights: no graph is recorded, and it is the
//!   path for scoring, generation and reference log-probs.
//!
//! Weights are kept in Hugging Face order (q/k rows for rotate-half RoPE); the GGUF loader
//! un-permutes llama.cpp's interleaved rows on the way in.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::kv_cache::KvCache;

use crate::config::ModelConfig;
use crate::precision::{FrozenWeight, Precision};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Differentiable ops on the trainable variables.
    Train,
    /// Fused ops on detached weights; no autograd graph.
    Infer,
}

/// How tokens attend to each other in a forward pass.
pub enum Attention {
    /// Right-padded full sequences with these lengths (one per row), causal within each row.
    /// Positions past a row's length are padding: their outputs are meaningless.
    Causal(Vec<usize>),
    /// An additive mask broadcastable to `(B, 1, T, T_past + T)`, e.g. from [`attention_mask`]
    /// (left-padded generation with a KV cache).
    Masked(Tensor),
    /// Right-padded rows that all continue one shared prefix whose keys/values are given
    /// (inference only, f32 CPU): row `b` has `lens[b]` real tokens, each attending to the whole
    /// prefix and causally within its row. `prefix[layer]` = that layer's `(k, v)`, each
    /// `(1, H_kv, P, head_dim)` after RoPE, as a KV cache holds them. See [`crate::prefix`].
    Prefixed { lens: Vec<usize>, prefix: Vec<(Tensor, Tensor)> },
}

struct Layer {
    input_norm: Var,
    q: Var,
    k: Var,
    v: Var,
    q_bias: Option<Var>,
    k_bias: Option<Var>,
    v_bias: Option<Var>,
    o: Var,
    post_norm: Var,
    gate: Var,
    up: Var,
    down: Var,
}

/// A llama / qwen2 decoder whose every weight is a trainable `Var`.
pub struct Model {
    pub cfg: ModelConfig,
    device: Device,
    embed: Var,
    lm_head: Option<Var>,
    norm: Var,
    layers: Vec<Layer>,
    /// Hugging Face name -> variable, in a fixed order (the order of [`expected_shapes`]).
    named: Vec<(String, Var)>,
    cos: Tensor,
    sin: Tensor,
    /// Whether cream's fused CPU kernels (`fused`, `fused_train`) may replace the op-by-op
    /// graph where they apply; off only to compare the two in tests.
    fused: bool,
    /// The precision of [`Model::frozen`] snapshots (scoring, generation); f32 unless set.
    precision: Precision,
}

/// Detached weights of one layer, transposed to contiguous `(in, out)` and concatenated where
/// projections share an input (q|k|v, gate|up): one matmul each.
struct FrozenLayer {
    qkv: FrozenWeight,
    qkv_b: Option<Tensor>,
    o: FrozenWeight,
    gate_up: FrozenWeight,
    down: FrozenWeight,
}

/// A model's weights snapshotted for inference: fused ops, no autograd graph, weights laid out
/// for the matmul kernel. It does not follow later changes to the model's variables.
pub struct Frozen<'a> {
    model: &'a Model,
    layers: Vec<FrozenLayer>,
    /// The output projection, `(hidden, vocab)`.
    head: FrozenWeight,
    precision: Precision,
}

/// What the layers of one forward pass share.
struct Pass<'a> {
    b: usize,
    t: usize,
    mode: Mode,
    /// [`Mode::Train`] with the fused training kernels (`fused_train`) on this device.
    fused_train: bool,
    /// The inference snapshot ([`Mode::Infer`]), or `None` for the differentiable path.
    frozen: Option<&'a Frozen<'a>>,
    attn: &'a Attention,
    /// RoPE cos/sin rows of the pass's positions.
    cos: Tensor,
    sin: Tensor,
    /// Causal masks by row length, built once per pass (row-by-row causal attention).
    causal_masks: HashMap<usize, Tensor>,
}

impl Frozen<'_> {
    pub fn model(&self) -> &Model {
        self.model
    }

    /// The arithmetic of this snapshot's matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// As [`Model::forward_hidden`] with [`Mode::Infer`].
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attn: &Attention,
        cache: Option<&mut [KvCache]>,
    ) -> Result<Tensor> {
        self.model.forward_impl(ids, positions, attn, cache, Some(self))
    }

    /// Logits for hidden rows `(N, hidden)` -> `(N, vocab)`.
    pub fn logits(&self, hidden_rows: &Tensor) -> Result<Tensor> {
        self.head.matmul(hidden_rows)
    }
}

/// Every tensor name the model needs, in Hugging Face naming, with its shape.
pub fn expected_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (qd, kvd) = (cfg.num_heads * d, cfg.num_kv_heads * d);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![qd, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kvd, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kvd, h]));
        if cfg.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![qd]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kvd]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kvd]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, qd]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

/// Tensors a checkpoint may carry that the model does not need (derived buffers, a tied head).
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

impl Model {
    /// Build from named tensors (Hugging Face names, any float dtype). Missing tensors, wrong
    /// shapes and unexpected names are errors that name the tensor.
    pub fn from_tensors(
        cfg: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
        origin: &str,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut vars = HashMap::new();
        let mut named = Vec::new();
        for (name, shape) in expected_shapes(&cfg) {
            let t = tensors.remove(&name).with_context(|| {
                format!("{origin}: tensor `{name}` is missing; the weights do not match the config")
            })?;
            ensure!(
                t.dims() == shape.as_slice(),
                "{origin}: tensor `{name}` has shape {:?}, expected {:?} from the config",
                t.dims(),
                shape
            );
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            let var = Var::from_tensor(&t)?;
            vars.insert(name.clone(), var.clone());
            named.push((name, var));
        }
        let mut extra: Vec<_> = tensors.keys().filter(|n| !ignorable(n, &cfg)).cloned().collect();
        if !extra.is_empty() {
            extra.sort();
            bail!(
                "{origin}: unexpected tensors {:?}{}; is this a {} model with the given config?",
                &extra[..extra.len().min(5)],
                if extra.len() > 5 { " ..." } else { "" },
                cfg.arch.hf_model_type()
            );
        }
        let take = |n: &str| vars[n].clone();
        let opt = |n: &str| vars.get(n).cloned();
        let layers = (0..cfg.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                Layer {
                    input_norm: take(&format!("{p}.input_layernorm.weight")),
                    q: take(&format!("{p}.self_attn.q_proj.weight")),
                    k: take(&format!("{p}.self_attn.k_proj.weight")),
                    v: take(&format!("{p}.self_attn.v_proj.weight")),
                    q_bias: opt(&format!("{p}.self_attn.q_proj.bias")),
                    k_bias: opt(&format!("{p}.self_attn.k_proj.bias")),
                    v_bias: opt(&format!("{p}.self_attn.v_proj.bias")),
                    o: take(&format!("{p}.self_attn.o_proj.weight")),
                    post_norm: take(&format!("{p}.post_attention_layernorm.weight")),
                    gate: take(&format!("{p}.mlp.gate_proj.weight")),
                    up: take(&format!("{p}.mlp.up_proj.weight")),
                    down: take(&format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Model {
            embed: take("model.embed_tokens.weight"),
            lm_head: opt("lm_head.weight"),
            norm: take("model.norm.weight"),
            layers,
            named,
            cos,
            sin,
            device: device.clone(),
            cfg,
            fused: true,
            precision: Precision::F32,
        })
    }

    /// A seeded random model (N(0, 0.02) weights, norms near 1) for tests.
    pub fn random(cfg: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in expected_shapes(&cfg) {
            let n: usize = shape.iter().product();
            let is_norm = name.ends_with("norm.weight");
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    let z = rng.normal() as f32;
                    if is_norm { 1.0 + 0.1 * z } else { 0.02 * z }
                })
                .collect();
            tensors.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Self::from_tensors(cfg, tensors, device, "random model")
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All trainable parameters with their Hugging Face names, in a fixed order.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.named
    }

    /// Turn cream's fused CPU kernels off (`false`: the op-by-op candle graph everywhere, as on
    /// CUDA) or back on (the default). For tests that compare the two paths.
    pub fn set_fused_kernels(&mut self, on: bool) {
        self.fused = on;
    }

    /// Whether the fused CPU kernels run on tensors like `t` (see [`crate::fused::supported`]).
    pub fn fused_for(&self, t: &Tensor) -> bool {
        self.fused && crate::fused::supported(t)
    }

    /// The output projection's weight `(vocab, hidden)` (the embedding when tied), detached in
    /// [`Mode::Infer`].
    pub fn head_weight(&self, mode: Mode) -> Tensor {
        Self::w(self.head(), mode)
    }

    /// The output projection (the embedding when tied).
    fn head(&self) -> &Var {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    fn w(v: &Var, mode: Mode) -> Tensor {
        match mode {
            Mode::Train => v.as_tensor().clone(),
            Mode::Infer => v.as_tensor().detach(),
        }
    }

    /// Final hidden states (after the last norm), `(B, T, hidden)`.
    ///
    /// * `ids`: `(B, T)` u32 token ids.
    /// * `positions`: per-token RoPE positions, `(T,)` shared by every row or `(B, T)`.
    /// * `attn`: how tokens may attend (see [`Attention`]).
    /// * `cache`: one KV cache per layer (generation); `None` for full-sequence passes.
    ///
    /// With [`Mode::Infer`] this builds a [`Frozen`] view for the one call; loops that run many
    /// forward passes should take one with [`Model::frozen`] and call [`Frozen::forward_hidden`].
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attn: &Attention,
        cache: Option<&mut [KvCache]>,
        mode: Mode,
    ) -> Result<Tensor> {
        match mode {
            Mode::Train => self.forward_impl(ids, positions, attn, cache, None),
            Mode::Infer => self.frozen()?.forward_hidden(ids, positions, attn, cache),
        }
    }

    /// The precision of this model's [`Model::frozen`] snapshots, i.e. of its scoring and
    /// generation ([`crate::score()`], [`crate::generate()`]); f32 unless set. Training is f32.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// A snapshot of the weights laid out for fast inference (see [`Frozen`]), in the model's
    /// precision ([`Model::set_precision`]). Take a new one after the weights change.
    pub fn frozen(&self) -> Result<Frozen<'_>> {
        self.frozen_with(self.precision)
    }

    /// As [`Model::frozen`], in the given precision.
    pub fn frozen_with(&self, precision: Precision) -> Result<Frozen<'_>> {
        let t = |v: &Var| -> Result<FrozenWeight> {
            FrozenWeight::new(v.as_tensor().detach().t()?.contiguous()?, precision)
        };
        let cat_t = |vs: &[&Var]| -> Result<FrozenWeight> {
            let parts: Vec<Tensor> = vs.iter().map(|v| v.as_tensor().detach()).collect();
            FrozenWeight::new(Tensor::cat(&parts, 0)?.t()?.contiguous()?, precision)
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let qkv_b = match (&l.q_bias, &l.k_bias, &l.v_bias) {
                    (Some(q), Some(k), Some(v)) => Some(Tensor::cat(
                        &[q.as_tensor().detach(), k.as_tensor().detach(), v.as_tensor().detach()],
                        0,
                    )?),
                    _ => None,
                };
                Ok(FrozenLayer {
                    qkv: cat_t(&[&l.q, &l.k, &l.v])?,
                    qkv_b,
                    o: t(&l.o)?,
                    gate_up: cat_t(&[&l.gate, &l.up])?,
                    down: t(&l.down)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Frozen { model: self, layers, head: t(self.head())?, precision })
    }

    /// The forward pass; `frozen` selects the fused inference path (fused ops, pre-transposed
    /// and concatenated weights), `None` the differentiable one.
    fn forward_impl(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attn: &Attention,
        mut cache: Option<&mut [KvCache]>,
        frozen: Option<&Frozen>,
    ) -> Result<Tensor> {
        let mode = if frozen.is_some() { Mode::Infer } else { Mode::Train };
        let (b, t) = ids.dims2()?;
        let (cos, sin) = self.rope_at(positions, b, t)?;
        let embed = Self::w(&self.embed, mode);
        let mut x = embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        if let Attention::Causal(lens) = attn {
            ensure!(
                lens.len() == b && lens.iter().all(|&l| l >= 1 && l <= t),
                "causal attention needs one length in 1..={t} per row, got {lens:?}"
            );
        }
        if let Attention::Prefixed { lens, prefix } = attn {
            ensure!(
                lens.len() == b && lens.iter().all(|&l| l >= 1 && l <= t),
                "prefixed attention needs one length in 1..={t} per row, got {lens:?}"
            );
            ensure!(prefix.len() == self.layers.len(), "prefixed attention needs one prefix (k, v) per layer");
            ensure!(mode == Mode::Infer, "prefixed attention is inference-only");
        }
        let fused_train = mode == Mode::Train && self.fused_for(&x);
        let mut pass = Pass { b, t, mode, fused_train, frozen, attn, cos, sin, causal_masks: HashMap::new() };
        if let Some(f) = frozen.filter(|_| crate::fused::supported(&x)) {
            // Inference on the CPU: the fused kernels of `fused_infer`; each layer hands the
            // next one its residual stream already normed.
            let eps = self.cfg.rms_norm_eps as f32;
            let mut xn = rms_norm_graph(&x, &Self::w(&self.layers[0].input_norm, mode), eps, mode)?;
            for li in 0..self.layers.len() {
                let next_norm = self.layers.get(li + 1).map_or(&self.norm, |l| &l.input_norm);
                let c = cache.as_deref_mut().map(|c| &mut c[li]);
                (x, xn) = self.layer_forward_infer(li, f, x, &xn, next_norm, &mut pass, c)?;
            }
            return Ok(xn);
        }
        for li in 0..self.layers.len() {
            x = self.layer_forward(li, x, &mut pass, cache.as_deref_mut().map(|c| &mut c[li]))?;
        }
        rms_norm(&x, &Self::w(&self.norm, mode), self.cfg.rms_norm_eps as f32, &pass)
    }

    /// Layer `li` on the residual stream `x`: pre-norm attention and pre-norm MLP, each added to
    /// the stream. `cache`: the layer's KV cache, if any.
    fn layer_forward(&self, li: usize, x: Tensor, pass: &mut Pass, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (layer, mode) = (&self.layers[li], pass.mode);
        let eps = self.cfg.rms_norm_eps as f32;
        let xn = rms_norm(&x, &Self::w(&layer.input_norm, mode), eps, pass)?;
        let (q, k, v) = self.qkv(li, &xn, pass)?;
        let (q, k) = if pass.fused_train {
            (q, k) // `qkv` applied RoPE while splitting the heads
        } else {
            (rope(&q, &pass.cos, &pass.sin, mode)?, rope(&k, &pass.cos, &pass.sin, mode)?)
        };
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let att = self.attend(li, &q, &k, &v, pass)?;
        let att = att.transpose(1, 2)?.reshape((pass.b, pass.t, self.cfg.num_heads * self.cfg.head_dim))?;
        let o = match pass.frozen {
            Some(f) => linear_frozen(&att, &f.layers[li].o, None)?,
            None => linear(&att, &Self::w(&layer.o, mode), None)?,
        };
        let x = (x + o)?;
        let xn = rms_norm(&x, &Self::w(&layer.post_norm, mode), eps, pass)?;
        let mlp = self.mlp(li, &xn, pass)?;
        Ok((x + mlp)?)
    }

    /// [`Self::layer_forward`] on the CPU inference path, with the fused kernels of
    /// [`crate::fused_infer`] (bit-identical to the op-by-op inference path, parallel):
    /// `xn` is `x` normed by this layer's input norm; returns the new stream and the stream
    /// normed by `next_norm` (the next layer's input norm, or the final norm).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward_infer(
        &self,
        li: usize,
        f: &Frozen,
        x: Tensor,
        xn: &Tensor,
        next_norm: &Var,
        pass: &mut Pass,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        use crate::fused_infer::{add_rms_norm, qkv_rope, silu_mul};
        let (cfg, fl) = (&self.cfg, &f.layers[li]);
        let eps = cfg.rms_norm_eps as f32;
        let qkv = linear_frozen(xn, &fl.qkv, fl.qkv_b.as_ref())?.contiguous()?;
        let (q, k, v) = qkv_rope(&qkv, &pass.cos, &pass.sin, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)?;
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let att = self.attend(li, &q, &k, &v, pass)?;
        let att = att.transpose(1, 2)?.reshape((pass.b, pass.t, cfg.num_heads * cfg.head_dim))?;
        let o = linear_frozen(&att, &fl.o, None)?;
        let (x, xn) = add_rms_norm(&x, &o, self.layers[li].post_norm.as_tensor(), eps)?;
        let h = silu_mul(&linear_frozen(&xn, &fl.gate_up, None)?)?;
        let mlp = linear_frozen(&h, &fl.down, None)?;
        Ok(add_rms_norm(&x, &mlp, next_norm.as_tensor(), eps)?)
    }

    /// The query, key and value heads of layer `li` for the normed stream `xn`, each
    /// `(B, heads, T, head_dim)`: one concatenated matmul when frozen, three otherwise. With
    /// `pass.fused_train`, q and k come back with RoPE applied (fused with the head split).
    fn qkv(&self, li: usize, xn: &Tensor, pass: &Pass) -> Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (qd, kvd) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let split = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((pass.b, pass.t, n, cfg.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        match pass.frozen {
            Some(f) => {
                let fl = &f.layers[li];
                let qkv = linear_frozen(xn, &fl.qkv, fl.qkv_b.as_ref())?;
                Ok((
                    split(qkv.narrow(2, 0, qd)?, cfg.num_heads)?,
                    split(qkv.narrow(2, qd, kvd)?, cfg.num_kv_heads)?,
                    split(qkv.narrow(2, qd + kvd, kvd)?, cfg.num_kv_heads)?,
                ))
            }
            None if pass.fused_train => {
                let layer = &self.layers[li];
                let proj = |w: &Var, bias: &Option<Var>, n: usize, rope: bool| -> Result<Tensor> {
                    let y = linear(xn, &Self::w(w, Mode::Train), bias.as_ref().map(|v| Self::w(v, Mode::Train)))?;
                    let rot = rope.then_some((&pass.cos, &pass.sin));
                    Ok(crate::fused_train::heads_rope(&y, n, rot)?)
                };
                Ok((
                    proj(&layer.q, &layer.q_bias, cfg.num_heads, true)?,
                    proj(&layer.k, &layer.k_bias, cfg.num_kv_heads, true)?,
                    proj(&layer.v, &layer.v_bias, cfg.num_kv_heads, false)?,
                ))
            }
            None => {
                let (layer, mode) = (&self.layers[li], pass.mode);
                let proj = |w: &Var, bias: &Option<Var>, n: usize| -> Result<Tensor> {
                    split(linear(xn, &Self::w(w, mode), bias.as_ref().map(|v| Self::w(v, mode)))?, n)
                };
                Ok((
                    proj(&layer.q, &layer.q_bias, cfg.num_heads)?,
                    proj(&layer.k, &layer.k_bias, cfg.num_kv_heads)?,
                    proj(&layer.v, &layer.v_bias, cfg.num_kv_heads)?,
                ))
            }
        }
    }

    /// Attention of `q` over `k`/`v` as `pass.attn` allows, `(B, H, T, head_dim)`: an explicit
    /// mask, cream's fused causal kernel where it applies, else causal attention row by row;
    /// with a shared prefix, layer `li`'s prefix keys/values.
    fn attend(&self, li: usize, q: &Tensor, k: &Tensor, v: &Tensor, pass: &mut Pass) -> Result<Tensor> {
        let cfg = &self.cfg;
        let rep = cfg.num_heads / cfg.num_kv_heads;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let mode = pass.mode;
        Ok(match pass.attn {
            Attention::Masked(mask) => sdpa(q, k, v, mask, rep, scale, mode)?,
            Attention::Prefixed { lens, prefix } => {
                let (pk, pv) = &prefix[li];
                crate::fused_infer::prefix_causal_attention(q, k, v, pk, pv, lens, scale)?
            }
            Attention::Causal(lens) if self.fused_for(q) => {
                crate::fused::causal_attention(q, k, v, lens, scale, mode == Mode::Train)?
            }
            Attention::Causal(lens) => {
                // Each row attends over its own length only, so padding never enters a
                // reduction and a row's numbers do not depend on its batch.
                let mut rows = Vec::with_capacity(pass.b);
                for (row, &len) in lens.iter().enumerate() {
                    let sl = |x: &Tensor| x.narrow(0, row, 1)?.narrow(2, 0, len);
                    let mask = pass
                        .causal_masks
                        .entry(len)
                        .or_insert_with(|| attention_mask(&[0], 0, len, &self.device).expect("mask"));
                    let a = sdpa(&sl(q)?, &sl(k)?, &sl(v)?, mask, rep, scale, mode)?;
                    rows.push(if len < pass.t { a.pad_with_zeros(2, 0, pass.t - len)? } else { a });
                }
                Tensor::cat(&rows, 0)?
            }
        })
    }

    /// The SwiGLU MLP of layer `li` on the normed stream `xn`: `down(silu(gate(xn)) * up(xn))`,
    /// gate and up as one matmul when frozen.
    fn mlp(&self, li: usize, xn: &Tensor, pass: &Pass) -> Result<Tensor> {
        match pass.frozen {
            Some(f) => {
                let fl = &f.layers[li];
                let gu = linear_frozen(xn, &fl.gate_up, None)?;
                let i = self.cfg.intermediate_size;
                let h = (candle_nn::ops::silu(&gu.narrow(2, 0, i)?)? * gu.narrow(2, i, i)?)?;
                linear_frozen(&h, &fl.down, None)
            }
            None => {
                let (layer, mode) = (&self.layers[li], pass.mode);
                let g = linear(xn, &Self::w(&layer.gate, mode), None)?;
                let u = linear(xn, &Self::w(&layer.up, mode), None)?;
                if pass.fused_train {
                    return Ok(crate::fused_train::swiglu_down(&g, &u, &Self::w(&layer.down, mode))?);
                }
                linear(&(candle_nn::ops::silu(&g)? * u)?, &Self::w(&layer.down, mode), None)
            }
        }
    }

    /// Logits for hidden rows `(N, hidden)` -> `(N, vocab)`.
    pub fn logits(&self, hidden_rows: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(hidden_rows.matmul(&Self::w(self.head(), mode).t()?)?)
    }

    /// Empty per-layer KV caches for up to `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> Vec<KvCache> {
        (0..self.cfg.num_layers).map(|_| KvCache::new(2, max_len)).collect()
    }

    /// cos/sin rows for the given positions: `(T, D/2)` or `(B, T, D/2)`.
    fn rope_at(&self, positions: &Tensor, b: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let max = self.cos.dim(0)?;
        let flat = positions.flatten_all()?;
        let top = flat.max(0)?.to_scalar::<u32>()? as usize;
        ensure!(
            top < max,
            "position {top} is beyond the model's context window ({max} positions); truncate the input"
        );
        let pick = |table: &Tensor| -> Result<Tensor> {
            let rows = table.index_select(&flat, 0)?;
            Ok(match positions.rank() {
                1 => rows,
                _ => rows.reshape((b, t, self.cfg.head_dim / 2))?,
            })
        };
        Ok((pick(&self.cos)?, pick(&self.sin)?))
    }
}

/// Scaled dot-product attention on `(B, H, T, D)` queries and `(B, H_kv, T_k, D)` keys/values,
/// returning `(B, H, T, D)`. Grouped-query attention without copying K/V: the `rep` query heads
/// that share a KV head are stacked along the time axis.
fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, rep: usize, scale: f64, mode: Mode) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (hkv, tk) = (k.dim(1)?, k.dim(2)?);
    let qg = q.reshape((b, hkv, rep * t, d))?;
    let scores = (qg.matmul(&k.t()?)? * scale)?.reshape((b, h, t, tk))?.broadcast_add(mask)?;
    let probs = match mode {
        Mode::Train => candle_nn::ops::softmax(&scores, D::Minus1)?,
        Mode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
    };
    Ok(probs.reshape((b, hkv, rep * t, tk))?.matmul(&v)?.reshape((b, h, t, d))?)
}

/// cos/sin tables `(max_pos, D/2)`, computed in f32 exactly as transformers does
/// (`inv_freq = 1 / theta^(2i/D)` in f32, angle = position * inv_freq in f32).
fn rope_tables(cfg: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let max = cfg.max_position_embeddings.max(1);
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(max * half);
    let mut sin = Vec::with_capacity(max * half);
    for p in 0..max {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (max, half), device)?,
        Tensor::from_vec(sin, (max, half), device)?,
    ))
}

/// `x @ w^T (+ bias)` over the last axis of a `(B, T, in)` tensor.
fn linear(x: &Tensor, w: &Tensor, bias: Option<Tensor>) -> Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let y = x.reshape((b * t, i))?.matmul(&w.t()?)?;
    let y = match bias {
        Some(bias) => y.broadcast_add(&bias)?,
        None => y,
    };
    Ok(y.reshape((b, t, w.dim(0)?))?)
}

/// `x @ w_t (+ bias)` over the last axis of a `(B, T, in)` tensor, `w_t` already `(in, out)`
/// and contiguous: at a few rows (decoding) the matmul kernel runs 2-4x faster on it than on
/// the transposed view of an `(out, in)` weight, which it would pack on every call.
fn linear_frozen(x: &Tensor, w_t: &FrozenWeight, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let y = w_t.matmul(&x.reshape((b * t, i))?)?;
    let y = match bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    };
    Ok(y.reshape((b, t, w_t.out_dim()))?)
}

/// RMSNorm over the last axis: candle's fused op in [`Mode::Infer`], cream's fused op with a
/// backward with `pass.fused_train`, else the op-by-op graph.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32, pass: &Pass) -> Result<Tensor> {
    if pass.fused_train {
        return Ok(crate::fused_train::rms_norm(x, w, eps)?);
    }
    rms_norm_graph(x, w, eps, pass.mode)
}

/// RMSNorm as candle's fused op ([`Mode::Infer`]) or the op-by-op differentiable graph.
pub(crate) fn rms_norm_graph(x: &Tensor, w: &Tensor, eps: f32, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Infer => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps)?,
        Mode::Train => {
            let n = x.dim(D::Minus1)? as f64;
            let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / n)?;
            x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?.broadcast_mul(w)?
        }
    })
}

/// Rotate-half RoPE on `(B, H, T, D)`; cos/sin are `(T, D/2)` or `(B, T, D/2)`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Infer {
        return Ok(candle_nn::rotary_emb::rope(x, cos, sin)?);
    }
    let d = x.dim(D::Minus1)?;
    let expand = |c: &Tensor| -> Result<Tensor> {
        let full = Tensor::cat(&[c, c], D::Minus1)?;
        Ok(match full.rank() {
            2 => full.unsqueeze(0)?.unsqueeze(0)?,
            _ => full.unsqueeze(1)?,
        })
    };
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&expand(cos)?)? + rotated.broadcast_mul(&expand(sin)?)?)?)
}

/// Additive attention mask `(B, 1, T, past + T)`: query `i` of row `b` (absolute position
/// `past + i`) may see key `j` when `j <= past + i` and `j >= left_pad[b]`. A query always sees
/// itself, so a fully padded row stays finite.
pub fn attention_mask(left_pad: &[usize], past: usize, t: usize, device: &Device) -> Result<Tensor> {
    let tk = past + t;
    let mut m = vec![0f32; left_pad.len() * t * tk];
    for (bi, &pad) in left_pad.iter().enumerate() {
        for i in 0..t {
            let row = &mut m[(bi * t + i) * tk..(bi * t + i + 1) * tk];
            for (j, v) in row.iter_mut().enumerate() {
                let visible = j == past + i || (j <= past + i && j >= pad);
                if !visible {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (left_pad.len(), 1, t, tk), device)?)
}
