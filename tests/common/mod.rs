//! Shared fixture of the reliability tests: a tiny random model in Hugging Face layout (the
//! default model's tokenizer and chat template, 2 layers of width 32), tiny data files and a tiny
//! pipeline config, so that every stage binary runs in well under a second. The fixture is built
//! once per target directory (under CARGO_TARGET_TMPDIR, published by rename) and shared by the
//! test binaries.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn bin(name: &str) -> PathBuf {
    // Every stage binary sits next to the ones cargo names for this test.
    PathBuf::from(env!("CARGO_BIN_EXE_cream-prepare")).with_file_name(name)
}

/// The fixture directory: `model/`, `data/{train,test,siqa}.jsonl`, `tiny.toml`.
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    pub fn model(&self) -> PathBuf {
        self.dir.join("model")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("tiny.toml")
    }
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join("data").join(name)
    }
    /// The tiny config with `edit` applied to its text, written to `dir/name`.
    pub fn config_with(&self, dir: &Path, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, edit(fs::read_to_string(self.config()).unwrap())).unwrap();
        path
    }
}

/// Bump when the fixture's content changes.
const FIXTURE_VERSION: &str = "v1";

pub fn gsm8k_line(i: usize) -> String {
    serde_json::json!({
        "question": format!("Tom has {i} apples and buys {} more. How many apples does he have?", i + 1),
        "answer": format!("He has {i} + {} = {} apples.\n#### {}", i + 1, 2 * i + 1, 2 * i + 1),
    })
    .to_string()
}

pub fn siqa_line(i: usize) -> String {
    serde_json::json!({
        "input": [{"role": "user", "content": format!("Sam helped friend number {i}. How would Sam feel?\nA: proud\nB: sad\nC: angry")}],
        "ideal": "A",
    })
    .to_string()
}

fn tiny_pipeline(dir: &Path) -> String {
    let d = |n: &str| dir.join(n).display().to_string();
    format!(
        r#"# A tiny pipeline over the tiny random model: every stage in well under a second.
name = "tiny"
seed = 0
iterations = 1

[model]
base = "{model}"

[data]
gsm8k_train = "{train}"
gsm8k_test = "{test}"
socialiqa = "{siqa}"
socialiqa_eval_fraction = 0.5
prompts_per_source = 2
sft_examples = 2
eval_per_task = 1

[sft]
lr = 1e-3
epochs = 1
global_batch = 2
micro_batch = 2
max_steps = 1

[generate]
n = 3
temperature = 1.0
top_p = 1.0
max_new_tokens = 8
max_prompt_tokens = 128
batch_size = 8

[judge]
batch_tokens = 4096

[consistency]
method = "kendall"

[pair]
c_mode = "avg"
min_tokens = 1
max_tokens = 256

[train]
lr = 1e-3
epochs = 1
global_batch = 2
micro_batch = 2
beta = 0.1
max_steps = 1

[eval]
max_new_tokens = 8
batch_size = 4
"#,
        model = d("model"),
        train = d("data/train.jsonl"),
        test = d("data/test.jsonl"),
        siqa = d("data/siqa.jsonl"),
    )
}

fn build_fixture(dir: &Path) {
    let device = cream_lm::default_device().unwrap();
    let default_model = root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(default_model.exists(), "{} is missing: run `just setup` first", default_model.display());
    let base = cream_lm::load(&default_model, &device).unwrap();
    let mut cfg = cream_lm::ModelConfig::tiny(base.tokenizer.vocab_size());
    cfg.bos_token_id = base.model.cfg.bos_token_id;
    cfg.eos_token_id = base.model.cfg.eos_token_id;
    cfg.pad_token_id = base.model.cfg.pad_token_id;
    let model = cream_lm::Model::random(cfg, 7, &device).unwrap();
    fs::create_dir_all(dir.join("model")).unwrap();
    cream_lm::save_hf_dir(&model, &base.tokenizer, &dir.join("model")).unwrap();
    fs::create_dir_all(dir.join("data")).unwrap();
    let lines = |f: fn(usize) -> String, range: std::ops::Range<usize>| {
        range.map(f).collect::<Vec<_>>().join("\n") + "\n"
    };
    fs::write(dir.join("data/train.jsonl"), lines(gsm8k_line, 0..6)).unwrap();
    fs::write(dir.join("data/test.jsonl"), lines(gsm8k_line, 100..102)).unwrap();
    fs::write(dir.join("data/siqa.jsonl"), lines(siqa_line, 0..6)).unwrap();
    fs::write(dir.join("tiny.toml"), tiny_pipeline(dir)).unwrap();
}

/// The fixture, built on first use (by whichever test binary gets there first).
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cream-tiny-{FIXTURE_VERSION}"));
        if !dir.join("tiny.toml").exists() {
            let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!(".cream-tiny-{FIXTURE_VERSION}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&tmp);
            build_fixture(&tmp);
            // The config names absolute paths inside the final directory.
            fs::write(tmp.join("tiny.toml"), tiny_pipeline(&dir)).unwrap();
            if fs::rename(&tmp, &dir).is_err() {
                // Another test binary published it first.
                fs::remove_dir_all(&tmp).unwrap();
            }
        }
        Fixture { dir }
    })
}

