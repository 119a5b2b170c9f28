//! The artifact store: publish, cache hits, crash safety, verification, locking, traversal, gc.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use std::{env, thread};

use anyhow::{Result, bail};
use cream_core::{
    Artifact, ArtifactSpec, InputRef, ProduceOutput, RewardRow, Store, StoreError, Table, Verify,
    hash_bytes, read_table, write_table,
};
use serde_json::json;

fn spec(tag: &str) -> ArtifactSpec {
    ArtifactSpec {
        stage: "judge".to_owned(),
        schema_version: RewardRow::SCHEMA_VERSION,
        params: json!({"tag": tag, "beta": 0.1}),
        inputs: vec![InputRef {
            name: "samples".to_owned(),
            stage: "generate".to_owned(),
            id: hash_bytes(b"samples"),
        }],
    }
}

fn rewards() -> Vec<RewardRow> {
    (0..3)
        .map(|i| RewardRow {
            prompt_id: format!("p{i}"),
            sample_idx: i,
            mode: "implicit".to_owned(),
            s_policy: -1.5 * f64::from(i),
            s_ref: (i % 2 == 0).then_some(0.25),
            n_scored: 7,
            reward: 0.5 * f64::from(i),
        })
        .collect()
}

/// A stage's work: a table and a text file.
fn work(dir: &Path) -> Result<ProduceOutput> {
    let rows = write_table(&dir.join("rewards.parquet"), &rewards())?;
    fs::write(dir.join("notes.txt"), "hello")?;
    Ok(ProduceOutput {
        extra: json!({"mean_reward": 0.5}),
        ..Default::default()
    }
    .with_rows("rewards.parquet", rows))
}

fn store() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("artifacts")).unwrap();
    (tmp, store)
}

