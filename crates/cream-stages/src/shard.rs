//! Sharding of per-prompt stages across machines (design.md, "Beyond one machine").
//!
//! A stage whose work is per prompt (`generate`, `score`) can run as shard `k/n`: it does the
//! work of the prompts at positions `p` with `p % n == k` (positions in the stage's own prompt
//! order) and publishes a shard artifact whose parameters are the unsharded ones plus
//! `"shard": "k/n"`. A merge step (`generate::merge`, `score::merge_scores`, `eval::merge`)
//! checks that it was given exactly the shards `0..n` of one `n`, all of the unsharded spec
//! ([`open_shards`]), and publishes their rows in the unsharded order ([`merge_rows`]) under the
//! unsharded spec: the same artifact id and
//! the same Parquet bytes as an unsharded run, so downstream stages are cache hits either way.
//! Rows do not depend on sharding because sampling seeds derive from (run seed, prompt id,
//! sample index) and scoring batches never mix prompts (a sample is scored in the same batch,
//! of the same shape, sharded or not: matrix products of other shapes round differently in the
//! last bits). Generation batches do mix prompts, so a sampled token could in principle flip
//! where a rounding difference of ~1e-7 meets a sampling threshold; the tests compare generated
//! text byte for byte and have not seen it.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;

use anyhow::{Context, Error, Result, anyhow, bail, ensure};
use cream_core::{Artifact, ArtifactSpec, Table, canonical_json, read_table};
use serde::Serialize;
use serde_json::{Value, json};

use crate::ctx::Ctx;

/// The parameter key that marks a shard artifact.
pub const PARAM: &str = "shard";

/// Shard `index` of `count` (`0 <= index < count`); [`Shard::ALL`] is the unsharded run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::ALL
    }
}

impl Shard {
    /// The whole work, `0/1`.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`, checked.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        ensure!(count >= 1, "shard count must be at least 1 (got {index}/{count})");
        ensure!(index < count, "shard index must be below the shard count, 0 <= k < n (got {index}/{count})");
        Ok(Shard { index, count })
    }

    /// Whether the item at `position` (0-based, in the stage's prompt order) belongs to this shard.
    pub fn keeps(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// Whether this is the whole work (a count of 1).
    pub fn is_all(&self) -> bool {
        self.count == 1
    }

    /// The artifact parameters of this shard of a stage whose unsharded parameters are `params`
    /// (an object): unchanged for [`Shard::ALL`], so an unsharded run keeps its key; otherwise
    /// with `"shard": "k/n"` added.
    pub fn params(&self, mut params: Value) -> Result<Value> {
        if !self.is_all() {
            let map = params.as_object_mut().context("stage parameters must be a JSON object to be sharded")?;
            ensure!(!map.contains_key(PARAM), "stage parameters already have a {PARAM:?} key");
            map.insert(PARAM.into(), json!(self.to_string()));
        }
        Ok(params)
    }

    /// `spec` (an unsharded spec) for this shard.
    pub fn spec(&self, spec: &ArtifactSpec) -> Result<ArtifactSpec> {
        Ok(ArtifactSpec { params: self.params(spec.params.clone())?, ..spec.clone() })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// Parses `"k/n"` with `0 <= k < n` (decimal integers, surrounding spaces allowed).
    fn from_str(s: &str) -> Result<Self> {
        let Some((k, n)) = s.split_once('/') else {
            bail!("invalid shard {s:?}: expected K/N, e.g. 0/4 (shard K of N, 0 <= K < N)");
        };
        let num = |part: &str, what: &str| -> Result<usize> {
            let part = part.trim();
            ensure!(
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()),
                "invalid shard {s:?}: {what} {part:?} is not a non-negative integer; expected K/N, e.g. 0/4"
            );
            part.parse().with_context(|| format!("invalid shard {s:?}: {what} {part:?} is too large"))
        };
        let (index, count) = (num(k, "index K")?, num(n, "count N")?);
        ensure!(count >= 1, "invalid shard {s:?}: the count N must be at least 1");
        ensure!(index < count, "invalid shard {s:?}: the index K must be below the count N (0 <= K < N)");
        Ok(Shard { index, count })
    }
}