/// Runs `exe args` with the store `artifacts` and `env`, one thread, quiet progress bars.
pub fn run(exe: &str, args: &[&str], artifacts: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(exe));
    cmd.args(args).args(["--threads", "1"]).env("CREAM_ARTIFACTS", artifacts).current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The artifact path a successful stage printed as its last line of stdout.
pub fn last_line(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    stdout.lines().last().unwrap_or_else(|| panic!("{what}: no output path")).to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An argument of a pipeline step: literal text or the artifact an earlier step produced.
#[derive(Clone, Debug)]
pub enum Arg {
    Lit(String),
    Out(&'static str),
}

/// One stage invocation of the tiny loop.
#[derive(Clone, Debug)]
pub struct Step {
    pub label: &'static str,
    pub exe: &'static str,
    pub args: Vec<Arg>,
}

/// The loop of `just iterate` for the tiny config (one iteration), stage by stage: prepare,
/// train sft, generate, judge (current, previous), consistency, pair, train dpo, eval M0..M2.
pub fn tiny_steps(config: &Path) -> Vec<Step> {
    use Arg::{Lit, Out};
    let fx = fixture();
    let l = |s: &str| Lit(s.to_owned());
    let cfg = || vec![l("--config"), Lit(config.display().to_string())];
    let base = Lit(fx.model().display().to_string());
    let step = |label, exe, mut args: Vec<Arg>| {
        args.extend(cfg());
        Step { label, exe, args }
    };
    vec![
        step("prepare", "cream-prepare", vec![]),
        step("sft", "cream-train", vec![l("sft"), l("--prompts"), Out("prepare"), l("--model"), base.clone()]),
        step("generate", "cream-generate", vec![l("--prompts"), Out("prepare"), l("--model"), Out("sft"), l("--iteration"), l("1")]),
        step("judge", "cream-judge", vec![l("--samples"), Out("generate"), l("--mode"), l("dpo"), l("--policy"), Out("sft"), l("--reference"), base.clone()]),
        step("judge_prev", "cream-judge", vec![l("--samples"), Out("generate"), l("--mode"), l("likelihood"), l("--policy"), base.clone()]),
        step("consistency", "cream-consistency", vec![l("--current"), Out("judge"), l("--previous"), Out("judge_prev")]),
        step("pair", "cream-pair", vec![l("--samples"), Out("generate"), l("--rewards"), Out("judge"), l("--consistency"), Out("consistency")]),
        step("dpo", "cream-train", vec![l("dpo"), l("--pairs"), Out("pair"), l("--model"), Out("sft")]),
        step("eval0", "cream-eval", vec![l("--prompts"), Out("prepare"), l("--model"), base]),
        step("eval1", "cream-eval", vec![l("--prompts"), Out("prepare"), l("--model"), Out("sft")]),
        step("eval2", "cream-eval", vec![l("--prompts"), Out("prepare"), l("--model"), Out("dpo")]),
    ]
}

/// The arguments of `step` with earlier outputs filled in from `done` (label -> artifact path).
pub fn resolve(step: &Step, done: &BTreeMap<&'static str, String>) -> Vec<String> {
    step.args
        .iter()
        .map(|a| match a {
            Arg::Lit(s) => s.clone(),
            Arg::Out(label) => done.get(label).unwrap_or_else(|| panic!("{label} has not run")).clone(),
        })
        .collect()
}

/// Runs the tiny loop into `artifacts`; returns label -> artifact path.
pub fn run_tiny(artifacts: &Path, config: &Path) -> BTreeMap<&'static str, String> {
    let mut done = BTreeMap::new();
    for step in tiny_steps(config) {
        let args = resolve(&step, &done);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let path = last_line(&run(step.exe, &args, artifacts, &[]), step.label);
        done.insert(step.label, path);
    }
    done
}

/// Every file under `root` (relative path -> content hash), except lock files: what a failed
/// command must leave unchanged.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries {
            let p = e.unwrap().path();
            if p.file_name().is_some_and(|n| n == ".locks") {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, cream_core::hash_file(&p).unwrap());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The store-relative `<stage>/<id>` of an artifact path.
pub fn rel_id(path: &str) -> String {
    let p = Path::new(path);
    let id = p.file_name().unwrap().to_str().unwrap();
    let stage = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
    format!("{stage}/{id}")
}

/// Asserts that the artifacts at `a` and `b` have the same id and byte-identical files (the
/// manifest's run-dependent fields, wall and CPU time, peak memory and creation time, aside).
pub fn assert_same_artifact(label: &str, a: &str, b: &str) {
    assert_eq!(rel_id(a), rel_id(b), "{label}: same inputs, same artifact id");
    let manifest = |dir: &str| -> serde_json::Value {
        let mut m: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(Path::new(dir).join("manifest.json")).unwrap()).unwrap();
        let obj = m.as_object_mut().unwrap();
        for run_dependent in ["wall_time_s", "cpu_time_s", "peak_rss_mb", "created_at"] {
            obj.remove(run_dependent);
        }
        m
    };
    let (ma, mb) = (manifest(a), manifest(b));
    assert_eq!(ma, mb, "{label}: manifests differ");
    for file in ma["files"].as_object().unwrap().keys() {
        let (fa, fb) = (fs::read(Path::new(a).join(file)).unwrap(), fs::read(Path::new(b).join(file)).unwrap());
        assert!(fa == fb, "{label}: {file} differs between {a} and {b}");
    }
}
