//! Training pieces: the consistency-regularised DPO loss and the SFT loss as differentiable
//! tensors, AdamW with decoupled weight decay, the cosine schedule with linear warmup,
//! gradient accumulation and global-norm clipping.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor, Var};

use crate::model::{Mode, Model};
use crate::score::{TokenBatch, sequence_logprob_sums};

/// AdamW hyper-parameters (spec step 6 defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Fraction of the total steps spent in linear warmup.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
        }
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup over
/// `ceil(warmup_ratio * total)` steps, then cosine decay to 0, as transformers'
/// `get_cosine_schedule_with_warmup` — except that warmup step `s` uses `(s + 1) / warmup`, so
/// the first update is not a wasted zero-rate step (which would make a one-step run a no-op).
pub fn lr_at(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    let warmup = (cfg.warmup_ratio * total as f64).ceil() as usize;
    if step < warmup {
        return cfg.lr * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// AdamW (Loshchilov & Hutter) as in PyTorch: `p -= lr * wd * p`, then the Adam update with bias
/// correction. One-dimensional parameters (norm weights, biases) get no weight decay.
///
/// On the CPU the moments live in plain vectors and each parameter is updated in one fused,
/// parallel pass (reading p and g in place, one write of the new p); elsewhere the same rule
/// runs as tensor ops.
pub struct AdamW {
    cfg: OptimConfig,
    vars: Vec<(Var, bool)>,
    state: Vec<Moments>,
    t: usize,
}

enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

impl AdamW {
    pub fn new(model: &Model, cfg: OptimConfig) -> Result<Self> {
        let vars: Vec<(Var, bool)> =
            model.named_vars().iter().map(|(_, v)| (v.clone(), v.as_tensor().rank() >= 2)).collect();
        let state = vars
            .iter()
            .map(|(v, _)| {
                let t = v.as_tensor();
                Ok(if crate::fused::supported(t) {
                    Moments::Host { m: vec![0.0; t.elem_count()], v: vec![0.0; t.elem_count()] }
                } else {
                    Moments::Device { m: t.zeros_like()?, v: t.zeros_like()? }
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { vars, state, cfg, t: 0 })
    }

    /// Apply one update with gradients in the order of `Model::named_vars`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        ensure!(grads.len() == self.vars.len(), "one gradient per parameter expected");
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (((var, decay), g), state) in self.vars.iter().zip(grads).zip(&mut self.state) {
            let keep = if *decay && c.weight_decay > 0.0 { 1.0 - lr * c.weight_decay } else { 1.0 };
            match state {
                Moments::Host { m, v } => {
                    let t = var.as_tensor();
                    ensure!(g.dims() == t.dims(), "gradient of shape {:?} for a parameter of {:?}", g.dims(), t.dims());
                    let update = HostUpdate { cfg: c, lr, keep, bc1, bc2, moments: std::sync::Mutex::new((m, v)) };
                    t.inplace_op2(&g.contiguous()?, &update)?;
                }
                Moments::Device { m, v } => {
                    *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let p = (var.as_tensor() * keep)?;
                    let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
                    var.set(&(p - (update * lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.t
    }

    /// The optimizer state as named CPU tensors (`m.<i>`, `v.<i>` for parameter `i` in
    /// `Model::named_vars` order), for a checkpoint; [`AdamW::steps`] completes it.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.state.len());
        for (i, ((var, _), s)) in self.vars.iter().zip(&self.state).enumerate() {
            let shape = var.as_tensor().shape();
            let (m, v) = match s {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, shape, &candle_core::Device::Cpu)?,
                    Tensor::from_slice(v, shape, &candle_core::Device::Cpu)?,
                ),
                Moments::Device { m, v } => (m.to_device(&candle_core::Device::Cpu)?, v.to_device(&candle_core::Device::Cpu)?),
            };
            out.push((format!("m.{i}"), m));
            out.push((format!("v.{i}"), v));
        }
        Ok(out)
    }

    /// Restore the state saved by [`AdamW::state_tensors`] after `steps` steps. Every moment must
    /// be present with its parameter's shape.
    pub fn load_state(&mut self, steps: usize, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (i, ((var, _), s)) in self.vars.iter().zip(&mut self.state).enumerate() {
            let t = var.as_tensor();
            let get = |name: String| -> Result<Tensor> {
                let x = tensors.get(&name).with_context(|| format!("optimizer state lacks {name}"))?;
                ensure!(x.dims() == t.dims(), "optimizer state {name} has shape {:?}, the parameter {:?}", x.dims(), t.dims());
                Ok(x.to_dtype(DType::F32)?)
            };
            let (m, v) = (get(format!("m.{i}"))?, get(format!("v.{i}"))?);
            *s = match s {
                Moments::Host { .. } => Moments::Host { m: m.flatten_all()?.to_vec1()?, v: v.flatten_all()?.to_vec1()? },
                Moments::Device { .. } => Moments::Device { m: m.to_device(t.device())?, v: v.to_device(t.device())? },
            };
        }
        self.t = steps;
        Ok(())
    }
}

/// The AdamW update of one f32 CPU parameter, in place in the parameter's storage (which
/// inference snapshots share, as they shared it with `Var::set` before): parameter, gradient
/// and moments read and written in one pass, fixed chunks in parallel. No copies of p or g.
struct HostUpdate<'a> {
    cfg: OptimConfig,
    lr: f64,
    /// `1 - lr * weight_decay`, or 1 without decay.
    keep: f64,
    bc1: f64,
    bc2: f64,
    moments: std::sync::Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl candle_core::InplaceOp2 for HostUpdate<'_> {
    fn name(&self) -> &'static str {
        "cream-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 14;
        let (candle_core::CpuStorage::F32(p), Some((a, b))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("adamw: parameters must be contiguous f32")
        };
        let g = crate::fused::slice(s2, l2, "gradient")?;
        let mut guard = self.moments.lock().expect("moments lock");
        let (m, v) = &mut *guard;
        let p = &mut p[a..b];
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("adamw: gradient of {} values for a parameter of {}", g.len(), p.len());
        }
        let (c, lr, keep, bc1, bc2) = (self.cfg, self.lr, self.keep, self.bc1, self.bc2);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let gi = f64::from(g[i]);
                    let mi = c.beta1 * f64::from(m[i]) + (1.0 - c.beta1) * gi;
                    let vi = c.beta2 * f64::from(v[i]) + (1.0 - c.beta2) * gi * gi;
                    m[i] = mi as f32;
                    v[i] = vi as f32;
                    let update = (mi / bc1) / ((vi / bc2).sqrt() + c.eps);
                    p[i] = (f64::from(p[i]) * keep - lr * update) as f32;
                }
            });
        Ok(())
    }
}

/// `g * scale` as candle's affine computes it (`x * (scale as f32) + 0`), in parallel over fixed
/// chunks on the CPU (candle's runs on one thread).
fn scaled(g: &Tensor, scale: f64) -> Result<Tensor> {
    if !crate::fused::supported(g) {
        return Ok((g * scale)?);
    }
    let g = g.contiguous()?;
    let (storage, layout) = g.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { unreachable!("checked by fused::supported") };
    let x = crate::fused::slice(cpu, layout, "gradient")?;
    let (mul, add) = (scale as f32, 0f32);
    use rayon::prelude::*;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(o, x)| {
        o.iter_mut().zip(x).for_each(|(o, &v)| *o = v * mul + add);
    });
    Ok(Tensor::from_vec(out, g.shape(), g.device())?)
}

