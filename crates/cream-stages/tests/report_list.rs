//! `report::list_runs` (`cream-report --list`): the pipeline runs of a store, newest first, with
//! their name, iterations, models and config, read from the `report` artifacts.

use std::fs;
use std::path::Path;

use cream_core::{ArtifactSpec, InputRef, ProduceOutput, Store, hash_bytes};
use cream_stages::report::{self, RunSummary};
use serde_json::{Value, json};

/// A `report` artifact of a run named `name` with `iterations` iterations (and `iterations + 2`
/// evaluated models), asked for by `config`, dated `created_at`.
fn publish(store: &Store, name: &str, iterations: usize, config: Option<&str>, created_at: &str) -> std::path::PathBuf {
    let input = |role: String, stage: &str| InputRef { id: hash_bytes(role.as_bytes()), name: role, stage: stage.into() };
    let mut inputs = Vec::new();
    for t in 1..=iterations {
        // Iteration t trains model t + 1 (the roles cream-report gives).
        inputs.push(input(format!("consistency{}", t + 1), "consistency"));
        inputs.push(input(format!("pairs{}", t + 1), "pair"));
        inputs.push(input(format!("train{}", t + 1), "train"));
    }
    for m in 0..iterations + 2 {
        inputs.push(input(format!("eval{m}"), "eval"));
        inputs.push(input(format!("mc{m}"), "eval"));
    }
    inputs.push(input("final_consistency".into(), "consistency"));
    let spec = ArtifactSpec { stage: cream_stages::names::stage::REPORT.into(), schema_version: 2, params: json!({"name": name}), inputs };
    let extra = config.map_or(Value::Null, |c| json!({ report::CONFIG_KEY: c }));
    let a = store
        .produce(&spec, "test", "cpu", |dir| {
            fs::write(dir.join("report.md"), name)?;
            Ok(ProduceOutput { extra, ..Default::default() })
        })
        .unwrap()
        .artifact;
    set_created_at(&a.dir, created_at);
    a.dir
}

/// Dates an artifact (`created_at` is a descriptive field: not in the key, not verified).
fn set_created_at(dir: &Path, at: &str) {
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    m["created_at"] = json!(at);
    fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

#[test]
fn runs_are_listed_newest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("artifacts")).unwrap();
    assert_eq!(report::list_runs(&store).unwrap(), Vec::new(), "an empty store has no runs");

    let old = publish(&store, "smoke", 2, Some("pipelines/smoke.toml"), "2026-12-01T09:00:00Z");
    let new = publish(&store, "cream", 3, Some("pipelines/cream.toml"), "2026-12-02T17:30:00Z");
    let mid = publish(&store, "srlm", 1, None, "2026-12-02T08:00:00Z");
    let runs = report::list_runs(&store).unwrap();
    let want = |created_at: &str, name: &str, config: Option<&str>, iterations, dir: &Path| RunSummary {
        created_at: created_at.into(),
        name: name.into(),
        config: config.map(str::to_string),
        iterations,
        models: iterations + 2,
        dir: dir.to_path_buf(),
    };
    assert_eq!(
        runs,
        vec![
            want("2026-12-02T17:30:00Z", "cream", Some("pipelines/cream.toml"), 3, &new),
            want("2026-12-02T08:00:00Z", "srlm", None, 1, &mid),
            want("2026-12-01T09:00:00Z", "smoke", Some("pipelines/smoke.toml"), 2, &old),
        ]
    );

    let table = report::runs_table(&runs);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("created (UTC)") && lines[0].contains("iterations"), "{table}");
    assert!(lines[1].starts_with("2026-12-02T17:30:00Z  cream") && lines[1].ends_with(&new.display().to_string()), "{table}");
    assert!(lines[2].contains(" srlm ") && lines[2].contains(" - "), "no recorded config shows as -: {table}");
    // Columns line up: every row's report path starts where the header's "report" does.
    let col = lines[0].find("report").unwrap();
    assert!(lines[1..].iter().all(|l| l[col..].starts_with(tmp.path().to_str().unwrap())), "{table}");
}
