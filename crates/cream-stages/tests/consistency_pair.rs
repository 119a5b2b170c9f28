//! The consistency, pair and report stages on synthetic judge/generate/train/eval artifacts in a
//! temporary store (no model, no Python).


use cream_algo::{CMode, Method};
use cream_core::{
    Artifact, ArtifactSpec, ConsistencyRow, MetricRow, PairRow, ProduceOutput, ReportRow, ReportTaskRow, RewardRow,
    SampleRow, read_table, write_table,
};
use cream_stages::config::Pipeline;
use cream_stages::ctx::Ctx;
use cream_stages::report::{self, IterationRecord};
use cream_stages::{consistency, pair};
use serde_json::{Value, json};

const PIPELINE: &str = r#"
name = "test"
iterations = 2

[model]
base = "data/none.gguf"

[data]
gsm8k_train = "data/gsm8k_train.jsonl"
gsm8k_test = "data/gsm8k_test.jsonl"
socialiqa = "data/socialiqa.jsonl"
sft_examples = 4

[sft]
lr = 1e-5
epochs = 1
global_batch = 2

[generate]
n = 5
temperature = 0.8
top_p = 0.95
max_new_tokens = 32
max_prompt_tokens = 64

[consistency]
method = "kendall"

[pair]
c_mode = "avg"
min_tokens = 5
max_tokens = 40

[train]
lr = 1e-6
epochs = 1
global_batch = 2

[eval]
max_new_tokens = 32
"#;

fn pipeline() -> Pipeline {
    let p: Pipeline = toml::from_str(PIPELINE).unwrap();
    p.validate().unwrap();
    p
}

fn store() -> (tempfile::TempDir, Ctx) {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Ctx::new(tmp.path(), true).unwrap();
    (tmp, ctx)
}

fn path(a: &Artifact) -> String {
    a.dir.to_string_lossy().into_owned()
}

/// A small deterministic generator (no dependency on `rand`).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// A reward from a small set of values, so that ties happen.
    fn reward(&mut self) -> f64 {
        (self.next() % 7) as f64 * 0.5 - 1.5
    }
}

/// One sample; its conversation has `prompt_tokens + response_tokens` token ids.
fn sample(prompt_id: &str, k: u32, response_tokens: u32) -> SampleRow {
    let prompt_tokens = 4;
    SampleRow {
        prompt_id: prompt_id.into(),
        sample_idx: k,
        prompt: format!("question {prompt_id}"),
        response: format!("answer {prompt_id}/{k}"),
        token_ids: (0..prompt_tokens + response_tokens).collect(),
        prompt_tokens,
        response_tokens,
        finish_reason: "stop".into(),
        seed: u64::from(k),
    }
}

/// A `generate` artifact holding `rows` (written in the given order).
fn samples_artifact(ctx: &Ctx, tag: &str, rows: &[SampleRow]) -> Artifact {
    let spec = ArtifactSpec { stage: "generate".into(), schema_version: 1, params: json!({"test": tag}), inputs: vec![] };
    ctx.produce(spec, |dir| {
        let n = write_table(&dir.join("samples.parquet"), rows)?;
        Ok(ProduceOutput::default().with_rows("samples.parquet", n))
    })
    .unwrap()
}

/// A `judge` artifact of `samples` with the given (prompt, sample, reward) rows.
fn rewards_artifact(ctx: &Ctx, samples: &Artifact, tag: &str, rewards: &[(String, u32, f64)]) -> Artifact {
    let spec = ArtifactSpec {
        stage: "judge".into(),
        schema_version: 1,
        params: json!({"test": tag}),
        inputs: vec![samples.as_input("samples")],
    };
    let rows: Vec<RewardRow> = rewards
        .iter()
        .map(|(p, k, r)| RewardRow {
            prompt_id: p.clone(),
            sample_idx: *k,
            mode: "dpo".into(),
            s_policy: *r,
            s_ref: Some(0.0),
            n_scored: 3,
            reward: *r,
        })
        .collect();
    ctx.produce(spec, |dir| {
        let n = write_table(&dir.join("rewards.parquet"), &rows)?;
        Ok(ProduceOutput::default().with_rows("rewards.parquet", n))
    })
    .unwrap()
}