/// Sum of squares of a tensor's values, in f64; on the CPU without copying it.
fn sum_sq(t: &Tensor) -> Result<f64> {
    if crate::fused::supported(t) {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            use rayon::prelude::*;
            // Per-chunk partial sums in parallel, added in chunk order: rayon's own `sum` combines
            // partials in a tree that depends on how the work was split (thread count, stealing),
            // which changed the gradient norm (a training metric) in the last bits between runs.
            let parts: Vec<f64> = data[a..b]
                .par_chunks(1 << 14)
                .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
                .collect();
            return Ok(parts.iter().sum());
        }
    }
    Ok(t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?)
}

/// Sums per-parameter gradients over micro-batches.
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(model: &Model) -> Self {
        let vars: Vec<Var> = model.named_vars().iter().map(|(_, v)| v.clone()).collect();
        GradAccumulator { sums: vec![None; vars.len()], vars }
    }

    /// Backpropagate `loss` and add its gradients. A parameter the loss does not reach is an
    /// error: it would silently stop training.
    pub fn backward(&mut self, loss: &Tensor, model: &Model) -> Result<()> {
        let grads = loss.backward()?;
        for (i, v) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(v.as_tensor()) else {
                bail!("parameter {} received no gradient", model.named_vars()[i].0);
            };
            self.sums[i] = Some(match self.sums[i].take() {
                Some(s) => (s + g)?,
                None => g.clone(),
            });
        }
        Ok(())
    }

    /// Take the summed gradients (clipped to `max_norm` when > 0) and the pre-clip global norm.
    pub fn take_clipped(&mut self, max_norm: f64) -> Result<(Vec<Tensor>, f64)> {
        let grads: Vec<Tensor> = self
            .sums
            .iter_mut()
            .zip(&self.vars)
            .map(|(s, v)| s.take().map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let mut sq = 0f64;
        for g in &grads {
            sq += sum_sq(g)?;
        }
        let norm = sq.sqrt();
        ensure!(norm.is_finite(), "gradient norm is {norm}: training diverged");
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            let clipped = grads.iter().map(|g| scaled(g, scale)).collect::<Result<_>>()?;
            return Ok((clipped, norm));
        }
        Ok((grads, norm))
    }
}

/// `log(1 + exp(x))`, stable for large |x|, differentiable.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let neg_abs = x.abs()?.neg()?;
    Ok((x.relu()? + (neg_abs.exp()? + 1.0)?.log()?)?)
}

/// Inputs of one DPO micro-batch: chosen and rejected conversations, the reference model's
/// summed log-probs (precomputed once, constants) and the consistency rate C of each pair.
pub struct DpoBatch<'a> {
    pub chosen: &'a TokenBatch,
    pub rejected: &'a TokenBatch,
    pub ref_chosen: &'a [f64],
    pub ref_rejected: &'a [f64],
    pub c: &'a [f64],
}

