//! Agreement between the current and the previous model's rankings of one prompt's responses, and
//! the consistency rate C (spec step 4, pitfall 6).
//!
//! All pairwise statistics here are O(n²) in the number of responses per prompt (N = 5 in the
//! paper), which is simpler and exact.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::rank::{first_argmax, first_argmin, ordinal_ranks, reject_nan};
use crate::{Error, Result};

/// Kendall tau between the *ordinal* ranks of `a` and `b` (spec step 4, the reference code's
/// `kendalltau(rankdata(a, "ordinal"), rankdata(b, "ordinal"))`).
///
/// Ordinal ranks have no ties, so this is (concordant - discordant) / (n(n-1)/2) over all pairs;
/// a pair tied in the raw values is ordered by position in both vectors and therefore counts as
/// concordant when tied in both (pitfall 6). Exact at ±1 (scipy's rounding can give
/// 0.9999999999999998 there); elsewhere within an ulp or two of scipy.
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::TooShort`] (fewer than 2 values) or [`Error::Nan`].
pub fn kendall_tau_ordinal(a: &[f64], b: &[f64]) -> Result<f64> {
    check_pair(a, "a", b, "b")?;
    let counts = pair_counts(&ordinal_ranks(a)?, &ordinal_ranks(b)?);
    Ok(counts
        .tau_b()
        .expect("ordinal ranks of 2 or more values are never all tied"))
}

/// Kendall tau-b on the raw values (spec pitfall 6, the tie-aware option), as scipy's
/// `kendalltau(a, b)` default: pairs tied in either vector are neither concordant nor discordant,
/// and the denominator is sqrt((n0 - ties_a)(n0 - ties_b)) with n0 = n(n-1)/2.
///
/// Returns `Ok(None)` where scipy returns NaN: when `a` or `b` has all values equal, tau-b is 0/0.
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::TooShort`] (fewer than 2 values) or [`Error::Nan`].
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> Result<Option<f64>> {
    check_pair(a, "a", b, "b")?;
    Ok(pair_counts(a, b).tau_b())
}

/// Spearman rho between the ordinal ranks of `a` and `b` (spec step 4, the "spearman" option):
/// 1 - 6 Σd² / (n(n²-1)), which equals the Pearson correlation of the (tie-free) ranks.
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::TooShort`] (fewer than 2 values) or [`Error::Nan`].
pub fn spearman_rho(a: &[f64], b: &[f64]) -> Result<f64> {
    check_pair(a, "a", b, "b")?;
    let sum_d2: f64 = ordinal_ranks(a)?
        .into_iter()
        .zip(ordinal_ranks(b)?)
        .map(|(x, y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let n = a.len() as f64;
    Ok(1.0 - 6.0 * sum_d2 / (n * (n * n - 1.0)))
}

/// TopOrder agreement (spec step 4): true when the first argmax of `a` is the first argmax of `b`
/// AND their first argmins agree. (The reference code compares the ranks of responses #0 and #N-1
/// instead, a bug this function does not reproduce.)
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::TooShort`] (fewer than 2 values) or [`Error::Nan`].
pub fn top_order(a: &[f64], b: &[f64]) -> Result<bool> {
    check_pair(a, "a", b, "b")?;
    Ok(first_argmax(a) == first_argmax(b) && first_argmin(a) == first_argmin(b))
}

/// How one prompt's two rankings are compared (spec step 4). Serialised as `"kendall"` (the paper's
/// default), `"kendall_b"`, `"spearman"`, `"toporder"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Method {
    /// [`kendall_tau_ordinal`], C = (tau + 1) / 2.
    #[default]
    #[serde(rename = "kendall")]
    Kendall,
    /// [`kendall_tau_b`], C = (tau_b + 1) / 2.
    #[serde(rename = "kendall_b")]
    KendallB,
    /// [`spearman_rho`], C = (rho + 1) / 2.
    #[serde(rename = "spearman")]
    Spearman,
    /// [`top_order`], C = 1 when it holds, else 0.
    #[serde(rename = "toporder")]
    TopOrder,
}

/// One prompt's consistency (spec step 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromptConsistency {
    /// tau, tau-b or rho in [-1, 1]; 0 or 1 for TopOrder.
    pub stat: f64,
    /// C_j in [0, 1].
    pub c: f64,
    /// Pairs of responses with equal rewards under the current model (for the tie-rate report).
    pub ties_current: u32,
    /// Pairs of responses with equal rewards under the previous model.
    pub ties_previous: u32,
}

