//! The `pair` stage (spec step 5, pitfalls 5 and 7): preference pairs from the *current* model's
//! rewards, each carrying its consistency weight C.
//!
//! Per prompt (rewards ordered by sample_idx): chosen = first argmax, rejected = first argmin
//! ([`cream_algo::select_pair`]); a prompt whose rewards are all equal is dropped. A pair whose
//! chosen or rejected conversation (`SampleRow::token_ids`, prompt + generated tokens) has more
//! than `max_tokens` or fewer than `min_tokens` tokens is dropped. C per pair by
//! [`CMode`]: `avg` = the dataset C (mean C_j of the consistency artifact), `dyn` = the prompt's
//! own C_j looked up by prompt id, `{fixed = c}` = c (no consistency artifact is used).
//!
//! Output: `pairs.parquet` ([`PairRow`], sorted by prompt id) and manifest `extra` = {pairs,
//! dropped_all_equal, dropped_length, prompts, c_mode, c_mean (mean C over the pairs), dataset_c
//! (when a consistency artifact is used), chosen_mean_len, rejected_mean_len (mean response tokens
//! of the kept pairs: summed log-probs favour length, pitfall 5)}.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use cream_algo::CMode;
use cream_core::{Artifact, ArtifactSpec, ConsistencyRow, PairRow, ProduceOutput, read_table, write_table};
use polars::prelude::{ChunkCast, Column, DataFrame, DataType, ListNameSpaceImpl};
use serde_json::json;

use crate::config::Pipeline;
use crate::ctx::{Ctx, params};
use crate::frame::{f64_values, full_join_complete, prompt_runs, read_frame, sort_unique_keys, str_values, u32_values};
use crate::names;

/// Build preference pairs from `samples` (a generate artifact), `rewards` (the current model's
/// judge artifact over those samples) and, for `avg` / `dyn`, `consistency` (computed with these
/// rewards as `current`).
pub fn run(ctx: &Ctx, p: &Pipeline, samples: &str, rewards: &str, consistency: Option<&str>) -> Result<Artifact> {
    let (samples, rewards) = open_inputs(ctx, samples, rewards)?;
    let c_mode = p.pair.c_mode;
    let consistency = open_consistency(ctx, c_mode, consistency, &rewards)?;
    let mut inputs = vec![samples.as_input("samples"), rewards.as_input("rewards")];
    if let Some(c) = &consistency {
        inputs.push(c.as_input("consistency"));
    }
    let spec = ArtifactSpec { stage: names::stage::PAIR.into(), schema_version: 1, params: params(&p.pair)?, inputs };
    ctx.produce(spec, |dir| {
        let weights = Weights::read(c_mode, consistency.as_ref())?;
        let joined = join_samples(&samples, &rewards)?;
        let selection = select(&joined, &weights, p.pair.min_tokens, p.pair.max_tokens)?;
        let extra = selection.summary(&weights)?;
        let n = write_table(&dir.join(names::file::PAIRS), &selection.pairs)?;
        Ok(ProduceOutput { extra, ..Default::default() }.with_rows(names::file::PAIRS, n))
    })
}

/// The samples and the rewards, after checking that the rewards were computed for these samples.
fn open_inputs(ctx: &Ctx, samples: &str, rewards: &str) -> Result<(Artifact, Artifact)> {
    let samples = ctx.open(samples, names::stage::GENERATE).context("pair: the samples")?;
    let rewards = ctx.open(rewards, names::stage::JUDGE).context("pair: the current model's rewards")?;
    // The judge records the samples it scored; refuse rewards of other samples.
    if let Some(input) = rewards.manifest.inputs.iter().find(|i| i.name == "samples")
        && input.id != samples.id().to_string()
    {
        bail!(
            "pair: rewards {} were computed for samples {}/{}, not for {}; pass the matching artifacts",
            rewards.dir.display(),
            input.stage,
            input.id,
            samples.dir.display()
        );
    }
    Ok((samples, rewards))
}

