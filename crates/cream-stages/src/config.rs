//! Pipeline configuration (`pipelines/*.toml`): one section per stage. Unknown keys and
//! out-of-range values are errors that name the file and the key. A stage records the section it
//! used (in canonical JSON) as its artifact parameters, so the artifact key follows the values,
//! not the file they came from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cream_algo::{CMode, Method};
use cream_lm::Precision;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Name shown in reports.
    pub name: String,
    /// Run seed: sampling seeds derive from (seed, prompt id, sample index).
    #[serde(default)]
    pub seed: u64,
    /// CREAM iterations after SFT (M1 -> M2 -> ...).
    pub iterations: usize,
    pub model: ModelSection,
    pub data: DataSection,
    pub sft: TrainSection,
    pub generate: GenerateSection,
    #[serde(default)]
    pub judge: JudgeSection,
    #[serde(default)]
    pub consistency: ConsistencySection,
    #[serde(default)]
    pub pair: PairSection,
    pub train: TrainSection,
    pub eval: EvalSection,
    /// How `just iterate executor=slurm` submits each stage (ignored by local runs; never part of
    /// an artifact key).
    #[serde(default)]
    pub slurm: SlurmSection,
}

/// The `[slurm]` section: job resources for the cluster executor (README "Running on a Slurm
/// cluster"). Top-level keys apply to every stage; `[slurm.stage.<name>]` tables override them
/// for one stage. An unset key is not passed to sbatch, so the cluster's defaults and the
/// standard `SBATCH_*` environment variables apply (a key set here wins over `SBATCH_*`, as any
/// sbatch command-line option does).
///
/// The top-level keys repeat [`SlurmJob`]'s fields instead of flattening it: serde cannot
/// combine `flatten` with `deny_unknown_fields`, and a misspelled key must be an error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    /// Array tasks of each shardable stage (generate, judge, eval): shard k/n runs as task k,
    /// then one merge job publishes the unsharded artifact. 1 (the default) = one job, no array.
    pub shards: Option<usize>,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub cpus: Option<u32>,
    pub mem: Option<String>,
    pub gres: Option<String>,
    /// Per-stage overrides, by stage name (prepare, train, generate, judge, consistency, pair,
    /// eval, report).
    #[serde(default)]
    pub stage: std::collections::BTreeMap<String, SlurmJob>,
}

