//! Reading a finished pipeline run back from its `report` artifact, comparing runs ("arms", e.g.
//! CREAM and SRLM) with confidence intervals, and drawing the charts.
//!
//! A `report` artifact lists every artifact of its run as an input, by role: `train{i}` (model
//! M_i, i >= 2), `consistency{i}` / `pairs{i}` (the iteration that trained M_i), `eval{i}` /
//! `mc{i}` (generative / log-likelihood evaluation of M_i) and `final_consistency`. From those
//! this module gathers, per arm: per-item outcomes of every evaluation, the consistency of every
//! iteration's rankings by three statistics (Kendall tau on ordinal ranks, Spearman rho,
//! TopOrder, recomputed from the two reward tables), the training curves, and the wall time, CPU
//! time and peak memory of every stage; then it writes tables (markdown) and PNG charts.
//!
//! Statistics: accuracies with 95% percentile-bootstrap intervals over items; differences between
//! two models with a paired bootstrap over the same items ([`cream_algo::stats`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cream_core::{Artifact, EvalRow, McEvalRow, MetricRow, RewardRow, Store, read_table};
use cream_plot::{Chart, Point, Series};

use crate::names;
use crate::names::report_role as roles;

/// Bootstrap resamples for intervals and paired differences.
pub const REPS: usize = 4000;
/// Seed of every bootstrap (fixed, so a rerun writes the same numbers).
pub const SEED: u64 = 2410_12735;

/// One model of a run.
#[derive(Debug, Clone)]
pub struct ModelRun {
    /// `M{i}`.
    pub index: usize,
    /// `stage/id` of the model (`source/<blake3>` for M0, `train/<id>` otherwise).
    pub key: String,
    /// Per-item outcomes by metric (e.g. `"socialiqa acc"`, `"gsm8k gen"`), sorted by item id.
    pub outcomes: BTreeMap<String, Vec<(String, bool)>>,
    /// Generative answers that hit the new-token limit, and how many there were.
    pub cut_off: Option<(u64, u64)>,
}

/// Consistency of two rankings of the same samples, averaged over prompts.
#[derive(Debug, Clone, Default)]
pub struct ConsistencyStats {
    pub prompts: usize,
    pub kendall: f64,
    pub spearman: f64,
    pub top_order: f64,
    /// C = (tau + 1) / 2 averaged over prompts (the paper's dataset rate).
    pub c: f64,
    /// Kendall tau per prompt id, sorted by id (for intervals and paired comparisons).
    pub taus: Vec<(String, f64)>,
}

impl ConsistencyStats {
    /// The 95% bootstrap interval of the mean Kendall tau over prompts.
    pub fn tau_interval(&self) -> Option<cream_algo::stats::Interval> {
        let x: Vec<f64> = self.taus.iter().map(|t| t.1).collect();
        cream_algo::stats::bootstrap_mean_ci(&x, REPS, 0.95, SEED)
    }
}

/// One DPO iteration of a run.
#[derive(Debug, Clone)]
pub struct IterationRun {
    /// 1-based iteration t (trains M_{t+1}).
    pub t: usize,
    pub consistency: ConsistencyStats,
    pub pairs: u64,
    /// Mean C the pairs carried into the loss (1 for plain DPO).
    pub pair_c: Option<f64>,
    pub metrics: Vec<MetricRow>,
}

/// The smallest value the conservative DPO loss can reach for consistency `c`: the binary
/// entropy H(c) in nats, at the margin D = logit(c) (0 for plain DPO, c = 1; ln 2 at c = 1/2).
pub fn loss_floor(c: f64) -> f64 {
    let h = |p: f64| if p <= 0.0 { 0.0 } else { -p * p.ln() };
    h(c) + h(1.0 - c)
}

/// Cost of one artifact.
#[derive(Debug, Clone)]
pub struct StageCost {
    pub key: String,
    pub label: String,
    pub wall_s: f64,
    pub cpu_s: Option<f64>,
    pub peak_rss_mb: Option<f64>,
}

/// A finished run, read back from its report artifact.
#[derive(Debug, Clone)]
pub struct ArmRun {
    pub name: String,
    pub models: Vec<ModelRun>,
    pub iterations: Vec<IterationRun>,
    pub final_consistency: Option<ConsistencyStats>,
    pub costs: Vec<StageCost>,
}

