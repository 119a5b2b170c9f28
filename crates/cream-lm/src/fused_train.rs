//! Fused CPU kernels of the training path ([`crate::Mode::Train`]), each a candle custom op with
//! its own backward, so that a DPO/SFT step neither stores nor recomputes op by op what the
//! differentiable candle graph would (candle's elementwise ops also run on one thread on the
//! CPU; these run in parallel with rayon).
//!
//! * [`head_target_logprobs`]: `log_softmax(hidden @ head^T)[target]` without ever holding the
//!   `(N, vocab)` logits: the forward works on row chunks, the backward recomputes the logits a
//!   block at a time and accumulates the gradients of the hidden rows and of the head weight.
//! * [`rms_norm`]: RMSNorm; the backward recomputes the per-row scale from `x`.
//! * [`swiglu_down`]: the MLP's `(silu(gate) * up) @ down^T`; the product is recomputed, not
//!   stored.
//! * [`heads_rope`]: the `(B, T, heads, D)` -> `(B, heads, T, D)` transpose of a projection's
//!   output fused with rotate-half RoPE (or without rotation, for values).
//!
//! Determinism: work is split by fixed chunk sizes, never by the thread count, each chunk runs
//! single-threaded kernels, and partial sums are added in chunk order, so the results are
//! bit-identical across runs and `RAYON_NUM_THREADS` (tested). [`crate::fused::supported`] says
//! where they run; elsewhere (CUDA) the model builds the op-by-op graph, which is also the
//! reference the tests compare values and gradients against.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use crate::fused::{CResult, mm, row_lse, slice};

/// Rows of the forward's logits chunk (`FWD_ROWS x vocab` floats per task).
const FWD_ROWS: usize = 32;
/// Rows per step of the head backward; each step runs one task per vocabulary block.
const BWD_ROWS: usize = 256;
/// Vocabulary entries per task of the head backward.
const BWD_VOCAB: usize = 2048;
/// Rows per task of the row-wise kernels (RMSNorm, SwiGLU-down).
const ROWS: usize = 64;
/// Elements per task of elementwise work (SwiGLU).
const ELEMS: usize = 1 << 14;

/// Runs `f` on the contiguous f32 data of a CPU tensor, without copying it.
fn with_data<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("{what}: fused kernels run on the CPU")
    };
    f(slice(cpu, layout, what)?)
}

// ---------------------------------------------------------------------------------------------
// Output head + target log-probs.

/// `log_softmax(hidden @ head^T)[target]` per row: `hidden (N, H)`, `head (V, H)` (the
/// `lm_head` or, tied, the embedding), result `(N,)` f32. Values are computed as
/// [`crate::fused::target_logprobs`] computes them over materialised logits (same per-row
/// log-sum-exp, accumulated in f64), but only `32 x V` logits exist at a time. With `train`
/// the backward recomputes the logits in `256 x 2048` blocks, forms
/// `g * (onehot(target) - softmax)` in place and accumulates `grad_hidden = d @ head` and
/// `grad_head = d^T @ hidden`: no `(N, V)` tensor is stored for backward either.
pub fn head_target_logprobs(
    hidden: &Tensor,
    head: &Tensor,
    targets: &[u32],
    train: bool,
) -> CResult<Tensor> {
    let op = HeadTargetLogprobs {
        targets: targets.to_vec(),
        shift: OnceLock::new(),
    };
    let (hidden, head) = (hidden.contiguous()?, head.contiguous()?);
    if train {
        hidden.apply_op2(&head, op)
    } else {
        hidden.apply_op2_no_bwd(&head, &op)
    }
}

struct HeadTargetLogprobs {
    targets: Vec<u32>,
    /// Per row, `max + log-sum-exp` of its logits, saved by the forward for the backward.
    shift: OnceLock<Vec<f32>>,
}