/// C_j for one prompt from the current and the previous model's rewards of the same responses, in
/// the same order (spec step 4): C_j = (stat + 1) / 2 for the correlation methods, the 0/1 outcome
/// for [`Method::TopOrder`].
///
/// With [`Method::KendallB`], a prompt where either model gives all responses the same reward has
/// no defined tau-b; it gets stat 0 and C_j = 0.5 ("no evidence either way"), and its tie counts
/// (n(n-1)/2 on that side) show why.
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::TooShort`] (fewer than 2 responses) or [`Error::Nan`].
pub fn prompt_consistency(
    method: Method,
    current: &[f64],
    previous: &[f64],
) -> Result<PromptConsistency> {
    check_pair(current, "current", previous, "previous")?;
    let counts = pair_counts(current, previous);
    let stat = match method {
        Method::Kendall => kendall_tau_ordinal(current, previous)?,
        Method::KendallB => counts.tau_b().unwrap_or(0.0),
        Method::Spearman => spearman_rho(current, previous)?,
        Method::TopOrder => f64::from(u8::from(top_order(current, previous)?)),
    };
    let c = match method {
        Method::TopOrder => stat,
        Method::Kendall | Method::KendallB | Method::Spearman => (stat + 1.0) / 2.0,
    };
    let saturate = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(PromptConsistency {
        stat,
        c,
        ties_current: saturate(counts.tied_a),
        ties_previous: saturate(counts.tied_b),
    })
}

/// Which C each preference pair carries into DPO (spec steps 4-6).
/// Serialised as `"avg"`, `"dyn"`, `{"fixed": c}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CMode {
    /// The dataset-level rate C = mean_j C_j (the paper's default).
    #[default]
    Avg,
    /// Each pair's own C_j, keyed by prompt id.
    Dyn,
    /// A constant chosen by hand: the fixed-C ablation; `Fixed(1.0)` is plain DPO (the SRLM baseline).
    Fixed(f64),
}

impl CMode {
    /// The C of one pair row (spec step 5), given the dataset rate ([`dataset_c`]) and the
    /// pair's own prompt's C_j.
    pub fn pair_c(self, dataset_c: f64, prompt_c: f64) -> f64 {
        match self {
            CMode::Avg => dataset_c,
            CMode::Dyn => prompt_c,
            CMode::Fixed(c) => c,
        }
    }
}

/// The dataset-level consistency rate C = mean_j C_j (spec step 4, "avg").
///
/// # Errors
/// [`Error::Empty`] for no prompts, [`Error::Nan`] for a NaN C_j.
pub fn dataset_c(cs: &[f64]) -> Result<f64> {
    if cs.is_empty() {
        return Err(Error::Empty("per-prompt consistency list"));
    }
    reject_nan(cs, "cs")?;
    Ok(cs.iter().sum::<f64>() / cs.len() as f64)
}

/// Equal lengths, at least 2 values, no NaN.
fn check_pair(a: &[f64], a_name: &'static str, b: &[f64], b_name: &'static str) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::LengthMismatch {
            left: a_name,
            left_len: a.len(),
            right: b_name,
            right_len: b.len(),
        });
    }
    if a.len() < 2 {
        return Err(Error::TooShort { len: a.len() });
    }
    reject_nan(a, a_name)?;
    reject_nan(b, b_name)
}

/// Pair statistics over all i < j, as scipy's `kendalltau` gathers them.
struct PairCounts {
    con_minus_dis: i64,
    total: u64,
    tied_a: u64,
    tied_b: u64,
}

impl PairCounts {
    /// tau-b = `con_minus_dis / sqrt((total - tied_a)(total - tied_b))`, clipped to [-1, 1] as
    /// scipy does; `None` (scipy: NaN) when one side is all tied. Without ties the root is exactly
    /// `total`, so tau is exactly (concordant - discordant) / total.
    fn tau_b(&self) -> Option<f64> {
        if self.tied_a == self.total || self.tied_b == self.total {
            return None;
        }
        let denominator =
            ((self.total - self.tied_a) as f64 * (self.total - self.tied_b) as f64).sqrt();
        Some((self.con_minus_dis as f64 / denominator).clamp(-1.0, 1.0))
    }
}