fn id_of(a: &Artifact) -> String {
    format!("{}/{}", a.manifest.stage, a.id().as_str())
}

fn input<'a>(a: &'a Artifact, role: &str) -> Option<&'a cream_core::InputRef> {
    a.manifest.inputs.iter().find(|i| i.name == role)
}

fn open_input(store: &Store, a: &Artifact, role: &str) -> Result<Artifact> {
    let i = input(a, role).with_context(|| format!("{}: no input {role}", a.dir.display()))?;
    store.open_artifact(&format!("{}/{}", i.stage, i.id), Some(&i.stage))
}

/// Reads the run of the report artifact `report` (a path or `report/<id>`).
pub fn read_arm(store: &Store, name: &str, report: &str) -> Result<ArmRun> {
    let r = store.open_artifact(report, Some(names::stage::REPORT))?;
    read_run(store, name, &r.manifest.inputs)
}

/// Reads a run from the inputs of its report (by role, see the module docs).
pub fn read_run(store: &Store, name: &str, inputs: &[cream_core::InputRef]) -> Result<ArmRun> {
    let role = |k: &str| -> Option<Result<Artifact>> {
        inputs
            .iter()
            .find(|i| i.name == k)
            .map(|i| store.open_artifact(&format!("{}/{}", i.stage, i.id), Some(&i.stage)))
    };
    let mut models = Vec::new();
    for index in 0.. {
        let (generative, mc) = (role(&roles::indexed(roles::EVAL, index)).transpose()?, role(&roles::indexed(roles::MC, index)).transpose()?);
        let train = role(&roles::indexed(roles::TRAIN, index)).transpose()?;
        if generative.is_none() && mc.is_none() && train.is_none() {
            break;
        }
        let key = match (&train, generative.as_ref().or(mc.as_ref())) {
            (Some(t), _) => id_of(t),
            (None, Some(e)) => input(e, "model").map(|i| format!("{}/{}", i.stage, i.id)).unwrap_or_default(),
            (None, None) => String::new(),
        };
        let mut outcomes = BTreeMap::new();
        let mut cut_off = None;
        if let Some(e) = &generative {
            let rows: Vec<EvalRow> = read_table(&e.path(names::file::EVAL)?)?;
            for r in rows {
                outcomes.entry(format!("{} gen", r.task)).or_insert_with(Vec::new).push((r.prompt_id, r.correct));
            }
            let n = e.manifest.files.get(names::file::EVAL).and_then(|f| f.rows).unwrap_or(0);
            cut_off = e.manifest.extra.get("cut_off_responses").and_then(|v| v.as_u64()).map(|c| (c, n));
        }
        if let Some(m) = &mc {
            let rows: Vec<McEvalRow> = read_table(&m.path(names::file::MC_EVAL)?)?;
            for r in rows {
                outcomes.entry(format!("{} acc", r.task)).or_insert_with(Vec::new).push((r.item_id.clone(), r.correct));
                outcomes.entry(format!("{} acc_norm", r.task)).or_insert_with(Vec::new).push((r.item_id, r.correct_norm));
            }
        }
        for v in outcomes.values_mut() {
            v.sort();
        }
        models.push(ModelRun { index, key, outcomes, cut_off });
    }
    // M1 (SFT) is the model input of the first DPO training; M0 that of SFT.
    if let Some(t2) = role(&roles::indexed(roles::TRAIN, 2)).transpose()? {
        let sft = open_input(store, &t2, "model")?;
        if let Some(m1) = models.get_mut(1) {
            m1.key = id_of(&sft);
        }
        if let (Some(m0), Some(i)) = (models.get_mut(0), input(&sft, "model")) {
            m0.key = format!("{}/{}", i.stage, i.id);
        }
    }
    let mut iterations = Vec::new();
    for t in 1.. {
        let Some(train) = role(&roles::indexed(roles::TRAIN, t + 1)).transpose()? else { break };
        let consistency = match role(&roles::indexed(roles::CONSISTENCY, t + 1)).transpose()? {
            Some(c) => consistency_stats(store, &c)?,
            None => ConsistencyStats::default(),
        };
        let (pairs, pair_c) = match role(&roles::indexed(roles::PAIRS, t + 1)).transpose()? {
            Some(p) => (
                p.manifest.files.get(names::file::PAIRS).and_then(|f| f.rows).unwrap_or(0),
                p.manifest.extra.get("c_mean").and_then(|v| v.as_f64()),
            ),
            None => (0, None),
        };
        let metrics: Vec<MetricRow> = read_table(&train.path(names::file::METRICS)?)?;
        iterations.push(IterationRun { t, consistency, pairs, pair_c, metrics });
    }
    let final_consistency = role(roles::FINAL_CONSISTENCY).transpose()?.map(|c| consistency_stats(store, &c)).transpose()?;
    let costs = stage_costs(store, inputs)?;
    Ok(ArmRun { name: name.to_string(), models, iterations, final_consistency, costs })
}

