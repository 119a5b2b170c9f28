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

use candle_core::{Tensor, bail};
use rayon::prelude::*;

use crate::fused::mm;

type CResult<T> = candle_core::Result<T>;

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
    let data = |t: &Tensor| -> CResult<Vec<f32>> { t.contiguous()?.flatten_all()?.to_vec1::<f32>() };
    // The candle storage of a contiguous tensor is read in place through a CustomOp; the five
    // operands are small next to the attention itself, so they are simply copied out here.
    let (qv, kv, vv, pkv, pvv) = (data(q)?, data(k)?, data(v)?, data(pk)?, data(pv)?);
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
}