/// The consistency artifact that `c_mode` needs (`None` for a fixed C, which ignores one given),
/// after checking that it was computed with `rewards` as the current model's.
fn open_consistency(ctx: &Ctx, c_mode: CMode, consistency: Option<&str>, rewards: &Artifact) -> Result<Option<Artifact>> {
    match (c_mode, consistency) {
        (CMode::Fixed(_), Some(c)) => {
            ctx.log(format!("pair: c_mode is fixed; ignoring the consistency artifact {c}"));
            Ok(None)
        }
        (CMode::Fixed(_), None) => Ok(None),
        (_, None) => bail!(
            "pair: c_mode {} needs a consistency artifact (the `consistency` stage's output); none was given",
            serde_json::to_string(&c_mode)?
        ),
        (_, Some(c)) => {
            let c = ctx.open(c, names::stage::CONSISTENCY).context("pair: the consistency artifact")?;
            if let Some(input) = c.manifest.inputs.iter().find(|i| i.name == "current")
                && input.id != rewards.id().to_string()
            {
                bail!(
                    "pair: consistency {} was computed with rewards {}/{} as the current model's, not {}; \
                     pass the matching artifacts",
                    c.dir.display(),
                    input.stage,
                    input.id,
                    rewards.dir.display()
                );
            }
            Ok(Some(c))
        }
    }
}

/// The consistency weight C of every pair under a [`CMode`].
struct Weights {
    mode: CMode,
    /// C_j by prompt id (pitfall 7); empty without a consistency artifact.
    by_prompt: HashMap<String, f64>,
    /// The dataset C (mean C_j), with a consistency artifact.
    dataset_c: Option<f64>,
    /// The consistency artifact's directory, for errors.
    source: String,
}

impl Weights {
    /// The weights of `mode` from the consistency artifact `c` (`None` for a fixed C).
    fn read(mode: CMode, c: Option<&Artifact>) -> Result<Self> {
        let Some(c) = c else {
            return Ok(Weights { mode, by_prompt: HashMap::new(), dataset_c: None, source: String::new() });
        };
        let rows: Vec<ConsistencyRow> = read_table(&c.path(names::file::CONSISTENCY)?)?;
        let cs: Vec<f64> = rows.iter().map(|r| r.c).collect();
        let dataset_c =
            cream_algo::dataset_c(&cs).with_context(|| format!("consistency artifact {}", c.dir.display()))?;
        let by_prompt = rows.into_iter().map(|r| (r.prompt_id, r.c)).collect();
        Ok(Weights { mode, by_prompt, dataset_c: Some(dataset_c), source: c.dir.display().to_string() })
    }

    /// C of a pair of prompt `id`: c (fixed), the dataset C (avg) or the prompt's own C_j (dyn).
    fn c(&self, id: &str) -> Result<f64> {
        Ok(match self.mode {
            CMode::Fixed(c) => c,
            CMode::Avg => self.dataset_c.expect("avg mode has a consistency artifact"),
            CMode::Dyn => *self.by_prompt.get(id).with_context(|| {
                format!(
                    "pair: prompt {id} has no row in the consistency artifact {}; c_mode dyn needs C_j \
                     for every paired prompt",
                    self.source
                )
            })?,
        })
    }
}

/// The pairs of one run of the stage and what was dropped on the way.
struct Selection {
    pairs: Vec<PairRow>,
    prompts: usize,
    dropped_all_equal: usize,
    dropped_length: usize,
    chosen_len: u64,
    rejected_len: u64,
}