/// Resources of one stage's jobs (the same keys as [`SlurmSection`]'s top level).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmJob {
    /// Array tasks of a shardable stage (generate, judge, eval): shard k/n runs as task k, then
    /// one merge job publishes the unsharded artifact. 1 (the default) = one job, no array.
    pub shards: Option<usize>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`, e.g. "02:00:00".
    pub time: Option<String>,
    /// `--cpus-per-task` (also the stage's thread count).
    pub cpus: Option<u32>,
    /// `--mem`, e.g. "16G".
    pub mem: Option<String>,
    /// `--gres`, e.g. "gpu:1" (use a binary built with the `cuda` feature).
    pub gres: Option<String>,
}

/// The stages the loop runs, by the names `[slurm.stage.<name>]` takes.
pub const LOOP_STAGES: [&str; 8] = ["prepare", "train", "generate", "judge", "consistency", "pair", "eval", "report"];
/// The stages whose work is per prompt and runs as a job array (`--shard k/n` + `--merge`).
pub const SHARDABLE_STAGES: [&str; 3] = ["generate", "judge", "eval"];

impl SlurmSection {
    /// The resources of `stage`'s jobs: its overrides over the top-level keys.
    pub fn job(&self, stage: &str) -> SlurmJob {
        let (a, o) = (self, self.stage.get(stage).cloned().unwrap_or_default());
        let shardable = SHARDABLE_STAGES.contains(&stage);
        SlurmJob {
            shards: if shardable { o.shards.or(a.shards) } else { None },
            partition: o.partition.or_else(|| a.partition.clone()),
            time: o.time.or_else(|| a.time.clone()),
            cpus: o.cpus.or(a.cpus),
            mem: o.mem.or_else(|| a.mem.clone()),
            gres: o.gres.or_else(|| a.gres.clone()),
        }
    }

    fn validate(&self) -> Result<()> {
        for name in self.stage.keys() {
            ensure!(
                LOOP_STAGES.contains(&name.as_str()),
                "[slurm.stage.{name}]: no such stage; the stages are {}",
                LOOP_STAGES.join(", ")
            );
        }
        for (name, o) in &self.stage {
            ensure!(
                o.shards.is_none() || SHARDABLE_STAGES.contains(&name.as_str()),
                "[slurm.stage.{name}] shards: only {} run as job arrays",
                SHARDABLE_STAGES.join(", ")
            );
        }
        for stage in LOOP_STAGES {
            let j = self.job(stage);
            ensure!(j.shards != Some(0), "[slurm] shards for {stage} must be >= 1");
            ensure!(j.cpus != Some(0), "[slurm] cpus for {stage} must be >= 1");
        }
        Ok(())
    }
}

impl SlurmJob {
    /// The sbatch options of these resources (unset keys give none).
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut opt = |flag: &str, value: Option<String>| {
            if let Some(x) = value {
                v.push(format!("--{flag}={x}"));
            }
        };
        opt("partition", self.partition.clone());
        opt("time", self.time.clone());
        opt("cpus-per-task", self.cpus.map(|c| c.to_string()));
        opt("mem", self.mem.clone());
        opt("gres", self.gres.clone());
        v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// M0: a GGUF file or a Hugging Face directory.
    pub base: PathBuf,
}

/// `[data]`: the data files of `prepare`. The built-in keys (`gsm8k_train`, `gsm8k_test`,
/// `socialiqa`, `quartz`) are the paper's data with its fixed splits; `[[data.sources]]` adds
/// files of any task (README "Your own data"). Every key is optional, but there must be prompts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// GSM8K-format JSONL or Parquet ({"question", "answer"}): unlabeled prompts (answers dropped) and SFT
    /// seed pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsm8k_train: Option<PathBuf>,
    /// GSM8K-format JSONL or Parquet used for evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsm8k_test: Option<PathBuf>,
    /// Social IQa as shipped in the evals package ({"input": [{"role", "content"}], "ideal"}), or
    /// Parquet with flat `question` (or `prompt`) and `ideal` string columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socialiqa: Option<PathBuf>,
    /// Fraction of Social IQa rows held out for evaluation (deterministic hash split).
    #[serde(default = "half")]
    pub socialiqa_eval_fraction: f64,
    /// Unlabeled prompts per source (0 = all); split evenly across iterations.
    #[serde(default)]
    pub prompts_per_source: usize,
    /// SFT seed pairs (GSM8K train rows not used as prompts; needs `gsm8k_train`).
    #[serde(default)]
    pub sft_examples: usize,
    /// Eval rows per task (0 = all).
    #[serde(default)]
    pub eval_per_task: usize,
    /// QuaRTz as shipped in the evals package (optional): multiple-choice items for
    /// log-likelihood evaluation only, never prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quartz: Option<PathBuf>,
    /// Multiple-choice items per task scored by log-likelihood (`mc.parquet`; Social IQa from
    /// the held-out rows, QuaRTz when given); 0 = all; unset = no multiple-choice items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mc_per_task: Option<usize>,
    /// Further data files (`[[data.sources]]`), e.g. your own unlabeled prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<DataSource>,
}

/// One `[[data.sources]]` entry: a data file, the task its rows belong to, what they are for
/// and their shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// JSONL, or Parquet when the path ends in `.parquet`.
    pub path: PathBuf,
    /// The task name of its rows (the `task` column; accuracies are reported per task).
    pub task: String,
    pub role: SourceRole,
    #[serde(default)]
    pub format: SourceFormat,
    /// Rows kept, the first of a deterministic hash order (0 = all). Unset: `prompts_per_source`
    /// for prompts, `eval_per_task` (generative) and `mc_per_task` (multiple choice) for eval, all
    /// rows for sft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// What the rows of a data source are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceRole {
    /// Unlabeled prompts of the loop (`pool.parquet`); an answer, if any, is dropped.
    Prompts,
    /// SFT seed pairs (`sft.parquet`): prompt and reference response.
    Sft,
    /// Evaluation items (`eval.parquet`, and `mc.parquet` for items with choices).
    Eval,
}

impl SourceRole {
    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            SourceRole::Prompts => "prompts",
            SourceRole::Sft => "sft",
            SourceRole::Eval => "eval",
        }
    }
}

/// The row shape of a data source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// `{"prompt", "answer"?, "choices"?, "id"?}`.
    #[default]
    Generic,
    /// `{"question", "answer"}`, the answer ending in `#### <number>`.
    Gsm8k,
    /// The evals package's Social IQa form (see `socialiqa` above).
    Socialiqa,
    /// The evals package's QuaRTz form (see `quartz` above).
    Quartz,
}

