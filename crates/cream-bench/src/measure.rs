//! Wall clock and process CPU time (getrusage) around a measured region, and the one JSON line
//! per measurement that bench/run.py parses.

use std::time::Instant;

use serde::Serialize;

/// Process CPU time (user + system, all threads) and peak resident set so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_s: f64,
    pub max_rss_mb: f64,
}

pub fn usage() -> Usage {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    // Linux reports ru_maxrss in KiB.
    Usage { cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime), max_rss_mb: ru.ru_maxrss as f64 / 1024.0 }
}

/// Wall and CPU time of one measured region.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub wall_s: f64,
    pub cpu_s: f64,
}

/// Time `f` (wall clock and process CPU time).
pub fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Timing)> {
    let u0 = usage();
    let t0 = Instant::now();
    let out = f()?;
    let wall_s = t0.elapsed().as_secs_f64();
    let u1 = usage();
    Ok((out, Timing { wall_s, cpu_s: u1.cpu_s - u0.cpu_s }))
}

/// One measurement, printed as one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub workload: String,
    pub batch: usize,
    /// Tokens of the work: generated tokens (up to and including EOS), scored sequences' tokens,
    /// or the DPO step's 8 sequences' tokens.
    pub tokens: usize,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub cpu_per_wall: f64,
    pub tok_per_s: f64,
    pub tok_per_cpu_s: f64,
    /// Peak RSS of the whole process so far (model, inputs and the work).
    pub peak_rss_mb: f64,
    pub threads: usize,
    pub device: String,
    /// `model` (the loaded file) or `random:<shape>`.
    pub model: String,
    /// Generation: decoding steps (the longest row); others: forward passes.
    pub steps: usize,
    /// Prompt tokens of the generation batch (prefill work), 0 for other workloads.
    pub prompt_tokens: usize,
    /// Which repetition inside this process (0 = the first measured run).
    pub rep: usize,
    /// Arithmetic of the frozen model's matrix products (`f32`, or the fast mode `bf16`).
    pub precision: String,
}

impl Record {
    #[allow(clippy::too_many_arguments)]
    pub fn new(workload: &str, batch: usize, tokens: usize, t: Timing, threads: usize, device: &str, model: &str) -> Self {
        Record {
            implementation: "cream".into(),
            workload: workload.into(),
            batch,
            tokens,
            wall_s: t.wall_s,
            cpu_s: t.cpu_s,
            cpu_per_wall: t.cpu_s / t.wall_s,
            tok_per_s: tokens as f64 / t.wall_s,
            tok_per_cpu_s: tokens as f64 / t.cpu_s.max(1e-9),
            peak_rss_mb: usage().max_rss_mb,
            threads,
            device: device.into(),
            model: model.into(),
            steps: 0,
            prompt_tokens: 0,
            rep: 0,
            precision: "f32".into(),
        }
    }
}
