//! Fused CPU kernels with their own backward, for the two places where candle's op-by-op graph
//! costs the most: causal attention (scores, mask, softmax, weighted sum: seven full passes over
//! a `(B, H, T, T)` tensor forward and more backward) and the log-probability of target tokens
//! (a full `(N, vocab)` log-softmax and its gradient).
//!
//! Each is a candle custom op, so it composes with autograd: [`causal_attention`] and
//! [`target_logprobs`] take a `train` flag; with it the op records a backward that recomputes
//! what it needs (attention probabilities, softmax rows) instead of storing it. They run on f32
//! CPU tensors; [`supported`] says when, and the model falls back to the op-by-op graph
//! elsewhere (CUDA). Agreement with that graph, values and gradients, is tested in
//! `tests/tiny_model.rs` and against the golden vectors.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor, bail};
use gemm::Parallelism;
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Whether the fused kernels can run on this tensor (f32 on the CPU).
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{what}: fused kernels take f32") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: fused kernels take contiguous tensors"),
    }
}

fn to_vec(t: &Tensor) -> CResult<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// `dst (m x n) [+]= a (m x k) * b (k x n)`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(dst.len() >= (m - 1) * dst_rs + n);
    debug_assert!(k == 0 || a.len() >= (m - 1) * a_rs + (k - 1) * a_cs + 1);
    debug_assert!(k == 0 || b.len() >= (k - 1) * b_rs + (n - 1) * b_cs + 1);
    // SAFETY: the debug assertions above state the bounds every call site guarantees by
    // construction (slices cut to exactly these matrices).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Causal self-attention over right-padded rows: `q (B, H, T, D)`, `k`/`v` `(B, H_kv, T, D)`
/// (grouped-query: query head `h` reads KV head `h / (H / H_kv)`). Row `b` attends over its
/// first `lens[b]` positions; outputs at padding positions are zero.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize], scale: f64, train: bool) -> CResult<Tensor> {
    let op = CausalAttention { lens: lens.to_vec(), scale: scale as f32 };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if train { q.apply_op3(&k, &v, op) } else { q.apply_op3_no_bwd(&k, &v, &op) }
}

struct CausalAttention {
    lens: Vec<usize>,
    scale: f32,
}

struct Dims {
    b: usize,
    h: usize,
    hkv: usize,
    t: usize,
    d: usize,
}

impl CausalAttention {
    fn dims(&self, q: &[usize], k: &[usize], v: &[usize]) -> CResult<Dims> {
        let (&[b, h, t, d], &[bk, hkv, tk, dk]) = (q, k) else {
            bail!("causal attention: q and k must be 4-D, got {q:?} and {k:?}")
        };
        if (bk, tk, dk) != (b, t, d) || k != v || hkv == 0 || h % hkv != 0 {
            bail!("causal attention: shapes q {q:?}, k {k:?}, v {v:?} do not fit");
        }
        if self.lens.len() != b || self.lens.iter().any(|&l| l == 0 || l > t) {
            bail!("causal attention: need one length in 1..={t} per row, got {:?}", self.lens);
        }
        Ok(Dims { b, h, hkv, t, d })
    }