impl DataSection {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.socialiqa_eval_fraction),
            "[data] socialiqa_eval_fraction must be in [0, 1)"
        );
        ensure!(
            self.sft_examples == 0 || self.gsm8k_train.is_some(),
            "[data] sft_examples = {} needs gsm8k_train (the SFT pairs are taken from it); for your own \
             SFT pairs add a [[data.sources]] with role = \"sft\"",
            self.sft_examples
        );
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("[[data.sources]] #{} ({})", i + 1, s.path.display());
            ensure!(
                !s.task.is_empty() && s.task.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{at}: task {:?} must be a name of ASCII letters, digits, `_` and `-` (it names report columns, \
                 e.g. acc_<task>)",
                s.task
            );
            ensure!(
                s.role != SourceRole::Sft || matches!(s.format, SourceFormat::Generic | SourceFormat::Gsm8k),
                "{at}: role = \"sft\" needs reference responses, which format \"{}\" does not have; use format \
                 \"generic\" (with `answer`) or \"gsm8k\"",
                format!("{:?}", s.format).to_lowercase()
            );
            ensure!(
                s.role != SourceRole::Eval || s.format != SourceFormat::Quartz || self.mc_per_task.is_some(),
                "{at}: QuaRTz items are scored by log-likelihood only; set [data] mc_per_task (0 = all)"
            );
        }
        let prompts = self.gsm8k_train.is_some()
            || self.socialiqa.is_some()
            || self.sources.iter().any(|s| s.role == SourceRole::Prompts);
        ensure!(
            prompts,
            "[data] has no prompts: set gsm8k_train or socialiqa, or add a [[data.sources]] with role = \"prompts\""
        );
        Ok(())
    }
}

