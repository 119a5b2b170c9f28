//! bf16 matrix products for the opt-in fast inference mode ([`crate::Precision::Bf16`]).
//!
//! A frozen weight `(in, out)` is rounded to bf16 once and packed in panels of 32 output
//! columns, each input pair `(k, k+1)` of a column in one 32-bit lane: the layout of the
//! AVX512_BF16 instruction `vdpbf16ps`, which multiplies 32 bf16 pairs and accumulates them into
//! 16 f32 lanes. Activations are rounded to bf16 per call; every sum accumulates in f32.
//!
//! On a CPU without AVX512_BF16 a portable kernel computes the same products (bf16 inputs, f32
//! sums, pairwise as `vdpbf16ps` does) more slowly; on a GPU the weight is a bf16 tensor and the
//! product candle's bf16 matmul.

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// Output columns per packed panel (two 16-lane registers).
const NR: usize = 32;
/// Rows per micro-kernel call.
const MR: usize = 8;
/// Rows per parallel task.
const MC: usize = 64;

/// f32 -> bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    let round = ((b >> 16) & 1) + 0x7FFF;
    ((b + round) >> 16) as u16
}

#[inline]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A weight `(in, out)` rounded to bf16 and packed for [`Bf16Matrix::matmul`].
pub enum Bf16Matrix {
    Cpu {
        k: usize,
        n: usize,
        /// `k` rounded up to even: pairs of inputs share a lane.
        k_pairs: usize,
        /// Panels of NR columns (`n` rounded up), each `k_pairs * NR` lanes, lane = two bf16
        /// (low half: even input index).
        packed: Vec<u32>,
    },
    /// Off the CPU: a `(in, out)` bf16 tensor for candle's matmul.
    Device(Tensor),
}

fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Bf16Matrix {
    /// Pack `w_t`, an `(in, out)` f32 matrix.
    pub fn new(w_t: &Tensor) -> Result<Self> {
        let (k, n) = w_t.dims2()?;
        if !w_t.device().is_cpu() {
            return Ok(Bf16Matrix::Device(w_t.to_dtype(DType::BF16)?.contiguous()?));
        }
        let w = w_t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let k_pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut packed = vec![0u32; panels * k_pairs * NR];
        packed.par_chunks_mut(k_pairs * NR).enumerate().for_each(|(p, panel)| {
            for kp in 0..k_pairs {
                for c in 0..NR {
                    let col = p * NR + c;
                    if col >= n {
                        continue;
                    }
                    let lo = to_bf16(w[2 * kp * n + col]) as u32;
                    let hi = if 2 * kp + 1 < k { to_bf16(w[(2 * kp + 1) * n + col]) as u32 } else { 0 };
                    panel[kp * NR + c] = lo | (hi << 16);
                }
            }
        });
        Ok(Bf16Matrix::Cpu { k, n, k_pairs, packed })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        match self {
            Bf16Matrix::Cpu { n, .. } => *n,
            Bf16Matrix::Device(t) => t.dim(1).expect("2-d weight"),
        }
    }

    /// `x @ w` for `x` of shape `(m, in)` (f32), returning `(m, out)` f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (k, n, k_pairs, packed) = match self {
            Bf16Matrix::Device(w) => {
                return Ok(x.to_dtype(DType::BF16)?.matmul(w)?.to_dtype(DType::F32)?);
            }
            Bf16Matrix::Cpu { k, n, k_pairs, packed } => (*k, *n, *k_pairs, packed),
        };
        let (m, xk) = x.dims2()?;
        ensure!(xk == k, "bf16 matmul: input width {xk}, weight expects {k}");
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        // Activations as bf16 pairs, one row of `k_pairs` lanes per input row.
        let mut a = vec![0u32; m * k_pairs];
        a.par_chunks_mut(k_pairs.max(1)).enumerate().for_each(|(r, row)| {
            let src = &xs[r * k..(r + 1) * k];
            for (kp, lane) in row.iter_mut().enumerate() {
                let lo = to_bf16(src[2 * kp]) as u32;
                let hi = if 2 * kp + 1 < k { to_bf16(src[2 * kp + 1]) as u32 } else { 0 };
                *lane = lo | (hi << 16);
            }
        });
        let panels = n.div_ceil(NR);
        let n_pad = panels * NR;
        let mut out = vec![0f32; m * n_pad];
        let m_tasks = m.div_ceil(MC);
        let fast = has_avx512_bf16();
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..m_tasks * panels).into_par_iter().for_each(|task| {
            let (mt, p) = (task / panels, task % panels);
            let b = &packed[p * k_pairs * NR..(p + 1) * k_pairs * NR];
            let r_end = m.min((mt + 1) * MC);
            let mut r = mt * MC;
            while r < r_end {
                let rows = MR.min(r_end - r);
                let a_rows = &a[r * k_pairs..(r + rows) * k_pairs];
                // SAFETY: every task writes its own rows x panel columns of `out`, which
                // outlives the parallel loop.
                let c = unsafe { out_ptr.get().add(r * n_pad + p * NR) };
                unsafe { micro(a_rows, rows, k_pairs, b, c, n_pad, fast) };
                r += rows;
            }
        });
        let y = Tensor::from_vec(out, (m, n_pad), &Device::Cpu)?;
        Ok(if n_pad == n { y } else { y.narrow(1, 0, n)?.contiguous()? })
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `rows` (<= MR) rows of `a` times one packed panel into `c` (row stride `ldc`), overwriting.
///
/// # Safety
/// `c` must be valid for `rows` rows of NR floats at stride `ldc`.
unsafe fn micro(a: &[u32], rows: usize, k_pairs: usize, b: &[u32], c: *mut f32, ldc: usize, fast: bool) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        unsafe {
            match rows {
                8 => return avx::kernel::<8>(a, k_pairs, b, c, ldc),
                7 => return avx::kernel::<7>(a, k_pairs, b, c, ldc),
                6 => return avx::kernel::<6>(a, k_pairs, b, c, ldc),
                5 => return avx::kernel::<5>(a, k_pairs, b, c, ldc),
                4 => return avx::kernel::<4>(a, k_pairs, b, c, ldc),
                3 => return avx::kernel::<3>(a, k_pairs, b, c, ldc),
                2 => return avx::kernel::<2>(a, k_pairs, b, c, ldc),
                1 => return avx::kernel::<1>(a, k_pairs, b, c, ldc),
                _ => unreachable!("at most {MR} rows"),
            }
        }
    }
    let _ = fast;
    // Portable: the same pairwise products, accumulated per lane in f32.
    for r in 0..rows {
        let mut acc = [0f32; NR];
        let ar = &a[r * k_pairs..(r + 1) * k_pairs];
        for (kp, &lane) in ar.iter().enumerate() {
            let (x0, x1) = (from_bf16(lane as u16), from_bf16((lane >> 16) as u16));
            let bl = &b[kp * NR..(kp + 1) * NR];
            for (s, &w) in acc.iter_mut().zip(bl) {
                *s += x0 * from_bf16(w as u16) + x1 * from_bf16((w >> 16) as u16);
            }
        }
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), c.add(r * ldc), NR) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::NR;
    use std::arch::x86_64::*;

    /// R rows x 32 columns: per input pair, two panel loads, R broadcasts, 2R `vdpbf16ps`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel<const R: usize>(a: &[u32], k_pairs: usize, b: &[u32], c: *mut f32, ldc: usize) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for kp in 0..k_pairs {
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(kp * NR) as *const _));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(kp * NR + 16) as *const _));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r * k_pairs + kp) as i32));
                    acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, b0);
                    acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, b1);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            unsafe {
                _mm512_storeu_ps(c.add(r * ldc), acc_r[0]);
                _mm512_storeu_ps(c.add(r * ldc + 16), acc_r[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: usize, k: usize, n: usize) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.05, (k, n), &dev).unwrap();
        let y = Bf16Matrix::new(&w).unwrap().matmul(&x).unwrap();
        assert_eq!(y.dims(), &[m, n]);
        // Reference: the same bf16-rounded inputs, f32 product.
        let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let want = round(&x).matmul(&round(&w)).unwrap();
        let err = (&y - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err <= 1e-5 * scale.max(1.0), "m={m} k={k} n={n}: max err {err} (scale {scale})");
        // And close to the exact f32 product (bf16 keeps 8 bits of mantissa).
        let exact = x.matmul(&w).unwrap();
        let rel = ((&y - &exact).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap()
            / exact.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap())
        .sqrt();
        assert!(rel < 1e-2, "m={m} k={k} n={n}: relative rms error {rel}");
    }

    #[test]
    fn matches_bf16_rounded_product_at_odd_shapes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (9, 64, 32), (17, 33, 65), (70, 576, 96), (8, 130, 40)] {
            check(m, k, n);
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }
}