/// One pair per prompt of `joined` (see [`join_samples`]): chosen = first argmax, rejected =
/// first argmin of the prompt's rewards; a prompt whose rewards are all equal, or whose chosen or
/// rejected conversation is outside `[min_tokens, max_tokens]` tokens, is dropped. An error when
/// no pair is left.
fn select(joined: &DataFrame, weights: &Weights, min_tokens: usize, max_tokens: usize) -> Result<Selection> {
    let ids = str_values(joined, "prompt_id")?;
    let idx = u32_values(joined, "sample_idx")?;
    let reward = f64_values(joined, "reward")?;
    let prompt = str_values(joined, "prompt")?;
    let response = str_values(joined, "response")?;
    let n_tokens = u32_values(joined, "n_tokens")?;
    let response_tokens = u32_values(joined, "response_tokens")?;

    let runs = prompt_runs(&ids);
    let mut s = Selection {
        pairs: Vec::new(),
        prompts: runs.len(),
        dropped_all_equal: 0,
        dropped_length: 0,
        chosen_len: 0,
        rejected_len: 0,
    };
    for run in &runs {
        let id = &ids[run.start];
        let Some((ci, ri)) =
            cream_algo::select_pair(&reward[run.clone()]).with_context(|| format!("rewards of prompt {id}"))?
        else {
            s.dropped_all_equal += 1;
            continue;
        };
        let (ch, rj) = (run.start + ci, run.start + ri);
        let fits = |i: usize| (min_tokens..=max_tokens).contains(&(n_tokens[i] as usize));
        if !fits(ch) || !fits(rj) {
            s.dropped_length += 1;
            continue;
        }
        let c = weights.c(id)?;
        s.chosen_len += u64::from(response_tokens[ch]);
        s.rejected_len += u64::from(response_tokens[rj]);
        s.pairs.push(PairRow {
            prompt_id: id.clone(),
            prompt: prompt[ch].clone(),
            chosen: response[ch].clone(),
            rejected: response[rj].clone(),
            chosen_idx: idx[ch],
            rejected_idx: idx[rj],
            chosen_reward: reward[ch],
            rejected_reward: reward[rj],
            c,
        });
    }
    ensure!(
        !s.pairs.is_empty(),
        "pair: no preference pairs left from {} prompts ({} with all rewards equal, {} with a \
         conversation outside [{min_tokens}, {max_tokens}] tokens)",
        s.prompts,
        s.dropped_all_equal,
        s.dropped_length
    );
    Ok(s)
}

impl Selection {
    /// The manifest `extra` (see the module docs).
    fn summary(&self, weights: &Weights) -> Result<serde_json::Value> {
        let n_pairs = self.pairs.len() as f64;
        Ok(json!({
            "pairs": self.pairs.len(),
            "dropped_all_equal": self.dropped_all_equal,
            "dropped_length": self.dropped_length,
            "prompts": self.prompts,
            "c_mode": serde_json::to_value(weights.mode)?,
            "c_mean": self.pairs.iter().map(|r| r.c).sum::<f64>() / n_pairs,
            "dataset_c": weights.dataset_c,
            "chosen_mean_len": self.chosen_len as f64 / n_pairs,
            "rejected_mean_len": self.rejected_len as f64 / n_pairs,
        }))
    }
}

/// Samples joined with their rewards on (prompt_id, sample_idx), sorted by that key, with
/// columns prompt_id, sample_idx, prompt, response, response_tokens, n_tokens (the length of the
/// sample's conversation token ids) and reward. Every sample must have a reward and vice versa.
fn join_samples(samples: &Artifact, rewards: &Artifact) -> Result<DataFrame> {
    let s_path = samples.path(names::file::SAMPLES)?;
    let mut s = read_frame(
        &s_path,
        &[
            ("prompt_id", DataType::String),
            ("sample_idx", DataType::UInt32),
            ("prompt", DataType::String),
            ("response", DataType::String),
            ("token_ids", DataType::List(Box::new(DataType::UInt32))),
            ("response_tokens", DataType::UInt32),
        ],
    )?;
    let lengths = s.column("token_ids")?.list()?.lst_lengths();
    let lengths = lengths.cast(&DataType::UInt32)?;
    s.with_column(Column::from(lengths.with_name("n_tokens".into())))?;
    s.drop_in_place("token_ids")?;
    let s = sort_unique_keys(s, &s_path)?;

    let r_path = rewards.path(names::file::REWARDS)?;
    let r = read_frame(
        &r_path,
        &[("prompt_id", DataType::String), ("sample_idx", DataType::UInt32), ("reward", DataType::Float64)],
    )?;
    let r = sort_unique_keys(r, &r_path)?;
    let joined = full_join_complete(
        &s,
        &r,
        "response",
        "reward",
        &format!("the samples {}", samples.dir.display()),
        &format!("the rewards {}", rewards.dir.display()),
    )?;
    ensure!(joined.height() > 0, "pair: the samples {} are empty", samples.dir.display());
    Ok(joined)
}