/// Prompt ids deliberately not in sorted order, written in a scrambled row order.
const PROMPTS: [&str; 8] = ["p7", "p2", "p5", "p0", "p3", "p6", "p1", "p4"];
const N: u32 = 5;

/// Random rewards for every (prompt, sample), in a scrambled order that differs per `seed`.
fn random_rewards(seed: u64) -> Vec<(String, u32, f64)> {
    let mut g = Lcg(seed);
    let mut rows: Vec<(String, u32, f64)> =
        PROMPTS.iter().flat_map(|p| (0..N).map(move |k| (p.to_string(), k, 0.0))).collect();
    for r in &mut rows {
        r.2 = g.reward();
    }
    // Scramble the row order (a deterministic shuffle).
    for i in (1..rows.len()).rev() {
        let j = (g.next() % (i as u64 + 1)) as usize;
        rows.swap(i, j);
    }
    rows
}

/// The rewards of `prompt` ordered by sample index.
fn vector(rows: &[(String, u32, f64)], prompt: &str) -> Vec<f64> {
    let mut v: Vec<(u32, f64)> = rows.iter().filter(|r| r.0 == prompt).map(|r| (r.1, r.2)).collect();
    v.sort_by_key(|r| r.0);
    v.into_iter().map(|r| r.1).collect()
}

