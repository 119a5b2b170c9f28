//! Fused CPU kernels for the inference path only ([`crate::model::Mode::Infer`]): no backward,
//! never used in training.
//!
//! * [`prefix_causal_attention`]: rows that continue one shared prefix (the judge's samples of
//!   one prompt) attend to that prefix's keys/values, read in place for every row (no copy per
//!   row), and causally to their own tokens. See [`crate::prefix`].
//!
//! Work is split by fixed units (one task per (row, head)), never by the thread count, and every
//! task computes exactly what a single thread would, so the results are bit-identical at any
//! `RAYON_NUM_THREADS`.

use candle_core::{CpuStorage, Storage, Tensor, bail};
use rayon::prelude::*;

use crate::fused::mm;

type CResult<T> = candle_core::Result<T>;

/// The f32 data of a contiguous CPU tensor, borrowed in place (no copy).
struct F32s<G> {
    guard: G,
    range: (usize, usize),
}

impl<G: std::ops::Deref<Target = Storage>> std::ops::Deref for F32s<G> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.0..self.range.1],
            _ => unreachable!("checked by f32s"),
        }
    }
}

fn f32s(t: &Tensor) -> CResult<F32s<impl std::ops::Deref<Target = Storage> + '_>> {
    let (guard, layout) = t.storage_and_layout();
    let Some(range) = layout.contiguous_offsets() else { bail!("fused inference kernels take contiguous tensors") };
    if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
        bail!("fused inference kernels take f32 CPU tensors");
    }
    Ok(F32s { guard, range })
}

/// `(q, k, v)` from the projection `qkv` `(B, T, (H + 2 H_kv) D)` (q|k|v concatenated, bias
/// already added): q `(B, H, T, D)`, k and v `(B, H_kv, T, D)`, with rotate-half RoPE applied
/// to q and k; `cos`/`sin` are `(T, D/2)` or `(B, T, D/2)`. Equals
/// `rope(narrow(...).reshape(B, T, n, D).transpose(1, 2).contiguous())` bit for bit. One task per
/// (row, head) output block.
pub fn qkv_rope(qkv: &Tensor, cos: &Tensor, sin: &Tensor, h: usize, hkv: usize, d: usize) -> CResult<(Tensor, Tensor, Tensor)> {
    let (b, t, w) = qkv.dims3()?;
    if w != (h + 2 * hkv) * d || d % 2 != 0 {
        bail!("qkv_rope: width {w} is not ({h} + 2 x {hkv}) x {d} with an even head size");
    }
    let half = d / 2;
    let per_row = match cos.dims() {
        [ct, ch] if (*ct, *ch) == (t, half) => false,
        [cb, ct, ch] if (*cb, *ct, *ch) == (b, t, half) => true,
        other => bail!("qkv_rope: cos/sin {other:?} do not fit ({t}, {half}) or ({b}, {t}, {half})"),
    };
    if sin.dims() != cos.dims() {
        bail!("qkv_rope: sin {:?} differs from cos {:?}", sin.dims(), cos.dims());
    }
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    let (src, cs, sn) = (f32s(qkv)?, f32s(&cos)?, f32s(&sin)?);
    let (src, cs, sn) = (&*src, &*cs, &*sn);
    // Output block (bi, head) of a tensor with `n` heads whose columns start at `col0` in qkv.
    let fill = |n: usize, col0: usize, rope: bool| -> Vec<f32> {
        let mut out = vec![0f32; b * n * t * d];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let (bi, hi) = (bh / n, bh % n);
            for ti in 0..t {
                let x = &src[(bi * t + ti) * w + col0 + hi * d..][..d];
                let o = &mut o[ti * d..(ti + 1) * d];
                if !rope {
                    o.copy_from_slice(x);
                    continue;
                }
                let c0 = if per_row { (bi * t + ti) * half } else { ti * half };
                let (c, s) = (&cs[c0..c0 + half], &sn[c0..c0 + half]);
                for i in 0..half {
                    let (x1, x2) = (x[i], x[i + half]);
                    o[i] = x1 * c[i] - x2 * s[i];
                    o[i + half] = x1 * s[i] + x2 * c[i];
                }
            }
        });
        out
    };
    let dev = qkv.device();
    Ok((
        Tensor::from_vec(fill(h, 0, true), (b, h, t, d), dev)?,
        Tensor::from_vec(fill(hkv, h * d, true), (b, hkv, t, d), dev)?,
        Tensor::from_vec(fill(hkv, (h + hkv) * d, false), (b, hkv, t, d), dev)?,
    ))
}