fn produce(store: &Store, tag: &str) -> Artifact {
    store
        .produce(&spec(tag), "test", "cpu", work)
        .unwrap()
        .artifact
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn temp_dirs(store: &Store) -> Vec<PathBuf> {
    let stage = store.root().join("judge");
    entries(&stage)
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .map(|n| stage.join(n))
        .collect()
}

fn message(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

/// Runs this test binary's test `name` as a child process with `env` set.
fn spawn_self(name: &str, env: &[(&str, &Path)]) -> std::process::Child {
    let mut cmd = Command::new(env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn wait_for(path: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "child exited before {}",
            path.display()
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn produce_publishes_then_hits_cache() {
    let (_tmp, store) = store();
    let calls = AtomicUsize::new(0);
    let counted = |dir: &Path| {
        calls.fetch_add(1, Ordering::SeqCst);
        work(dir)
    };
    let first = store.produce(&spec("a"), "v1", "cpu", counted).unwrap();
    assert!(!first.cache_hit);
    let a = &first.artifact;
    assert_eq!(*a.id(), spec("a").id());
    assert_eq!(a.dir, store.root().join("judge").join(a.id().as_str()));
    assert_eq!(
        entries(&a.dir),
        ["manifest.json", "notes.txt", "rewards.parquet"]
    );
    let m = &a.manifest;
    assert_eq!(
        (m.format.as_str(), m.stage.as_str(), m.schema_version),
        ("cream-manifest/1", "judge", 1)
    );
    assert_eq!((m.code_version.as_str(), m.backend.as_str()), ("v1", "cpu"));
    assert_eq!(m.params, spec("a").params);
    assert_eq!(m.inputs, spec("a").inputs);
    assert_eq!(m.extra, json!({"mean_reward": 0.5}));
    assert_eq!(m.files["rewards.parquet"].rows, Some(3));
    assert_eq!(m.files["notes.txt"].rows, None);
    assert_eq!(m.files["notes.txt"].blake3, hash_bytes(b"hello"));
    assert_eq!(m.files["notes.txt"].bytes, 5);
    assert!(m.wall_time_s >= 0.0);
    assert!(m.cpu_time_s.is_some_and(|c| c >= 0.0), "CPU seconds recorded: {:?}", m.cpu_time_s);
    assert!(m.peak_rss_mb.is_some_and(|r| r > 1.0), "peak RSS recorded: {:?}", m.peak_rss_mb);
    assert!(
        m.created_at.len() == 20 && m.created_at.ends_with('Z'),
        "{}",
        m.created_at
    );
    let on_disk: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(a.dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk["id"], json!(a.id().as_str()));

    assert_eq!(
        read_table::<RewardRow>(&a.path("rewards.parquet").unwrap()).unwrap(),
        rewards()
    );
    assert!(message(&a.path("samples.parquet").unwrap_err()).contains("samples.parquet"));
    assert_eq!(a.as_input("rewards").id, a.id().to_string());

    let again = store.produce(&spec("a"), "v2", "gpu", counted).unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.artifact.manifest, *m);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    assert_eq!(store.lookup(&spec("a")).unwrap().unwrap().manifest, *m);
    assert!(store.lookup(&spec("b")).unwrap().is_none());
    let by_id = store
        .open_artifact(&format!("judge/{}", a.id()), Some("judge"))
        .unwrap();
    let by_path = store.open_artifact(a.dir.to_str().unwrap(), None).unwrap();
    assert_eq!((by_id.dir, by_path.manifest), (a.dir.clone(), m.clone()));
    let wrong = store
        .open_artifact(a.dir.to_str().unwrap(), Some("generate"))
        .unwrap_err();
    assert!(
        matches!(wrong.downcast_ref(), Some(StoreError::WrongStage { .. })),
        "{wrong:#}"
    );

    produce(&store, "b");
    let listed: Vec<_> = store
        .list("judge")
        .unwrap()
        .into_iter()
        .map(|a| a.id().clone())
        .collect();
    let mut expected = vec![spec("a").id(), spec("b").id()];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(store.list("generate").unwrap().is_empty());
    assert!(temp_dirs(&store).is_empty());
}

#[test]
fn failing_or_panicking_work_publishes_nothing() {
    let (_tmp, store) = store();
    let err = store
        .produce(&spec("a"), "test", "cpu", |dir| {
            fs::write(dir.join("rewards.parquet"), "partial")?;
            bail!("model exploded")
        })
        .unwrap_err();
    assert!(message(&err).contains("model exploded"), "{err:#}");
    let panicked = std::panic::catch_unwind(|| {
        store.produce(&spec("a"), "test", "cpu", |dir| {
            fs::write(dir.join("rewards.parquet"), "partial").unwrap();
            panic!("boom")
        })
    });
    assert!(panicked.is_err());
    assert!(store.lookup(&spec("a")).unwrap().is_none());
    assert_eq!(entries(&store.root().join("judge")), [".locks"]);
    assert!(
        !store
            .produce(&spec("a"), "test", "cpu", work)
            .unwrap()
            .cache_hit
    );
}

#[test]
fn bad_outputs_are_refused() {
    let (_tmp, store) = store();
    type Work = fn(&Path) -> Result<ProduceOutput>;
    let cases: [(Work, &str); 5] = [
        (
            |d| {
                fs::create_dir(d.join("sub"))?;
                Ok(ProduceOutput::default())
            },
            "not a regular file",
        ),
        (
            |d| {
                fs::write(d.join(".hidden"), "x")?;
                Ok(ProduceOutput::default())
            },
            ".hidden",
        ),
        (
            |d| {
                fs::write(d.join("manifest.json"), "{}")?;
                Ok(ProduceOutput::default())
            },
            "manifest.json",
        ),
        (
            |d| {
                std::os::unix::fs::symlink("/etc/passwd", d.join("link"))?;
                Ok(ProduceOutput::default())
            },
            "not a regular file",
        ),
        (
            |_| Ok(ProduceOutput::default().with_rows("ghost.parquet", 1)),
            "ghost.parquet",
        ),
    ];
    for (f, needle) in cases {
        let err = store.produce(&spec("a"), "test", "cpu", f).unwrap_err();
        assert!(message(&err).contains(needle), "{needle}: {err:#}");
        assert_eq!(entries(&store.root().join("judge")), [".locks"]);
    }
    let err = store.produce(
        &ArtifactSpec {
            stage: "../x".into(),
            ..spec("a")
        },
        "t",
        "cpu",
        work,
    );
    assert!(matches!(
        err.unwrap_err().downcast_ref(),
        Some(StoreError::InvalidStage(_))
    ));
}

/// A full disk (ENOSPC, `io::ErrorKind::StorageFull`) mid-write: the table goes to /dev/full,
/// which refuses every write with ENOSPC. The error says what happened and what to do, and nothing
/// is published. An error that merely mentions the words (no `io::Error` behind it) gets no hint.
#[cfg(target_os = "linux")]
#[test]
fn disk_full_is_named_and_publishes_nothing() {
    let (_tmp, store) = store();
    let err = store
        .produce(&spec("a"), "test", "cpu", |dir| {
            std::os::unix::fs::symlink("/dev/full", dir.join("rewards.parquet"))?;
            work(dir)
        })
        .unwrap_err();
    let msg = message(&err);
    for needle in [
        "rewards.parquet",
        "No space left on device",
        "nothing was published",
        "the disk is full",
        "just gc",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }
    assert_eq!(entries(&store.root().join("judge")), [".locks"]);

    let err = store
        .produce(&spec("a"), "test", "cpu", |_| {
            bail!("No space left on device (os error 28), says the message")
        })
        .unwrap_err();
    assert!(!message(&err).contains("the disk is full"), "{err:#}");
}

const CRASH_ENV: &str = "CREAM_TEST_CRASH_ROOT";

#[test]
fn crash_inside_work_leaves_nothing_finished() {
    if let Some(root) = env::var_os(CRASH_ENV) {
        // Child: start producing, signal readiness mid-write, and wait to be killed.
        let ready = PathBuf::from(env::var_os("CREAM_TEST_READY").unwrap());
        let store = Store::open(root).unwrap();
        let _ = store.produce(&spec("crash"), "test", "cpu", |dir| {
            let mut f = File::create(dir.join("rewards.parquet"))?;
            f.write_all(b"PAR1 half a file")?;
            f.sync_all()?;
            fs::write(&ready, "")?;
            thread::sleep(Duration::from_secs(600));
            bail!("not killed")
        });
        panic!("the child should have been killed");
    }
    let (tmp, store) = store();
    let ready = tmp.path().join("ready");
    let mut child = spawn_self(
        "crash_inside_work_leaves_nothing_finished",
        &[(CRASH_ENV, store.root()), ("CREAM_TEST_READY", &ready)],
    );
    wait_for(&ready, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();

    let id = spec("crash").id();
    let leftovers = temp_dirs(&store);
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert_eq!(entries(&leftovers[0]), ["rewards.parquet"]);
    assert!(!store.root().join("judge").join(id.as_str()).exists());
    assert!(store.lookup(&spec("crash")).unwrap().is_none());
    let err = store
        .open_artifact(leftovers[0].to_str().unwrap(), None)
        .unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(StoreError::NotFinished { .. })),
        "{err:#}"
    );
    assert!(message(&err).contains("not a finished artifact") && message(&err).contains("just gc"));

    let rerun = store.produce(&spec("crash"), "test", "cpu", work).unwrap();
    assert!(!rerun.cache_hit);
    assert_eq!(
        read_table::<RewardRow>(&rerun.artifact.path("rewards.parquet").unwrap()).unwrap(),
        rewards()
    );

    let report = store.gc().unwrap();
    assert_eq!(report.removed, leftovers);
    assert!(report.in_use.is_empty());
    assert!(temp_dirs(&store).is_empty());
    store
        .open_artifact(&format!("judge/{id}"), Some("judge"))
        .unwrap();
    assert_eq!(store.gc().unwrap(), Default::default());
}

#[test]
fn gc_spares_live_writers_and_finished_artifacts() {
    let (_tmp, store) = store();
    let finished = produce(&store, "done");
    // A directory named like an artifact but without manifest: garbage.
    let stray = store.root().join("judge").join(spec("stray").id().as_str());
    fs::create_dir(&stray).unwrap();
    fs::write(stray.join("rewards.parquet"), "x").unwrap();
    let err = store
        .produce(&spec("stray"), "test", "cpu", work)
        .unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(StoreError::NotFinished { .. })),
        "{err:#}"
    );

    let (inside, release) = (Barrier::new(2), Barrier::new(2));
    thread::scope(|s| {
        let writer = s.spawn(|| {
            store.produce(&spec("live"), "test", "cpu", |dir| {
                inside.wait();
                release.wait();
                work(dir)
            })
        });
        inside.wait();
        let live = temp_dirs(&store);
        let report = store.gc();
        let survived = live.iter().all(|p| p.exists());
        release.wait(); // before any assertion, so that a failure cannot leave the writer waiting
        let report = report.unwrap();
        assert_eq!(report.in_use, live);
        assert_eq!(report.removed, std::slice::from_ref(&stray));
        assert!(survived && live.len() == 1, "{live:?}");
        assert!(!writer.join().unwrap().unwrap().cache_hit);
    });
    assert_eq!(store.gc().unwrap(), Default::default());
    store
        .open_artifact(finished.dir.to_str().unwrap(), Some("judge"))
        .unwrap();
    assert!(
        !store
            .produce(&spec("stray"), "test", "cpu", work)
            .unwrap()
            .cache_hit
    );
}

/// Expects `open_artifact` of `a` to fail with a message containing every needle, and `produce`
/// to refuse to overwrite it without calling the work function.
fn assert_refused(store: &Store, a: &Artifact, tag: &str, needles: &[&str]) {
    let err = store
        .open_artifact(a.dir.to_str().unwrap(), Some("judge"))
        .unwrap_err();
    for needle in needles
        .iter()
        .chain(&[a.id().as_str(), "delete the directory"])
    {
        assert!(message(&err).contains(needle), "{needle:?} not in: {err:#}");
    }
    assert!(
        matches!(err.downcast_ref(), Some(StoreError::Corrupt { .. })),
        "{err:#}"
    );
    assert!(store.lookup(&spec(tag)).is_err());
    let err = store
        .produce(&spec(tag), "t", "cpu", |_| panic!("must not rerun"))
        .unwrap_err();
    assert!(message(&err).contains(a.id().as_str()), "{err:#}");
}

fn edit_manifest(a: &Artifact, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = a.dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut m);
    fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

#[test]
fn tampering_is_detected() {
    let (_tmp, store) = store();

    let a = produce(&store, "flip");
    let file = a.dir.join("rewards.parquet");
    let mut bytes = fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&file, &bytes).unwrap();
    assert_refused(
        &store,
        &a,
        "flip",
        &["file rewards.parquet has blake3", "but manifest.json says"],
    );
    // The cheap mode checks sizes only.
    let cheap = store.clone().with_verify(Verify::Sizes);
    cheap.open_artifact(a.dir.to_str().unwrap(), None).unwrap();
    fs::write(&file, &bytes[1..]).unwrap();
    let err = cheap
        .open_artifact(a.dir.to_str().unwrap(), None)
        .unwrap_err();
    assert!(
        message(&err).contains("file rewards.parquet has"),
        "{err:#}"
    );

    let a = produce(&store, "delete");
    fs::remove_file(a.dir.join("notes.txt")).unwrap();
    assert_refused(&store, &a, "delete", &["file notes.txt is missing"]);

    let a = produce(&store, "traverse");
    edit_manifest(&a, |m| {
        let files = m["files"].as_object_mut().unwrap();
        let entry = files.remove("notes.txt").unwrap();
        files.insert("../x".into(), entry);
    });
    assert_refused(
        &store,
        &a,
        "traverse",
        &["\"../x\"", "not a plain file name"],
    );

    for (field, value) in [("id", "../../../etc"), ("stage", "../x"), ("id", "/etc/passwd")] {
        let a = produce(&store, &format!("input-{field}-{value}"));
        edit_manifest(&a, |m| m["inputs"][0][field] = json!(value));
        assert_refused(
            &store,
            &a,
            &format!("input-{field}-{value}"),
            &["lists input \"samples\"", "not a <stage>/<id>"],
        );
    }

    let a = produce(&store, "id");
    edit_manifest(&a, |m| m["id"] = json!(spec("other").id().as_str()));
    assert_refused(&store, &a, "id", &["says id", "but the directory is named"]);

    let a = produce(&store, "stage");
    edit_manifest(&a, |m| m["stage"] = json!("generate"));
    assert_refused(&store, &a, "stage", &["says stage \"generate\""]);

    let a = produce(&store, "extra");
    fs::write(a.dir.join("surprise.txt"), "x").unwrap();
    assert_refused(&store, &a, "extra", &["surprise.txt", "not listed"]);

    let a = produce(&store, "json");
    fs::write(a.dir.join("manifest.json"), "{ not json").unwrap();
    assert_refused(
        &store,
        &a,
        "json",
        &["manifest.json is not a valid manifest"],
    );

    let a = produce(&store, "format");
    edit_manifest(&a, |m| m["format"] = json!("cream-manifest/99"));
    assert_refused(&store, &a, "format", &["cream-manifest/99"]);
}