/// Kendall tau (ordinal ranks), Spearman rho and TopOrder between the two reward tables a
/// consistency artifact compared, averaged over prompts.
pub fn consistency_stats(store: &Store, c: &Artifact) -> Result<ConsistencyStats> {
    let rewards = |role: &str| -> Result<BTreeMap<String, Vec<(u32, f64)>>> {
        let a = open_input(store, c, role)?;
        let rows: Vec<RewardRow> = read_table(&a.path(names::file::REWARDS)?)?;
        let mut by: BTreeMap<String, Vec<(u32, f64)>> = BTreeMap::new();
        for r in rows {
            by.entry(r.prompt_id).or_default().push((r.sample_idx, r.reward));
        }
        for v in by.values_mut() {
            v.sort_by_key(|x| x.0);
        }
        Ok(by)
    };
    let (cur, prev) = (rewards("current")?, rewards("previous")?);
    let mut s = ConsistencyStats::default();
    for (id, a) in &cur {
        let b = prev.get(id).with_context(|| format!("{}: prompt {id} has no previous rewards", c.dir.display()))?;
        let (x, y): (Vec<f64>, Vec<f64>) = (a.iter().map(|v| v.1).collect(), b.iter().map(|v| v.1).collect());
        let tau = cream_algo::kendall_tau_ordinal(&x, &y)?;
        s.kendall += tau;
        s.c += (tau + 1.0) / 2.0;
        s.spearman += cream_algo::spearman_rho(&x, &y)?;
        s.top_order += f64::from(u8::from(cream_algo::top_order(&x, &y)?));
        s.prompts += 1;
        s.taus.push((id.clone(), tau));
    }
    if s.prompts == 0 {
        bail!("{}: no prompts to compare", c.dir.display());
    }
    let n = s.prompts as f64;
    (s.kendall, s.c, s.spearman, s.top_order) = (s.kendall / n, s.c / n, s.spearman / n, s.top_order / n);
    Ok(s)
}

/// Every artifact the report depends on (transitively), with its cost, in a stable order.
pub fn stage_costs(store: &Store, inputs: &[cream_core::InputRef]) -> Result<Vec<StageCost>> {
    let mut seen = HashSet::new();
    let mut todo: Vec<String> =
        inputs.iter().filter(|i| i.stage != names::stage::SOURCE).map(|i| format!("{}/{}", i.stage, i.id)).collect();
    let mut out = Vec::new();
    while let Some(key) = todo.pop() {
        if !seen.insert(key.clone()) {
            continue;
        }
        let a = store.open_artifact(&key, None)?;
        todo.extend(a.manifest.inputs.iter().filter(|i| i.stage != names::stage::SOURCE).map(|i| format!("{}/{}", i.stage, i.id)));
        let m = &a.manifest;
        let detail = ["mode", "method", "kind"].iter().find_map(|k| m.params.get(*k).and_then(|v| v.as_str()));
        let detail = match (m.stage.as_str(), detail) {
            (_, Some(d)) => d.to_string(),
            (names::stage::EVAL, None) => names::eval_method::GENERATE.into(),
            (names::stage::TRAIN, None) => train_kind(&a),
            _ => String::new(),
        };
        let label = if detail.is_empty() { m.stage.clone() } else { format!("{} ({detail})", m.stage) };
        out.push(StageCost { key, label, wall_s: m.wall_time_s, cpu_s: m.cpu_time_s, peak_rss_mb: m.peak_rss_mb });
    }
    out.sort_by(|a, b| a.label.cmp(&b.label).then(a.key.cmp(&b.key)));
    Ok(out)
}