/// Rows per task of the row-wise kernels: a fixed size, so the split never depends on the
/// thread count (each row's result does not depend on the split anyway).
const ROWS_PER_TASK: usize = 4;

/// `silu(g) * u` for `gu` `(.., 2 I)` holding gate|up concatenated on the last axis -> `(.., I)`.
/// Bit-identical to candle's `silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I)`.
pub fn silu_mul(gu: &Tensor) -> CResult<Tensor> {
    let dims = gu.dims().to_vec();
    let Some((&w, lead)) = dims.split_last() else { bail!("silu_mul: a scalar") };
    if w % 2 != 0 {
        bail!("silu_mul: odd last axis {w}");
    }
    let i = w / 2;
    let src = f32s(gu)?;
    let mut out = vec![0f32; src.len() / 2];
    out.par_chunks_mut(ROWS_PER_TASK * i).zip(src.par_chunks(ROWS_PER_TASK * w)).for_each(|(o, x)| {
        for (o, x) in o.chunks_mut(i).zip(x.chunks(w)) {
            let (g, u) = x.split_at(i);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
    });
    let mut shape = lead.to_vec();
    shape.push(i);
    Tensor::from_vec(out, shape, gu.device())
}

/// The residual add and the RMS norm after it: `(s, rms_norm(s) * w)` with `s = x + y`, both of
/// `x`'s shape; `w` is the norm weight over the last axis. Bit-identical to `x + y` followed by
/// candle's `ops::rms_norm(s, w, eps)`.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> CResult<(Tensor, Tensor)> {
    if x.dims() != y.dims() {
        bail!("add_rms_norm: shapes {:?} and {:?} differ", x.dims(), y.dims());
    }
    let n = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [n] {
        bail!("add_rms_norm: weight {:?} for a last axis of {n}", w.dims());
    }
    let (x, y) = (x.contiguous()?, y.contiguous()?);
    let (xs, ys, ws) = (f32s(&x)?, f32s(&y)?, f32s(w)?);
    let (xs, ys, ws) = (&*xs, &*ys, &*ws);
    let mut sum = vec![0f32; xs.len()];
    let mut normed = vec![0f32; xs.len()];
    let chunk = ROWS_PER_TASK * n;
    sum.par_chunks_mut(chunk)
        .zip(normed.par_chunks_mut(chunk))
        .zip(xs.par_chunks(chunk).zip(ys.par_chunks(chunk)))
        .for_each(|((s, o), (a, b))| {
            for ((s, o), (a, b)) in s.chunks_mut(n).zip(o.chunks_mut(n)).zip(a.chunks(n).zip(b.chunks(n))) {
                for ((s, &a), &b) in s.iter_mut().zip(a).zip(b) {
                    *s = a + b;
                }
                let sum2 = s.iter().map(|&v| v * v).sum::<f32>();
                let m = (sum2 / n as f32 + eps).sqrt();
                for ((o, &v), &wi) in o.iter_mut().zip(s.iter()).zip(ws) {
                    *o = v / m * wi;
                }
            }
        });
    let dev = x.device();
    Ok((Tensor::from_vec(sum, x.shape(), dev)?, Tensor::from_vec(normed, x.shape(), dev)?))
}

