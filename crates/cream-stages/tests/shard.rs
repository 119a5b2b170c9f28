//! Sharding (design.md, "Beyond one machine") on the real default model (SmolLM2-135M-Instruct)
//! and the smoke pipeline, shrunk: `generate` and `score` run as shards `0/2` and `1/2` in one
//! store and are merged; the merged artifacts have the ids of the unsharded runs in another store
//! and byte-identical Parquet. Merges with a missing, duplicate, foreign or mismatched shard fail
//! naming the problem.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cream_core::Artifact;
use cream_stages::config::Pipeline;
use cream_stages::ctx::Ctx;
use cream_stages::shard::Shard;
use cream_lm::Precision::F32;
use cream_stages::{generate, names, prepare, score};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn default_model() -> PathBuf {
    let path = repo_root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "default model {} is missing; run `just setup`", path.display());
    path
}

/// The smoke pipeline with 3 prompts per source (3 prompts per iteration), 2 samples of at most
/// 12 tokens; data paths made absolute (tests run in the crate directory).
fn pipeline() -> Pipeline {
    let root = repo_root();
    let mut p = Pipeline::load(&root.join("pipelines/smoke.toml")).expect("smoke pipeline loads");
    p.generate.n = 2;
    p.generate.max_new_tokens = 12;
    p.data.prompts_per_source = 3;
    for path in [&mut p.data.gsm8k_train, &mut p.data.gsm8k_test, &mut p.data.socialiqa, &mut p.data.quartz]
        .into_iter()
        .flatten()
    {
        *path = root.join(&*path);
        assert!(path.is_file(), "data file {} is missing; run `just setup`", path.display());
    }
    p.validate().expect("overridden pipeline is valid");
    p
}

fn shard(s: &str) -> Shard {
    s.parse().unwrap()
}

fn dir(a: &Artifact) -> String {
    a.dir.to_string_lossy().into_owned()
}

fn bytes(a: &Artifact, file: &str) -> Vec<u8> {
    std::fs::read(a.path(file).unwrap()).unwrap()
}