/// Counts over the pairs of two equally long, NaN-free vectors.
fn pair_counts<T: PartialOrd>(a: &[T], b: &[T]) -> PairCounts {
    let mut counts = PairCounts {
        con_minus_dis: 0,
        total: 0,
        tied_a: 0,
        tied_b: 0,
    };
    for j in 1..a.len() {
        for i in 0..j {
            let sa = a[i].partial_cmp(&a[j]).expect("NaN was rejected");
            let sb = b[i].partial_cmp(&b[j]).expect("NaN was rejected");
            counts.total += 1;
            counts.tied_a += u64::from(sa == Ordering::Equal);
            counts.tied_b += u64::from(sb == Ordering::Equal);
            if sa != Ordering::Equal && sb != Ordering::Equal {
                counts.con_minus_dis += if sa == sb { 1 } else { -1 };
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_errors_name_the_problem() {
        let err = prompt_consistency(Method::Kendall, &[1.0, 2.0], &[1.0]).unwrap_err();
        assert!(
            err.to_string()
                .contains("current has 2 values but previous has 1"),
            "{err}"
        );
        let err = prompt_consistency(Method::Spearman, &[1.0], &[1.0]).unwrap_err();
        assert_eq!(err, Error::TooShort { len: 1 });
        let err = prompt_consistency(Method::TopOrder, &[1.0, 2.0], &[0.0, f64::NAN]).unwrap_err();
        assert_eq!(
            err,
            Error::Nan {
                what: "previous",
                index: 1
            }
        );
        assert!(matches!(
            kendall_tau_b(&[], &[]),
            Err(Error::TooShort { len: 0 })
        ));
    }

    #[test]
    fn ordinal_kendall_counts_double_ties_as_concordant() {
        // The only pair is tied in both vectors: ordinal ranks order it by position in both.
        assert_eq!(kendall_tau_ordinal(&[1.0, 1.0], &[5.0, 5.0]).unwrap(), 1.0);
        assert_eq!(kendall_tau_b(&[1.0, 1.0], &[5.0, 5.0]).unwrap(), None);
    }

    #[test]
    fn tau_b_handles_ties_like_scipy() {
        // scipy.stats.kendalltau([1, 2, 2, 3], [1, 3, 2, 4]).statistic = 5 / sqrt(5 * 6)
        let tau = kendall_tau_b(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0])
            .unwrap()
            .unwrap();
        assert!((tau - 5.0 / 30f64.sqrt()).abs() < 1e-15, "{tau}");
    }

    #[test]
    fn c_per_method() {
        let cur = [3.0, 1.0, 2.0, 2.0];
        let prev = [3.0, 2.0, 1.0, 1.0];
        // ordinal ranks: cur [4, 1, 2, 3], prev [4, 3, 1, 2]: 4 concordant, 2 discordant pairs.
        let k = prompt_consistency(Method::Kendall, &cur, &prev).unwrap();
        assert!(
            (k.stat - 1.0 / 3.0).abs() < 1e-15 && (k.c - 2.0 / 3.0).abs() < 1e-15,
            "{k:?}"
        );
        assert_eq!((k.ties_current, k.ties_previous), (1, 1));
        // Σd² = 0 + 4 + 1 + 1 = 6: rho = 1 - 36 / 60.
        let s = prompt_consistency(Method::Spearman, &cur, &prev).unwrap();
        assert!(
            (s.stat - 0.4).abs() < 1e-15 && (s.c - 0.7).abs() < 1e-15,
            "{s:?}"
        );
        // argmax agrees (0), first argmin does not (1 vs 2).
        let t = prompt_consistency(Method::TopOrder, &cur, &prev).unwrap();
        assert_eq!((t.stat, t.c), (0.0, 0.0));
        let t = prompt_consistency(Method::TopOrder, &cur, &[9.0, 0.0, 1.0, 1.0]).unwrap();
        assert_eq!((t.stat, t.c), (1.0, 1.0));
        let b = prompt_consistency(Method::KendallB, &cur, &[7.0; 4]).unwrap();
        assert_eq!((b.stat, b.c, b.ties_previous), (0.0, 0.5, 6));
    }

    #[test]
    fn serde_names() {
        let names = [
            (Method::Kendall, "\"kendall\""),
            (Method::KendallB, "\"kendall_b\""),
            (Method::Spearman, "\"spearman\""),
            (Method::TopOrder, "\"toporder\""),
        ];
        for (method, name) in names {
            assert_eq!(serde_json::to_string(&method).unwrap(), name);
            assert_eq!(serde_json::from_str::<Method>(name).unwrap(), method);
        }
        assert_eq!(serde_json::to_string(&CMode::Dyn).unwrap(), "\"dyn\"");
        assert_eq!(
            serde_json::from_str::<CMode>("{\"fixed\":0.8}").unwrap(),
            CMode::Fixed(0.8)
        );
    }

    #[test]
    fn c_modes_and_dataset_c() {
        assert_eq!(CMode::Avg.pair_c(0.7, 0.2), 0.7);
        assert_eq!(CMode::Dyn.pair_c(0.7, 0.2), 0.2);
        assert_eq!(CMode::Fixed(1.0).pair_c(0.7, 0.2), 1.0);
        assert_eq!(dataset_c(&[0.5, 1.0, 0.0, 0.5]).unwrap(), 0.5);
        assert_eq!(
            dataset_c(&[]).unwrap_err(),
            Error::Empty("per-prompt consistency list")
        );
        assert!(matches!(
            dataset_c(&[0.5, f64::NAN]),
            Err(Error::Nan { index: 1, .. })
        ));
    }
}
