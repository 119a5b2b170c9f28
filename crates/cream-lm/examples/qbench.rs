// Matmul timings at the model's shapes: f32 (candle/gemm) vs cream's packed bf16.
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{name:12} {:8.2} ms {:7.1} GFLOP/s", best * 1e3, flops / best / 1e9);
}

fn main() -> anyhow::Result<()> {
    let threads: usize = std::env::var("T").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    cream_lm::configure_threads(Some(threads))?;
    let dev = Device::Cpu;
    for &(m, k, n) in &[(2048, 576, 960), (2048, 576, 3072), (2048, 1536, 576), (256, 576, 49152), (16, 576, 3072), (16, 576, 49152)] {
        println!("-- m={m} k={k} n={n}");
        let flops = 2.0 * (m * k * n) as f64;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let wt = Tensor::randn(0f32, 0.05, (k, n), &dev)?;
        time("f32", flops, || { x.matmul(&wt).unwrap(); });
        let b = cream_lm::bf16::Bf16Matrix::new(&wt)?;
        time("bf16", flops, || { b.matmul(&x).unwrap(); });
    }
    Ok(())
}
