//! End to end: `cream-score` on the default model reproduces the golden vectors, and bad input
//! fails with an error that names the line.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn model() -> PathBuf {
    let p = root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run `just setup` first", p.display());
    p
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models"]
fn cream_score_matches_golden() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("../shared/golden/smollm2_logprobs.json")).unwrap(),
    )
    .unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = cases
        .iter()
        .map(|c| serde_json::json!({"id": c["id"], "prompt": c["prompt"], "response": c["response"]}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cream-score"))
        .args(["--model".as_ref(), model().as_os_str(), "--input".as_ref(), input.as_os_str(), "--quiet".as_ref()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), cases.len());
    for (row, c) in rows.iter().zip(cases) {
        assert_eq!(row["id"], c["id"], "output order follows input order");
        assert_eq!(row["token_ids"], c["token_ids"]);
        assert_eq!(row["score_start"], c["score_start"]);
        let got = row["token_logprobs"].as_array().unwrap();
        let want = c["token_logprobs"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 2e-4, "{}: {a} vs {b}", c["id"]);
        }
        assert!((row["sum_logprob"].as_f64().unwrap() - c["sum_logprob"].as_f64().unwrap()).abs() < 1e-3);
        assert!((row["mean_logprob"].as_f64().unwrap() - c["mean_logprob"].as_f64().unwrap()).abs() < 2e-4);
    }
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models"]
fn cream_score_rejects_a_bad_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"id\": 1, \"prompt\": \"a\", \"response\": \"b\"}\n{\"id\": 2, \"prompt\": \"a\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cream-score"))
        .args(["--model".as_ref(), model().as_os_str(), "--input".as_ref(), input.as_os_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl line 2") && err.contains("response"), "{err}");
    assert!(out.stdout.is_empty(), "nothing is printed for a bad input");
}

#[test]
fn cream_score_reports_a_missing_model_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": 1, \"prompt\": \"a\", \"response\": \"b\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cream-score"))
        .args(["--model", "/nonexistent/model.gguf", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf") && err.contains("does not exist"), "{err}");
}