/// Loss and statistics of a DPO micro-batch.
pub struct DpoOutput {
    /// Mean over pairs of `C*softplus(-D) + (1-C)*softplus(D)`.
    pub loss: Tensor,
    /// `rho+ - rho-` per pair.
    pub margins: Vec<f64>,
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
}

/// The consistency-regularised DPO loss (spec step 6): `rho± = beta (S_theta(y±) - S_ref(y±))`,
/// `D = rho+ - rho-`, `l = C softplus(-D) + (1 - C) softplus(D)`, averaged over the pairs.
pub fn dpo_loss(model: &Model, batch: &DpoBatch, beta: f64) -> Result<DpoOutput> {
    let n = batch.c.len();
    ensure!(
        batch.ref_chosen.len() == n && batch.ref_rejected.len() == n && batch.chosen.n_scored.len() == n,
        "DPO batch: chosen, rejected, reference log-probs and C must have one entry per pair"
    );
    let dev = model.device();
    let pol_c = sequence_logprob_sums(model, batch.chosen, Mode::Train)?;
    let pol_r = sequence_logprob_sums(model, batch.rejected, Mode::Train)?;
    let f32s = |x: &[f64]| Tensor::from_vec(x.iter().map(|&v| v as f32).collect::<Vec<_>>(), n, dev);
    let rho_c = ((pol_c - f32s(batch.ref_chosen)?)? * beta)?;
    let rho_r = ((pol_r - f32s(batch.ref_rejected)?)? * beta)?;
    let d = (&rho_c - &rho_r)?;
    let c = f32s(batch.c)?;
    let one_minus_c = (c.ones_like()? - &c)?;
    let per_pair = ((&c * softplus(&d.neg()?)?)? + (one_minus_c * softplus(&d)?)?)?;
    let loss = per_pair.mean_all()?;
    let to_vec = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    };
    Ok(DpoOutput {
        margins: to_vec(&d)?,
        chosen_rewards: to_vec(&rho_c)?,
        rejected_rewards: to_vec(&rho_r)?,
        loss,
    })
}

/// SFT loss: mean negative log-likelihood over the scored (response) tokens of the batch, i.e.
/// cross-entropy with the prompt masked out.
pub fn sft_loss(model: &Model, batch: &TokenBatch) -> Result<Tensor> {
    let sums = sequence_logprob_sums(model, batch, Mode::Train)?;
    let n: usize = batch.n_scored.iter().sum();
    Ok((sums.sum_all()?.neg()? / n as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_cosine() {
        let cfg = OptimConfig { lr: 1.0, warmup_ratio: 0.1, ..Default::default() };
        // 100 steps: 10 warmup steps at 0.1, 0.2, ..., 1.0.
        assert!((lr_at(&cfg, 0, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(&cfg, 4, 100) - 0.5).abs() < 1e-12);
        assert!((lr_at(&cfg, 9, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 10, 100) - 1.0).abs() < 1e-12);
        // One step with warmup: the step still trains.
        assert!((lr_at(&cfg, 0, 1) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 55, 100) - 0.5).abs() < 1e-12);
        assert!(lr_at(&cfg, 99, 100) < 0.001);
        // A single-step run still takes a step with a positive rate after warmup rounding.
        let cfg0 = OptimConfig { lr: 1.0, warmup_ratio: 0.0, ..Default::default() };
        assert_eq!(lr_at(&cfg0, 0, 1), 1.0);
    }

    #[test]
    fn softplus_is_stable_and_exact() {
        let x = Tensor::new(&[-100f32, -1.0, 0.0, 1.0, 100.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = softplus(&x).unwrap().to_vec1().unwrap();
        let want = [0.0f64, 0.31326168751822286, std::f64::consts::LN_2, 1.3132616875182228, 100.0];
        for (a, b) in y.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn adamw_matches_the_pytorch_update_rule() {
        let cfg = crate::ModelConfig::tiny(16);
        let model = Model::random(cfg, 1, &Device::Cpu).unwrap();
        let ocfg = OptimConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() };
        let mut opt = AdamW::new(&model, ocfg).unwrap();
        let before: Vec<Vec<f32>> = model.named_vars().iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        let grads: Vec<Tensor> = model.named_vars().iter()
            .map(|(_, v)| (v.as_tensor().ones_like().unwrap() * 0.3).unwrap()).collect();
        opt.step(&grads, 0.1).unwrap();
        for ((name, v), b) in model.named_vars().iter().zip(&before) {
            let after: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let decay = v.as_tensor().rank() >= 2;
            for (a, p) in after.iter().zip(b) {
                // Step 1: m_hat = g, v_hat = g^2, update = g / (|g| + eps) ~ 1.
                let p = *p as f64;
                let p = if decay { p * (1.0 - 0.1 * 0.5) } else { p };
                let want = p - 0.1 * (0.3 / (0.3 + 1e-8));
                assert!((*a as f64 - want).abs() < 1e-6, "{name}: {a} vs {want}");
            }
        }
    }
}