#[test]
fn paths_outside_the_store_are_refused() {
    let (tmp, store) = store();
    let a = produce(&store, "real");
    // A valid-looking artifact outside the store, reached through a symlink inside it.
    let outside = tmp.path().join("outside").join(spec("evil").id().as_str());
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    fs::rename(&a.dir, &outside).unwrap();
    let link = store.root().join("judge").join(spec("evil").id().as_str());
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let link_to_root = store.root().join("judge").join(spec("root").id().as_str());
    std::os::unix::fs::symlink("/", &link_to_root).unwrap();

    let bad_ids = [
        "../../etc".to_owned(),
        "/etc".to_owned(),
        "/".to_owned(),
        outside.to_str().unwrap().to_owned(),
        format!("judge/{}", spec("evil").id()),
        link.to_str().unwrap().to_owned(),
        format!("judge/{}", spec("root").id()),
        format!("judge/{}", "z".repeat(64)),
        format!("judge/../../{}", spec("real").id()),
        format!(
            "{}/../../outside/{}",
            store.root().display(),
            spec("evil").id()
        ),
        store.root().to_str().unwrap().to_owned(),
        store.root().join("judge").to_str().unwrap().to_owned(),
        store
            .root()
            .join("judge/.locks")
            .to_str()
            .unwrap()
            .to_owned(),
        format!("JUDGE/{}", spec("real").id()),
    ];
    for bad in &bad_ids {
        let err = store.open_artifact(bad, None).unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(StoreError::NotInStore { .. })),
            "{bad}: {err:#}"
        );
        assert!(
            message(&err).contains("not an artifact of the store"),
            "{bad}: {err:#}"
        );
    }
    assert!(store.lookup(&spec("evil")).is_err());
    assert!(
        store
            .produce(&spec("evil"), "t", "cpu", |_| panic!("must not run"))
            .is_err()
    );
}