fn all_samples() -> Vec<SampleRow> {
    PROMPTS.iter().flat_map(|p| (0..N).map(move |k| sample(p, k, 10 + k))).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn consistency_matches_cream_algo_per_prompt_keyed_by_id() {
    let (_tmp, ctx) = store();
    let samples = samples_artifact(&ctx, "s", &all_samples());
    let cur_rows = random_rewards(1);
    let prev_rows = random_rewards(2);
    let cur = rewards_artifact(&ctx, &samples, "cur", &cur_rows);
    let prev = rewards_artifact(&ctx, &samples, "prev", &prev_rows);
    for method in [Method::Kendall, Method::KendallB, Method::Spearman, Method::TopOrder] {
        let mut p = pipeline();
        p.consistency.method = method;
        let a = consistency::run(&ctx, &p, &path(&cur), &path(&prev)).unwrap();
        assert_eq!(a.manifest.params, json!({"method": serde_json::to_value(method).unwrap()}));
        let names: Vec<_> = a.manifest.inputs.iter().map(|i| (i.name.as_str(), i.id.clone())).collect();
        assert_eq!(names, [("current", cur.id().to_string()), ("previous", prev.id().to_string())]);
        let rows: Vec<ConsistencyRow> = read_table(&a.path("consistency.parquet").unwrap()).unwrap();
        let mut sorted: Vec<&str> = PROMPTS.to_vec();
        sorted.sort();
        assert_eq!(rows.iter().map(|r| r.prompt_id.as_str()).collect::<Vec<_>>(), sorted);
        let (mut ties_c, mut ties_p) = (0u64, 0u64);
        for r in &rows {
            let want = cream_algo::prompt_consistency(method, &vector(&cur_rows, &r.prompt_id), &vector(&prev_rows, &r.prompt_id))
                .unwrap();
            assert_eq!(r.n, N);
            assert!(close(r.tau, want.stat) && close(r.c, want.c), "{method:?} {r:?} vs {want:?}");
            // Tie counts by brute force over the pairs i < j (independent of cream-algo).
            let tied = |v: &[f64]| -> u32 {
                let mut n = 0;
                for i in 0..v.len() {
                    for j in i + 1..v.len() {
                        n += u32::from(v[i] == v[j]);
                    }
                }
                n
            };
            let brute = (tied(&vector(&cur_rows, &r.prompt_id)), tied(&vector(&prev_rows, &r.prompt_id)));
            assert_eq!((r.ties_current, r.ties_previous), brute, "{r:?}");
            ties_c += u64::from(r.ties_current);
            ties_p += u64::from(r.ties_previous);
        }
        let e = &a.manifest.extra;
        let cs: Vec<f64> = rows.iter().map(|r| r.c).collect();
        let c_mean = cream_algo::dataset_c(&cs).unwrap();
        assert!(close(e["c_mean"].as_f64().unwrap(), c_mean), "{e}");
        let c_std = (cs.iter().map(|c| (c - c_mean).powi(2)).sum::<f64>() / cs.len() as f64).sqrt();
        assert!(close(e["c_std"].as_f64().unwrap(), c_std), "{e}");
        let tau_mean = rows.iter().map(|r| r.tau).sum::<f64>() / rows.len() as f64;
        assert!(close(e["tau_mean"].as_f64().unwrap(), tau_mean), "{e}");
        let all_pairs = (PROMPTS.len() as u64 * u64::from(N * (N - 1) / 2)) as f64;
        assert!(close(e["tie_rate_current"].as_f64().unwrap(), ties_c as f64 / all_pairs), "{e}");
        assert!(close(e["tie_rate_previous"].as_f64().unwrap(), ties_p as f64 / all_pairs), "{e}");
        assert_eq!(e["prompts"], json!(PROMPTS.len()));
        assert_eq!(e["method"], serde_json::to_value(method).unwrap());
    }
    // The random rewards have ties (a value set of 7), so the tie rates are not trivially 0.
    let a = consistency::run(&ctx, &pipeline(), &path(&cur), &path(&prev)).unwrap();
    assert!(a.manifest.extra["tie_rate_current"].as_f64().unwrap() > 0.0);
}

#[test]
fn consistency_refuses_keys_on_one_side_only() {
    let (_tmp, ctx) = store();
    let samples = samples_artifact(&ctx, "s", &all_samples());
    let cur_rows = random_rewards(1);
    let cur = rewards_artifact(&ctx, &samples, "cur", &cur_rows);
    // The previous model lacks one sample of p3.
    let prev_rows: Vec<_> = random_rewards(2).into_iter().filter(|r| !(r.0 == "p3" && r.1 == 2)).collect();
    let prev = rewards_artifact(&ctx, &samples, "prev-missing", &prev_rows);
    let err = format!("{:#}", consistency::run(&ctx, &pipeline(), &path(&cur), &path(&prev)).unwrap_err());
    assert!(err.contains("prompt p3 sample 2"), "{err}");
    assert!(err.contains(&path(&cur)) && err.contains(&path(&prev)), "{err}");
    assert!(err.contains("is in the current model's rewards"), "{err}");
    // A prompt only the previous model scored.
    let mut extra_rows = random_rewards(2);
    extra_rows.extend((0..N).map(|k| ("p9".to_string(), k, 1.0)));
    let prev = rewards_artifact(&ctx, &samples, "prev-extra", &extra_rows);
    let err = format!("{:#}", consistency::run(&ctx, &pipeline(), &path(&cur), &path(&prev)).unwrap_err());
    assert!(err.contains("prompt p9 sample 0 is in the previous model's rewards"), "{err}");
    // A duplicated key.
    let mut dup = random_rewards(2);
    dup.push(("p1".into(), 4, 0.0));
    let prev = rewards_artifact(&ctx, &samples, "prev-dup", &dup);
    let err = format!("{:#}", consistency::run(&ctx, &pipeline(), &path(&cur), &path(&prev)).unwrap_err());
    assert!(err.contains("prompt p1 sample 4 appears more than once"), "{err}");
    // Nothing was published by the failures.
    assert!(ctx.store.list("consistency").unwrap().is_empty());
}

#[test]
fn consistency_and_pair_reruns_are_cache_hits() {
    let (_tmp, ctx) = store();
    let samples = samples_artifact(&ctx, "s", &all_samples());
    let cur = rewards_artifact(&ctx, &samples, "cur", &random_rewards(1));
    let prev = rewards_artifact(&ctx, &samples, "prev", &random_rewards(2));
    let p = pipeline();
    let c1 = consistency::run(&ctx, &p, &path(&cur), &path(&prev)).unwrap();
    let c2 = consistency::run(&ctx, &p, &path(&cur), &path(&prev)).unwrap();
    assert_eq!(c1.dir, c2.dir);
    assert_eq!(c1.manifest, c2.manifest);
    let p1 = pair::run(&ctx, &p, &path(&samples), &path(&cur), Some(&path(&c1))).unwrap();
    let p2 = pair::run(&ctx, &p, &path(&samples), &path(&cur), Some(&path(&c2))).unwrap();
    assert_eq!(p1.dir, p2.dir);
    assert_eq!(p1.manifest, p2.manifest);
    // `<stage>/<id>` names the same artifacts.
    let by_id = format!("consistency/{}", c1.id());
    assert_eq!(consistency::run(&ctx, &p, &format!("judge/{}", cur.id()), &format!("judge/{}", prev.id())).unwrap().dir, c1.dir);
    assert_eq!(pair::run(&ctx, &p, &path(&samples), &path(&cur), Some(&by_id)).unwrap().dir, p1.dir);
    // Another method is another artifact.
    let mut q = pipeline();
    q.consistency.method = Method::Spearman;
    assert_ne!(consistency::run(&ctx, &q, &path(&cur), &path(&prev)).unwrap().dir, c1.dir);
}

/// Rewards designed for the pair tests, with their expectations.
fn pair_fixture(ctx: &Ctx) -> (Artifact, Artifact, Artifact) {
    let mut samples = Vec::new();
    let mut cur = Vec::new();
    let mut prev = Vec::new();
    let mut add = |p: &str, rewards: [f64; 5], previous: [f64; 5], lens: [u32; 5]| {
        for k in 0..5 {
            samples.push(sample(p, k as u32, lens[k]));
            cur.push((p.to_string(), k as u32, rewards[k]));
            prev.push((p.to_string(), k as u32, previous[k]));
        }
    };
    let ok = [10, 11, 12, 13, 14];
    // First argmax (1) and first argmin (2) with ties.
    add("a", [0.1, 0.5, -2.0, 0.5, -2.0], [0.1, 0.5, -2.0, 0.4, -2.5], ok);
    // All rewards equal: dropped.
    add("b", [1.0; 5], [1.0, 2.0, 3.0, 4.0, 5.0], ok);
    // Chosen (4) too long: 4 prompt + 40 response tokens > 40.
    add("c", [0.0, 1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0, 0.0], [10, 10, 10, 10, 40]);
    // Rejected (0) too short: 4 + 0 < 5.
    add("d", [-1.0, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0], [0, 10, 10, 10, 10]);
    // A long but admissible pair: 4 + 36 = 40 tokens, the upper bound.
    add("e", [3.0, 2.0, 1.0, 0.0, -1.0], [3.0, 1.0, 2.0, 0.0, -1.0], [36, 10, 10, 10, 10]);
    // Scramble the row order so that nothing depends on it.
    samples.reverse();
    cur.rotate_left(7);
    prev.rotate_left(11);
    let s = samples_artifact(ctx, "pairs", &samples);
    let cur = rewards_artifact(ctx, &s, "cur", &cur);
    let prev = rewards_artifact(ctx, &s, "prev", &prev);
    (s, cur, prev)
}

#[test]
fn pair_selects_first_extremes_and_counts_drops() {
    let (_tmp, ctx) = store();
    let (s, cur, prev) = pair_fixture(&ctx);
    let mut p = pipeline();
    p.pair.c_mode = CMode::Fixed(0.75);
    let a = pair::run(&ctx, &p, &path(&s), &path(&cur), None).unwrap();
    let rows: Vec<PairRow> = read_table(&a.path("pairs.parquet").unwrap()).unwrap();
    let got: Vec<_> = rows.iter().map(|r| (r.prompt_id.as_str(), r.chosen_idx, r.rejected_idx)).collect();
    assert_eq!(got, [("a", 1, 2), ("e", 0, 4)]);
    let a_row = &rows[0];
    assert_eq!(a_row.prompt, "question a");
    assert_eq!((a_row.chosen.as_str(), a_row.rejected.as_str()), ("answer a/1", "answer a/2"));
    assert_eq!((a_row.chosen_reward, a_row.rejected_reward, a_row.c), (0.5, -2.0, 0.75));
    let e = &a.manifest.extra;
    assert_eq!(e["pairs"], json!(2));
    assert_eq!(e["dropped_all_equal"], json!(1));
    assert_eq!(e["dropped_length"], json!(2));
    assert_eq!(e["prompts"], json!(5));
    assert_eq!(e["c_mode"], json!({"fixed": 0.75}));
    assert_eq!(e["c_mean"], json!(0.75));
    assert_eq!(e["dataset_c"], Value::Null);
    // Mean response tokens: chosen a/1 = 11, e/0 = 36; rejected a/2 = 12, e/4 = 10.
    assert_eq!(e["chosen_mean_len"], json!(23.5));
    assert_eq!(e["rejected_mean_len"], json!(11.0));
    assert_eq!(a.manifest.params, json!({"c_mode": {"fixed": 0.75}, "min_tokens": 5, "max_tokens": 40}));
    // Fixed C uses no consistency artifact, even when one is given.
    assert_eq!(a.manifest.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["samples", "rewards"]);
    let c = consistency::run(&ctx, &p, &path(&cur), &path(&prev)).unwrap();
    assert_eq!(pair::run(&ctx, &p, &path(&s), &path(&cur), Some(&path(&c))).unwrap().dir, a.dir);
    // The selection is cream_algo's.
    for r in &rows {
        let v: Vec<f64> = {
            let all: Vec<RewardRow> = read_table(&cur.path("rewards.parquet").unwrap()).unwrap();
            let mut v: Vec<_> = all.into_iter().filter(|x| x.prompt_id == r.prompt_id).collect();
            v.sort_by_key(|x| x.sample_idx);
            v.into_iter().map(|x| x.reward).collect()
        };
        let (ci, ri) = cream_algo::select_pair(&v).unwrap().unwrap();
        assert_eq!((r.chosen_idx, r.rejected_idx), (ci as u32, ri as u32));
    }
    // A wider length window keeps c and d.
    p.pair.max_tokens = 100;
    p.pair.min_tokens = 4;
    let wide = pair::run(&ctx, &p, &path(&s), &path(&cur), None).unwrap();
    assert_eq!(wide.manifest.extra["pairs"], json!(4));
    assert_eq!(wide.manifest.extra["dropped_length"], json!(0));
    // Nothing left is an error, not an empty artifact.
    p.pair.min_tokens = 100;
    let err = format!("{:#}", pair::run(&ctx, &p, &path(&s), &path(&cur), None).unwrap_err());
    assert!(err.contains("no preference pairs left from 5 prompts (1 with all rewards equal, 4 with"), "{err}");
}

#[test]
fn pair_c_modes_avg_dyn_fixed() {
    let (_tmp, ctx) = store();
    let (s, cur, prev) = pair_fixture(&ctx);
    let p = pipeline();
    let c = consistency::run(&ctx, &p, &path(&cur), &path(&prev)).unwrap();
    let crow: Vec<ConsistencyRow> = read_table(&c.path("consistency.parquet").unwrap()).unwrap();
    let c_of = |id: &str| crow.iter().find(|r| r.prompt_id == id).unwrap().c;
    let dataset_c = cream_algo::dataset_c(&crow.iter().map(|r| r.c).collect::<Vec<_>>()).unwrap();
    assert!(close(c.manifest.extra["c_mean"].as_f64().unwrap(), dataset_c));
    // The C_j of a and e differ, so avg and dyn differ.
    assert!(!close(c_of("a"), c_of("e")), "{crow:?}");

    let mut p = pipeline();
    let pairs_of = |a: &Artifact| -> Vec<PairRow> { read_table(&a.path("pairs.parquet").unwrap()).unwrap() };

    p.pair.c_mode = CMode::Avg;
    let avg = pair::run(&ctx, &p, &path(&s), &path(&cur), Some(&path(&c))).unwrap();
    assert!(pairs_of(&avg).iter().all(|r| close(r.c, dataset_c)));
    assert!(close(avg.manifest.extra["dataset_c"].as_f64().unwrap(), dataset_c));
    assert!(close(avg.manifest.extra["c_mean"].as_f64().unwrap(), dataset_c));
    let names: Vec<_> = avg.manifest.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["samples", "rewards", "consistency"]);

    p.pair.c_mode = CMode::Dyn;
    let dyn_ = pair::run(&ctx, &p, &path(&s), &path(&cur), Some(&path(&c))).unwrap();
    let rows = pairs_of(&dyn_);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(close(r.c, c_of(&r.prompt_id)), "{r:?}");
    }
    assert!(close(dyn_.manifest.extra["c_mean"].as_f64().unwrap(), (c_of("a") + c_of("e")) / 2.0));
    assert_ne!(avg.dir, dyn_.dir);

    p.pair.c_mode = CMode::Fixed(1.0);
    let fixed = pair::run(&ctx, &p, &path(&s), &path(&cur), None).unwrap();
    assert!(pairs_of(&fixed).iter().all(|r| r.c == 1.0));

    // avg and dyn need a consistency artifact.
    for mode in [CMode::Avg, CMode::Dyn] {
        p.pair.c_mode = mode;
        let err = format!("{:#}", pair::run(&ctx, &p, &path(&s), &path(&cur), None).unwrap_err());
        assert!(err.contains("needs a consistency artifact"), "{err}");
    }
    // A consistency artifact computed with other rewards as the current model's is refused.
    p.pair.c_mode = CMode::Dyn;
    let swapped = consistency::run(&ctx, &pipeline(), &path(&prev), &path(&cur)).unwrap();
    let err = format!("{:#}", pair::run(&ctx, &p, &path(&s), &path(&cur), Some(&path(&swapped))).unwrap_err());
    assert!(err.contains("was computed with rewards") && err.contains(&prev.id().to_string()), "{err}");
}