/// Opens the shard artifacts `paths` of the stage of `unsharded` and checks that they are exactly
/// the shards `0..n` of one `n > 1`, each made from the unsharded spec (same parameters plus its
/// shard, same inputs, same schema version). Returns them in shard order. Errors name the
/// offending artifact.
pub fn open_shards(ctx: &Ctx, unsharded: &ArtifactSpec, paths: &[&str]) -> Result<Vec<(Shard, Artifact)>> {
    ensure!(!paths.is_empty(), "nothing to merge: pass the {} shard artifacts", unsharded.stage);
    let mut shards: Vec<(Shard, Artifact)> = Vec::with_capacity(paths.len());
    for path in paths {
        let a = ctx.open(path, &unsharded.stage).with_context(|| format!("cannot open shard artifact {path}"))?;
        let dir = a.dir.display().to_string();
        let shard: Shard = match a.manifest.params.get(PARAM) {
            Some(Value::String(s)) => {
                s.parse().with_context(|| format!("artifact {dir}: invalid {PARAM:?} parameter"))?
            }
            Some(other) => bail!("artifact {dir}: invalid {PARAM:?} parameter {other}"),
            None => bail!(
                "artifact {dir} is not a shard (its parameters have no {PARAM:?}); merge only the \
                 artifacts of `--shard K/N` runs"
            ),
        };
        ensure!(!shard.is_all(), "artifact {dir} is not a shard (it is shard {shard})");
        let expected = shard.spec(unsharded)?;
        if a.id() != &expected.id() {
            let m = &a.manifest;
            let mut why = Vec::new();
            if m.schema_version != expected.schema_version {
                why.push(format!("schema version {} (expected {})", m.schema_version, expected.schema_version));
            }
            if canonical_json(&m.params) != canonical_json(&expected.params) {
                why.push(format!(
                    "parameters {} (expected {})",
                    canonical_json(&m.params),
                    canonical_json(&expected.params)
                ));
            }
            if m.inputs != expected.inputs {
                let show = |inputs: &[cream_core::InputRef]| {
                    inputs.iter().map(|i| format!("{}={}/{}", i.name, i.stage, i.id)).collect::<Vec<_>>().join(", ")
                };
                why.push(format!("inputs [{}] (expected [{}])", show(&m.inputs), show(&expected.inputs)));
            }
            if why.is_empty() {
                why.push(format!("id {} (expected {})", a.id(), expected.id()));
            }
            bail!(
                "shard artifact {dir} (shard {shard}) was not made with the parameters and inputs of \
                 this merge: it has {}; rerun that shard with the same config and inputs",
                why.join("; ")
            );
        }
        shards.push((shard, a));
    }
    let count = shards[0].0.count;
    if let Some((s, a)) = shards.iter().find(|(s, _)| s.count != count) {
        bail!(
            "shard artifacts of different shard counts: {} is shard {} but {} is shard {s}; merge \
             the shards of one --shard K/N run",
            shards[0].1.dir.display(),
            shards[0].0,
            a.dir.display()
        );
    }
    shards.sort_by_key(|(s, _)| s.index);
    for w in shards.windows(2) {
        if w[0].0 == w[1].0 {
            bail!(
                "shard {} is given twice ({} and {}); pass each shard 0..{count} once",
                w[0].0,
                w[0].1.dir.display(),
                w[1].1.dir.display()
            );
        }
    }
    let missing: Vec<String> =
        (0..count).filter(|i| !shards.iter().any(|(s, _)| s.index == *i)).map(|i| format!("{i}/{count}")).collect();
    ensure!(
        missing.is_empty(),
        "missing shard{} {} of {count}: merge needs all shards 0..{count} (got {})",
        if missing.len() > 1 { "s" } else { "" },
        missing.join(", "),
        shards.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(shards)
}

/// Manifest `extra` of a merged artifact: the sum over the shards of each numeric statistic in
/// `sum_keys` (absent keys are skipped) and `"merged_from"`, the shard artifact ids in shard order.
pub fn merged_extra(shards: &[(Shard, Artifact)], sum_keys: &[&str]) -> Value {
    let mut extra = serde_json::Map::new();
    for key in sum_keys {
        let values: Vec<&Value> = shards.iter().filter_map(|(_, a)| a.manifest.extra.get(*key)).collect();
        if values.len() != shards.len() {
            continue;
        }
        if let Some(total) = values.iter().map(|v| v.as_u64()).sum::<Option<u64>>() {
            extra.insert((*key).into(), json!(total));
        } else if let Some(total) = values.iter().map(|v| v.as_f64()).sum::<Option<f64>>() {
            extra.insert((*key).into(), json!(total));
        }
    }
    let ids: Vec<&str> = shards.iter().map(|(_, a)| a.id().as_str()).collect();
    extra.insert("merged_from".into(), json!(ids));
    Value::Object(extra)
}

/// Where each row of the unsharded table goes, for [`merge_rows`]: the row keys in the
/// unsharded order, each with the position (in the stage's prompt order) that decides which
/// shard owns it, and what the keys are (for errors, e.g. "the samples <dir>").
pub struct Layout<K> {
    pub keys: Vec<(K, usize)>,
    pub source: String,
}

/// The rows of the table `file` of every shard (as [`open_shards`] returns them) in the unsharded
/// order of `layout`: each shard row's key (`key`) must be one of the layout's, in a position the
/// shard owns, and given once; every key of the layout must be filled. `show` names a key in
/// errors (e.g. "prompt p sample 3"). Errors name the shard file and the row.
pub fn merge_rows<R: Table, K: Hash + Eq>(
    shards: &[(Shard, Artifact)],
    file: &str,
    layout: &Layout<K>,
    key: impl Fn(&R) -> K,
    show: impl Fn(&K) -> String,
) -> Result<Vec<R>> {
    let mut index: HashMap<&K, usize> = HashMap::with_capacity(layout.keys.len());
    for (i, (k, _)) in layout.keys.iter().enumerate() {
        ensure!(index.insert(k, i).is_none(), "{}: {} appears twice; cannot merge shards by it", layout.source, show(k));
    }
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(layout.keys.len()).collect();
    for (s, a) in shards {
        let path = a.path(file)?;
        for row in read_table::<R>(&path)? {
            let k = key(&row);
            let what = || format!("{}: {}", path.display(), show(&k));
            let Some(&i) = index.get(&k) else {
                bail!("{}: not one of {}", what(), layout.source);
            };
            let pos = layout.keys[i].1;
            ensure!(s.keeps(pos), "{}: position {pos} does not belong to shard {s}", what());
            ensure!(slots[i].is_none(), "{}: appears twice", what());
            slots[i] = Some(row);
        }
    }
    slots
        .into_iter()
        .zip(&layout.keys)
        .map(|(row, (k, pos))| {
            row.ok_or_else(|| {
                let owner = shards.iter().find(|(s, _)| s.keeps(*pos)).map(|(_, a)| a.dir.display().to_string());
                anyhow!("shard artifact {} lacks {}", owner.unwrap_or_default(), show(k))
            })
        })
        .collect()
}

/// How a `(prompt_id, sample_idx)` key reads in errors.
pub fn show_sample((prompt_id, sample_idx): &(String, u32)) -> String {
    format!("prompt {prompt_id} sample {sample_idx}")
}

#[cfg(test)]
mod tests {
    use cream_core::{ProduceOutput, ScoreRow, write_table};

    use super::*;

    #[test]
    fn parses_k_of_n() {
        assert_eq!("0/1".parse::<Shard>().unwrap(), Shard::ALL);
        assert_eq!("3/4".parse::<Shard>().unwrap(), Shard { index: 3, count: 4 });
        assert_eq!(" 1 / 2 ".parse::<Shard>().unwrap(), Shard { index: 1, count: 2 });
        assert_eq!("2/3".parse::<Shard>().unwrap().to_string(), "2/3");
        assert_eq!(Shard::default(), Shard::ALL);
        assert!(Shard::ALL.is_all() && !Shard::new(0, 2).unwrap().is_all());
    }

    #[test]
    fn rejects_bad_shards() {
        for (bad, why) in [
            ("", "expected K/N"),
            ("3", "expected K/N"),
            ("1/", "count N"),
            ("/2", "index K"),
            ("a/2", "index K"),
            ("-1/2", "index K"),
            ("1/2/3", "count N"),
            ("0/0", "at least 1"),
            ("2/2", "below the count"),
            ("5/3", "below the count"),
            ("1/99999999999999999999999", "too large"),
        ] {
            let err = format!("{:#}", bad.parse::<Shard>().unwrap_err());
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(Shard::new(2, 2).is_err() && Shard::new(0, 0).is_err());
    }

    #[test]
    fn keeps_every_nth_position() {
        let s = Shard::new(1, 3).unwrap();
        let kept: Vec<usize> = (0..8).filter(|&p| s.keeps(p)).collect();
        assert_eq!(kept, [1, 4, 7]);
        assert!((0..8).all(|p| Shard::ALL.keeps(p)));
        // Every position belongs to exactly one shard.
        for p in 0..20 {
            assert_eq!((0..3).filter(|&k| Shard::new(k, 3).unwrap().keeps(p)).count(), 1);
        }
    }

    #[test]
    fn params_unchanged_when_unsharded() {
        let p = json!({"batch_tokens": 4096});
        assert_eq!(Shard::ALL.params(p.clone()).unwrap(), p);
        assert_eq!(Shard::new(1, 2).unwrap().params(p).unwrap(), json!({"batch_tokens": 4096, "shard": "1/2"}));
        assert!(Shard::new(0, 2).unwrap().params(json!(3)).is_err());
    }

    /// A shard artifact of a test stage holding `rows` as `scores.parquet`; `case` keeps the
    /// artifacts of different test cases apart.
    fn score_shard(ctx: &Ctx, case: &str, shard: Shard, rows: &[(&str, u32)]) -> Artifact {
        let unsharded =
            ArtifactSpec { stage: "score".into(), schema_version: 1, params: json!({"case": case}), inputs: vec![] };
        let rows: Vec<ScoreRow> = rows
            .iter()
            .map(|&(p, k)| ScoreRow { prompt_id: p.into(), sample_idx: k, sum_logprob: -f64::from(k), n_scored: 1 })
            .collect();
        ctx.produce(shard.spec(&unsharded).unwrap(), |dir| {
            let n = write_table(&dir.join("scores.parquet"), &rows)?;
            Ok(ProduceOutput::default().with_rows("scores.parquet", n))
        })
        .unwrap()
    }

    /// Samples a0, a1 (prompt position 0), b0 (1), c0 (2): shard 0/2 owns a and c, 1/2 owns b.
    fn layout() -> Layout<(String, u32)> {
        let keys = [("a", 0, 0), ("a", 1, 0), ("b", 0, 1), ("c", 0, 2)];
        Layout { keys: keys.iter().map(|&(p, k, pos)| ((p.to_string(), k), pos)).collect(), source: "the samples".into() }
    }

    fn merge(shards: &[(Shard, Artifact)], layout: &Layout<(String, u32)>) -> Result<Vec<ScoreRow>> {
        merge_rows(shards, "scores.parquet", layout, |r: &ScoreRow| (r.prompt_id.clone(), r.sample_idx), show_sample)
    }

    #[test]
    fn merge_rows_restores_the_unsharded_order_and_names_every_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = Ctx::new(tmp.path(), true).unwrap();
        let (s0, s1) = (Shard::new(0, 2).unwrap(), Shard::new(1, 2).unwrap());
        let case = |name: &str, rows0: &[(&str, u32)], rows1: &[(&str, u32)]| {
            vec![(s0, score_shard(&ctx, name, s0, rows0)), (s1, score_shard(&ctx, name, s1, rows1))]
        };
        let err = |shards: &[(Shard, Artifact)]| format!("{:#}", merge(shards, &layout()).unwrap_err());

        // Shard rows in any order come back in the layout's order.
        let ok = case("ok", &[("c", 0), ("a", 1), ("a", 0)], &[("b", 0)]);
        let keys: Vec<(String, u32)> =
            merge(&ok, &layout()).unwrap().into_iter().map(|r| (r.prompt_id, r.sample_idx)).collect();
        assert_eq!(keys, [("a".into(), 0), ("a".into(), 1), ("b".into(), 0), ("c".into(), 0)]);

        let missing = case("missing", &[("a", 0), ("a", 1), ("c", 0)], &[]);
        let e = err(&missing);
        assert!(e.contains("lacks prompt b sample 0") && e.contains(&missing[1].1.dir.display().to_string()), "{e}");
        let foreign = case("foreign", &[("a", 0), ("a", 1), ("c", 0)], &[("b", 0), ("a", 0)]);
        let e = err(&foreign);
        assert!(e.contains("prompt a sample 0: position 0 does not belong to shard 1/2"), "{e}");
        let twice = case("twice", &[("a", 0), ("a", 1), ("a", 1), ("c", 0)], &[("b", 0)]);
        assert!(err(&twice).contains("prompt a sample 1: appears twice"), "{}", err(&twice));
        let unknown = case("unknown", &[("a", 0), ("a", 1), ("c", 0), ("z", 0)], &[("b", 0)]);
        assert!(err(&unknown).contains("prompt z sample 0: not one of the samples"), "{}", err(&unknown));
        let mut dup = layout();
        dup.keys.push((("a".into(), 1), 0));
        let e = format!("{:#}", merge(&ok, &dup).unwrap_err());
        assert!(e.contains("the samples: prompt a sample 1 appears twice"), "{e}");
    }
}
