//! End to end: the `eval` stage on the real default model (SmolLM2-135M-Instruct) over a tiny
//! synthetic `prepare` artifact: table shape, accuracy statistics consistent with the rows, and a
//! cache hit on rerun.

use std::path::PathBuf;

use cream_core::{ArtifactSpec, EvalRow, ProduceOutput, PromptRow, read_table, write_table};
use cream_stages::config::Pipeline;
use cream_stages::ctx::Ctx;
use cream_stages::prepare::EVAL_SUFFIX;
use serde_json::json;

fn default_model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "default model {} is missing; run `just setup`", path.display());
    path
}

fn pipeline() -> Pipeline {
    let text = r#"
        name = "eval-stage-test"
        seed = 7
        iterations = 1

        [model]
        base = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"

        [data]
        gsm8k_train = "data/gsm8k/train.jsonl"
        gsm8k_test = "data/gsm8k/test.jsonl"
        socialiqa = "data/socialiqa/test.jsonl"
        sft_examples = 4

        [sft]
        lr = 1e-5
        epochs = 1
        global_batch = 2

        [generate]
        n = 2
        temperature = 0.8
        top_p = 0.95
        max_new_tokens = 32
        max_prompt_tokens = 512

        [train]
        lr = 1e-6
        epochs = 1
        global_batch = 2

        [eval]
        max_new_tokens = 48
        batch_size = 2
    "#;
    let p: Pipeline = toml::from_str(text).expect("inline pipeline parses");
    p.validate().expect("inline pipeline is valid");
    p
}

fn row(id: &str, task: &str, prompt: String, answer: Option<&str>) -> PromptRow {
    PromptRow {
        prompt_id: id.into(),
        source: "synthetic".into(),
        task: task.into(),
        prompt,
        answer: answer.map(String::from),
    }
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models and the data sets in data/"]
fn eval_stage_on_the_default_model() {
    let model = default_model();
    let p = pipeline();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Ctx::new(tmp.path(), true).unwrap();

    let eval_rows = vec![
        row("gsm8k-1", "gsm8k", format!("What is 2 + 3?{EVAL_SUFFIX}"), Some("5")),
        row(
            "siqa-1",
            "socialiqa",
            format!(
                "Alex found a ring on the beach and tried to find who it belonged to. What will the \
                 person who lost want to do next? A: throw it in the ocean; B: turn it into lost and \
                 found; C: leave the beach.{EVAL_SUFFIX}"
            ),
            Some("B"),
        ),
    ];
    let spec = ArtifactSpec {
        stage: "prepare".into(),
        schema_version: 1,
        params: json!({"synthetic": "eval_stage test"}),
        inputs: vec![],
    };
    let prompts = ctx
        .produce(spec, |dir| {
            let pool = vec![row("pool-1", "gsm8k", "What is 1 + 1?".into(), None)];
            let sft = vec![row("sft-1", "sft", "What is 1 + 2?".into(), Some("1 + 2 = 3\n#### 3"))];
            let np = write_table(&dir.join("pool.parquet"), &pool)?;
            let ne = write_table(&dir.join("eval.parquet"), &eval_rows)?;
            let ns = write_table(&dir.join("sft.parquet"), &sft)?;
            Ok(ProduceOutput::default()
                .with_rows("pool.parquet", np)
                .with_rows("eval.parquet", ne)
                .with_rows("sft.parquet", ns))
        })
        .unwrap();
    let prompts_path = prompts.dir.to_string_lossy().into_owned();

    let a = cream_stages::eval::run(&ctx, &p, &prompts_path, &model).unwrap();
    assert_eq!(a.manifest.stage, cream_stages::names::stage::EVAL);
    assert_eq!(a.manifest.files["eval.parquet"].rows, Some(2));
    assert_eq!(a.manifest.params["max_prompt_tokens"], 512);
    assert_eq!(a.manifest.params["eval"]["max_new_tokens"], 48);

    // read_table checks the file's schema against EvalRow.
    let rows: Vec<EvalRow> = read_table(&a.path("eval.parquet").unwrap()).unwrap();
    assert_eq!(rows.len(), 2);
    for (r, want) in rows.iter().zip(&eval_rows) {
        assert_eq!(r.prompt_id, want.prompt_id, "rows keep the input order");
        assert_eq!(r.task, want.task);
        assert_eq!(r.prompt, want.prompt);
        assert_eq!(Some(&r.answer), want.answer.as_ref());
        assert!(!r.response.is_empty(), "{}: empty response", r.prompt_id);
        // The stored grade is the one `grade` gives for the stored response.
        let (extracted, correct) = cream_stages::grade::grade(&r.task, &r.response, &r.answer, false).unwrap();
        assert_eq!((&r.extracted, r.correct), (&extracted, correct), "{}: {:?}", r.prompt_id, r.response);
        assert!(r.extracted.is_some() || !r.correct);
        // Independently of `grade`: correct exactly when the extracted answer equals the gold one
        // (as a number for GSM8K, as a letter for Social IQa), and the extracted answer comes
        // from the response.
        let expected_correct = match (r.task.as_str(), r.extracted.as_deref()) {
            (_, None) => false,
            ("gsm8k", Some(e)) => {
                assert!(r.response.replace(',', "").contains(e), "{}: {e:?} not in {:?}", r.prompt_id, r.response);
                e.parse::<f64>().ok() == r.answer.parse::<f64>().ok()
            }
            ("socialiqa", Some(e)) => {
                assert!(["A", "B", "C", "D"].contains(&e), "{}: extracted {e:?}", r.prompt_id);
                assert!(r.response.to_ascii_uppercase().contains(e), "{}: {e:?} not in {:?}", r.prompt_id, r.response);
                e == r.answer
            }
            (task, _) => panic!("unexpected task {task}"),
        };
        assert_eq!(r.correct, expected_correct, "{}: {:?} extracted {:?} gold {:?}", r.prompt_id, r.response, r.extracted, r.answer);
    }

    let extra = &a.manifest.extra;
    let mut sum = 0.0;
    for r in &rows {
        let task_rows: Vec<&EvalRow> = rows.iter().filter(|x| x.task == r.task).collect();
        let acc = extra["accuracy"][&r.task].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&acc), "{}: accuracy {acc}", r.task);
        let correct = task_rows.iter().filter(|x| x.correct).count();
        assert!((acc - 100.0 * correct as f64 / task_rows.len() as f64).abs() < 1e-9);
        assert_eq!(extra["n"][&r.task], task_rows.len());
        let unparsed = task_rows.iter().filter(|x| x.extracted.is_none()).count();
        assert_eq!(extra["unparsed"][&r.task], unparsed);
        sum += acc;
    }
    assert_eq!(extra["accuracy"].as_object().unwrap().len(), 2);
    let mean = extra["accuracy_mean"].as_f64().unwrap();
    assert!((mean - sum / 2.0).abs() < 1e-9 && (0.0..=100.0).contains(&mean));

    // Same inputs and parameters: a cache hit, not a second run.
    let b = cream_stages::eval::run(&ctx, &p, &prompts_path, &model).unwrap();
    assert_eq!(b.dir, a.dir);
    assert_eq!(b.manifest.id, a.manifest.id);
    assert_eq!(b.manifest.files, a.manifest.files);
    // A fresh run would have been stamped again.
    assert_eq!(b.manifest.created_at, a.manifest.created_at);
}