const RACE_ENV: &str = "CREAM_TEST_RACE_ROOT";

/// The work of a racing writer: log the invocation, then take a while.
fn slow_work(dir: &Path, log: &Path) -> Result<ProduceOutput> {
    writeln!(
        OpenOptions::new().create(true).append(true).open(log)?,
        "invoked"
    )?;
    thread::sleep(Duration::from_millis(300));
    work(dir)
}

#[test]
fn concurrent_writers_of_one_key_produce_once() {
    let var = |k: &str| PathBuf::from(env::var_os(k).unwrap());
    if let Some(root) = env::var_os(RACE_ENV) {
        // Child: announce readiness, wait for the start signal, produce, report.
        fs::write(var("CREAM_TEST_READY"), "").unwrap();
        while !var("CREAM_TEST_GO").exists() {
            thread::sleep(Duration::from_millis(1));
        }
        let log = var("CREAM_TEST_LOG");
        let p = Store::open(root)
            .unwrap()
            .produce(&spec("race"), "t", "cpu", |d| slow_work(d, &log))
            .unwrap();
        println!("RESULT {} {}", p.artifact.id(), p.cache_hit);
        return;
    }
    let (tmp, store) = store();
    let (log, go) = (tmp.path().join("log"), tmp.path().join("go"));
    let mut children: Vec<_> = (0..2)
        .map(|k| {
            let ready = tmp.path().join(format!("ready{k}"));
            let child = spawn_self(
                "concurrent_writers_of_one_key_produce_once",
                &[
                    (RACE_ENV, store.root()),
                    ("CREAM_TEST_READY", &ready),
                    ("CREAM_TEST_GO", &go),
                    ("CREAM_TEST_LOG", &log),
                ],
            );
            (child, ready)
        })
        .collect();
    for (child, ready) in &mut children {
        wait_for(ready, child);
    }
    let threads = 8;
    let calls = AtomicUsize::new(0);
    let start = Arc::new(Barrier::new(threads + 1));
    let results: Vec<(String, bool)> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (start, store, calls, log) = (Arc::clone(&start), &store, &calls, &log);
                s.spawn(move || {
                    start.wait();
                    let p = store
                        .produce(&spec("race"), "t", "cpu", |d| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            slow_work(d, log)
                        })
                        .unwrap();
                    (p.artifact.id().to_string(), p.cache_hit)
                })
            })
            .collect();
        fs::write(&go, "").unwrap();
        start.wait();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = results;
    for (child, _) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        // The harness may print "test <name> ... " on the same line first.
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("RESULT "))
            .expect("child result")
            .1;
        let (id, hit) = line.split_once(' ').unwrap();
        all.push((id.to_owned(), hit == "true"));
    }
    let invocations = fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(invocations, 1, "work ran {invocations} times");
    assert!(calls.load(Ordering::SeqCst) <= 1);
    assert_eq!(all.len(), threads + 2);
    assert!(
        all.iter()
            .all(|(id, _)| *id == spec("race").id().to_string()),
        "{all:?}"
    );
    assert_eq!(all.iter().filter(|(_, hit)| !hit).count(), 1, "{all:?}");
    let a = store
        .open_artifact(&format!("judge/{}", spec("race").id()), Some("judge"))
        .unwrap();
    assert_eq!(
        read_table::<RewardRow>(&a.path("rewards.parquet").unwrap()).unwrap(),
        rewards()
    );
    assert!(temp_dirs(&store).is_empty());
}

/// The work's CPU time is measured around the work only: a stage that burns CPU records it.
#[test]
fn manifest_records_the_work_cpu_time() {
    let (_tmp, store) = store();
    // A fixed amount of work (not a time span: CPU time does not depend on machine load):
    // 3e8 dependent multiply-adds take ~0.1 s of CPU on any current core.
    let busy = |dir: &Path| {
        let mut x = 0u64;
        for _ in 0..300_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        work(dir)
    };
    let m = store.produce(&spec("busy"), "v1", "cpu", busy).unwrap().artifact.manifest;
    let cpu = m.cpu_time_s.unwrap();
    assert!(cpu >= 0.02, "3e8 multiply-adds recorded {cpu} CPU s");
    // A manifest written before these fields existed still reads (they are optional).
    let mut v: serde_json::Value = serde_json::to_value(&m).unwrap();
    v.as_object_mut().unwrap().remove("cpu_time_s");
    v.as_object_mut().unwrap().remove("peak_rss_mb");
    let old: cream_core::Manifest = serde_json::from_value(v).unwrap();
    assert_eq!((old.cpu_time_s, old.peak_rss_mb), (None, None));
}