fn train_kind(a: &Artifact) -> String {
    if input(a, "pairs").is_some() { "dpo".into() } else { "sft".into() }
}

// ---- statistics over per-item outcomes ----

fn as_f64(v: &[(String, bool)]) -> Vec<f64> {
    v.iter().map(|(_, c)| f64::from(u8::from(*c))).collect()
}

/// Accuracy (percent) with its 95% bootstrap interval.
pub fn accuracy(v: &[(String, bool)]) -> Option<cream_algo::stats::Interval> {
    cream_algo::stats::bootstrap_mean_ci(&as_f64(v), REPS, 0.95, SEED).map(|i| cream_algo::stats::Interval {
        estimate: 100.0 * i.estimate,
        lo: 100.0 * i.lo,
        hi: 100.0 * i.hi,
    })
}

/// Paired difference a - b (percentage points) over the items both were graded on.
pub fn paired(a: &[(String, bool)], b: &[(String, bool)]) -> Option<(cream_algo::stats::PairedDiff, usize)> {
    let bm: BTreeMap<&str, bool> = b.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for (k, c) in a {
        if let Some(cb) = bm.get(k.as_str()) {
            xa.push(f64::from(u8::from(*c)));
            xb.push(f64::from(u8::from(*cb)));
        }
    }
    let d = cream_algo::stats::paired_bootstrap_diff(&xa, &xb, REPS, 0.95, SEED)?;
    Some((d, xa.len()))
}

fn fmt_ci(i: Option<cream_algo::stats::Interval>) -> String {
    i.map_or("-".into(), |i| format!("{:.1} [{:.1}, {:.1}]", i.estimate, i.lo, i.hi))
}

// ---- tables ----

/// Distinct models over the arms: (label, model). A model with the same key in every arm (M0,
/// M1: shared work) appears once, labelled `M{i}`; others as `M{i} <arm>`.
fn distinct_models(arms: &[ArmRun]) -> Vec<(String, &ModelRun)> {
    let mut arms_of: BTreeMap<&str, usize> = BTreeMap::new();
    for arm in arms {
        for m in &arm.models {
            *arms_of.entry(m.key.as_str()).or_default() += 1;
        }
    }
    let mut out: Vec<(String, &ModelRun)> = Vec::new();
    let mut seen = HashSet::new();
    for arm in arms {
        for m in &arm.models {
            if !seen.insert(m.key.as_str()) {
                continue;
            }
            let shared = arms.len() == 1 || arms_of[m.key.as_str()] == arms.len();
            let label = if shared { format!("M{}", m.index) } else { format!("M{} {}", m.index, arm.name) };
            out.push((label, m));
        }
    }
    out.sort_by_key(|(_, m)| m.index);
    out
}

/// Metrics in table order: log-likelihood ones first, then generative.
fn metrics(arms: &[ArmRun]) -> Vec<String> {
    let all: BTreeSet<String> = arms.iter().flat_map(|a| a.models.iter().flat_map(|m| m.outcomes.keys().cloned())).collect();
    let mut v: Vec<String> = all.iter().filter(|m| !m.ends_with(" gen")).cloned().collect();
    v.extend(all.iter().filter(|m| m.ends_with(" gen")).cloned());
    v
}

/// Table 1: accuracy (%) per metric and model, with 95% intervals and item counts.
pub fn accuracy_table(arms: &[ArmRun]) -> String {
    let ms = metrics(arms);
    let mut s = String::new();
    let _ = writeln!(s, "| model | {} |", ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(ms.len()));
    for (label, m) in distinct_models(arms) {
        let cells: Vec<String> = ms.iter().map(|k| fmt_ci(m.outcomes.get(k).and_then(|v| accuracy(v)))).collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    }
    let _ = writeln!(s);
    let ns: Vec<String> = ms
        .iter()
        .map(|k| {
            let n = arms.iter().flat_map(|a| &a.models).filter_map(|m| m.outcomes.get(k)).map(Vec::len).max().unwrap_or(0);
            format!("{k}: {n}")
        })
        .collect();
    let _ = writeln!(s, "Items per metric: {}.", ns.join(", "));
    let cut: Vec<String> = distinct_models(arms)
        .iter()
        .filter_map(|(l, m)| m.cut_off.map(|(c, n)| format!("{l} {c}/{n} ({:.1}%)", 100.0 * c as f64 / n.max(1) as f64)))
        .collect();
    if !cut.is_empty() {
        let _ = writeln!(s, "Generative answers cut off at the new-token limit: {}.", cut.join(", "));
    }
    s
}

