//! The shared flags of the stage binaries: enum-valued flags list their values and refuse a typo
//! with clap's suggestion; a stage run without --config says which config it uses.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn run(exe: &str, args: &[&str], artifacts: &std::path::Path) -> Output {
    Command::new(PathBuf::from(env!("CARGO_BIN_EXE_cream-prepare")).with_file_name(exe))
        .args(args)
        .current_dir(root())
        .env("CREAM_ARTIFACTS", artifacts)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_judge_mode_is_refused_listing_the_values() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run("cream-judge", &["--samples", "x", "--policy", "y", "--mode", "dpoo"], tmp.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in ["invalid value 'dpoo' for '--mode <MODE>'", "[possible values: dpo, likelihood, llm-judge]", "a similar value exists: 'dpo'"] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    let help = run("cream-judge", &["--help"], tmp.path());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{}", stderr(&help));
    for needle in ["Possible values:", "- dpo:", "- likelihood:", "- llm-judge:"] {
        assert!(text.contains(needle), "{needle:?} not in --help:\n{text}");
    }
}

#[test]
fn the_default_config_is_announced() {
    let tmp = tempfile::tempdir().unwrap();
    let note = "note: no --config given; using pipelines/smoke.toml";
    // The inputs do not exist: the stage reads its config, then fails on its first input.
    let stage = ["--current", "judge/missing", "--previous", "judge/missing"];
    let out = run("cream-consistency", &stage, tmp.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(note), "{note:?} not in:\n{err}");
    assert!(err.contains("judge/missing"), "the stage went on to its input:\n{err}");

    for extra in [&["--config", "pipelines/smoke.toml"][..], &["--quiet"][..]] {
        let args: Vec<&str> = stage.iter().chain(extra).copied().collect();
        let out = run("cream-consistency", &args, tmp.path());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains("note:"), "{extra:?}: {err}");
    }
}

#[test]
fn report_list_shows_the_runs_of_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run("cream-report", &["--list"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty() && stderr(&out).contains("no pipeline runs"), "{}", stderr(&out));

    let store = cream_core::Store::open(tmp.path()).unwrap();
    let spec = cream_core::ArtifactSpec {
        stage: "report".into(),
        schema_version: 2,
        params: serde_json::json!({"name": "yesterday"}),
        inputs: vec![],
    };
    let a = store
        .produce(&spec, "test", "cpu", |dir| {
            std::fs::write(dir.join("report.md"), "r")?;
            Ok(cream_core::ProduceOutput { extra: serde_json::json!({"config": "pipelines/x.toml"}), ..Default::default() })
        })
        .unwrap()
        .artifact;
    let out = run("cream-report", &["--list"], tmp.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("note:"), "--list reads no config: {}", stderr(&out));
    let row = text.lines().nth(1).unwrap_or_default();
    for needle in ["yesterday", "pipelines/x.toml", &a.dir.display().to_string()] {
        assert!(row.contains(needle), "{needle:?} not in:\n{text}");
    }
}