#[test]
#[ignore = "needs `just setup`: the default model in data/models and the data sets in data/"]
fn sharded_eval_merges_into_the_unsharded_artifact() {
    use cream_stages::shard::Shard;

    let model = default_model();
    let mut p = pipeline();
    p.eval.max_new_tokens = 24;
    let eval_rows = vec![
        row("gsm8k-1", "gsm8k", format!("What is 2 + 3?{EVAL_SUFFIX}"), Some("5")),
        row("gsm8k-2", "gsm8k", format!("What is 4 + 4?{EVAL_SUFFIX}"), Some("8")),
        row(
            "siqa-1",
            "socialiqa",
            format!("Why do people sleep? A: to rest; B: to run; C: to eat.{EVAL_SUFFIX}"),
            Some("A"),
        ),
    ];
    // The same synthetic `prepare` artifact in a store: A runs unsharded, B runs 2 shards + merge.
    let prompts = |ctx: &Ctx| {
        let spec = ArtifactSpec {
            stage: "prepare".into(),
            schema_version: 1,
            params: json!({"synthetic": "eval_stage shard test"}),
            inputs: vec![],
        };
        let a = ctx
            .produce(spec, |dir| {
                let ne = write_table(&dir.join("eval.parquet"), &eval_rows)?;
                Ok(ProduceOutput::default().with_rows("eval.parquet", ne))
            })
            .unwrap();
        a.dir.to_string_lossy().into_owned()
    };
    let (tmp_a, tmp_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Ctx::new(tmp_a.path(), true).unwrap(), Ctx::new(tmp_b.path(), true).unwrap());
    let (prompts_a, prompts_b) = (prompts(&a), prompts(&b));

    let whole = cream_stages::eval::run(&a, &p, &prompts_a, &model).unwrap();
    let bytes = |art: &cream_core::Artifact| std::fs::read(art.path("eval.parquet").unwrap()).unwrap();

    let shards: Vec<_> = (0..2)
        .map(|k| {
            let s = Shard::new(k, 2).unwrap();
            let sh = cream_stages::eval::run_shard(&b, &p, &prompts_b, &model, s).unwrap();
            assert_eq!(sh.manifest.params["shard"], s.to_string());
            assert_ne!(sh.manifest.id, whole.manifest.id);
            let rows: Vec<EvalRow> = read_table(&sh.path("eval.parquet").unwrap()).unwrap();
            let want: Vec<&str> = eval_rows.iter().skip(k).step_by(2).map(|r| r.prompt_id.as_str()).collect();
            assert_eq!(rows.iter().map(|r| r.prompt_id.as_str()).collect::<Vec<_>>(), want);
            sh.dir.to_string_lossy().into_owned()
        })
        .collect();
    let err = cream_stages::eval::merge(&b, &p, &prompts_b, &model, &[&shards[1]]).unwrap_err();
    assert!(format!("{err:#}").contains("missing shard 0/2"), "{err:#}");
    // Shards in any order.
    let merged = cream_stages::eval::merge(&b, &p, &prompts_b, &model, &[&shards[1], &shards[0]]).unwrap();
    assert_eq!(merged.manifest.id, whole.manifest.id, "merged eval artifact has the unsharded id");
    assert_eq!(bytes(&merged), bytes(&whole), "eval.parquet differs");
    assert_eq!(merged.manifest.files, whole.manifest.files);
    assert_eq!(merged.manifest.files["eval.parquet"].rows, Some(3));
    for key in ["accuracy", "accuracy_mean", "n", "unparsed", "truncated_prompts"] {
        assert_eq!(merged.manifest.extra[key], whole.manifest.extra[key], "extra {key}");
    }
    assert_eq!(merged.manifest.extra["merged_from"].as_array().unwrap().len(), 2);
    // The merged artifact is the unsharded one: an unsharded run in B is a cache hit.
    let again = cream_stages::eval::run(&b, &p, &prompts_b, &model).unwrap();
    assert_eq!((again.dir, again.manifest.created_at), (merged.dir, merged.manifest.created_at));
}