fn half() -> f64 {
    0.5
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSection {
    /// Samples per prompt (N >= 2).
    pub n: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Prompts longer than this keep their last `max_prompt_tokens` tokens.
    pub max_prompt_tokens: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Arithmetic of the sampling model: `"f32"` (default, exact) or the opt-in fast mode
    /// `"bf16"` (README "Fast mode"). In the artifact key when not f32, so f32 keys are unchanged.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn default_batch() -> usize {
    16
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSection {
    /// Padded tokens per forward pass.
    pub batch_tokens: usize,
    /// `llm-judge` mode: sampled judgements per sample, averaged (Yuan et al. 2024 use 3).
    #[serde(default = "default_judgements")]
    pub judgements: usize,
    /// `llm-judge` mode: sampling temperature of the judge (0 = greedy).
    #[serde(default = "default_judge_temperature")]
    pub judge_temperature: f64,
    /// `llm-judge` mode: nucleus mass of the judge's sampling.
    #[serde(default = "default_judge_top_p")]
    pub judge_top_p: f64,
    /// `llm-judge` mode: new tokens per judgement.
    #[serde(default = "default_judge_max_new_tokens")]
    pub judge_max_new_tokens: usize,
    /// Arithmetic of the judge's models (policy and reference scoring, llm-judge sampling):
    /// `"f32"` (default, exact) or the opt-in fast mode `"bf16"` (README "Fast mode"). Enters the
    /// score and judge artifact keys when not f32. The DPO step's reference scores stay f32.
    #[serde(default)]
    pub precision: Precision,
}

fn default_judgements() -> usize {
    3
}
fn default_judge_temperature() -> f64 {
    0.7
}
fn default_judge_top_p() -> f64 {
    0.95
}
fn default_judge_max_new_tokens() -> usize {
    256
}

impl Default for JudgeSection {
    fn default() -> Self {
        JudgeSection {
            batch_tokens: 4096,
            judgements: default_judgements(),
            judge_temperature: default_judge_temperature(),
            judge_top_p: default_judge_top_p(),
            judge_max_new_tokens: default_judge_max_new_tokens(),
            precision: Precision::F32,
        }
    }
}

impl JudgeSection {
    fn validate(&self) -> Result<()> {
        ensure!(self.batch_tokens >= 1, "[judge] batch_tokens must be >= 1");
        ensure!(self.judgements >= 1, "[judge] judgements must be >= 1 (got {})", self.judgements);
        ensure!(
            self.judge_temperature >= 0.0 && self.judge_temperature.is_finite(),
            "[judge] judge_temperature must be >= 0 (got {})",
            self.judge_temperature
        );
        ensure!(
            self.judge_top_p > 0.0 && self.judge_top_p <= 1.0,
            "[judge] judge_top_p must be in (0, 1] (got {})",
            self.judge_top_p
        );
        ensure!(self.judge_max_new_tokens >= 1, "[judge] judge_max_new_tokens must be >= 1");
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencySection {
    #[serde(default)]
    pub method: Method,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSection {
    /// "avg" (dataset C), "dyn" (per-prompt C_j), or {fixed = c}; SRLM uses {fixed = 1.0}.
    pub c_mode: CMode,
    /// Pairs whose chosen or rejected conversation has fewer / more tokens are dropped.
    pub min_tokens: usize,
    pub max_tokens: usize,
}

impl Default for PairSection {
    fn default() -> Self {
        PairSection { c_mode: CMode::Avg, min_tokens: 5, max_tokens: 2048 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub lr: f64,
    pub epochs: usize,
    /// Pairs (DPO) or examples (SFT) per optimizer step.
    pub global_batch: usize,
    /// Pairs / examples per forward-backward pass (gradient accumulation fills the global batch).
    #[serde(default = "default_micro")]
    pub micro_batch: usize,
    /// DPO beta (ignored by SFT).
    #[serde(default = "default_beta")]
    pub beta: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    #[serde(default = "one")]
    pub max_grad_norm: f64,
    /// Cap on optimizer steps (0 = no cap), for smoke runs.
    #[serde(default)]
    pub max_steps: usize,
    /// Write a checkpoint (weights, optimizer state, position, metrics) every this many optimizer
    /// steps (0 = never), so a killed or requeued run resumes where it stopped with the same
    /// final model. It does not change the result, so it is not part of the artifact key.
    #[serde(default = "default_checkpoint_every", skip_serializing)]
    pub checkpoint_every: usize,
}

fn default_checkpoint_every() -> usize {
    20
}

fn default_micro() -> usize {
    2
}
fn default_beta() -> f64 {
    0.1
}
fn default_wd() -> f64 {
    0.01
}
fn default_warmup() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub max_new_tokens: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The reference code's fallback for multiple choice: the last standalone a-d anywhere
    /// (it counts the article "a"). Off by default.
    #[serde(default)]
    pub compat_last_letter: bool,
    /// Tasks of `eval.parquet` graded by generation (empty = all), e.g. `["gsm8k"]` when the
    /// multiple-choice tasks are scored by log-likelihood instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generate_tasks: Vec<String>,
    /// Log-likelihood scoring of `mc.parquet`: padded tokens per forward pass.
    #[serde(default = "default_mc_batch_tokens")]
    pub mc_batch_tokens: usize,
    /// Log-likelihood scoring: at most this many items of a task (the first ones of `mc.parquet`,
    /// which is in a hash order), e.g. `{ quartz = 200 }`; tasks not listed: all items.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mc_items_per_task: std::collections::BTreeMap<String, usize>,
}

fn default_mc_batch_tokens() -> usize {
    4096
}

impl TrainSection {
    pub fn optim(&self) -> cream_lm::train::OptimConfig {
        cream_lm::train::OptimConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup_ratio: self.warmup_ratio,
            max_grad_norm: self.max_grad_norm,
            ..Default::default()
        }
    }

    fn validate(&self, section: &str) -> Result<()> {
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "[{section}] lr must be > 0 (got {})", self.lr);
        ensure!(self.epochs >= 1, "[{section}] epochs must be >= 1");
        ensure!(
            self.global_batch >= 1 && self.micro_batch >= 1 && self.micro_batch <= self.global_batch,
            "[{section}] need 1 <= micro_batch <= global_batch (got {} and {})",
            self.micro_batch,
            self.global_batch
        );
        ensure!(self.beta > 0.0, "[{section}] beta must be > 0 (got {})", self.beta);
        ensure!(self.weight_decay >= 0.0, "[{section}] weight_decay must be >= 0");
        ensure!((0.0..1.0).contains(&self.warmup_ratio), "[{section}] warmup_ratio must be in [0, 1)");
        ensure!(self.max_grad_norm >= 0.0, "[{section}] max_grad_norm must be >= 0 (0 = no clipping)");
        Ok(())
    }
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read pipeline config {}", path.display()))?;
        let p: Pipeline = toml::from_str(&text)
            .with_context(|| format!("pipeline config {} is invalid", path.display()))?;
        p.validate().with_context(|| format!("pipeline config {}", path.display()))?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        let g = &self.generate;
        ensure!(g.n >= 2, "[generate] n must be >= 2 to rank responses (got {})", g.n);
        ensure!(
            g.temperature >= 0.0 && g.temperature.is_finite(),
            "[generate] temperature must be >= 0 (got {})",
            g.temperature
        );
        ensure!(g.top_p > 0.0 && g.top_p <= 1.0, "[generate] top_p must be in (0, 1] (got {})", g.top_p);
        ensure!(g.max_new_tokens >= 1 && g.max_prompt_tokens >= 1, "[generate] token limits must be >= 1");
        ensure!(g.batch_size >= 1, "[generate] batch_size must be >= 1");
        self.judge.validate()?;
        self.slurm.validate()?;
        if let CMode::Fixed(c) = self.pair.c_mode {
            ensure!((0.0..=1.0).contains(&c), "[pair] fixed C must be in [0, 1] (got {c})");
        }
        ensure!(self.pair.min_tokens <= self.pair.max_tokens, "[pair] min_tokens > max_tokens");
        self.data.validate()?;
        ensure!(self.iterations >= 1, "iterations must be >= 1");
        ensure!(self.eval.max_new_tokens >= 1 && self.eval.batch_size >= 1, "[eval] limits must be >= 1");
        self.sft.validate("sft")?;
        self.train.validate("train")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smoke_with(extra: &str) -> Result<Pipeline> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/smoke.toml");
        let text = std::fs::read_to_string(path)? + extra;
        let p: Pipeline = toml::from_str(&text)?;
        p.validate()?;
        Ok(p)
    }

    #[test]
    fn slurm_stage_overrides_win_over_the_top_level_and_unset_keys_pass_nothing() {
        let p = smoke_with(
            "[slurm]\nshards = 4\npartition = \"cpu\"\ncpus = 2\n\
             [slurm.stage.train]\npartition = \"gpu\"\ngres = \"gpu:1\"\ntime = \"12:00:00\"\n\
             [slurm.stage.judge]\nshards = 2\n",
        )
        .unwrap();
        let train = p.slurm.job("train");
        assert_eq!(train.sbatch_args(), ["--partition=gpu", "--time=12:00:00", "--cpus-per-task=2", "--gres=gpu:1"]);
        assert_eq!(train.shards, None, "training is one job");
        assert_eq!(p.slurm.job("generate").shards, Some(4));
        assert_eq!(p.slurm.job("judge").shards, Some(2));
        assert_eq!(p.slurm.job("pair").sbatch_args(), ["--partition=cpu", "--cpus-per-task=2"]);
        assert!(smoke_with("").unwrap().slurm.job("eval").sbatch_args().is_empty(), "no [slurm]: sbatch's defaults");
    }

    #[test]
    fn slurm_section_refuses_unknown_stages_keys_and_arrays_of_single_job_stages() {
        for (extra, needle) in [
            ("[slurm.stage.trian]\ncpus = 1\n", "no such stage"),
            ("[slurm.stage.train]\nshards = 2\n", "only generate, judge, eval"),
            ("[slurm]\nshards = 0\n", "must be >= 1"),
            ("[slurm]\ncpu = 2\n", "unknown field"),
        ] {
            let err = format!("{:#}", smoke_with(extra).err().unwrap_or_else(|| panic!("{extra} accepted")));
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn the_checkpoint_interval_is_not_a_training_parameter() {
        // The train stage's key hashes the serialized [train] / [sft] section: a checkpoint
        // interval does not change the model, so it must not change the key.
        let a = smoke_with("").unwrap();
        let mut c = a.clone();
        c.train.checkpoint_every = 5;
        let v = serde_json::to_value(&c.train).unwrap();
        assert_eq!(v, serde_json::to_value(&a.train).unwrap());
        assert!(v.get("checkpoint_every").is_none(), "{v}");
    }

    /// smoke.toml with `line` added at the top of `section`.
    fn smoke_in(section: &str, line: &str) -> Result<Pipeline> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/smoke.toml");
        let text = std::fs::read_to_string(path)?;
        let head = format!("[{section}]\n");
        assert!(text.contains(&head), "smoke.toml has no [{section}]");
        let p: Pipeline = toml::from_str(&text.replacen(&head, &format!("{head}{line}\n"), 1))?;
        p.validate()?;
        Ok(p)
    }

    #[test]
    fn precision_defaults_to_f32_and_only_the_fast_mode_enters_the_key() {
        let a = smoke_with("").unwrap();
        assert_eq!((a.generate.precision, a.judge.precision), (Precision::F32, Precision::F32));
        // f32, default or explicit: the serialized section (the generate key) is as before.
        let explicit = smoke_in("generate", "precision = \"f32\"").unwrap();
        let before = serde_json::to_value(&a.generate).unwrap();
        assert!(before.get("precision").is_none(), "f32 must keep the old keys: {before}");
        assert_eq!(serde_json::to_value(&explicit.generate).unwrap(), before);
        let g = smoke_in("generate", "precision = \"bf16\"").unwrap();
        assert_eq!(g.generate.precision, Precision::Bf16);
        assert_eq!(serde_json::to_value(&g.generate).unwrap()["precision"], "bf16");
        let j = smoke_in("judge", "precision = \"bf16\"").unwrap();
        assert_eq!((j.judge.precision, j.generate.precision), (Precision::Bf16, Precision::F32));
    }

    #[test]
    fn unknown_precisions_are_refused() {
        for section in ["generate", "judge"] {
            let err = format!("{:#}", smoke_in(section, "precision = \"q8\"").err().expect("q8 accepted"));
            assert!(err.contains("unknown variant") && err.contains("bf16"), "{section}: {err}");
        }
    }
}