    /// Softmax probabilities `(len, len)` (row-major, zero above the diagonal) of query head
    /// `qh` against key head `kh`, both `(T, D)` slices.
    fn probs(&self, qh: &[f32], kh: &[f32], len: usize, d: usize, p: &mut [f32]) {
        mm(len, len, d, p, len, false, qh, d, 1, kh, 1, d, self.scale);
        for i in 0..len {
            let row = &mut p[i * len..(i + 1) * len];
            let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0f32;
            for x in &mut row[..=i] {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row[..=i].iter_mut().for_each(|x| *x *= inv);
            row[i + 1..].fill(0.0);
        }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "cream-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let Dims { b, h, hkv, t, d } = self.dims(l1.dims(), l2.dims(), l3.dims())?;
        let (q, k, v) = (slice(s1, l1, "q")?, slice(s2, l2, "k")?, slice(s3, l3, "v")?);
        let rep = h / hkv;
        let mut out = vec![0f32; b * h * t * d];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            let len = self.lens[bi];
            let qh = &q[bh * t * d..][..len * d];
            let kv = (bi * hkv + hi / rep) * t * d;
            let mut p = vec![0f32; len * len];
            self.probs(qh, &k[kv..][..len * d], len, d, &mut p);
            mm(len, d, len, o, d, false, &p, len, 1, &v[kv..][..len * d], d, 1, 1.0);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { b, h, hkv, t, d } = self.dims(q.dims(), k.dims(), v.dims())?;
        let (qv, kv_, vv, g) = (to_vec(q)?, to_vec(k)?, to_vec(v)?, to_vec(grad)?);
        let rep = h / hkv;
        let mut dq = vec![0f32; b * h * t * d];
        let mut dk = vec![0f32; b * hkv * t * d];
        let mut dv = vec![0f32; b * hkv * t * d];
        // One task per (row, KV head): it owns dk/dv of that head and dq of its query heads.
        dq.par_chunks_mut(rep * t * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(bk, ((dq_g, dk_h), dv_h))| {
                let bi = bk / hkv;
                let len = self.lens[bi];
                let kh = &kv_[bk * t * d..][..len * d];
                let vh = &vv[bk * t * d..][..len * d];
                let mut p = vec![0f32; len * len];
                let mut dp = vec![0f32; len * len];
                for r in 0..rep {
                    let qi = (bi * h + (bk % hkv) * rep + r) * t * d;
                    let qh = &qv[qi..][..len * d];
                    let gh = &g[qi..][..len * d];
                    self.probs(qh, kh, len, d, &mut p);
                    // dV += P^T dO; dP = dO V^T.
                    mm(len, d, len, dv_h, d, true, &p, 1, len, gh, d, 1, 1.0);
                    mm(len, len, d, &mut dp, len, false, gh, d, 1, vh, 1, d, 1.0);
                    // dS = P * (dP - rowsum(P * dP)), zero above the diagonal since P is.
                    for i in 0..len {
                        let (pr, dr) = (&p[i * len..][..=i], &mut dp[i * len..(i + 1) * len]);
                        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pi) in dr.iter_mut().zip(pr) {
                            *x = pi * (*x - dot);
                        }
                        dr[i + 1..].fill(0.0);
                    }
                    // dQ = scale dS K; dK += scale dS^T Q.
                    let dq_h = &mut dq_g[r * t * d..][..len * d];
                    mm(len, d, len, dq_h, d, false, &dp, len, 1, kh, d, 1, self.scale);
                    mm(len, d, len, dk_h, d, true, &dp, 1, len, qh, d, 1, self.scale);
                }
            });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
            Some(Tensor::from_vec(dk, (b, hkv, t, d), dev)?),
            Some(Tensor::from_vec(dv, (b, hkv, t, d), dev)?),
        ))
    }
}

/// `log_softmax(logits)[target]` per row of `(N, V)` f32 logits, as an `(N,)` f32 tensor. The
/// log-sum-exp accumulates in f64. With `train`, the backward is one fused pass:
/// `dlogits = g * (onehot(target) - softmax(logits))`.
pub fn target_logprobs(logits: &Tensor, targets: &[u32], train: bool) -> CResult<Tensor> {
    let op = TargetLogprobs { targets: targets.to_vec() };
    let logits = logits.contiguous()?;
    if train { logits.apply_op1(op) } else { logits.apply_op1_no_bwd(&op) }
}

struct TargetLogprobs {
    targets: Vec<u32>,
}

impl TargetLogprobs {
    fn check(&self, dims: &[usize]) -> CResult<(usize, usize)> {
        let &[n, v] = dims else { bail!("target log-probs: logits must be 2-D, got {dims:?}") };
        if self.targets.len() != n {
            bail!("target log-probs: {} targets for {n} rows", self.targets.len());
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            bail!("target log-probs: target id {bad} is outside the vocabulary of {v}");
        }
        Ok((n, v))
    }
}

/// `(max, log sum exp(x - max))` of a row, the sum in f64.
pub(crate) fn row_lse(row: &[f32]) -> (f32, f64) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
    (max, sum.ln())
}

