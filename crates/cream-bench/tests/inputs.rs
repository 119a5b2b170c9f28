//! The inputs builder picks what the benchmark promises (GSM8K with the default model's
//! tokenizer), and every workload runs end to end on a tiny random model.

use std::path::PathBuf;

use candle_core::Device;
use cream_bench::inputs::{self, DPO_LEN, DPO_PAIRS, GEN_PROMPTS, SCORE_LEN, SCORE_SEQS};
use cream_bench::{shapes, workloads};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models (and GSM8K in ../shared/data/gsm8k)"]
fn gsm8k_selection_fits_the_promised_lengths() {
    let root = repo_root();
    let model = root.join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "{} is missing: run `just setup` first", model.display());
    let lm = cream_lm::load(&model, &Device::Cpu).unwrap();
    let sel = inputs::select(&lm.tokenizer, &root.join("../shared/data/gsm8k")).unwrap();
    assert_eq!(sel.prompts.len(), GEN_PROMPTS);
    for p in &sel.prompts {
        // Rendered with the generation header.
        let text = lm.tokenizer.decode(&p[p.len() - 4..]).unwrap();
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    }
    assert_eq!(sel.score.len(), SCORE_SEQS);
    for s in &sel.score {
        assert!((SCORE_LEN.0..=SCORE_LEN.1).contains(&s.ids.len()), "score length {}", s.ids.len());
        assert!(s.score_start > 0 && s.score_start < s.ids.len());
    }
    assert_eq!(sel.dpo.len(), DPO_PAIRS);
    for (c, r) in &sel.dpo {
        for side in [c, r] {
            assert!((DPO_LEN.0..=DPO_LEN.1).contains(&side.ids.len()), "dpo length {}", side.ids.len());
        }
        // Same question: the same prompt prefix, different responses.
        assert_eq!(c.score_start, r.score_start);
        assert_eq!(c.ids[..c.score_start], r.ids[..r.score_start]);
        assert_ne!(c.ids, r.ids);
    }
    // Deterministic.
    assert_eq!(sel, inputs::select(&lm.tokenizer, &root.join("../shared/data/gsm8k")).unwrap());
}

#[test]
fn every_workload_runs_on_a_tiny_random_model() {
    let cfg = shapes::named("tiny").unwrap();
    let model = shapes::random_model(cfg.clone(), &Device::Cpu).unwrap();
    let inp = inputs::random(&cfg, "tiny", 3).unwrap();
    assert!(inp.score.iter().all(|s| (SCORE_LEN.0..=SCORE_LEN.1).contains(&s.ids.len())));
    assert!(inp.generation.prompts.iter().flatten().all(|&t| (t as usize) < cfg.vocab_size && t != 2));
    // The JSON file round-trips.
    let dir = std::env::temp_dir().join(format!("cream-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    inp.write(&dir.join("inputs.json")).unwrap();
    assert_eq!(inputs::Inputs::read(&dir.join("inputs.json")).unwrap(), inp);
    std::fs::remove_dir_all(&dir).unwrap();

    let g = workloads::run_gen(&model, &inp, 3, 4).unwrap();
    assert!(g.tokens >= 3 && g.tokens <= 12 && g.steps <= 4, "{g:?}");
    let score = workloads::run_score(&model, &inp).unwrap();
    assert_eq!(score.tokens, inp.score.iter().map(|s| s.ids.len()).sum::<usize>());
    let before: Vec<f32> = model.named_vars()[1].1.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let mut opt = workloads::dpo_optimizer(&model, &inp).unwrap();
    for w in [workloads::Workload::Gen, workloads::Workload::Score, workloads::Workload::Dpo] {
        workloads::warm_up(&model, &inp, w).unwrap();
    }
    let dpo = workloads::run_dpo(&model, &inp, &mut opt).unwrap();
    assert_eq!(dpo.tokens, inp.dpo.pairs.iter().map(|p| p.chosen.ids.len() + p.rejected.ids.len()).sum::<usize>());
    let after: Vec<f32> = model.named_vars()[1].1.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    assert_ne!(before, after, "the DPO step updated the weights");
}

#[test]
fn shapes_parse() {
    let c = shapes::named("llama3-8b-2l").unwrap();
    assert_eq!((c.num_layers, c.hidden_size, c.num_kv_heads, c.vocab_size), (2, 4096, 8, 128256));
    assert!(!c.tie_word_embeddings);
    // ~1.5B parameters: 2 x 525M embedding/head + 2 x 218M layers.
    assert!((c.n_params() as f64 / 1e9 - 1.49).abs() < 0.01, "{}", c.n_params());
    assert!(shapes::named("llama3-8b-0l").is_err());
    assert!(shapes::named("gpt9").is_err());
}

/// bench/run.py's pure parts (medians, ratios, FLOP counts), with the system python3.
#[test]
fn run_py_unit_tests() {
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "-q", "bench/test_run.py"])
        .current_dir(repo_root())
        .output()
        .expect("python3 is needed for bench/test_run.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