/// One paired comparison: (label, model a, model b).
pub type Comparison<'a> = (String, &'a ModelRun, &'a ModelRun);

/// The comparisons a report makes: the last model of each arm against the last of the first
/// arm (e.g. CREAM vs SRLM), and within each arm every M_t against M_{t-1} and the last against M1.
pub fn comparisons(arms: &[ArmRun]) -> Vec<Comparison<'_>> {
    let mut out = Vec::new();
    if let Some(first) = arms.first() {
        for other in &arms[1..] {
            if let (Some(a), Some(b)) = (first.models.last(), other.models.last()) {
                out.push((format!("{} M{} - {} M{}", first.name, a.index, other.name, b.index), a, b));
            }
        }
    }
    for arm in arms {
        for w in arm.models.windows(2) {
            if w[1].index >= 2 {
                out.push((format!("{}: M{} - M{}", arm.name, w[1].index, w[0].index), &w[1], &w[0]));
            }
        }
        if let (Some(last), Some(m1)) = (arm.models.last(), arm.models.get(1)) {
            if last.index > 2 {
                out.push((format!("{}: M{} - M1", arm.name, last.index), last, m1));
            }
        }
    }
    out
}

/// Paired differences (percentage points) with 95% intervals and bootstrap p-values.
pub fn difference_table(arms: &[ArmRun]) -> String {
    let ms = metrics(arms);
    let mut s = String::new();
    let _ = writeln!(s, "| comparison | metric | difference (pp) [95% CI] | p | items |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (label, a, b) in comparisons(arms) {
        for k in &ms {
            let (Some(va), Some(vb)) = (a.outcomes.get(k), b.outcomes.get(k)) else { continue };
            if let Some((d, n)) = paired(va, vb) {
                let _ = writeln!(
                    s,
                    "| {label} | {k} | {:+.1} [{:+.1}, {:+.1}] | {:.3} | {n} |",
                    100.0 * d.estimate,
                    100.0 * d.lo,
                    100.0 * d.hi,
                    d.p_two_sided
                );
            }
        }
    }
    s
}

/// Table 2: consistency per iteration and of the final models.
pub fn consistency_table(arms: &[ArmRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| arm | rankings compared | prompts | Kendall tau [95% CI] | C = (tau+1)/2 | Spearman | TopOrder |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for arm in arms {
        let mut row = |what: String, c: &ConsistencyStats| {
            let _ = writeln!(
                s,
                "| {} | {what} | {} | {} | {:.3} | {:.3} | {:.3} |",
                arm.name,
                c.prompts,
                c.tau_interval().map_or("-".into(), |i| format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.lo, i.hi)),
                c.c,
                c.spearman,
                c.top_order
            );
        };
        for it in &arm.iterations {
            let prev = if it.t == 1 { "M0 (likelihood)".to_string() } else { format!("M{}", it.t - 1) };
            row(format!("iteration {}: M{} vs {prev}", it.t, it.t), &it.consistency);
        }
        if let Some(f) = &arm.final_consistency {
            let t = arm.models.len().saturating_sub(1);
            row(format!("final: M{t} vs M{} (last samples)", t.saturating_sub(1)), f);
        }
    }
    s
}

