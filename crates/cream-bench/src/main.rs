//! `cream-bench`: see the crate docs and bench/README.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use cream_bench::inputs::Inputs;
use cream_bench::measure::{Record, timed};
use cream_bench::workloads::{self, Workload};
use cream_bench::{probe, shapes};

#[derive(Parser)]
#[command(name = "cream-bench", about = "Benchmark workloads, probes and checks for `just bench`")]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Warmup {
    /// A 2-token generation / a short score / a short forward + backward.
    Tiny,
    /// One whole unmeasured run of the workload first (GPU: every kernel shape loaded).
    Full,
}

#[derive(Subcommand)]
enum Cmd {
    /// Save a model (GGUF or HF directory) in Hugging Face layout for the baseline.
    Export {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the workloads' token ids (and DPO reference log-probs) to a JSON file.
    Inputs {
        /// The model whose tokenizer (and reference log-probs) to use.
        #[arg(long, required_unless_present = "random_shape")]
        model: Option<PathBuf>,
        /// GSM8K directory with test.jsonl and train.jsonl.
        #[arg(long, default_value = "../shared/data/gsm8k")]
        gsm8k: PathBuf,
        /// Random token ids for a random model of this shape instead (no model, no GSM8K).
        #[arg(long, conflicts_with = "model")]
        random_shape: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure one workload; prints one JSON line per measured repetition.
    Run {
        #[arg(long, value_enum)]
        workload: Workload,
        /// Generation: prompts in the one batch.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long, required_unless_present = "random_shape")]
        model: Option<PathBuf>,
        /// A randomly initialised model of this shape (see `cream-bench shape --help`).
        #[arg(long, conflicts_with = "model")]
        random_shape: Option<String>,
        /// Measured repetitions in this process.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        #[arg(long, value_enum, default_value = "tiny")]
        warmup: Warmup,
        /// Arithmetic of generation and scoring (the frozen model): exact `f32`, or the opt-in
        /// fast mode `bf16` (README "Fast mode"). Training (the dpo workload) is always f32.
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
        precision: String,
    },
    /// f32 matmul throughput and memory bandwidth; prints one JSON line.
    Probe {
        /// Square matmul size.
        #[arg(long, default_value_t = 2048)]
        n: usize,
        /// Also time (2048 x hidden) @ (hidden x intermediate) of this shape.
        #[arg(long)]
        random_shape: Option<String>,
        /// Buffer size of the bandwidth probe, MiB.
        #[arg(long, default_value_t = 1024)]
        bw_mib: usize,
    },
    /// The judge's scoring of one step: `prompts` generation prompts x `samples` sampled
    /// responses each, scored per prompt with the prompt's prefix shared
    /// (`cream_lm::score_shared_prefix`) and unshared (`cream_lm::score_frozen`), alternating;
    /// prints one JSON line with the medians and the largest per-token log-prob difference.
    Prefix {
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 8)]
        prompts: usize,
        #[arg(long, default_value_t = 4)]
        samples: usize,
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Measured repetitions of each variant.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Print the Hugging Face config.json of a --random-shape (the baseline builds it).
    Shape { name: String },
    /// Check the golden vectors (../shared/golden) on the current device; exits 1 when over
    /// tolerance (per token 2e-4, per sum 1e-3, DPO loss 1e-4, gradients 1e-4 relative).
    Golden {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "../shared/golden")]
        golden: PathBuf,
        /// Skip the DPO loss / gradient check.
        #[arg(long)]
        no_dpo: bool,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_threads(threads: Option<usize>) -> Result<usize> {
    // The same set-up as every stage binary (cream-cli's Common::init).
    cream_lm::configure_threads(threads)?;
    Ok(rayon::current_num_threads())
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let threads = init_threads(cli.threads)?;
    let device = cream_lm::default_device()?;
    let dev_name = cream_bench::device_name(&device);
    match cli.cmd {
        Cmd::Export { model, out } => {
            let lm = cream_lm::load(&model, &candle_core::Device::Cpu)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            cream_lm::save_hf_dir(&lm.model, &lm.tokenizer, &out)?;
            println!("{}", out.display());
        }
        Cmd::Inputs { model, gsm8k, random_shape, out } => {
            let inputs = match (model, random_shape) {
                (_, Some(shape)) => cream_bench::inputs::random(&shapes::named(&shape)?, &shape, 7)?,
                (Some(model), None) => cream_bench::inputs::build(&cream_lm::load(&model, &device)?, &gsm8k)?,
                (None, None) => unreachable!("clap requires --model or --random-shape"),
            };
            inputs.write(&out)?;
            println!("{}", out.display());
        }
        Cmd::Run { workload, batch, new_tokens, inputs, model, random_shape, repeat, warmup, precision } => {
            let precision: cream_lm::Precision = precision.parse()?;
            let inputs = Inputs::read(&inputs)?;
            let (mut model, model_name) = match (model, random_shape) {
                (_, Some(shape)) => (shapes::random_model(shapes::named(&shape)?, &device)?, format!("random:{shape}")),
                (Some(path), None) => (cream_lm::load(&path, &device)?.model, path.display().to_string()),
                (None, None) => unreachable!("clap requires --model or --random-shape"),
            };
            anyhow::ensure!(
                inputs.vocab_size <= model.cfg.vocab_size,
                "the inputs were made for a vocabulary of {} tokens, the model has {}",
                inputs.vocab_size,
                model.cfg.vocab_size
            );
            model.set_precision(precision);
            let model = model;
            let mut opt = match workload {
                Workload::Dpo => Some(workloads::dpo_optimizer(&model, &inputs)?),
                _ => None,
            };
            let once = |opt: &mut Option<_>| match workload {
                Workload::Gen => workloads::run_gen(&model, &inputs, batch, new_tokens),
                Workload::Score => workloads::run_score(&model, &inputs),
                Workload::Dpo => workloads::run_dpo(&model, &inputs, opt.as_mut().expect("optimizer")),
            };
            match warmup {
                Warmup::Tiny => workloads::warm_up(&model, &inputs, workload)?,
                Warmup::Full => {
                    once(&mut opt)?;
                }
            }
            let batch = match workload {
                Workload::Gen => batch,
                Workload::Score => inputs.score.len(),
                Workload::Dpo => inputs.dpo.pairs.len(),
            };
            for rep in 0..repeat {
                let (work, t) = timed(|| once(&mut opt))?;
                let mut r = Record::new(workload.as_str(), batch, work.tokens, t, threads, &dev_name, &model_name);
                r.steps = work.steps;
                r.prompt_tokens = work.prompt_tokens;
                r.rep = rep;
                r.precision = precision.to_string();
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Cmd::Probe { n, random_shape, bw_mib } => {
            let shape = match random_shape {
                Some(s) => {
                    let c = shapes::named(&s)?;
                    Some([2048, c.hidden_size, c.intermediate_size])
                }
                None => None,
            };
            let p = probe::run(&device, &dev_name, threads, n, shape, bw_mib << 20)?;
            println!("{}", serde_json::to_string(&p)?);
        }
        Cmd::Prefix { inputs, model, prompts, samples, new_tokens, repeat } => {
            let inputs = Inputs::read(&inputs)?;
            let model = cream_lm::load(&model, &device)?.model;
            let r = workloads::judge_prefix(&model, &inputs, prompts, samples, new_tokens, repeat)?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Shape { name } => {
            println!("{}", serde_json::to_string_pretty(&shapes::named(&name)?.to_hf_json())?);
        }
        Cmd::Golden { model, golden, no_dpo } => {
            use cream_lm::golden as g;
            let lm = cream_lm::load(&model, &device)?;
            let cases = g::logprob_cases(&g::read(&golden.join("smollm2_logprobs.json"))?)?;
            let lp = g::check_logprobs(&lm, &cases, cream_lm::ScoreOptions::default())?;
            let mut ok = lp.passes();
            let dpo = if no_dpo { vec![] } else { g::check_dpo(&lm, &g::read(&golden.join("smollm2_dpo.json"))?)? };
            ok &= dpo.iter().all(|c| c.passes());
            eprintln!(
                "golden on {dev_name}: {} cases, token ids {}, max |token logprob diff| {:.3e} (tol {:.0e}), \
                 max |sum diff| {:.3e} (tol {:.0e})",
                lp.cases,
                if lp.tokens_equal { "equal".to_string() } else { format!("DIFFER for {:?}", lp.token_mismatches) },
                lp.max_token_diff,
                g::TOKEN_LOGPROB_TOL,
                lp.max_sum_diff,
                g::SUM_LOGPROB_TOL
            );
            for c in &dpo {
                eprintln!(
                    "dpo golden groups {:?}: loss {:.6} vs {:.6} (diff {:.2e}), max relative grad diff {:.2e}",
                    c.groups, c.loss, c.golden_loss, c.loss_diff, c.max_rel_grad_diff
                );
            }
            let line = serde_json::json!({"impl": "cream", "golden": true, "device": dev_name, "pass": ok,
                                          "logprobs": lp, "dpo": dpo});
            println!("{line}");
            eprintln!("golden: {}", if ok { "PASS" } else { "FAIL" });
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
    }
    Ok(ExitCode::SUCCESS)
}
