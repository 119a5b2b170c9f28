//! End to end: the `judge` stage's `llm-judge` mode on the real default model
//! (SmolLM2-135M-Instruct) over a synthetic `generate` artifact of 2 prompts x 2 samples:
//! both tables, statuses consistent with scores, rewards = mean of the parsed scores (0 when none
//! parses), the manifest statistics, a cache hit on rerun and batch-size independence.

use std::collections::HashMap;
use std::path::PathBuf;

use cream_core::{ArtifactSpec, JudgementRow, ProduceOutput, RewardRow, SampleRow, read_table, write_table};
use cream_stages::config::Pipeline;
use cream_stages::ctx::Ctx;
use cream_stages::judge::{self, JudgeMode, parse_score};
use serde_json::json;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn default_model() -> PathBuf {
    let path = repo_root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "default model {} is missing; run `just setup`", path.display());
    path
}

fn pipeline(batch_size: usize) -> Pipeline {
    let mut p = Pipeline::load(&repo_root().join("pipelines/smoke.toml")).expect("smoke pipeline loads");
    p.judge.judgements = 2;
    p.judge.judge_max_new_tokens = 48;
    p.generate.batch_size = batch_size;
    p.validate().expect("overridden pipeline is valid");
    p
}

fn sample(prompt_id: &str, sample_idx: u32, prompt: &str, response: &str) -> SampleRow {
    SampleRow {
        prompt_id: prompt_id.into(),
        sample_idx,
        prompt: prompt.into(),
        response: response.into(),
        token_ids: vec![1, 2, 3],
        prompt_tokens: 2,
        response_tokens: 1,
        finish_reason: "stop".into(),
        seed: 0,
    }
}

/// 2 prompts x 2 samples (one good, one poor answer each).
fn samples_rows() -> Vec<SampleRow> {
    vec![
        sample("capital", 0, "What is the capital of France?", "The capital of France is Paris."),
        sample("capital", 1, "What is the capital of France?", "I like turtles."),
        sample("sum", 0, "What is 12 + 7?", "12 + 7 = 19. Answer: 19"),
        sample("sum", 1, "What is 12 + 7?", "Numbers are hard. Answer: 21"),
    ]
}

/// A synthetic `generate` artifact holding `rows`.
fn samples_artifact_of(ctx: &Ctx, rows: Vec<SampleRow>) -> String {
    let spec = ArtifactSpec {
        stage: "generate".into(),
        schema_version: 1,
        params: json!({"synthetic": "llm_judge test", "rows": rows.len()}),
        inputs: vec![],
    };
    let a = ctx
        .produce(spec, |dir| {
            let n = write_table(&dir.join("samples.parquet"), &rows)?;
            Ok(ProduceOutput::default().with_rows("samples.parquet", n))
        })
        .unwrap();
    a.dir.to_string_lossy().into_owned()
}

/// The judge's tie rate by its definition, brute force: the fraction of distinct prompt ids for
/// which two different samples (i != j) have exactly equal rewards; 0 for no rows.
fn brute_tie_rate(rows: &[RewardRow]) -> f64 {
    let mut prompts: Vec<&str> = rows.iter().map(|r| r.prompt_id.as_str()).collect();
    prompts.sort_unstable();
    prompts.dedup();
    if prompts.is_empty() {
        return 0.0;
    }
    let tied = prompts
        .iter()
        .filter(|&&p| {
            let v: Vec<f64> = rows.iter().filter(|r| r.prompt_id == p).map(|r| r.reward).collect();
            (0..v.len()).any(|i| (0..v.len()).any(|j| i != j && v[i] == v[j]))
        })
        .count();
    tied as f64 / prompts.len() as f64
}

fn reward_row(prompt_id: &str, sample_idx: u32, reward: f64) -> RewardRow {
    RewardRow {
        prompt_id: prompt_id.into(),
        sample_idx,
        mode: "llm-judge".into(),
        s_policy: reward,
        s_ref: None,
        n_scored: 2,
        reward,
    }
}