/// Training summary per arm and iteration: pairs, the C they carried, the lowest loss that C
/// allows (H(C), reached at beta * margin = logit(C)), steps, first and last loss, margin,
/// accuracy. A conservative-DPO loss near H(C) is a converged one, not a policy that did not move.
pub fn training_table(arms: &[ArmRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| arm | iteration | pairs | C in the loss | loss floor H(C) | steps | loss step 1 | loss last 10% | reward margin last 10% | logit(C) | pair accuracy last 10% |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for arm in arms {
        for it in &arm.iterations {
            let m = &it.metrics;
            let k = if m.len() < 10 { m.len() } else { m.len().div_ceil(10) };
            let tail = &m[m.len() - k..];
            let mean = |f: fn(&MetricRow) -> f64| tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64;
            let c = it.pair_c.unwrap_or(f64::NAN);
            let logit = if c >= 1.0 { "inf".to_string() } else { format!("{:.3}", (c / (1.0 - c)).ln()) };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {c:.3} | {:.4} | {} | {:.4} | {:.4} | {:.4} | {logit} | {:.3} |",
                arm.name,
                it.t,
                it.pairs,
                loss_floor(c),
                m.len(),
                m.first().map_or(f64::NAN, |r| r.loss),
                mean(|r| r.loss),
                mean(|r| r.reward_margin),
                mean(|r| r.reward_accuracy)
            );
        }
    }
    s
}

/// Wall and CPU time and peak memory per stage kind, over the distinct artifacts of all arms
/// (shared work counted once), as a markdown table with a total row. The times are those the
/// artifacts' manifests recorded when they were produced (a cached artifact keeps its first cost).
pub fn cost_table<'a>(costs: impl IntoIterator<Item = &'a StageCost>) -> String {
    let mut by: BTreeMap<&str, (usize, f64, f64, f64)> = BTreeMap::new();
    let mut seen = HashSet::new();
    for c in costs {
        if !seen.insert(&c.key) {
            continue;
        }
        let e = by.entry(&c.label).or_default();
        e.0 += 1;
        e.1 += c.wall_s;
        e.2 += c.cpu_s.unwrap_or(f64::NAN);
        e.3 = e.3.max(c.peak_rss_mb.unwrap_or(0.0));
    }
    let wall: f64 = by.values().map(|e| e.1).sum();
    let cpu: f64 = by.values().map(|e| e.2).sum();
    let mut s = String::new();
    let _ = writeln!(s, "| stage | artifacts | wall s | % of wall | CPU s | CPU/wall | peak RSS MB |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (label, (n, w, c, m)) in &by {
        let share = 100.0 * w / wall.max(1e-9);
        let _ = writeln!(s, "| {label} | {n} | {w:.1} | {share:.0} | {c:.1} | {:.2} | {m:.0} |", c / w.max(1e-9));
    }
    let _ = writeln!(s, "| **total** | {} | {wall:.1} | 100 | {cpu:.1} | {:.2} | |", seen.len(), cpu / wall.max(1e-9));
    s
}