/// Causal attention of rows that continue a shared prefix.
///
/// * `q`: `(B, H, S, D)` queries of the rows' own tokens, which sit at positions `P..P + S`.
/// * `k`, `v`: `(B, H_kv, S, D)` the rows' own keys/values (grouped-query: query head `h`
///   reads KV head `h / (H / H_kv)`).
/// * `pk`, `pv`: `(1, H_kv, P, D)` the prefix's keys/values, shared by every row.
/// * `lens`: row `b` has `lens[b]` real tokens (right padding after them).
///
/// Query `i` of row `b` attends to all `P` prefix positions and to its own positions `0..=i`.
/// Returns `(B, H, S, D)`; outputs at padding positions are zero. Equal, up to float rounding,
/// to causal attention over the concatenated sequence `prefix ++ row` at the row's positions
/// (tested below).
#[allow(clippy::too_many_arguments)]
pub fn prefix_causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pk: &Tensor,
    pv: &Tensor,
    lens: &[usize],
    scale: f64,
) -> CResult<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (bk, hkv, sk, dk) = k.dims4()?;
    let (one, phkv, p, pd) = pk.dims4()?;
    if (bk, sk, dk) != (b, s, d) || k.dims() != v.dims() || hkv == 0 || h % hkv != 0 {
        bail!("prefix attention: shapes q {:?}, k {:?}, v {:?} do not fit", q.dims(), k.dims(), v.dims());
    }
    if (one, phkv, pd) != (1, hkv, d) || pk.dims() != pv.dims() {
        bail!("prefix attention: prefix k {:?} / v {:?} must be (1, {hkv}, P, {d})", pk.dims(), pv.dims());
    }
    if lens.len() != b || lens.iter().any(|&l| l == 0 || l > s) {
        bail!("prefix attention: need one length in 1..={s} per row, got {lens:?}");
    }
    for t in [q, k, v, pk, pv] {
        if !crate::fused::supported(t) {
            bail!("prefix attention: f32 CPU tensors only");
        }
    }
    let (q, k, v, pk, pv) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, pk.contiguous()?, pv.contiguous()?);
    let (qv, kv, vv, pkv, pvv) = (f32s(&q)?, f32s(&k)?, f32s(&v)?, f32s(&pk)?, f32s(&pv)?);
    let (qv, kv, vv, pkv, pvv) = (&*qv, &*kv, &*vv, &*pkv, &*pvv);
    let rep = h / hkv;
    let scale = scale as f32;
    let mut out = vec![0f32; b * h * s * d];
    out.par_chunks_mut(s * d).enumerate().for_each(|(bh, o)| {
        let (bi, hi) = (bh / h, bh % h);
        let len = lens[bi];
        let kh = hi / rep;
        let qh = &qv[bh * s * d..][..len * d];
        let own = (bi * hkv + kh) * s * d;
        let (ks, vs) = (&kv[own..][..len * d], &vv[own..][..len * d]);
        let (kp, vp) = (&pkv[kh * p * d..][..p * d], &pvv[kh * p * d..][..p * d]);
        // Scores (len, P + len): the prefix columns, then the row's own columns.
        let w = p + len;
        let mut sc = vec![0f32; len * w];
        mm(len, p, d, &mut sc, w, false, qh, d, 1, kp, 1, d, scale);
        mm(len, len, d, &mut sc[p..], w, false, qh, d, 1, ks, 1, d, scale);
        for i in 0..len {
            let row = &mut sc[i * w..(i + 1) * w];
            let seen = p + i + 1;
            let max = row[..seen].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0f32;
            for x in &mut row[..seen] {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row[..seen].iter_mut().for_each(|x| *x *= inv);
            row[seen..].fill(0.0);
        }
        mm(len, d, p, o, d, false, &sc, w, 1, vp, d, 1, 1.0);
        mm(len, d, len, o, d, true, &sc[p..], w, 1, vs, d, 1, 1.0);
    });
    Tensor::from_vec(out, (b, h, s, d), q.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Two rayon pools of different sizes; `f` must give the same bits in both.
    fn at_1_and_2_threads<T: PartialEq + std::fmt::Debug + Send>(f: impl Fn() -> T + Sync) {
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        assert_eq!(pool(1).install(&f), pool(2).install(&f));
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    #[test]
    fn prefix_attention_equals_causal_attention_over_prefix_and_row() {
        // 2 rows of up to 5 own tokens after a 4-token prefix; 6 query heads on 2 KV heads.
        let (b, h, hkv, p, s, d) = (2, 6, 2, 4, 5, 8);
        let (q, k, v) = (rand(&[b, h, s, d], 1), rand(&[b, hkv, s, d], 2), rand(&[b, hkv, s, d], 3));
        let (pk, pv) = (rand(&[1, hkv, p, d], 4), rand(&[1, hkv, p, d], 5));
        let pq = rand(&[1, h, p, d], 6);
        let lens = [5, 3];
        let got = prefix_causal_attention(&q, &k, &v, &pk, &pv, &lens, 0.35).unwrap();
        // Reference: each row as one full sequence prefix ++ row, cream's causal kernel.
        for (row, &len) in lens.iter().enumerate() {
            let full = |pre: &Tensor, own: &Tensor| {
                Tensor::cat(&[pre, &own.narrow(0, row, 1).unwrap()], 2).unwrap()
            };
            let (qf, kf, vf) = (full(&pq, &q), full(&pk, &k), full(&pv, &v));
            let want = crate::fused::causal_attention(&qf, &kf, &vf, &[p + len], 0.35, false).unwrap();
            let want = want.narrow(2, p, len).unwrap();
            let have = got.narrow(0, row, 1).unwrap().narrow(2, 0, len).unwrap();
            assert!(max_diff(&want, &have) < 1e-5, "row {row} differs by {}", max_diff(&want, &have));
            if len < s {
                let pad = got.narrow(0, row, 1).unwrap().narrow(2, len, s - len).unwrap();
                assert_eq!(pad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
            }
        }
        at_1_and_2_threads(|| bits(&prefix_causal_attention(&q, &k, &v, &pk, &pv, &lens, 0.35).unwrap()));
    }

    #[test]
    fn qkv_rope_equals_split_transpose_and_candle_rope_bit_for_bit() {
        let (b, t, h, hkv, d) = (3, 5, 6, 2, 8);
        let qkv = rand(&[b, t, (h + 2 * hkv) * d], 7);
        let split = |col: usize, n: usize| {
            qkv.narrow(2, col, n * d).unwrap().reshape((b, t, n, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        // Shared positions (T, D/2) and per-row positions (B, T, D/2).
        for (cos, sin) in [(rand(&[t, d / 2], 8), rand(&[t, d / 2], 9)), (rand(&[b, t, d / 2], 10), rand(&[b, t, d / 2], 11))] {
            let rope = |x: Tensor| candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
            let want = [rope(split(0, h)), rope(split(h * d, hkv)), split((h + hkv) * d, hkv)];
            let (q, k, v) = qkv_rope(&qkv, &cos, &sin, h, hkv, d).unwrap();
            for (got, want) in [q, k, v].iter().zip(&want) {
                assert_eq!(got.dims(), want.dims());
                assert_eq!(bits(got), bits(want));
            }
            at_1_and_2_threads(|| {
                let (q, k, v) = qkv_rope(&qkv, &cos, &sin, h, hkv, d).unwrap();
                [bits(&q), bits(&k), bits(&v)]
            });
        }
    }

    #[test]
    fn silu_mul_equals_candle_silu_times_up_bit_for_bit() {
        let gu = (rand(&[3, 7, 2 * 9], 12) * 3.0).unwrap();
        let want = (candle_nn::ops::silu(&gu.narrow(2, 0, 9).unwrap()).unwrap() * gu.narrow(2, 9, 9).unwrap()).unwrap();
        let got = silu_mul(&gu).unwrap();
        assert_eq!(got.dims(), &[3, 7, 9]);
        assert_eq!(bits(&got), bits(&want));
        at_1_and_2_threads(|| bits(&silu_mul(&gu).unwrap()));
    }

    #[test]
    fn add_rms_norm_equals_add_then_candle_rms_norm_bit_for_bit() {
        // 21 rows (candle's serial branch) and 40 rows (its parallel branch).
        for (rows, seed) in [(21, 13), (40, 14)] {
            let (x, y, w) = (rand(&[rows, 1, 16], seed), rand(&[rows, 1, 16], seed + 10), rand(&[16], seed + 20));
            let sum = (&x + &y).unwrap();
            let normed = candle_nn::ops::rms_norm(&sum, &w, 1e-5).unwrap();
            let (s, n) = add_rms_norm(&x, &y, &w, 1e-5).unwrap();
            assert_eq!(bits(&s), bits(&sum));
            assert_eq!(bits(&n), bits(&normed));
            at_1_and_2_threads(|| {
                let (s, n) = add_rms_norm(&x, &y, &w, 1e-5).unwrap();
                [bits(&s), bits(&n)]
            });
        }
    }
}
