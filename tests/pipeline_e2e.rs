//! End to end: the smoke pipeline's stages, run as the justfile runs them, on the real default
//! model. Every artifact verifies and reads back with its schema; a rerun is all cache hits; a
//! changed parameter re-runs exactly the stages downstream of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use cream_core::{ConsistencyRow, EvalRow, MetricRow, PairRow, PromptRow, RewardRow, SampleRow, ScoreRow, Store, read_table};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn bin(name: &str) -> PathBuf {
    // Every stage binary sits next to the ones cargo names for this test.
    PathBuf::from(env!("CARGO_BIN_EXE_cream-prepare")).with_file_name(name)
}

/// One stage invocation: (stage label, artifact dir, whether it was a cache hit).
type Step = (String, String, bool);

fn stage(steps: &mut Vec<Step>, label: &str, artifacts: &Path, args: &[&str]) -> String {
    let (exe, rest) = args.split_first().unwrap();
    let out = Command::new(bin(exe))
        .args(rest)
        .env("CREAM_ARTIFACTS", artifacts)
        .current_dir(root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{label} failed:\n{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let path = stdout.lines().last().unwrap_or_else(|| panic!("{label}: no output path")).to_string();
    // Sub-stages (score) log their own lines; the stage's own verdict is its last log line.
    let hit = stderr.lines().filter(|l| !l.starts_with("score:")).any(|l| l.contains("cache hit"));
    steps.push((label.to_string(), path.clone(), hit));
    path
}

/// The loop of `just iterate` (justfile), stage by stage.
fn run_loop(artifacts: &Path, cfg: &str) -> Vec<Step> {
    let mut s = Vec::new();
    let base = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let c = ["--config", cfg];
    let prompts = stage(&mut s, "prepare", artifacts, &["cream-prepare", c[0], c[1]]);
    let m1 = stage(&mut s, "sft", artifacts, &["cream-train", "sft", c[0], c[1], "--prompts", &prompts, "--model", base]);
    let (mut prev, mut cur) = (base.to_string(), m1.clone());
    let mut models = vec![base.to_string(), m1];
    for t in 1..=2 {
        let ts = t.to_string();
        let samples = stage(&mut s, &format!("generate{t}"), artifacts, &["cream-generate", c[0], c[1], "--prompts", &prompts, "--model", &cur, "--iteration", &ts]);
        let rcur = stage(&mut s, &format!("judge{t}"), artifacts, &["cream-judge", c[0], c[1], "--samples", &samples, "--mode", "dpo", "--policy", &cur, "--reference", base]);
        let rprev = if t == 1 {
            stage(&mut s, &format!("judge_prev{t}"), artifacts, &["cream-judge", c[0], c[1], "--samples", &samples, "--mode", "likelihood", "--policy", base])
        } else {
            stage(&mut s, &format!("judge_prev{t}"), artifacts, &["cream-judge", c[0], c[1], "--samples", &samples, "--mode", "dpo", "--policy", &prev, "--reference", base])
        };
        let cons = stage(&mut s, &format!("consistency{t}"), artifacts, &["cream-consistency", c[0], c[1], "--current", &rcur, "--previous", &rprev]);
        let pairs = stage(&mut s, &format!("pair{t}"), artifacts, &["cream-pair", c[0], c[1], "--samples", &samples, "--rewards", &rcur, "--consistency", &cons]);
        let next = stage(&mut s, &format!("train{t}"), artifacts, &["cream-train", "dpo", c[0], c[1], "--pairs", &pairs, "--model", &cur]);
        models.push(next.clone());
        prev = cur;
        cur = next;
    }
    for (i, m) in models.iter().enumerate() {
        stage(&mut s, &format!("eval{i}"), artifacts, &["cream-eval", c[0], c[1], "--prompts", &prompts, "--model", m]);
    }
    s
}

fn check_artifacts(store: &Store, steps: &[Step]) {
    for (label, path, _) in steps {
        let a = store.open_artifact(path, None).unwrap_or_else(|e| panic!("{label}: {e:#}"));
        for (file, entry) in &a.manifest.files {
            let p = a.path(file).unwrap();
            let rows = match file.as_str() {
                "pool.parquet" | "eval.parquet" if a.manifest.stage == "prepare" => read_table::<PromptRow>(&p).unwrap().len(),
                "sft.parquet" => read_table::<PromptRow>(&p).unwrap().len(),
                "samples.parquet" => read_table::<SampleRow>(&p).unwrap().len(),
                "scores.parquet" => read_table::<ScoreRow>(&p).unwrap().len(),
                "rewards.parquet" => read_table::<RewardRow>(&p).unwrap().len(),
                "consistency.parquet" => read_table::<ConsistencyRow>(&p).unwrap().len(),
                "pairs.parquet" => read_table::<PairRow>(&p).unwrap().len(),
                "metrics.parquet" => read_table::<MetricRow>(&p).unwrap().len(),
                "eval.parquet" => read_table::<EvalRow>(&p).unwrap().len(),
                _ => continue,
            };
            assert_eq!(Some(rows as u64), entry.rows, "{label}: {file} row count vs manifest");
            assert!(rows > 0, "{label}: {file} is empty");
        }
    }
}

#[test]
fn smoke_pipeline_runs_caches_and_reruns_downstream_only() {
    let tmp = tempfile::tempdir().unwrap();
    let artifacts = tmp.path().join("artifacts");
    let cfg = root().join("pipelines/smoke.toml");
    let cfg = cfg.to_str().unwrap();

    let first = run_loop(&artifacts, cfg);
    let store = Store::open(&artifacts).unwrap();
    check_artifacts(&store, &first);
    assert!(first.iter().all(|(_, _, hit)| !hit), "a fresh store has no cache hits: {first:?}");
    // Iteration t's training output is a model in Hugging Face layout.
    let m2 = store.open_artifact(&first.iter().find(|s| s.0 == "train1").unwrap().1, Some("train")).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(m2.manifest.files.contains_key(f), "train artifact lacks {f}");
    }

    let second = run_loop(&artifacts, cfg);
    for ((l1, p1, _), (l2, p2, hit)) in first.iter().zip(&second) {
        assert_eq!(l1, l2);
        assert_eq!(p1, p2, "{l1}: same inputs, same artifact");
        assert!(hit, "{l1}: a rerun with nothing changed must be a cache hit");
    }

    // Change one parameter of the pair stage: everything before pair1 is reused, pair1 and
    // everything downstream of it is recomputed.
    let changed = tmp.path().join("smoke-dyn.toml");
    let text = std::fs::read_to_string(cfg).unwrap().replace("c_mode = \"avg\"", "c_mode = \"dyn\"");
    assert!(text.contains("c_mode = \"dyn\""));
    std::fs::write(&changed, text).unwrap();
    let third = run_loop(&artifacts, changed.to_str().unwrap());
    let upstream = ["prepare", "sft", "generate1", "judge1", "judge_prev1", "consistency1", "eval0", "eval1"];
    for (label, path, hit) in &third {
        let before = &first.iter().find(|s| &s.0 == label).unwrap().1;
        if upstream.contains(&label.as_str()) {
            assert!(hit, "{label} is upstream of the change and must be a cache hit");
            assert_eq!(path, before);
        } else {
            assert!(!hit, "{label} is downstream of the change and must be recomputed");
            assert_ne!(path, before);
        }
    }
}