#[test]
fn pair_refuses_mismatched_inputs() {
    let (_tmp, ctx) = store();
    let (s, cur, _prev) = pair_fixture(&ctx);
    let mut p = pipeline();
    p.pair.c_mode = CMode::Fixed(1.0);
    // Rewards of other samples.
    let other = samples_artifact(&ctx, "other", &all_samples());
    let err = format!("{:#}", pair::run(&ctx, &p, &path(&other), &path(&cur), None).unwrap_err());
    assert!(err.contains("were computed for samples"), "{err}");
    // A judge artifact whose rewards miss a sample of the samples it names.
    let partial: Vec<(String, u32, f64)> =
        PROMPTS.iter().flat_map(|p| (0..N).map(move |k| (p.to_string(), k, f64::from(k)))).filter(|r| r.0 != "p4" || r.1 != 3).collect();
    let partial = rewards_artifact(&ctx, &other, "partial", &partial);
    let err = format!("{:#}", pair::run(&ctx, &p, &path(&other), &path(&partial), None).unwrap_err());
    assert!(err.contains("prompt p4 sample 3 is in the samples"), "{err}");
    // Wrong stage.
    let err = format!("{:#}", pair::run(&ctx, &p, &path(&cur), &path(&cur), None).unwrap_err());
    assert!(err.contains("\"judge\"") && err.contains("\"generate\""), "{err}");
    let _ = s;
}