impl CustomOp1 for TargetLogprobs {
    fn name(&self) -> &'static str {
        "cream-target-logprobs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, v) = self.check(l.dims())?;
        let x = slice(s, l, "logits")?;
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let (max, lse) = row_lse(row);
                (f64::from(row[t as usize] - max) - lse) as f32
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, v) = self.check(logits.dims())?;
        let x = to_vec(logits)?;
        let g = to_vec(grad)?;
        let mut dx = vec![0f32; n * v];
        dx.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(i, (dr, row))| {
            let (max, lse) = row_lse(row);
            let shift = max + lse as f32;
            for (o, &xi) in dr.iter_mut().zip(row) {
                *o = -g[i] * (xi - shift).exp();
            }
            dr[self.targets[i] as usize] += g[i];
        });
        Ok(Some(Tensor::from_vec(dx, (n, v), logits.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Var {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The op-by-op graph: per row, scores + causal mask + softmax + weighted sum, GQA by
    /// repeating KV heads, zeros at padding.
    fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize], scale: f64) -> Tensor {
        let (_, h, t, _) = q.dims4().unwrap();
        let rep = h / k.dim(1).unwrap();
        let repeat = |x: &Tensor| {
            let parts: Vec<Tensor> = (0..h).map(|i| x.narrow(1, i / rep, 1).unwrap()).collect();
            Tensor::cat(&parts, 1).unwrap()
        };
        let (k, v) = (repeat(k), repeat(v));
        let rows: Vec<Tensor> = lens
            .iter()
            .enumerate()
            .map(|(row, &len)| {
                let sl = |x: &Tensor| x.narrow(0, row, 1).unwrap().narrow(2, 0, len).unwrap();
                let mask = crate::model::attention_mask(&[0], 0, len, &Device::Cpu).unwrap();
                let s = (sl(q).matmul(&sl(&k).t().unwrap()).unwrap() * scale).unwrap();
                let p = candle_nn::ops::softmax(&s.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
                let a = p.matmul(&sl(&v)).unwrap();
                if len < t { a.pad_with_zeros(2, 0, t - len).unwrap() } else { a }
            })
            .collect();
        Tensor::cat(&rows, 0).unwrap()
    }

    #[test]
    fn causal_attention_matches_the_op_by_op_graph_values_and_gradients() {
        let (q, k, v) = (rand(&[2, 6, 7, 8], 1), rand(&[2, 2, 7, 8], 2), rand(&[2, 2, 7, 8], 3));
        let lens = [7, 4];
        let weights = rand(&[2, 6, 7, 8], 4);
        let fused = causal_attention(&q, &k, &v, &lens, 0.35, true).unwrap();
        let reference = reference_attention(&q, &k, &v, &lens, 0.35);
        assert!(max_diff(&fused, &reference) < 1e-5);
        let loss = |out: &Tensor| (out * weights.as_tensor()).unwrap().sum_all().unwrap();
        let (gf, gr) = (loss(&fused).backward().unwrap(), loss(&reference).backward().unwrap());
        for var in [&q, &k, &v] {
            let (a, b) = (gf.get(var).unwrap(), gr.get(var).unwrap());
            assert!(max_diff(a, b) < 1e-5, "gradient differs by {}", max_diff(a, b));
            assert!(a.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
        }
        // Inference mode: same values, no graph.
        let infer = causal_attention(&q, &k, &v, &lens, 0.35, false).unwrap();
        assert_eq!(max_diff(&infer, &fused), 0.0);
    }

    #[test]
    fn target_logprobs_match_log_softmax_values_and_gradients() {
        let logits = rand(&[5, 301], 5);
        let x = (logits.as_tensor() * 4.0).unwrap();
        let targets = [0u32, 300, 17, 17, 150];
        let weights = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, 0.0], &Device::Cpu).unwrap();
        let fused = target_logprobs(&x, &targets, true).unwrap();
        let idx = Tensor::new(&targets, &Device::Cpu).unwrap().reshape((5, 1)).unwrap();
        let reference = candle_nn::ops::log_softmax(&x, D::Minus1).unwrap().gather(&idx, D::Minus1).unwrap().flatten_all().unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        let gf = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (gf.get(&logits).unwrap(), gr.get(&logits).unwrap());
        assert!(max_diff(a, b) < 1e-5, "gradient differs by {}", max_diff(a, b));
        assert!(target_logprobs(&x, &[301, 0, 0, 0, 0], false).unwrap_err().to_string().contains("outside the vocabulary"));
    }
}