#[test]
fn tie_rate_of_constructed_rewards() {
    // Rows of 6 prompts, interleaved: "a" ties non-adjacent samples (1, 2, 1), "b" has none,
    // "c" has one sample, "d" ties (2, 2), "e" ties at 0 = -0, "f" has distinct values only.
    let rows = vec![
        reward_row("a", 0, 1.0),
        reward_row("b", 0, 1.0),
        reward_row("a", 1, 2.0),
        reward_row("c", 0, 0.5),
        reward_row("b", 1, 2.0),
        reward_row("d", 0, 2.0),
        reward_row("a", 2, 1.0),
        reward_row("e", 0, 0.0),
        reward_row("f", 0, 4.5),
        reward_row("b", 2, 3.0),
        reward_row("d", 1, 2.0),
        reward_row("e", 1, -0.0),
        reward_row("f", 1, 4.0),
    ];
    // 3 of the 6 prompts (a, d, e) have a tie.
    assert_eq!(brute_tie_rate(&rows), 0.5);
    assert!((judge::tie_rate(&rows) - 0.5).abs() < 1e-12, "{}", judge::tie_rate(&rows));
    // Subsets: no tie anywhere, a tie in every prompt, and no rows.
    let untied: Vec<RewardRow> = rows.iter().filter(|r| ["b", "c", "f"].contains(&r.prompt_id.as_str())).cloned().collect();
    assert_eq!((brute_tie_rate(&untied), judge::tie_rate(&untied)), (0.0, 0.0));
    let tied: Vec<RewardRow> = rows.iter().filter(|r| ["a", "d"].contains(&r.prompt_id.as_str())).cloned().collect();
    assert_eq!((brute_tie_rate(&tied), judge::tie_rate(&tied)), (1.0, 1.0));
    assert_eq!((brute_tie_rate(&[]), judge::tie_rate(&[])), (0.0, 0.0));
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models"]
fn llm_judge_mode_on_the_default_model() {
    let model = default_model();
    let p = pipeline(8);
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Ctx::new(tmp.path(), true).unwrap();
    let samples = samples_artifact_of(&ctx, samples_rows());

    let t0 = std::time::Instant::now();
    let a = judge::run(&ctx, &p, &samples, JudgeMode::LlmJudge, &model, None).unwrap();
    eprintln!("llm-judge took {:.1}s", t0.elapsed().as_secs_f64());

    // Both tables, with their row counts in the manifest.
    let rewards: Vec<RewardRow> = read_table(&a.path("rewards.parquet").unwrap()).unwrap();
    let judgements: Vec<JudgementRow> = read_table(&a.path("judgements.parquet").unwrap()).unwrap();
    assert_eq!(rewards.len(), 4);
    assert_eq!(judgements.len(), 8);
    assert_eq!(a.manifest.stage, "judge");
    assert_eq!(a.manifest.params["mode"], "llm-judge");
    assert_eq!(a.manifest.params["judgements"], 2);

    // Judgements: statuses consistent with scores, scores = parse_score(text), in range.
    let mut by_sample: HashMap<(String, u32), Vec<&JudgementRow>> = HashMap::new();
    for j in &judgements {
        eprintln!(
            "--- {} sample {} judgement {}: score {:?} ({})\n{}",
            j.prompt_id, j.sample_idx, j.judgement_idx, j.score, j.status, j.text
        );
        assert_eq!(j.score, parse_score(&j.text));
        match j.score {
            Some(s) => {
                assert_eq!(j.status, "ok");
                assert!((0.0..=5.0).contains(&s));
            }
            None => assert_eq!(j.status, "no_score"),
        }
        by_sample.entry((j.prompt_id.clone(), j.sample_idx)).or_default().push(j);
    }
    assert_eq!(by_sample.len(), 4);

    // Rewards: mean of the parsed scores, 0 with n_scored = 0 when none parses.
    for r in &rewards {
        let js = &by_sample[&(r.prompt_id.clone(), r.sample_idx)];
        let mut idx: Vec<u32> = js.iter().map(|j| j.judgement_idx).collect();
        idx.sort();
        assert_eq!(idx, vec![0, 1]);
        let parsed: Vec<f64> = js.iter().filter_map(|j| j.score).collect();
        assert_eq!(r.mode, "llm-judge");
        assert_eq!(r.s_ref, None);
        assert_eq!(r.n_scored as usize, parsed.len());
        let want = if parsed.is_empty() { 0.0 } else { parsed.iter().sum::<f64>() / parsed.len() as f64 };
        assert!((r.reward - want).abs() < 1e-12, "{} {}: {} != {want}", r.prompt_id, r.sample_idx, r.reward);
        assert_eq!(r.s_policy, r.reward);
        assert!(r.reward.is_finite());
    }

    // Manifest statistics.
    let extra = &a.manifest.extra;
    for key in ["parse_failure_rate", "tie_rate", "judgements"] {
        assert!(extra.get(key).is_some(), "manifest extra lacks {key}: {extra}");
    }
    let failures = judgements.iter().filter(|j| j.score.is_none()).count();
    assert_eq!(extra["judgements"], 8);
    assert!((extra["parse_failure_rate"].as_f64().unwrap() - failures as f64 / 8.0).abs() < 1e-12);
    // The tie rate by its definition, recomputed from the rewards table (not by judge::tie_rate).
    let want_tie_rate = brute_tie_rate(&rewards);
    assert!(
        (extra["tie_rate"].as_f64().unwrap() - want_tie_rate).abs() < 1e-12,
        "tie_rate {} != {want_tie_rate} for rewards {:?}",
        extra["tie_rate"],
        rewards.iter().map(|r| (&r.prompt_id, r.reward)).collect::<Vec<_>>()
    );
    eprintln!("extra: {extra}");

    // Rerun: a cache hit (same artifact, not produced again).
    let b = judge::run(&ctx, &p, &samples, JudgeMode::LlmJudge, &model, None).unwrap();
    assert_eq!(a.dir, b.dir);
    assert_eq!(a.manifest.created_at, b.manifest.created_at);
    assert_eq!(ctx.store.list("judge").unwrap().len(), 1);

    // Another batch size: the same key (a cache hit here). Computed afresh at batch size 1 in
    // another store for one sample, its judgements equal those of the batched run (seeds depend
    // on (run seed, prompt id, sample index, judgement index) only).
    let p1 = pipeline(1);
    let c = judge::run(&ctx, &p1, &samples, JudgeMode::LlmJudge, &model, None).unwrap();
    assert_eq!(a.dir, c.dir);
    let tmp2 = tempfile::tempdir().unwrap();
    let ctx2 = Ctx::new(tmp2.path(), true).unwrap();
    let one = samples_artifact_of(&ctx2, vec![samples_rows().swap_remove(2)]);
    let d = judge::run(&ctx2, &p1, &one, JudgeMode::LlmJudge, &model, None).unwrap();
    let alone: Vec<JudgementRow> = read_table(&d.path("judgements.parquet").unwrap()).unwrap();
    let batched: Vec<JudgementRow> =
        judgements.iter().filter(|j| j.prompt_id == "sum" && j.sample_idx == 0).cloned().collect();
    assert_eq!(alone, batched, "judgements depend on the batch size");
}

#[test]
fn llm_judge_config_defaults_and_validation() {
    let p = pipeline(8);
    let d = cream_stages::config::JudgeSection::default();
    assert_eq!((d.judgements, d.judge_temperature, d.judge_top_p, d.judge_max_new_tokens), (3, 0.7, 0.95, 256));
    // smoke.toml's [judge] has only batch_tokens: the serde defaults fill the rest.
    assert_eq!(p.judge.judge_temperature, 0.7);
    for bad in [
        |p: &mut Pipeline| p.judge.judgements = 0,
        |p: &mut Pipeline| p.judge.judge_temperature = -0.1,
        |p: &mut Pipeline| p.judge.judge_top_p = 0.0,
        |p: &mut Pipeline| p.judge.judge_top_p = 1.5,
        |p: &mut Pipeline| p.judge.judge_max_new_tokens = 0,
    ] {
        let mut q = p.clone();
        bad(&mut q);
        let err = q.validate().unwrap_err().to_string();
        assert!(err.contains("[judge]"), "{err}");
    }
    assert_eq!(JudgeMode::LlmJudge.as_str(), "llm-judge");
}

/// The flag spelling of every mode (clap's ValueEnum) is its name in artifact parameters.
#[test]
fn judge_mode_flag_names_are_the_parameter_names() {
    use clap::ValueEnum;
    for m in JudgeMode::value_variants() {
        assert_eq!(m.to_possible_value().unwrap().get_name(), m.as_str());
        assert_eq!(JudgeMode::from_str(m.as_str(), false).unwrap(), *m);
    }
}