fn train_artifact(ctx: &Ctx, steps: u64) -> Artifact {
    let spec = ArtifactSpec { stage: "train".into(), schema_version: 1, params: json!({"steps": steps}), inputs: vec![] };
    let rows: Vec<MetricRow> = (0..steps)
        .rev() // written out of order: the report sorts by step
        .map(|s| MetricRow {
            step: s,
            epoch: s as f64 / steps as f64,
            loss: 1.0 - s as f64 / 100.0,
            reward_margin: 0.0,
            reward_accuracy: s as f64 / 100.0,
            grad_norm: 1.0,
            lr: 1e-6,
            tokens: 10,
        })
        .collect();
    ctx.produce(spec, |dir| {
        let n = write_table(&dir.join("metrics.parquet"), &rows)?;
        Ok(ProduceOutput::default().with_rows("metrics.parquet", n))
    })
    .unwrap()
}

fn eval_artifact(ctx: &Ctx, gsm8k: f64, socialiqa: f64) -> Artifact {
    let spec = ArtifactSpec { stage: "eval".into(), schema_version: 1, params: json!({"g": gsm8k, "s": socialiqa}), inputs: vec![] };
    ctx.produce(spec, |dir| {
        std::fs::write(dir.join("eval.parquet"), b"not read by the report")?;
        Ok(ProduceOutput {
            extra: json!({
                "accuracy": {"gsm8k": gsm8k, "socialiqa": socialiqa},
                "accuracy_mean": (gsm8k + socialiqa) / 2.0,
                // An interval for one task only: the other's bounds stay null.
                "accuracy_ci95": {"gsm8k": {"acc": gsm8k, "lo": gsm8k - 5.0, "hi": gsm8k + 4.0}},
            }),
            ..Default::default()
        })
    })
    .unwrap()
}

