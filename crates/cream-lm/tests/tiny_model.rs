//! Properties of the decoder on a seeded random tiny llama (no files needed).

use candle_core::{Device, Tensor, Var};
use cream_lm::model::{Attention, attention_mask};
use cream_lm::rng::SplitMix64;
use cream_lm::{Conversation, Mode, Model, ModelConfig, SamplingParams, ScoreOptions, TokenBatch};

fn tiny() -> Model {
    Model::random(ModelConfig::tiny(64), 7, &Device::Cpu).unwrap()
}

fn convs() -> Vec<Conversation> {
    vec![
        Conversation { ids: vec![3, 17, 5, 9, 22, 41, 1], score_start: 3 },
        Conversation { ids: vec![8, 2, 60, 1], score_start: 1 },
        Conversation { ids: vec![4, 4, 4, 4, 4, 33, 12, 19, 7, 1, 2], score_start: 6 },
    ]
}

fn loss(model: &Model, batch: &TokenBatch) -> Tensor {
    // A weighted sum so every sequence matters differently.
    let s = cream_lm::sequence_logprob_sums(model, batch, Mode::Train).unwrap();
    let w = Tensor::new(&[1.0f32, -0.5, 0.25], &Device::Cpu).unwrap();
    (s * w).unwrap().sum_all().unwrap()
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let m = tiny();
    let c = convs();
    let batch = TokenBatch::new(&m, &c.iter().collect::<Vec<_>>()).unwrap();
    let grads = loss(&m, &batch).backward().unwrap();
    for (name, var) in m.named_vars() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(n > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let m = tiny();
    let c = convs();
    let batch = TokenBatch::new(&m, &c.iter().collect::<Vec<_>>()).unwrap();
    let grads = loss(&m, &batch).backward().unwrap();
    let f = |m: &Model| -> f64 { loss(m, &batch).to_scalar::<f32>().unwrap() as f64 };
    let mut rng = SplitMix64::new(3);
    let mut checked = 0;
    for (name, var) in m.named_vars() {
        let g: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // Probe the largest-gradient entry and a random one of every tensor.
        let big = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        for idx in [big, (rng.next_u64() % g.len() as u64) as usize] {
            let eps = 1e-2f32;
            let mut plus = base.clone();
            plus[idx] += eps;
            set(var, &plus);
            let fp = f(&m);
            let mut minus = base.clone();
            minus[idx] -= eps;
            set(var, &minus);
            let fm = f(&m);
            set(var, &base);
            let numeric = (fp - fm) / (2.0 * eps as f64);
            let analytic = g[idx] as f64;
            let tol = 2e-3 + 2e-2 * analytic.abs().max(numeric.abs());
            assert!((numeric - analytic).abs() < tol, "{name}[{idx}]: numeric {numeric} vs analytic {analytic}");
            checked += 1;
        }
    }
    assert!(checked >= 2 * m.named_vars().len());
}

fn set(var: &Var, data: &[f32]) {
    let t = Tensor::from_slice(data, var.as_tensor().shape(), &Device::Cpu).unwrap();
    var.set(&t).unwrap();
}

#[test]
fn train_and_infer_modes_agree() {
    let m = tiny();
    let c = convs();
    let batch = TokenBatch::new(&m, &c.iter().collect::<Vec<_>>()).unwrap();
    let a: Vec<f32> = cream_lm::sequence_logprob_sums(&m, &batch, Mode::Train).unwrap().to_vec1().unwrap();
    let b = cream_lm::score(&m, &c, ScoreOptions::default()).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((*x as f64 - y.sum).abs() < 1e-5, "{x} vs {}", y.sum);
    }
}