impl HeadTargetLogprobs {
    fn dims(&self, h: &[usize], w: &[usize]) -> CResult<(usize, usize, usize)> {
        let (&[n, hd], &[v, hw]) = (h, w) else {
            bail!("head log-probs: hidden and head must be 2-D, got {h:?} and {w:?}")
        };
        if hd != hw {
            bail!("head log-probs: hidden {h:?} does not fit head {w:?}");
        }
        if self.targets.len() != n {
            bail!(
                "head log-probs: {} targets for {n} rows",
                self.targets.len()
            );
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            bail!("head log-probs: target id {bad} is outside the vocabulary of {v}");
        }
        Ok((n, hd, v))
    }

    /// Log-probs of the targets and per-row shifts (`max + lse`), row chunks in parallel.
    fn forward(&self, h: &[f32], w: &[f32], n: usize, hd: usize, v: usize) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0f32; n];
        let mut shift = vec![0f32; n];
        out.par_chunks_mut(FWD_ROWS)
            .zip(shift.par_chunks_mut(FWD_ROWS))
            .enumerate()
            .for_each(|(c, (o, sh))| {
                let (r0, rows) = (c * FWD_ROWS, o.len());
                let mut logits = vec![0f32; rows * v];
                mm(
                    rows,
                    v,
                    hd,
                    &mut logits,
                    v,
                    false,
                    &h[r0 * hd..][..rows * hd],
                    hd,
                    1,
                    w,
                    1,
                    hd,
                    1.0,
                );
                for (i, row) in logits.chunks(v).enumerate() {
                    let (max, lse) = row_lse(row);
                    o[i] = (f64::from(row[self.targets[r0 + i] as usize] - max) - lse) as f32;
                    sh[i] = max + lse as f32;
                }
            });
        (out, shift)
    }
}

