//! Developer profiling loop (not the benchmark: see `just bench`). Times generation, scoring and
//! one DPO step on the default model with process CPU time beside wall time.
//! `cargo run --release -p cream-lm --example perf -- <gguf> [gen|score|dpo]...`

use std::time::Instant;

use candle_core::Device;
use cream_lm::train::{AdamW, DpoBatch, GradAccumulator, OptimConfig, dpo_loss};
use cream_lm::{GenRequest, SamplingParams, ScoreOptions, TokenBatch};

fn cpu_s() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn timed<T>(name: &str, tokens: impl Fn(&T) -> usize, f: impl FnOnce() -> T) -> T {
    let (w, c) = (Instant::now(), cpu_s());
    let out = f();
    let (w, c) = (w.elapsed().as_secs_f64(), cpu_s() - c);
    let n = tokens(&out);
    eprintln!("{name}: {n} tok in {w:.2}s wall, {c:.2} CPU-s: {:.1} tok/s, {:.1} tok/CPU-s (cpu/wall {:.2})", n as f64 / w, n as f64 / c, c / w);
    out
}

fn main() -> anyhow::Result<()> {
    cream_lm::configure_threads(None)?;
    let args: Vec<String> = std::env::args().collect();
    let lm = cream_lm::load(std::path::Path::new(&args[1]), &Device::Cpu)?;
    let text = std::fs::read_to_string("../shared/data/gsm8k/test.jsonl")?;
    let qs: Vec<(String, String)> = text
        .lines()
        .take(200)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["question"].as_str().unwrap().to_string(), v["answer"].as_str().unwrap().to_string())
        })
        .collect();
    for what in &args[2..] {
        let (kind, n) = what.split_once(':').unwrap_or((what.as_str(), "16"));
        let n: usize = n.parse()?;
        match kind {
            "gen" => {
                let reqs: Vec<GenRequest> = qs[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, (q, _))| GenRequest { prompt_ids: lm.tokenizer.encode_prompt(q).unwrap(), seed: i as u64 })
                    .collect();
                let p = SamplingParams { temperature: 0.8, top_p: 0.95, max_new_tokens: 64 };
                timed(&format!("gen b{n}"), |o: &Vec<cream_lm::GenOutput>| o.iter().map(|x| x.tokens.len()).sum(), || {
                    cream_lm::generate(&lm.model, lm.tokenizer.stop_ids(), &reqs, &p, n, &mut |_| {}).unwrap()
                });
            }
            "score" => {
                let convs: Vec<_> = qs[..n].iter().map(|(q, a)| lm.tokenizer.encode_conversation(q, a).unwrap()).collect();
                let toks: usize = convs.iter().map(|c| c.ids.len()).sum();
                timed(&format!("score {n}"), |_| toks, || cream_lm::score(&lm.model, &convs, ScoreOptions::default()).unwrap());
            }
            "dpo" => {
                let convs: Vec<_> = qs[..2 * n]
                    .chunks(2)
                    .flat_map(|p| {
                        vec![lm.tokenizer.encode_conversation(&p[0].0, &p[0].1).unwrap(), lm.tokenizer.encode_conversation(&p[0].0, &p[1].1).unwrap()]
                    })
                    .collect();
                let toks: usize = convs.iter().map(|c| c.ids.len()).sum();
                let ch: Vec<_> = convs.iter().step_by(2).collect();
                let rj: Vec<_> = convs.iter().skip(1).step_by(2).collect();
                let cb = TokenBatch::new(&lm.model, &ch)?;
                let rb = TokenBatch::new(&lm.model, &rj)?;
                let refc = vec![-50.0; n];
                let refr = vec![-60.0; n];
                let c = vec![0.8; n];
                let mut opt = AdamW::new(&lm.model, OptimConfig::default())?;
                let mut acc = GradAccumulator::new(&lm.model);
                for rep in 0..2 {
                    timed(&format!("dpo step {n} pairs (rep {rep})"), |_| toks, || {
                        let t = Instant::now();
                        let c0 = cpu_s();
                        let lap = |what: &str, t: &Instant, c0: f64| eprintln!("  {what}: {:.2}s wall {:.2} CPU-s", t.elapsed().as_secs_f64(), cpu_s() - c0);
                        let out = dpo_loss(&lm.model, &DpoBatch { chosen: &cb, rejected: &rb, ref_chosen: &refc, ref_rejected: &refr, c: &c }, 0.1).unwrap();
                        lap("forward", &t, c0);
                        acc.backward(&out.loss, &lm.model).unwrap();
                        lap("+backward", &t, c0);
                        let (g, _) = acc.take_clipped(1.0).unwrap();
                        lap("+clip", &t, c0);
                        opt.step(&g, 1e-6).unwrap();
                        lap("+adamw", &t, c0);
                    });
                }
            }
            "mm" => {
                use candle_core::{DType, Tensor};
                for (m, k, nn) in [(n, 576, 1536), (n, 1536, 576), (n, 576, 576), (n, 576, 49152), (2048, 2048, 2048)] {
                    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
                    let w = Tensor::randn(0f32, 1.0, (nn, k), &Device::Cpu)?;
                    let wt = w.t()?.contiguous()?;
                    let _ = x.to_dtype(DType::F32)?;
                    for (label, rhs) in [("w.t()", w.t()?), ("wt contiguous", wt.clone())] {
                        let reps = 5;
                        let (t0, c0) = (Instant::now(), cpu_s());
                        for _ in 0..reps {
                            let _y = x.matmul(&rhs)?;
                        }
                        let (w_, c_) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
                        let fl = 2.0 * (m * k * nn * reps) as f64;
                        eprintln!("mm {m}x{k}x{nn} {label}: {:.1} GFLOP/s wall, {:.1} GFLOP/CPU-s", fl / w_ / 1e9, fl / c_ / 1e9);
                    }
                }
            }
            "qmm" => {
                use candle_core::Tensor;
                use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
                use candle_core::Module;
                for (m, k, nn) in [(n, 576, 1536), (n, 1536, 576), (n, 576, 49152)] {
                    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
                    let w = Tensor::randn(0f32, 1.0, (nn, k), &Device::Cpu)?;
                    let wt = w.t()?.contiguous()?;
                    for dt in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
                        let q = QMatMul::from_qtensor(QTensor::quantize(&w, dt)?)?;
                        let reps = 5;
                        let (t0, c0) = (Instant::now(), cpu_s());
                        for _ in 0..reps {
                            let _y = q.forward(&x)?;
                        }
                        let (w_, c_) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
                        let fl = 2.0 * (m * k * nn * reps) as f64;
                        let err = (q.forward(&x)? - x.matmul(&wt)?)?.abs()?.mean_all()?.to_scalar::<f32>()?;
                        eprintln!("qmm {dt:?} {m}x{k}x{nn}: {:.1} GFLOP/s wall, {:.1} GFLOP/CPU-s, mean abs err {err:.4}", fl / w_ / 1e9, fl / c_ / 1e9);
                    }
                }
            }
            _ => anyhow::bail!("unknown {kind}"),
        }
    }
    Ok(())
}