/// A log-likelihood eval artifact with one task.
fn mc_artifact(ctx: &Ctx, acc: f64) -> Artifact {
    let spec = ArtifactSpec { stage: "eval".into(), schema_version: 1, params: json!({"mc": acc}), inputs: vec![] };
    ctx.produce(spec, |dir| {
        std::fs::write(dir.join("mc_eval.parquet"), b"not read by the report")?;
        Ok(ProduceOutput {
            extra: json!({
                "method": "loglik",
                "tasks": {"quartz": {
                    "n": 8,
                    "acc": {"acc": acc, "lo": acc - 10.0, "hi": acc + 10.0},
                    "acc_norm": {"acc": acc + 5.0, "lo": acc - 5.0, "hi": acc + 15.0},
                }},
            }),
            ..Default::default()
        })
    })
    .unwrap()
}

#[test]
fn report_gathers_one_row_per_iteration() {
    let (tmp, ctx) = store();
    let (s, cur, prev) = pair_fixture(&ctx);
    let p = pipeline();
    let c = consistency::run(&ctx, &p, &path(&cur), &path(&prev)).unwrap();
    let pairs = pair::run(&ctx, &p, &path(&s), &path(&cur), Some(&path(&c))).unwrap();
    let train = train_artifact(&ctx, 20);
    let small = train_artifact(&ctx, 4);
    let e0 = eval_artifact(&ctx, 40.0, 50.0);
    let e1 = eval_artifact(&ctx, 45.0, 60.0);
    let mc1 = mc_artifact(&ctx, 50.0);
    let records = [
        IterationRecord { iteration: 0, eval: Some(path(&e0)), ..Default::default() },
        IterationRecord {
            iteration: 1,
            consistency: Some(path(&c)),
            pairs: Some(path(&pairs)),
            train: Some(path(&train)),
            eval: Some(path(&e1)),
            mc: Some(path(&mc1)),
            ..Default::default()
        },
        IterationRecord { iteration: 2, train: Some(path(&small)), ..Default::default() },
    ];
    let rep = report::build(&ctx, "test", &records).unwrap();
    let df = rep.frame().unwrap();
    let names: Vec<&str> = df.columns().iter().map(|c| c.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "pipeline", "iteration", "c_mean", "c_std", "tau_mean", "tie_rate", "tie_rate_prev", "pairs",
            "chosen_mean_len", "rejected_mean_len", "reward_accuracy", "train_loss", "c_final", "tau_final",
            "acc_gsm8k", "acc_gsm8k_lo", "acc_gsm8k_hi", "acc_socialiqa", "acc_socialiqa_lo", "acc_socialiqa_hi",
            "acc_mean", "mc_quartz", "mc_quartz_lo", "mc_quartz_hi", "mc_quartz_norm",
        ]
    );
    assert_eq!(df.height(), 3);
    let f = |name: &str| -> Vec<Option<f64>> { df.column(name).unwrap().f64().unwrap().iter().collect() };
    let ce = &c.manifest.extra;
    assert_eq!(f("c_mean"), [None, ce["c_mean"].as_f64(), None]);
    assert_eq!(f("tau_mean"), [None, ce["tau_mean"].as_f64(), None]);
    assert_eq!(f("tie_rate"), [None, ce["tie_rate_current"].as_f64(), None]);
    assert_eq!(f("chosen_mean_len"), [None, Some(23.5), None]);
    let pairs_col: Vec<Option<u64>> = df.column("pairs").unwrap().u64().unwrap().iter().collect();
    assert_eq!(pairs_col, [None, Some(2), None]);
    // Last 10% of 20 steps = steps 18 and 19; fewer than 10 steps: all of them.
    let ra = f("reward_accuracy");
    assert!(ra[0].is_none() && close(ra[1].unwrap(), 0.185) && close(ra[2].unwrap(), 0.015), "{ra:?}");
    let loss = f("train_loss");
    assert!(loss[0].is_none() && close(loss[1].unwrap(), 1.0 - 0.185), "{loss:?}");
    assert_eq!(f("acc_gsm8k"), [Some(40.0), Some(45.0), None]);
    assert_eq!(f("acc_socialiqa"), [Some(50.0), Some(60.0), None]);
    assert_eq!(f("acc_gsm8k_lo"), [Some(35.0), Some(40.0), None]);
    assert_eq!(f("acc_gsm8k_hi"), [Some(44.0), Some(49.0), None]);
    assert_eq!(f("acc_socialiqa_lo"), [None, None, None]);
    assert_eq!(f("acc_mean"), [Some(45.0), Some(52.5), None]);
    assert_eq!(f("c_final"), [None, None, None]);
    assert_eq!(f("mc_quartz"), [None, Some(50.0), None]);
    assert_eq!(f("mc_quartz_hi"), [None, Some(60.0), None]);
    assert_eq!(f("mc_quartz_norm"), [None, Some(55.0), None]);
    // The typed tables: one row per model; per model its generative tasks (sorted), then its
    // log-likelihood tasks.
    assert_eq!(rep.rows.iter().map(|r| r.iteration).collect::<Vec<_>>(), [0, 1, 2]);
    let tasks: Vec<(u32, &str, &str)> =
        rep.tasks.iter().map(|t| (t.iteration, t.task.as_str(), t.method.as_str())).collect();
    assert_eq!(
        tasks,
        [
            (0, "gsm8k", "generate"),
            (0, "socialiqa", "generate"),
            (1, "gsm8k", "generate"),
            (1, "socialiqa", "generate"),
            (1, "quartz", "loglik"),
        ]
    );
    assert_eq!((rep.tasks[1].lo, rep.tasks[1].acc_norm), (None, None));
    assert_eq!((rep.tasks[4].lo, rep.tasks[4].acc_norm), (Some(40.0), Some(55.0)));

    let out = tmp.path().join("report");
    report::write(&rep, &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 5, "{md}");
    assert!(lines[0].starts_with("| pipeline | iteration | c_mean |"), "{md}");
    assert!(lines[2].starts_with("| test | 0 | - | - |") && lines[2].ends_with("| 40.0000 | 35.0000 | 44.0000 | 50.0000 | - | - | 45.0000 | - | - | - | - |"), "{md}");
    // Both tables read back as the typed rows that were written.
    assert_eq!(read_table::<ReportRow>(&out.join("report.parquet")).unwrap(), rep.rows);
    assert_eq!(read_table::<ReportTaskRow>(&out.join("report_tasks.parquet")).unwrap(), rep.tasks);
    // Printing the frame works (the binary prints it; polars shows the first and last columns).
    let shown = format!("{df}");
    assert!(shown.contains("shape: (3, 25)") && shown.contains("pipeline"), "{shown}");
    // A wrong artifact kind is an error naming the iteration.
    let bad = [IterationRecord { iteration: 3, pairs: Some(path(&c)), ..Default::default() }];
    let err = format!("{:#}", report::build(&ctx, "test", &bad).unwrap_err());
    assert!(err.contains("iteration 3") && err.contains("\"pair\""), "{err}");
}