fn err_text(r: anyhow::Result<Artifact>) -> String {
    format!("{:#}", r.expect_err("the merge must fail"))
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    eprintln!("{what}: {:.1}s", t.elapsed().as_secs_f64());
    out
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models and the data sets in data/"]
fn merged_shards_equal_the_unsharded_artifacts() {
    let model = default_model();
    let p = pipeline();
    let (tmp_a, tmp_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Ctx::new(tmp_a.path(), true).unwrap();
    let b = Ctx::new(tmp_b.path(), true).unwrap();
    let model = model.as_path();

    // --- generate: unsharded in A, shards 0/2 + 1/2 merged in B.
    let prompts_a = dir(&prepare::run(&a, &p.data).unwrap());
    let prompts_b = dir(&prepare::run(&b, &p.data).unwrap());
    let gen_a = timed("generate unsharded", || generate::run(&a, &p, &prompts_a, model, 1, Shard::ALL).unwrap());
    // 3 GSM8K + 3 Social IQa prompts over 2 iterations, stratified: 2 + 2 in iteration 1.
    assert_eq!(gen_a.manifest.extra["prompts"], 4, "4 prompts in iteration 1");
    assert!(gen_a.manifest.params.get("shard").is_none(), "an unsharded run's key has no shard");
    let g0 = timed("generate 0/2", || generate::run(&b, &p, &prompts_b, model, 1, shard("0/2")).unwrap());
    let g1 = timed("generate 1/2", || generate::run(&b, &p, &prompts_b, model, 1, shard("1/2")).unwrap());
    assert_eq!(g0.manifest.params["shard"], "0/2");
    assert_eq!((g0.manifest.extra["prompts"].as_u64(), g1.manifest.extra["prompts"].as_u64()), (Some(2), Some(2)));
    assert_ne!(g0.id(), gen_a.id());
    let gen_b =
        timed("generate merge", || generate::merge(&b, &p, &prompts_b, model, 1, &[&dir(&g1), &dir(&g0)]).unwrap());
    assert_eq!(gen_b.id(), gen_a.id(), "merged generate artifact has the unsharded id");
    assert_eq!(bytes(&gen_b, "samples.parquet"), bytes(&gen_a, "samples.parquet"), "samples.parquet differs");
    assert_eq!(gen_b.manifest.files, gen_a.manifest.files);
    assert_eq!(gen_b.manifest.extra["merged_from"], serde_json::json!([g0.id().as_str(), g1.id().as_str()]));
    for key in ["prompts", "truncated_prompts", "new_tokens"] {
        assert_eq!(gen_b.manifest.extra[key], gen_a.manifest.extra[key], "summed extra {key}");
    }
    // Merging again is a cache hit on the merged artifact.
    assert_eq!(generate::merge(&b, &p, &prompts_b, model, 1, &[&dir(&g0), &dir(&g1)]).unwrap().dir, gen_b.dir);

    // --- generate merge errors.
    let e = err_text(generate::merge(&b, &p, &prompts_b, model, 1, &[&dir(&g0)]));
    assert!(e.contains("missing shard 1/2"), "{e}");
    let e = err_text(generate::merge(&b, &p, &prompts_b, model, 1, &[&dir(&g0), &dir(&g1), &dir(&g0)]));
    assert!(e.contains("shard 0/2 is given twice"), "{e}");
    let mut other = p.clone();
    other.generate.max_new_tokens = 13;
    let e = err_text(generate::merge(&b, &other, &prompts_b, model, 1, &[&dir(&g0), &dir(&g1)]));
    assert!(e.contains(&dir(&g0)) && e.contains("parameters"), "{e}");
    let e = err_text(generate::merge(&b, &p, &prompts_b, model, 2, &[&dir(&g0), &dir(&g1)]));
    assert!(e.contains("parameters") && e.contains("\"iteration\":1"), "{e}");
    let e = err_text(generate::merge(&b, &p, &prompts_b, model, 1, &[&dir(&gen_b)]));
    assert!(e.contains("is not a shard"), "{e}");

    // --- score: unsharded in A, shards 0/2 + 1/2 merged in B.
    let bt = p.judge.batch_tokens;
    let sc_a = timed("score unsharded", || score::score(&a, &gen_a, model, bt, F32).unwrap());
    let s0 = timed("score 0/2", || score::score_shard(&b, &gen_b, model, bt, F32, shard("0/2")).unwrap());
    let s1 = timed("score 1/2", || score::score_shard(&b, &gen_b, model, bt, F32, shard("1/2")).unwrap());
    assert_eq!(
        (s0.manifest.files["scores.parquet"].rows, s1.manifest.files["scores.parquet"].rows),
        (Some(4), Some(4))
    );
    let sc_b = timed("score merge", || score::merge_scores(&b, &gen_b, model, bt, F32, &[&dir(&s0), &dir(&s1)]).unwrap());
    assert_eq!(sc_b.id(), sc_a.id(), "merged score artifact has the unsharded id");
    assert_eq!(bytes(&sc_b, "scores.parquet"), bytes(&sc_a, "scores.parquet"), "scores.parquet differs");
    assert_eq!(sc_b.manifest.extra["merged_from"], serde_json::json!([s0.id().as_str(), s1.id().as_str()]));

    // --- score merge errors: a shard of other parameters, of another shard count, missing, twice.
    // (Shards 3/4 and 4/5 of 3 prompts are empty, so they cost no model time; the parameter and
    // count checks come before the coverage checks.)
    let other = score::score_shard(&b, &gen_b, model, bt / 2, F32, shard("3/4")).unwrap();
    let e = err_text(score::merge_scores(&b, &gen_b, model, bt, F32, &[&dir(&s0), &dir(&s1), &dir(&other)]));
    assert!(
        e.contains(&dir(&other)) && e.contains("parameters") && e.contains(&format!("\"batch_tokens\":{}", bt / 2)),
        "{e}"
    );
    assert!(!e.contains(&dir(&s0)) && !e.contains(&dir(&s1)), "only the offending shard is named: {e}");
    let fifth = score::score_shard(&b, &gen_b, model, bt, F32, shard("4/5")).unwrap();
    let e = err_text(score::merge_scores(&b, &gen_b, model, bt, F32, &[&dir(&s0), &dir(&s1), &dir(&fifth)]));
    assert!(e.contains("different shard counts") && e.contains(&dir(&fifth)), "{e}");
    let e = err_text(score::merge_scores(&b, &gen_b, model, bt, F32, &[&dir(&s1)]));
    assert!(e.contains("missing shard 0/2"), "{e}");
    let e = err_text(score::merge_scores(&b, &gen_b, model, bt, F32, &[&dir(&s1), &dir(&s1), &dir(&s0)]));
    assert!(e.contains("shard 1/2 is given twice"), "{e}");
    let e = err_text(score::merge_scores(&b, &gen_b, model, bt, F32, &[&dir(&g0), &dir(&g1)]));
    assert!(e.contains("stage \"generate\"") && e.contains("\"score\""), "{e}");
    let e = err_text(score::merge_scores(&b, &gen_b, model, bt, F32, &[]));
    assert!(e.contains("nothing to merge"), "{e}");

    // --- more shards than prompts: 5 shards of 4 prompts, the last one empty, in a third store
    // that holds a copy of the samples (shared storage).
    let tmp_c = tempfile::tempdir().unwrap();
    let c = Ctx::new(tmp_c.path(), true).unwrap();
    let gen_c_dir = tmp_c.path().join("generate").join(gen_b.id().as_str());
    copy_dir(&gen_b.dir, &gen_c_dir);
    let gen_c = c.open(&gen_c_dir.to_string_lossy(), names::stage::GENERATE).unwrap();
    let quarters: Vec<Artifact> = timed("score 5 shards", || {
        (0..5).map(|k| score::score_shard(&c, &gen_c, model, bt, F32, Shard::new(k, 5).unwrap()).unwrap()).collect()
    });
    assert_eq!(quarters[4].manifest.files["scores.parquet"].rows, Some(0), "shard 4/5 of 4 prompts is empty");
    let paths: Vec<String> = quarters.iter().rev().map(dir).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let sc_c = score::merge_scores(&c, &gen_c, model, bt, F32, &paths).unwrap();
    assert_eq!(sc_c.id(), sc_a.id());
    assert_eq!(bytes(&sc_c, "scores.parquet"), bytes(&sc_a, "scores.parquet"), "5-way merge differs");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
