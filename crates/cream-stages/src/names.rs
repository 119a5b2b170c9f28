//! The names stages know each other by: stage names (the `<stage>` of `artifacts/<stage>/<id>`,
//! which [`crate::ctx::Ctx::open`] checks) and the file names of the tables inside artifacts.
//! One place for each, so that a stage reads another stage's output without importing that stage's
//! module (stages are peers; see ARCHITECTURE.md).

/// Stage names.
pub mod stage {
    /// Data files -> prompt pool, eval set, SFT seed set, multiple-choice items.
    pub const PREPARE: &str = "prepare";
    /// Samples of one iteration's prompts.
    pub const GENERATE: &str = "generate";
    /// Summed log-probs of samples under one model (a sub-stage of `judge`, shared with `train`).
    pub const SCORE: &str = "score";
    /// Rewards of samples.
    pub const JUDGE: &str = "judge";
    /// Per-prompt agreement of two judges.
    pub const CONSISTENCY: &str = "consistency";
    /// Preference pairs.
    pub const PAIR: &str = "pair";
    /// Trained models (SFT and DPO).
    pub const TRAIN: &str = "train";
    /// Evaluations (generative and log-likelihood).
    pub const EVAL: &str = "eval";
    /// The report of one run.
    pub const REPORT: &str = "report";
    /// The pseudo-stage of external inputs (a model file identified by its blake3).
    pub const SOURCE: &str = "source";
}

/// File names of the tables inside artifacts, by the stage that writes them.
pub mod file {
    /// `prepare`: the unlabeled prompt pool ([`cream_core::PromptRow`]).
    pub const POOL: &str = "pool.parquet";
    /// `prepare`: held-out questions with gold answers ([`cream_core::PromptRow`]).
    pub const EVAL_PROMPTS: &str = "eval.parquet";
    /// `prepare`: SFT seed pairs ([`cream_core::PromptRow`]).
    pub const SFT: &str = "sft.parquet";
    /// `prepare`: multiple-choice items for log-likelihood evaluation ([`cream_core::ChoiceRow`]).
    pub const MC: &str = "mc.parquet";
    /// `generate`: the samples ([`cream_core::SampleRow`]).
    pub const SAMPLES: &str = "samples.parquet";
    /// `score`: summed log-probs ([`cream_core::ScoreRow`]).
    pub const SCORES: &str = "scores.parquet";
    /// `judge`: rewards ([`cream_core::RewardRow`]).
    pub const REWARDS: &str = "rewards.parquet";
    /// `judge` (llm-judge mode): raw judgements ([`cream_core::JudgementRow`]).
    pub const JUDGEMENTS: &str = "judgements.parquet";
    /// `consistency`: one row per prompt ([`cream_core::ConsistencyRow`]).
    pub const CONSISTENCY: &str = "consistency.parquet";
    /// `pair`: preference pairs ([`cream_core::PairRow`]).
    pub const PAIRS: &str = "pairs.parquet";
    /// `train`: one row per optimizer step ([`cream_core::MetricRow`]).
    pub const METRICS: &str = "metrics.parquet";
    /// `eval` (generative): graded answers ([`cream_core::EvalRow`]).
    pub const EVAL: &str = "eval.parquet";
    /// `eval` (log-likelihood): graded items ([`cream_core::McEvalRow`]).
    pub const MC_EVAL: &str = "mc_eval.parquet";
    /// `report`: one row per model ([`cream_core::ReportRow`]).
    pub const REPORT: &str = "report.parquet";
    /// `report`: per-task accuracies ([`cream_core::ReportTaskRow`]).
    pub const REPORT_TASKS: &str = "report_tasks.parquet";
    /// `report`: the wide view of both tables as markdown.
    pub const REPORT_MD: &str = "report.md";
}

/// The two evaluation methods, as the report's per-task table names them (`method` column).
/// `loglik` is also the `method` parameter of a log-likelihood `eval` artifact; a generative one
/// has no `method` parameter.
pub mod eval_method {
    /// Greedy answers graded by answer extraction (`eval.parquet`).
    pub const GENERATE: &str = "generate";
    /// Multiple-choice options scored by log-likelihood (`mc_eval.parquet`).
    pub const LOGLIK: &str = "loglik";
}

/// The input roles of a `report` artifact (`cream-report` names them; `--list`, `--from` and
/// `experiment` read them). Per-model roles carry the model's index `i`: `train2`
/// is M2, `consistency2` and `pairs2` belong to the iteration that trained it, `eval2` and `mc2`
/// evaluate it. The final models' consistency is one role without an index.
pub mod report_role {
    pub const CONSISTENCY: &str = "consistency";
    pub const PAIRS: &str = "pairs";
    pub const TRAIN: &str = "train";
    pub const EVAL: &str = "eval";
    pub const MC: &str = "mc";
    pub const FINAL_CONSISTENCY: &str = "final_consistency";
    /// The indexed roles of the iteration that trained a model.
    pub const ITERATION: [&str; 3] = [CONSISTENCY, PAIRS, TRAIN];
    /// The indexed roles of a model's evaluations.
    pub const MODEL: [&str; 2] = [EVAL, MC];

    /// The role `prefix` of model `i`, e.g. `indexed(TRAIN, 2)` = `train2`.
    pub fn indexed(prefix: &str, i: usize) -> String {
        format!("{prefix}{i}")
    }
}