impl CustomOp2 for HeadTargetLogprobs {
    fn name(&self) -> &'static str {
        "cream-head-target-logprobs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, hd, v) = self.dims(l1.dims(), l2.dims())?;
        let (out, shift) = self.forward(slice(s1, l1, "hidden")?, slice(s2, l2, "head")?, n, hd, v);
        let _ = self.shift.set(shift);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (n, hd, v) = self.dims(hidden.dims(), head.dims())?;
        let g = crate::fused::to_vec(grad)?;
        let (gh, gw) = with_data(hidden, "hidden", |h| {
            with_data(head, "head", |w| {
                let computed;
                let shift = match self.shift.get() {
                    Some(s) => s,
                    None => {
                        computed = self.forward(h, w, n, hd, v).1;
                        &computed
                    }
                };
                let mut gh = vec![0f32; n * hd];
                let mut gw = vec![0f32; v * hd];
                for r0 in (0..n).step_by(BWD_ROWS) {
                    let rows = BWD_ROWS.min(n - r0);
                    let hc = &h[r0 * hd..][..rows * hd];
                    // One task per vocabulary block j: d = g * (onehot - softmax) on the block's
                    // columns, grad_head[j] += d^T hc (rows owned by the task), and the block's
                    // part of grad_hidden, added below in block order.
                    let parts: Vec<Vec<f32>> = gw
                        .par_chunks_mut(BWD_VOCAB * hd)
                        .enumerate()
                        .map(|(j, gwj)| {
                            let (v0, vb) = (j * BWD_VOCAB, gwj.len() / hd);
                            let wj = &w[v0 * hd..][..vb * hd];
                            let mut d = vec![0f32; rows * vb];
                            mm(rows, vb, hd, &mut d, vb, false, hc, hd, 1, wj, 1, hd, 1.0);
                            for (i, dr) in d.chunks_mut(vb).enumerate() {
                                let (gi, s) = (g[r0 + i], shift[r0 + i]);
                                for x in dr.iter_mut() {
                                    *x = -gi * (*x - s).exp();
                                }
                                let t = self.targets[r0 + i] as usize;
                                if (v0..v0 + vb).contains(&t) {
                                    dr[t - v0] += gi;
                                }
                            }
                            mm(vb, hd, rows, gwj, hd, true, &d, 1, vb, hc, hd, 1, 1.0);
                            let mut part = vec![0f32; rows * hd];
                            mm(
                                rows, hd, vb, &mut part, hd, false, &d, vb, 1, wj, hd, 1, 1.0,
                            );
                            part
                        })
                        .collect();
                    let ghc = &mut gh[r0 * hd..][..rows * hd];
                    add_in_order(ghc, &parts);
                }
                Ok((gh, gw))
            })
        })?;
        let dev = hidden.device();
        Ok((
            Some(Tensor::from_vec(gh, (n, hd), dev)?),
            Some(Tensor::from_vec(gw, (v, hd), dev)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm.

/// RMSNorm over the last axis, `x / sqrt(mean(x^2) + eps) * w`, as the op-by-op graph computes
/// it (f32 mean, division by the root). The backward recomputes each row's root from `x`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> CResult<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn dims(&self, x: &[usize], w: &[usize]) -> CResult<usize> {
        match (x.last(), w) {
            (Some(&h), &[hw]) if h == hw && h > 0 => Ok(h),
            _ => bail!("rms norm: x {x:?} and weight {w:?} do not fit"),
        }
    }

    /// `sqrt(mean(row^2) + eps)`.
    fn root(&self, row: &[f32]) -> f32 {
        let ss: f32 = row.iter().map(|&a| a * a).sum();
        (ss / row.len() as f32 + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cream-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let h = self.dims(l1.dims(), l2.dims())?;
        let (x, w) = (slice(s1, l1, "x")?, slice(s2, l2, "weight")?);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS * h)
            .zip(x.par_chunks(ROWS * h))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(h).zip(xc.chunks(h)) {
                    let r = self.root(xr);
                    for ((o, &a), &wi) in yr.iter_mut().zip(xr).zip(w) {
                        *o = a / r * wi;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let h = self.dims(x.dims(), w.dims())?;
        let g = grad.contiguous()?;
        let (dx, dw) = with_data(x, "x", |x| {
            with_data(w, "weight", |w| {
                with_data(&g, "grad", |g| {
                    let mut dx = vec![0f32; x.len()];
                    // Per chunk of rows: dx of its rows and its partial dw, added in chunk order.
                    let parts: Vec<Vec<f32>> = dx
                        .par_chunks_mut(ROWS * h)
                        .zip(x.par_chunks(ROWS * h))
                        .zip(g.par_chunks(ROWS * h))
                        .map(|((dxc, xc), gc)| {
                            let mut dw = vec![0f32; h];
                            for ((dr, xr), gr) in
                                dxc.chunks_mut(h).zip(xc.chunks(h)).zip(gc.chunks(h))
                            {
                                let r = self.root(xr);
                                // With xhat = x / r and a = g * w:
                                // dx = (a - xhat * mean(a * xhat)) / r, dw = sum over rows g * xhat.
                                let mut dot = 0f32;
                                for i in 0..h {
                                    let xh = xr[i] / r;
                                    dw[i] += gr[i] * xh;
                                    dot += gr[i] * w[i] * xh;
                                }
                                let mean = dot / h as f32;
                                for i in 0..h {
                                    dr[i] = (gr[i] * w[i] - xr[i] / r * mean) / r;
                                }
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0f32; h];
                    add_in_order(&mut dw, &parts);
                    Ok((dx, dw))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, h, dev)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU + down projection.

/// `silu(x) = x / (exp(-x) + 1)`, as candle computes it.
fn silu(x: f32) -> f32 {
    x / ((-x).exp() + 1.0)
}

/// The MLP's second half, `(silu(gate) * up) @ down^T`: `gate`, `up` `(..., I)`, `down` `(H, I)`,
/// result `(..., H)`. The product `silu(gate) * up` is only a temporary, forward and backward
/// (recomputed there, elementwise), so the graph holds gate, up and the weight but not the
/// `(tokens, I)` product a separate SwiGLU op and matmul would keep.
pub fn swiglu_down(gate: &Tensor, up: &Tensor, down: &Tensor) -> CResult<Tensor> {
    let (gate, up, down) = (gate.contiguous()?, up.contiguous()?, down.contiguous()?);
    gate.apply_op3(&up, &down, SwiGluDown)
}

struct SwiGluDown;

impl SwiGluDown {
    /// (tokens, I, H) for gate/up dims `g`, `u` and weight dims `w`.
    fn dims(g: &[usize], u: &[usize], w: &[usize]) -> CResult<(usize, usize, usize)> {
        match (g.split_last(), w) {
            (Some((&i, rest)), &[h, wi]) if g == u && wi == i && i > 0 => Ok((rest.iter().product(), i, h)),
            _ => bail!("swiglu-down: gate {g:?}, up {u:?} and down {w:?} do not fit"),
        }
    }

    /// `silu(g) * u`, fixed chunks in parallel.
    fn product(g: &[f32], u: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(ELEMS).zip(g.par_chunks(ELEMS)).zip(u.par_chunks(ELEMS)).for_each(|((y, g), u)| {
            for ((o, &a), &b) in y.iter_mut().zip(g).zip(u) {
                *o = silu(a) * b;
            }
        });
        y
    }
}

impl CustomOp3 for SwiGluDown {
    fn name(&self) -> &'static str {
        "cream-swiglu-down"
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
        let (n, i, h) = Self::dims(l1.dims(), l2.dims(), l3.dims())?;
        let (g, u, w) = (slice(s1, l1, "gate")?, slice(s2, l2, "up")?, slice(s3, l3, "down")?);
        let p = Self::product(g, u);
        let mut out = vec![0f32; n * h];
        // out = p @ w^T, one task per chunk of rows.
        out.par_chunks_mut(ROWS * h).enumerate().for_each(|(c, o)| {
            let rows = o.len() / h;
            mm(rows, h, i, o, h, false, &p[c * ROWS * i..][..rows * i], i, 1, w, 1, i, 1.0);
        });
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("checked non-empty") = h;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        down: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, i, h) = Self::dims(gate.dims(), up.dims(), down.dims())?;
        let gr = grad.contiguous()?;
        let (dg, du, dw) = with_data(gate, "gate", |g| {
            with_data(up, "up", |u| {
                with_data(down, "down", |w| {
                    with_data(&gr, "grad", |gr| {
                        let p = Self::product(g, u);
                        let mut dg = vec![0f32; n * i];
                        let mut du = vec![0f32; n * i];
                        // Per chunk of rows: dp = grad @ w, then through silu(g) * u in place.
                        dg.par_chunks_mut(ROWS * i).zip(du.par_chunks_mut(ROWS * i)).enumerate().for_each(
                            |(c, (dgc, duc))| {
                                let (r0, rows) = (c * ROWS, dgc.len() / i);
                                mm(rows, i, h, dgc, i, false, &gr[r0 * h..][..rows * h], h, 1, w, i, 1, 1.0);
                                let (gc, uc) = (&g[r0 * i..][..rows * i], &u[r0 * i..][..rows * i]);
                                for k in 0..dgc.len() {
                                    // silu'(x) = s (1 + x (1 - s)) with s = sigmoid(x).
                                    let (dp, x) = (dgc[k], gc[k]);
                                    let s = 1.0 / ((-x).exp() + 1.0);
                                    dgc[k] = dp * uc[k] * s * (1.0 + x * (1.0 - s));
                                    duc[k] = dp * x * s;
                                }
                            },
                        );
                        // dw = grad^T @ p, one task per block of the weight's rows.
                        let mut dw = vec![0f32; h * i];
                        dw.par_chunks_mut(ROWS * i).enumerate().for_each(|(c, dwc)| {
                            let (o0, outs) = (c * ROWS, dwc.len() / i);
                            mm(outs, i, n, dwc, i, false, &gr[o0..], 1, h, &p, i, 1, 1.0);
                        });
                        Ok((dg, du, dw))
                    })
                })
            })
        })?;
        let dev = gate.device();
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), dev)?),
            Some(Tensor::from_vec(du, up.shape(), dev)?),
            Some(Tensor::from_vec(dw, (h, i), dev)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Head split + RoPE.

/// A projection's output `(B, T, heads * D)` split into heads `(B, heads, T, D)`, with
/// rotate-half RoPE applied when `cos`/`sin` (`(T, D/2)` or `(B, T, D/2)`) are given:
/// `[x1 c - x2 s, x2 c + x1 s]` on the halves. One parallel pass instead of candle's
/// single-threaded transpose copy and the five ops of the explicit rotation; the backward is
/// the inverse rotation and transpose.
pub fn heads_rope(x: &Tensor, heads: usize, rot: Option<(&Tensor, &Tensor)>) -> CResult<Tensor> {
    let (b, t, hd) = x.dims3()?;
    if heads == 0 || hd % heads != 0 || (hd / heads) % 2 != 0 {
        bail!("heads rope: {hd} features do not split into {heads} heads of even size");
    }
    let d = hd / heads;
    let rot = match rot {
        None => None,
        Some((cos, sin)) => {
            let per_row = match cos.dims() {
                &[ct, ch] if ct == t && ch == d / 2 => false,
                &[cb, ct, ch] if cb == b && ct == t && ch == d / 2 => true,
                dims => bail!(
                    "heads rope: cos/sin {dims:?} do not fit (B, T, D/2) = ({b}, {t}, {})",
                    d / 2
                ),
            };
            if sin.dims() != cos.dims() {
                bail!(
                    "heads rope: cos {:?} and sin {:?} differ in shape",
                    cos.dims(),
                    sin.dims()
                );
            }
            Some((
                crate::fused::to_vec(cos)?,
                crate::fused::to_vec(sin)?,
                per_row,
            ))
        }
    };
    x.contiguous()?.apply_op1(HeadsRope {
        b,
        t,
        heads,
        d,
        rot,
    })
}

struct HeadsRope {
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    /// cos, sin (`(T, D/2)` rows, or `(B, T, D/2)` when the flag is set); `None`: no rotation.
    rot: Option<(Vec<f32>, Vec<f32>, bool)>,
}

impl HeadsRope {
    /// cos/sin rows of (row `bi`, position `ti`), or `None` without rotation.
    fn cs(&self, bi: usize, ti: usize) -> Option<(&[f32], &[f32])> {
        self.rot.as_ref().map(|(c, s, per_row)| {
            let half = self.d / 2;
            let at = if *per_row {
                (bi * self.t + ti) * half
            } else {
                ti * half
            };
            (&c[at..][..half], &s[at..][..half])
        })
    }

    /// `dst = R(src)` for one head vector (`inverse`: `R^T`, for the backward).
    fn rotate(&self, src: &[f32], dst: &mut [f32], cs: Option<(&[f32], &[f32])>, inverse: bool) {
        let half = self.d / 2;
        let Some((c, s)) = cs else {
            dst.copy_from_slice(src);
            return;
        };
        let (x1, x2) = src.split_at(half);
        let (y1, y2) = dst.split_at_mut(half);
        for i in 0..half {
            if inverse {
                y1[i] = x1[i] * c[i] + x2[i] * s[i];
                y2[i] = x2[i] * c[i] - x1[i] * s[i];
            } else {
                y1[i] = x1[i] * c[i] - x2[i] * s[i];
                y2[i] = x2[i] * c[i] + x1[i] * s[i];
            }
        }
    }
}

impl CustomOp1 for HeadsRope {
    fn name(&self) -> &'static str {
        "cream-heads-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (b, t, h, d) = (self.b, self.t, self.heads, self.d);
        if l.dims() != [b, t, h * d] {
            bail!(
                "heads rope: input {:?} is not ({b}, {t}, {})",
                l.dims(),
                h * d
            );
        }
        let x = slice(s, l, "x")?;
        let mut y = vec![0f32; x.len()];
        // One task per (row, head): its (T, D) block of the output.
        y.par_chunks_mut(t * d).enumerate().for_each(|(bh, yb)| {
            let (bi, hi) = (bh / h, bh % h);
            for (ti, dst) in yb.chunks_mut(d).enumerate() {
                let src = &x[((bi * t + ti) * h + hi) * d..][..d];
                self.rotate(src, dst, self.cs(bi, ti), false);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, h, t, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (b, t, h, d) = (self.b, self.t, self.heads, self.d);
        let g = grad.contiguous()?;
        let dx = with_data(&g, "grad", |g| {
            let mut dx = vec![0f32; g.len()];
            // One task per (row, position): its (heads, D) block of the input gradient.
            dx.par_chunks_mut(h * d).enumerate().for_each(|(bt, dxb)| {
                let (bi, ti) = (bt / t, bt % t);
                for (hi, dst) in dxb.chunks_mut(d).enumerate() {
                    let src = &g[((bi * h + hi) * t + ti) * d..][..d];
                    self.rotate(src, dst, self.cs(bi, ti), true);
                }
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, (b, t, h * d), x.device())?))
    }
}


/// `dst += parts[0] + parts[1] + ...`, element-wise, adding the partial results in their fixed
/// order (never by thread), so a reduction is bit-identical at any thread count.
fn add_in_order(dst: &mut [f32], parts: &[Vec<f32>]) {
    for part in parts {
        dst.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mode;
    use candle_core::{D, Device, Var};

    fn rand(shape: &[usize], seed: u64, scale: f32) -> Var {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| scale * rng.normal() as f32).collect();
        Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    /// `sum(out * weights)` with fixed pseudo-random weights, so every output element matters.
    fn weighted(out: &Tensor, seed: u64) -> Tensor {
        let w = rand(out.dims(), seed, 1.0);
        (out * w.as_tensor()).unwrap().sum_all().unwrap()
    }

    /// Asserts values and the gradients of every input agree within `tol` (relative to the
    /// largest magnitude), and that each gradient is non-trivial.
    fn assert_agree(fused: &Tensor, reference: &Tensor, inputs: &[&Var], tol: f32) {
        let scale = |t: &Tensor| -> f32 {
            t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-3)
        };
        let d = max_diff(fused, reference);
        assert!(d <= tol * scale(reference), "values differ by {d}");
        let gf = weighted(fused, 99).backward().unwrap();
        let gr = weighted(reference, 99).backward().unwrap();
        for (i, v) in inputs.iter().enumerate() {
            let (a, b) = (gf.get(v).unwrap(), gr.get(v).unwrap());
            let d = max_diff(a, b);
            assert!(d <= tol * scale(b), "gradient of input {i} differs by {d} (scale {})", scale(b));
            assert!(scale(a) > 1e-3, "gradient of input {i} is ~0");
        }
    }

    /// More rows than one forward chunk and one backward step, more vocabulary than one block.
    fn head_inputs() -> (Var, Var, Vec<u32>) {
        let (n, h, v) = (300, 16, 5000);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 2654435761u32) % v as u32).collect();
        (rand(&[n, h], 1, 1.0), rand(&[v, h], 2, 0.5), targets)
    }

    #[test]
    fn head_target_logprobs_match_the_op_by_op_graph_values_and_gradients() {
        let (hidden, head, targets) = head_inputs();
        let fused = head_target_logprobs(&hidden, &head, &targets, true).unwrap();
        // The unfused path of `sequence_logprob_sums`: logits, log-softmax, gather.
        let logits = hidden.matmul(&head.t().unwrap()).unwrap();
        let idx = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap().reshape((targets.len(), 1)).unwrap();
        let reference = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .gather(&idx, D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_agree(&fused, &reference, &[&hidden, &head], 2e-5);
        let infer = head_target_logprobs(&hidden, &head, &targets, false).unwrap();
        assert_eq!(bits(&infer), bits(&fused));
        let mut bad = targets.clone();
        bad[3] = 5000;
        let err = head_target_logprobs(&hidden, &head, &bad, true).unwrap_err().to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
    }

    #[test]
    fn rms_norm_matches_the_op_by_op_graph_values_and_gradients() {
        let x = rand(&[3, 50, 24], 3, 2.0);
        let w = Var::from_tensor(&(rand(&[24], 4, 0.1).as_tensor() + 1.0).unwrap()).unwrap();
        let fused = rms_norm(&x, &w, 1e-5).unwrap();
        let reference = crate::model::rms_norm_graph(&x, &w, 1e-5, Mode::Train).unwrap();
        assert_agree(&fused, &reference, &[&x, &w], 1e-5);
    }

    #[test]
    fn swiglu_down_matches_the_op_by_op_graph_values_and_gradients() {
        // More rows than one chunk, more outputs than one weight block.
        let (g, u) = (rand(&[2, 100, 48], 5, 3.0), rand(&[2, 100, 48], 6, 1.0));
        let w = rand(&[70, 48], 9, 0.3);
        let fused = swiglu_down(&g, &u, &w).unwrap();
        let p = (candle_nn::ops::silu(&g).unwrap() * u.as_tensor()).unwrap();
        let reference = p.reshape((200, 48)).unwrap().matmul(&w.t().unwrap()).unwrap().reshape((2, 100, 70)).unwrap();
        assert_agree(&fused, &reference, &[&g, &u, &w], 1e-5);
    }

    #[test]
    fn heads_rope_matches_the_op_by_op_graph_values_and_gradients() {
        let (b, t, h, d) = (2, 70, 3, 8);
        let x = rand(&[b, t, h * d], 7, 1.0);
        let split = |x: &Tensor| x.reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        // Shared positions (T, D/2), per-row positions (B, T, D/2), and no rotation.
        let angles = rand(&[b, t, d / 2], 8, 2.0);
        let (cos_b, sin_b) = (angles.cos().unwrap(), angles.sin().unwrap());
        let (cos_t, sin_t) = (cos_b.get(0).unwrap(), sin_b.get(0).unwrap());
        for (cos, sin) in [(&cos_t, &sin_t), (&cos_b, &sin_b)] {
            let fused = heads_rope(&x, h, Some((cos, sin))).unwrap();
            let reference = crate::model::rope(&split(&x), cos, sin, Mode::Train).unwrap();
            assert_agree(&fused, &reference, &[&x], 1e-6);
        }
        let fused = heads_rope(&x, h, None).unwrap();
        assert_agree(&fused, &split(&x), &[&x], 0.0);
    }

    /// Forward and backward of every kernel, as bits: values and input gradients.
    fn run_all() -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut record = |y: Tensor, inputs: &[&Var]| {
            let grads = weighted(&y, 11).backward().unwrap();
            out.push(bits(&y));
            for v in inputs {
                out.push(bits(grads.get(v).unwrap()));
            }
        };
        let (hidden, head, targets) = head_inputs();
        record(head_target_logprobs(&hidden, &head, &targets, true).unwrap(), &[&hidden, &head]);
        let (x, w) = (rand(&[4, 90, 32], 12, 1.0), rand(&[32], 13, 1.0));
        record(rms_norm(&x, &w, 1e-5).unwrap(), &[&x, &w]);
        let (g, u, w) = (rand(&[3, 90, 40], 14, 2.0), rand(&[3, 90, 40], 15, 1.0), rand(&[80, 40], 18, 0.3));
        record(swiglu_down(&g, &u, &w).unwrap(), &[&g, &u, &w]);
        let x = rand(&[2, 30, 4 * 8], 16, 1.0);
        let angles = rand(&[30, 4], 17, 1.0);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        record(heads_rope(&x, 4, Some((&cos, &sin))).unwrap(), &[&x]);
        out
    }

    #[test]
    fn kernels_are_bit_identical_across_thread_counts() {
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let one = pool(1).install(run_all);
        let three = pool(3).install(run_all);
        assert_eq!(one.len(), 12);
        for (i, (a, b)) in one.iter().zip(&three).enumerate() {
            assert!(a == b, "output {i} differs between 1 and 3 threads");
        }
        assert!(run_all() == one, "a second run differs");
    }
}