#[test]
fn kv_cache_decoding_matches_full_forward_with_left_padding() {
    let m = tiny();
    let dev = Device::Cpu;
    let seq: Vec<u32> = vec![5, 9, 13, 2, 40, 41, 7, 8];
    // Full forward of the whole sequence, no padding.
    let full = m
        .forward_hidden(
            &Tensor::new(seq.as_slice(), &dev).unwrap().unsqueeze(0).unwrap(),
            &Tensor::arange(0u32, seq.len() as u32, &dev).unwrap(),
            &Attention::Masked(attention_mask(&[0], 0, seq.len(), &dev).unwrap()),
            None,
            Mode::Infer,
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    // Prefill 5 tokens behind 3 pad slots, then decode the rest one token at a time.
    let pad = 3;
    let prefill = 5;
    let mut ids = vec![0u32; pad];
    ids.extend(&seq[..prefill]);
    let mut pos = vec![0u32; pad];
    pos.extend(0..prefill as u32);
    let mut cache = m.new_cache(pad + seq.len());
    let n = ids.len();
    let h = m
        .forward_hidden(
            &Tensor::from_vec(ids, (1, n), &dev).unwrap(),
            &Tensor::from_vec(pos, (1, n), &dev).unwrap(),
            &Attention::Masked(attention_mask(&[pad], 0, n, &dev).unwrap()),
            Some(&mut cache),
            Mode::Infer,
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mut rows = vec![h.narrow(0, pad, prefill).unwrap()];
    for (step, &tok) in seq[prefill..].iter().enumerate() {
        let past = n + step;
        let h = m
            .forward_hidden(
                &Tensor::new(&[[tok]], &dev).unwrap(),
                &Tensor::new(&[[(prefill + step) as u32]], &dev).unwrap(),
                &Attention::Masked(attention_mask(&[pad], past, 1, &dev).unwrap()),
                Some(&mut cache),
                Mode::Infer,
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        rows.push(h);
    }
    let inc = Tensor::cat(&rows, 0).unwrap();
    let diff: f32 = (inc - &full).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(diff < 1e-5, "cached decode differs from the full forward by {diff}");
}

#[test]
fn greedy_sampling_takes_the_first_maximum_and_top_p_keeps_the_nucleus() {
    let mut rng = SplitMix64::new(1);
    let logits = [0.0f32, 2.0, 2.0, -1.0];
    assert_eq!(cream_lm::sample_token(&logits, &SamplingParams::greedy(1), &mut rng), 1);
    // top_p tiny: only the single most likely token (ties broken by id) can be drawn.
    let p = SamplingParams { temperature: 1.0, top_p: 1e-6, max_new_tokens: 1 };
    for _ in 0..100 {
        assert_eq!(cream_lm::sample_token(&logits, &p, &mut rng), 1);
    }
    // top_p 1: frequencies follow softmax(logits / T).
    let logits = [0.0f32, 1.0, 2.0];
    let p = SamplingParams { temperature: 0.5, top_p: 1.0, max_new_tokens: 1 };
    let mut counts = [0usize; 3];
    let n = 20000;
    for _ in 0..n {
        counts[cream_lm::sample_token(&logits, &p, &mut rng) as usize] += 1;
    }
    let z: f64 = [0.0f64, 2.0, 4.0].iter().map(|x| x.exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let want = (2.0 * i as f64).exp() / z;
        let got = c as f64 / n as f64;
        assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
    }
    // top_p 0.9 on these logits excludes token 0 (p=0.016): 0.867 < 0.9 needs token 1 too.
    let p = SamplingParams { temperature: 0.5, top_p: 0.9, max_new_tokens: 1 };
    for _ in 0..2000 {
        assert_ne!(cream_lm::sample_token(&logits, &p, &mut rng), 0);
    }
}

#[test]
fn sample_seeds_depend_on_every_input() {
    use cream_lm::rng::sample_seed;
    let s = sample_seed(1, "p", 0);
    assert_eq!(s, sample_seed(1, "p", 0));
    assert_ne!(s, sample_seed(2, "p", 0));
    assert_ne!(s, sample_seed(1, "q", 0));
    assert_ne!(s, sample_seed(1, "p", 1));
}

#[test]
fn qwen2_shape_with_biases_and_untied_head_trains_every_parameter() {
    let cfg = ModelConfig {
        arch: cream_lm::Arch::Qwen2,
        attention_bias: true,
        tie_word_embeddings: false,
        ..ModelConfig::tiny(64)
    };
    let m = Model::random(cfg, 11, &Device::Cpu).unwrap();
    assert!(m.named_vars().iter().any(|(n, _)| n.ends_with("q_proj.bias")));
    assert!(m.named_vars().iter().any(|(n, _)| n == "lm_head.weight"));
    let c = convs();
    let batch = TokenBatch::new(&m, &c.iter().collect::<Vec<_>>()).unwrap();
    let grads = loss(&m, &batch).backward().unwrap();
    for (name, var) in m.named_vars() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(n > 0.0, "{name}: zero gradient");
    }
    // Fused (inference) and differentiable (training) paths agree with biases too.
    let a: Vec<f32> = cream_lm::sequence_logprob_sums(&m, &batch, Mode::Train).unwrap().to_vec1().unwrap();
    let b = cream_lm::score(&m, &c, ScoreOptions::default()).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((*x as f64 - y.sum).abs() < 1e-5);
    }
}

#[test]
fn fused_training_kernels_match_the_op_by_op_graph() {
    // The same model with cream's fused CPU kernels on (the default) and off (the candle graph
    // CUDA runs): sequence log-prob sums and every parameter's gradient agree.
    let mut m = tiny();
    let c = convs();
    let batch = TokenBatch::new(&m, &c.iter().collect::<Vec<_>>()).unwrap();
    let run = |m: &Model| {
        let s = cream_lm::sequence_logprob_sums(m, &batch, Mode::Train).unwrap();
        let w = Tensor::new(&[1.0f32, -0.5, 0.25], &Device::Cpu).unwrap();
        let grads = (&s * w).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f32>> = m
            .named_vars()
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (s.to_vec1::<f32>().unwrap(), g)
    };
    let (s_fused, g_fused) = run(&m);
    m.set_fused_kernels(false);
    let (s_graph, g_graph) = run(&m);
    for (a, b) in s_fused.iter().zip(&s_graph) {
        assert!((a - b).abs() < 1e-4, "log-prob sum {a} vs {b}");
    }
    for ((name, _), (a, b)) in m.named_vars().iter().zip(g_fused.iter().zip(&g_graph)) {
        let scale = b.iter().fold(0f32, |s, x| s.max(x.abs()));
        let diff = a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
        assert!(scale > 0.0 && diff <= 1e-4 * scale, "{name}: gradients differ by {diff} (scale {scale})");
    }
}

#[test]
fn shared_prefix_scoring_matches_unshared_scoring() {
    let m = tiny();
    let frozen = m.frozen().unwrap();
    // Three "samples" of one 5-token prompt, of different lengths, and one whose boundary
    // (score_start 3) caps the shared prefix at 2 tokens.
    let prompt = [3u32, 17, 5, 9, 22];
    let sample = |resp: &[u32], score_start: usize| {
        let mut ids = prompt.to_vec();
        ids.extend(resp);
        Conversation { ids, score_start }
    };
    let group = vec![sample(&[41, 1], 5), sample(&[8, 2, 60, 12, 19, 1], 5), sample(&[30], 5), sample(&[7, 7], 3)];
    assert_eq!(cream_lm::prefix::shared_prefix_len(&group), 2);
    assert_eq!(cream_lm::prefix::shared_prefix_len(&group[..3]), 4);
    for convs in [&group[..], &group[..3], &group[1..2]] {
        for opts in [ScoreOptions::default(), ScoreOptions { max_batch_tokens: 3, vocab_chunk_rows: 2 }] {
            let shared = cream_lm::score_shared_prefix(&frozen, convs, opts).unwrap();
            let unshared = cream_lm::score(&m, convs, opts).unwrap();
            for (a, b) in shared.iter().zip(&unshared) {
                assert_eq!(a.token_logprobs.len(), b.token_logprobs.len());
                for (x, y) in a.token_logprobs.iter().zip(&b.token_logprobs) {
                    assert!((x - y).abs() < 1e-5, "shared {x} vs unshared {y}");
                }
            }
        }
    }
    // No shared prefix at all: the plain path.
    let c = convs();
    let a = cream_lm::score_shared_prefix(&frozen, &c, ScoreOptions::default()).unwrap();
    assert_eq!(a, cream_lm::score(&m, &c, ScoreOptions::default()).unwrap());
}
