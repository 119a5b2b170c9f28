//! Hardware probes for the "% of limit" columns: f32 matmul throughput through candle and memory
//! bandwidth.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub probe: bool,
    /// Square f32 matmul of this size, best of `reps`.
    pub matmul_n: usize,
    pub matmul_gflops: f64,
    /// The matmul of the model shape (tokens x hidden) @ (hidden x intermediate), when asked.
    pub shape_matmul: Option<[usize; 3]>,
    pub shape_matmul_gflops: Option<f64>,
    /// Memory bandwidth: bytes moved per second, best of `reps` (CPU: summing a buffer with all
    /// threads, bytes read; GPU: a device-to-device copy, bytes read + written).
    pub bw_gbs: f64,
    pub bw_method: String,
    pub bw_bytes: usize,
    pub threads: usize,
    pub device: String,
}

/// Best-of-`reps` seconds of `m x k @ k x n` on `device`.
pub fn matmul_secs(device: &Device, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), device)?;
    a.matmul(&b)?;
    device.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(best)
}

/// Best-of-`reps` bandwidth in GB/s over a buffer of `bytes`.
pub fn bandwidth_gbs(device: &Device, bytes: usize, reps: usize) -> Result<(f64, &'static str)> {
    let n = bytes / 4;
    if device.is_cpu() {
        // First touch in parallel, so pages spread like the threads that read them.
        let mut buf = vec![0f32; n];
        buf.par_chunks_mut(1 << 16).enumerate().for_each(|(i, c)| c.fill(i as f32 * 1e-9));
        let mut best = f64::INFINITY;
        let mut sink = 0f32;
        for _ in 0..reps {
            let t = Instant::now();
            sink += buf.par_chunks(1 << 16).map(lane_sum).sum::<f32>();
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(sink);
        return Ok((bytes as f64 / best / 1e9, "sum (read)"));
    }
    let t0 = Tensor::zeros(n, candle_core::DType::F32, device)?;
    t0.copy()?;
    device.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let c = t0.copy()?;
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(c);
    }
    Ok((2.0 * bytes as f64 / best / 1e9, "copy (read + write)"))
}

/// Sum with 16 independent accumulators, so the loop vectorises (a plain float sum is one
/// dependency chain and measures the adder's latency, not memory).
fn lane_sum(c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = c.chunks_exact(16);
    for x in &mut it {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

pub fn run(device: &Device, device_name: &str, threads: usize, n: usize, shape: Option<[usize; 3]>, bw_bytes: usize) -> Result<Probe> {
    let reps = 5;
    let secs = matmul_secs(device, n, n, n, reps)?;
    let shape_gflops = match shape {
        Some([m, k, nn]) => Some(2.0 * (m * k * nn) as f64 / matmul_secs(device, m, k, nn, reps)? / 1e9),
        None => None,
    };
    let (bw, method) = bandwidth_gbs(device, bw_bytes, 3)?;
    Ok(Probe {
        implementation: "cream".into(),
        probe: true,
        matmul_n: n,
        matmul_gflops: 2.0 * (n * n * n) as f64 / secs / 1e9,
        shape_matmul: shape,
        shape_matmul_gflops: shape_gflops,
        bw_gbs: bw,
        bw_method: method.into(),
        bw_bytes,
        threads,
        device: device_name.into(),
    })
}