/// The key of every model, per arm.
pub fn keys_table(arms: &[ArmRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| arm | model | artifact key |");
    let _ = writeln!(s, "|---|---|---|");
    for arm in arms {
        for m in &arm.models {
            let _ = writeln!(s, "| {} | M{} | `{}` |", arm.name, m.index, m.key);
        }
    }
    s
}

// ---- charts ----

/// Draws `accuracy.png` (one panel per metric: accuracy per model index with 95% interval bars,
/// one series per arm), `consistency.png` (Kendall tau, Spearman and TopOrder per iteration, and
/// the final models' at x = T + 1) and `training.png` (DPO loss and reward margin per step, one
/// series per arm and iteration) into `dir`. Returns the file names written.
pub fn draw(arms: &[ArmRun], dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let ms = metrics(arms);
    let acc_series: Vec<Vec<Series>> = ms
        .iter()
        .map(|k| {
            arms.iter()
                .map(|arm| Series {
                    name: arm.name.clone(),
                    points: arm
                        .models
                        .iter()
                        .filter_map(|m| {
                            let i = accuracy(m.outcomes.get(k)?)?;
                            Some(Point { x: m.index as f64, y: i.estimate, lo: Some(i.lo), hi: Some(i.hi) })
                        })
                        .collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect()
        })
        .collect();
    let titles: Vec<String> = ms.iter().map(|k| format!("{k} (95% CI)")).collect();
    let charts: Vec<Chart> = ms
        .iter()
        .zip(&acc_series)
        .zip(&titles)
        .filter(|(_, s)| !s.is_empty())
        .map(|((_, series), title)| Chart { title, x_label: "model M_i", y_label: "accuracy %", series })
        .collect();
    if !charts.is_empty() {
        let cols = charts.len().min(3);
        cream_plot::panels(&dir.join("accuracy.png"), &charts, cols, 520, 380)?;
        written.push("accuracy.png".to_string());
    }

    let stat_names = ["Kendall tau", "Spearman", "TopOrder"];
    let cons_series: Vec<Vec<Series>> = stat_names
        .iter()
        .map(|stat| {
            arms.iter()
                .map(|arm| {
                    let pick = |c: &ConsistencyStats| match *stat {
                        "Kendall tau" => c.kendall,
                        "Spearman" => c.spearman,
                        _ => c.top_order,
                    };
                    let mut points: Vec<Point> = arm
                        .iterations
                        .iter()
                        .filter(|it| it.consistency.prompts > 0)
                        .map(|it| Point { x: it.t as f64, y: pick(&it.consistency), lo: None, hi: None })
                        .collect();
                    if let Some(f) = &arm.final_consistency {
                        points.push(Point { x: arm.iterations.len() as f64 + 1.0, y: pick(f), lo: None, hi: None });
                    }
                    Series { name: arm.name.clone(), points }
                })
                .filter(|s| !s.points.is_empty())
                .collect()
        })
        .collect();
    let cons_titles: Vec<String> =
        stat_names.iter().map(|s| format!("{s} (x = iteration; last x = final models)")).collect();
    let charts: Vec<Chart> = cons_series
        .iter()
        .zip(&cons_titles)
        .zip(stat_names)
        .filter(|((s, _), _)| !s.is_empty())
        .map(|((series, title), y)| Chart { title, x_label: "iteration", y_label: y, series })
        .collect();
    if !charts.is_empty() {
        cream_plot::panels(&dir.join("consistency.png"), &charts, 3, 520, 380)?;
        written.push("consistency.png".to_string());
    }

    let curve = |f: fn(&MetricRow) -> f64| -> Vec<Series> {
        arms.iter()
            .flat_map(|arm| {
                arm.iterations.iter().map(move |it| Series {
                    name: format!("{} iter {}", arm.name, it.t),
                    points: it.metrics.iter().map(|r| Point { x: r.step as f64, y: f(r), lo: None, hi: None }).collect(),
                })
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let (loss, margin, acc) = (curve(|r| r.loss), curve(|r| r.reward_margin), curve(|r| r.reward_accuracy));
    if !loss.is_empty() {
        let charts = [
            Chart { title: "DPO loss per step (ln 2 = 0.693 at the start)", x_label: "step", y_label: "loss", series: &loss },
            Chart { title: "reward margin per step", x_label: "step", y_label: "beta * margin", series: &margin },
            Chart { title: "pair accuracy per step", x_label: "step", y_label: "accuracy", series: &acc },
        ];
        cream_plot::panels(&dir.join("training.png"), &charts, 3, 520, 380)?;
        written.push("training.png".to_string());
    }
    Ok(written)
}

// ---- the paper's claims, checked ----

/// How an interval for "a - b" bears on a claim that a > b.
fn verdict(lo: f64, hi: f64) -> &'static str {
    if lo > 0.0 {
        "holds (the 95% CI excludes 0)"
    } else if hi < 0.0 {
        "contradicted (the 95% CI excludes 0 in the other direction)"
    } else {
        "not shown (the 95% CI includes 0)"
    }
}

/// The paper's three qualitative claims, checked on the arms (the first arm is CREAM, the
/// second SRLM), each with its numbers and a verdict from the 95% intervals.
pub fn claims(arms: &[ArmRun]) -> String {
    let mut s = String::new();
    let (Some(cream), Some(srlm)) = (arms.first(), arms.get(1)) else {
        return "Needs two arms (CREAM first, SRLM second).\n".into();
    };
    // 1. Accuracy of the final models.
    let _ = writeln!(s, "1. **CREAM's final model is more accurate than SRLM's** (paired bootstrap over the same items):");
    if let (Some(a), Some(b)) = (cream.models.last(), srlm.models.last()) {
        for k in metrics(arms) {
            let (Some(va), Some(vb)) = (a.outcomes.get(&k), b.outcomes.get(&k)) else { continue };
            if let Some((d, n)) = paired(va, vb) {
                let _ = writeln!(
                    s,
                    "   - {k}: {:+.1} pp [{:+.1}, {:+.1}], n = {n}, p = {:.3}: {}; a difference had to exceed about {:.1} pp to be detected.",
                    100.0 * d.estimate,
                    100.0 * d.lo,
                    100.0 * d.hi,
                    d.p_two_sided,
                    verdict(d.lo, d.hi),
                    100.0 * d.interval().half_width()
                );
            }
        }
    }
    // 2. Consistency of the final models.
    let _ = writeln!(s, "2. **CREAM's rankings are more consistent** (Kendall tau of the final models M_T vs M_{{T-1}} on the last iteration's prompts, paired by prompt):");
    if let (Some(fc), Some(fs)) = (&cream.final_consistency, &srlm.final_consistency) {
        let sm: BTreeMap<&str, f64> = fs.taus.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (k, v) in &fc.taus {
            if let Some(w) = sm.get(k.as_str()) {
                a.push(*v);
                b.push(*w);
            }
        }
        match cream_algo::stats::paired_bootstrap_diff(&a, &b, REPS, 0.95, SEED) {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "   - tau CREAM {:.3} vs SRLM {:.3}: difference {:+.3} [{:+.3}, {:+.3}], {} prompts, p = {:.3}: {}.",
                    fc.kendall,
                    fs.kendall,
                    d.estimate,
                    d.lo,
                    d.hi,
                    a.len(),
                    d.p_two_sided,
                    verdict(d.lo, d.hi)
                );
            }
            None => {
                let _ = writeln!(s, "   - no common prompts to compare.");
            }
        }
    } else {
        let _ = writeln!(s, "   - a final consistency is missing.");
    }
    // 3. C rises over iterations (CREAM).
    let _ = writeln!(s, "3. **C rises over the iterations** (different prompts per iteration: independent intervals, difference by the normal approximation):");
    for arm in arms {
        let its: Vec<&IterationRun> = arm.iterations.iter().filter(|i| i.consistency.prompts > 0).collect();
        let mut series: Vec<(String, &ConsistencyStats)> = its.iter().map(|i| (format!("iteration {}", i.t), &i.consistency)).collect();
        if let Some(f) = &arm.final_consistency {
            series.push(("final".into(), f));
        }
        let cells: Vec<String> = series
            .iter()
            .map(|(l, c)| {
                let i = c.tau_interval();
                format!("{l} C = {:.3}{}", c.c, i.map_or(String::new(), |i| format!(" [{:.3}, {:.3}]", (i.lo + 1.0) / 2.0, (i.hi + 1.0) / 2.0)))
            })
            .collect();
        let trend = match (series.first(), series.last()) {
            (Some((_, a)), Some((_, b))) if series.len() >= 2 => {
                match (a.tau_interval(), b.tau_interval()) {
                    (Some(ia), Some(ib)) => {
                        let se = |i: &cream_algo::stats::Interval| (i.hi - i.lo) / (2.0 * 1.96) / 2.0;
                        let d = (b.c - a.c, 1.96 * (se(&ia).powi(2) + se(&ib).powi(2)).sqrt());
                        format!(": last - first {:+.3} [{:+.3}, {:+.3}], {}", d.0, d.0 - d.1, d.0 + d.1, verdict(d.0 - d.1, d.0 + d.1))
                    }
                    _ => String::new(),
                }
            }
            _ => String::new(),
        };
        let _ = writeln!(s, "   - {}: {}{trend}.", arm.name, cells.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_floor_is_the_minimum_of_the_conservative_dpo_loss() {
        assert!((loss_floor(0.5) - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(loss_floor(1.0), 0.0);
        for c in [0.55f64, 0.616, 0.8, 0.95] {
            let d_star = (c / (1.0 - c)).ln();
            let at = |d: f64| cream_algo::cdpo_loss_from_margin(d, c);
            assert!((at(d_star) - loss_floor(c)).abs() < 1e-9, "c {c}");
            assert!(at(d_star + 0.1) > loss_floor(c) && at(d_star - 0.1) > loss_floor(c), "c {c}");
        }
    }
}
