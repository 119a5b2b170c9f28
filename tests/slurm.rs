//! The Slurm executor on a real (throwaway, single-node) Slurm cluster started by the test
//! (scripts/slurm-local.sh; `just test` installs Debian's Slurm packages). On the smoke pipeline (one
//! iteration) with 2 shards per shardable stage:
//! - a Slurm run produces the same artifact keys and byte-identical files as a local run;
//! - an array task cancelled mid-run (scancel) stops the run with a message naming the stage, the
//!   shard and its log file, and the rerun resubmits only what is missing;
//! - a training job killed mid-run and requeued (`scontrol requeue`, what a job does at its time
//!   limit) resumes from its checkpoint and publishes the same model as an uninterrupted run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cream-prepare")).parent().unwrap().to_path_buf()
}

/// A running single-node cluster; stopped (jobs cancelled, daemons ended) when dropped.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let script = root().join("scripts/slurm-local.sh");
        let out = Command::new("bash").arg(&script).arg("start").arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "cannot start the test Slurm cluster (install it with `bash scripts/slurm-local.sh install`; \
             `just test` does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let conf = stdout.trim().strip_prefix("export SLURM_CONF=").expect("SLURM_CONF line").to_string();
        Cluster { dir: dir.to_path_buf(), conf }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `(job id, job name, state)` of every job in the queue (array tasks as `<job>_<task>`).
    fn queue(&self) -> Vec<(String, String, String)> {
        self.output("squeue", &["-h", "-o", "%i %j %T"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(root().join("scripts/slurm-local.sh")).arg("stop").arg(&self.dir).status();
    }
}

/// The loop (`scripts/iterate.sh`, which `just iterate` runs) on `cfg` with `executor`, started.
fn iterate(cluster: &Cluster, cfg: &Path, executor: &str, store: &Path, logs: &Path) -> Child {
    cluster
        .cmd("bash")
        .arg(root().join("scripts/iterate.sh"))
        .arg(format!("pipeline={}", cfg.display()))
        .arg(format!("executor={executor}"))
        .arg(format!("bin={}", bin_dir().display()))
        .env("CREAM_ARTIFACTS", store)
        .env("CREAM_SLURM_LOGS", logs)
        .env("CREAM_SLURM_POLL", "0.2")
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, what: &str, must_succeed: bool) -> (Output, String) {
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if must_succeed {
        assert!(out.status.success(), "{what} failed:\n{log}");
    }
    (out, log)
}

/// Every finished artifact of a store: `<stage>/<id>` -> its manifest's `files` (name -> size and
/// blake3), i.e. the artifact's key and the exact bytes of everything it holds.
fn artifacts(store: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for stage in fs::read_dir(store).unwrap() {
        let stage = stage.unwrap().path();
        if !stage.is_dir() || stage.file_name().unwrap().to_str().unwrap().starts_with('.') {
            continue;
        }
        for a in fs::read_dir(&stage).unwrap() {
            let a = a.unwrap().path();
            let Ok(text) = fs::read_to_string(a.join("manifest.json")) else { continue };
            let m: serde_json::Value = serde_json::from_str(&text).unwrap();
            let key = format!("{}/{}", stage.file_name().unwrap().to_str().unwrap(), a.file_name().unwrap().to_str().unwrap());
            out.insert(key, m["files"].clone());
        }
    }
    out
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs `just test`: the default model (`just setup`) and Slurm (scripts/slurm-local.sh install)"]
fn slurm_executor_matches_local_runs_reports_failures_and_resumes_training() {
    let tmp = tempfile::tempdir().unwrap();
    let t = &tmp.path().to_path_buf();
    let cluster = Cluster::start(&t.join("cluster"));
    let smoke = fs::read_to_string(root().join("pipelines/smoke.toml")).unwrap();
    let cfg = t.join("smoke-slurm.toml");
    // Every stage one CPU, so the two shards of a stage run side by side on the 2-CPU node.
    // One iteration (the loop's every stage and both judge modes run; a second iteration would
    // repeat them and double the test's time).
    let one = smoke.replacen("iterations = 2", "iterations = 1", 1);
    assert_ne!(one, smoke);
    fs::write(&cfg, format!("{one}\n[slurm]\nshards = 2\ncpus = 1\n")).unwrap();
    let (local, slurm, logs) = (t.join("local"), t.join("slurm"), t.join("logs"));

    // 1. The local run, timed.
    let clock = Instant::now();
    let (local_out, _) = finish(iterate(&cluster, &cfg, "local", &local, &logs), "local run", true);
    let local_s = clock.elapsed().as_secs_f64();

    // 2. The Slurm run; one task of the first generate array is cancelled while it runs.
    let clock = Instant::now();
    let child = iterate(&cluster, &cfg, "slurm", &slurm, &logs);
    let task = wait_for("a running cream-generate array task", Duration::from_secs(600), || {
        cluster.queue().into_iter().find(|(id, name, state)| name == "cream-generate" && id.ends_with("_1") && state == "RUNNING")
    });
    cluster.output("scancel", &[&task.0]);
    let (out, log) = finish(child, "cancelled slurm run", false);
    assert!(!out.status.success(), "a run with a cancelled task must fail:\n{log}");
    let log_file = logs.join(format!("cream-generate-{}.out", task.0));
    for needle in ["generate shard 1/2", &format!("job {}", task.0), "CANCELLED", &format!("log: {}", log_file.display()), "Rerun"] {
        assert!(log.contains(needle), "the failure message lacks {needle:?}:\n{log}");
    }
    assert!(log_file.is_file(), "the named log file exists");

    // 3. The rerun resubmits only the cancelled shard, then finishes the whole loop.
    let (slurm_out, log) = finish(iterate(&cluster, &cfg, "slurm", &slurm, &logs), "slurm rerun", true);
    let slurm_s = clock.elapsed().as_secs_f64();
    let first_generate = log.lines().find(|l| l.contains("generate: array job")).expect("a generate array job");
    assert!(first_generate.ends_with("shards 1 of 2"), "only the cancelled shard is resubmitted: {first_generate}");

    // 4. Same keys, same bytes: every artifact of the local run is in the Slurm store, identical
    // (the Slurm store also holds the shard artifacts the merges were made from).
    let (a, b) = (artifacts(&local), artifacts(&slurm));
    assert!(a.len() >= 15, "the local run produced {} artifacts", a.len());
    let differ: Vec<String> = a
        .iter()
        .filter(|(key, files)| b.get(*key) != Some(*files))
        .map(|(key, files)| format!("{key}: local {files}, slurm {:?}", b.get(key)))
        .collect();
    if !differ.is_empty() && std::env::var_os("CREAM_TEST_KEEP").is_some() {
        eprintln!("kept {}", tmp.keep().display());
    }
    assert!(differ.is_empty(), "artifacts of the local run missing or different in the Slurm store:\n{}", differ.join("\n"));
    let last = |o: &Output| String::from_utf8_lossy(&o.stdout).lines().last().unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(last(&local_out), last(&slurm_out), "the same report artifact");
    let shard_keys = b.keys().filter(|k| !a.contains_key(*k)).count();
    eprintln!("smoke pipeline: local {local_s:.0} s, slurm (2 shards, incl. the cancelled run) {slurm_s:.0} s; {} artifacts, {shard_keys} shard artifacts", a.len());

    // 5. A training job killed mid-run and requeued resumes from its checkpoint: the same model
    // as an uninterrupted run. SFT with 4 steps and a checkpoint every 2.
    let sft = smoke.replace("max_steps = 1\n", "max_steps = 4\ncheckpoint_every = 2\n").replace(
        "global_batch = 4\nmicro_batch = 2\nmax_steps = 4",
        "global_batch = 2\nmicro_batch = 2\nmax_steps = 4",
    );
    let sft = sft.replacen("epochs = 1", "epochs = 2", 1);
    assert!(sft.contains("epochs = 2\nglobal_batch = 2\nmicro_batch = 2\nmax_steps = 4\ncheckpoint_every = 2"), "{sft}");
    let sft_cfg = t.join("sft-resume.toml");
    fs::write(&sft_cfg, format!("{sft}\n[slurm]\ncpus = 2\n")).unwrap();
    let prepare = |store: &Path| -> String {
        let out = Command::new(bin_dir().join("cream-prepare"))
            .args(["--quiet", "--config"])
            .arg(&sft_cfg)
            .env("CREAM_ARTIFACTS", store)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string()
    };
    let base = root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    // Uninterrupted, in the local store.
    let p_local = prepare(&local);
    let out = Command::new(bin_dir().join("cream-train"))
        .args(["sft", "--quiet", "--config"])
        .arg(&sft_cfg)
        .args(["--prompts", &p_local, "--model"])
        .arg(&base)
        .env("CREAM_ARTIFACTS", &local)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let uninterrupted = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string();
    // Through the Slurm driver (scripts/slurm.sh's slurm_run, as iterate.sh calls it).
    let p_slurm = prepare(&slurm);
    let driver = format!(
        "set -euo pipefail; bin={bin}; cfg={cfg}; eval \"$(\"$bin/cream-plan\" --config \"$cfg\")\"; \
         source scripts/slurm.sh; slurm_run cream-train sft --config \"$cfg\" --prompts {p} --model {m}",
        bin = bin_dir().display(),
        cfg = sft_cfg.display(),
        p = p_slurm,
        m = base.display()
    );
    let child = cluster
        .cmd("bash")
        .args(["-c", &driver])
        .env("CREAM_ARTIFACTS", &slurm)
        .env("CREAM_SLURM_LOGS", &logs)
        .env("CREAM_SLURM_POLL", "0.2")
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt_root = slurm.join("train");
    let first_ckpt = wait_for("the first training checkpoint", Duration::from_secs(600), || {
        fs::read_dir(&ckpt_root).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().unwrap().to_str().unwrap().starts_with(".checkpoint-")
                && fs::read_dir(p).is_ok_and(|mut d| d.any(|e| e.unwrap().file_name().to_str().unwrap().starts_with("step-")))
        })
    });
    let job = wait_for("the training job", Duration::from_secs(60), || {
        cluster.queue().into_iter().find(|(_, name, state)| name == "cream-train" && state == "RUNNING")
    });
    cluster.output("scontrol", &["requeue", &job.0]);
    // A requeued job waits for a begin time; start it now.
    wait_for("the requeued job to be pending", Duration::from_secs(60), || {
        cluster.queue().into_iter().find(|(id, _, state)| *id == job.0 && state == "PENDING")
    });
    // Not within the second of the requeue: slurmd refuses a job whose credential is no newer
    // than the revocation of the killed run's ("Killing non-startable batch JobId=..: Job
    // credential revoked"; one-second resolution), which is why Slurm itself delays the restart.
    std::thread::sleep(Duration::from_secs(2));
    cluster.output("scontrol", &["update", &format!("JobId={}", job.0), "StartTime=now"]);
    let (out, log) = finish(child, "requeued training", true);
    let resumed = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string();
    let job_log = fs::read_to_string(logs.join(format!("cream-train-{}.out", job.0))).unwrap();
    assert!(job_log.contains("DUE TO JOB REQUEUE"), "the job was killed by the requeue:\n{job_log}");
    assert!(job_log.contains("restart 1"), "and ran again:\n{job_log}");
    assert!(job_log.contains("sft: resuming after step"), "from its checkpoint ({}):\n{job_log}\n{log}", first_ckpt.display());
    assert!(!first_ckpt.exists(), "a finished run removes its checkpoints");
    let (a, b) = (artifacts(&local), artifacts(&slurm));
    let key = |p: &str| {
        let p = Path::new(p);
        format!("{}/{}", p.parent().unwrap().file_name().unwrap().to_str().unwrap(), p.file_name().unwrap().to_str().unwrap())
    };
    assert_eq!(key(&uninterrupted), key(&resumed), "the same training artifact key");
    assert_eq!(a[&key(&uninterrupted)], b[&key(&resumed)], "the resumed model and metrics equal the uninterrupted ones");
}
