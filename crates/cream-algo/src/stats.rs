//! Bootstrap confidence intervals for evaluation results (reporting, not part of the CREAM loop).
//!
//! Accuracies are given as per-item 0/1 outcomes (`1.0` = correct) and come back as fractions in
//! [0, 1]; any other per-item score works the same way, in its own units. Everything here is a
//! pure function of its inputs and a `u64` seed: the same call always returns the same numbers.
//!
//! - [`bootstrap_mean_ci`]: percentile bootstrap CI of a mean.
//! - [`paired_bootstrap_diff`]: CI and two-sided p-value of mean(a) - mean(b) for two systems
//!   scored on the same items (resampling items, so per-item correlation is kept).
//! - [`detectable_difference`]: the half-width of that paired CI at 95%, the size below which a
//!   difference between the two systems cannot be told apart from noise on this item set.
//! - [`SplitMix64`]: the small deterministic generator the resampling uses.
//!
//! Percentile positions: the `B = reps` resampled statistics are sorted and the quantile `q` is
//! read by linear interpolation at position `q (B - 1)` (Hyndman & Fan type 7, numpy's default);
//! the interval at `level` is [quantile((1 - level) / 2), quantile((1 + level) / 2)].

/// SplitMix64 (Steele, Lea & Flood 2014; the seeding generator of xoshiro): a 64-bit state
/// advanced by a Weyl constant and mixed by a bijective finaliser. Fast, deterministic across
/// platforms, and good enough to draw bootstrap indices; not cryptographic.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is the SplitMix64 mix of `seed + 0x9E3779B97F4A7C15`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n`, without modulo bias (Lemire's multiply-and-reject).
    ///
    /// # Panics
    /// When `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "SplitMix64::below(0): empty range");
        let n = n as u64;
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as usize
    }
}

/// A point estimate with a confidence interval, in the units of the input (a fraction in [0, 1]
/// for 0/1 outcomes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The statistic on the original sample (the plain mean for [`bootstrap_mean_ci`]).
    pub estimate: f64,
    /// Lower bound of the interval.
    pub lo: f64,
    /// Upper bound of the interval.
    pub hi: f64,
}

impl Interval {
    /// (hi - lo) / 2.
    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }

    /// Whether `v` lies in [lo, hi].
    pub fn contains(&self, v: f64) -> bool {
        self.lo <= v && v <= self.hi
    }
}

/// The paired comparison of two systems on the same items ([`paired_bootstrap_diff`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedDiff {
    /// mean(a) - mean(b) on the original items.
    pub estimate: f64,
    /// Lower bound of the percentile bootstrap interval of the difference.
    pub lo: f64,
    /// Upper bound of that interval.
    pub hi: f64,
    /// Bootstrap two-sided p-value of "no difference":
    /// min(1, 2 min(frac(diff* <= 0), frac(diff* >= 0))) over the resampled differences diff*.
    /// It is 0 when every resample has the same strict sign (so it resolves no better than
    /// 1 / reps), and 1 when the differences are exactly 0 on every item.
    pub p_two_sided: f64,
}

impl PairedDiff {
    /// The interval part, as an [`Interval`].
    pub fn interval(&self) -> Interval {
        Interval { estimate: self.estimate, lo: self.lo, hi: self.hi }
    }
}

/// The mean of `x` (NaN when empty).
fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Quantile `q` of the ascending `sorted` (non-empty) by linear interpolation at `q (len - 1)`.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let below = pos.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let frac = pos - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * frac
}

/// Whether the resampling parameters are usable: at least one replicate, level in (0, 1).
fn valid(reps: usize, level: f64) -> bool {
    reps > 0 && level > 0.0 && level < 1.0
}

/// `reps` bootstrap means of `x` (non-empty): each the mean of `x.len()` items drawn with
/// replacement, sorted ascending.
fn resampled_means(x: &[f64], reps: usize, seed: u64) -> Vec<f64> {
    let n = x.len();
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..reps)
        .map(|_| (0..n).map(|_| x[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    means
}

/// Percentile bootstrap confidence interval of the mean of `x` at confidence `level` (e.g. 0.95),
/// from `reps` resamples (a few thousand is usual) drawn with a [`SplitMix64`] seeded by `seed`.
/// `estimate` is the plain mean of `x`; for 0/1 outcomes all three numbers are fractions.
///
/// `None` when `x` is empty, `reps` is 0 or `level` is not in (0, 1).
pub fn bootstrap_mean_ci(x: &[f64], reps: usize, level: f64, seed: u64) -> Option<Interval> {
    if x.is_empty() || !valid(reps, level) {
        return None;
    }
    let means = resampled_means(x, reps, seed);
    let alpha = (1.0 - level) / 2.0;
    Some(Interval {
        estimate: mean(x),
        lo: quantile_sorted(&means, alpha),
        hi: quantile_sorted(&means, 1.0 - alpha),
    })
}

/// Paired bootstrap of mean(a) - mean(b), where `a[i]` and `b[i]` are two systems' outcomes on the
/// same item `i`: each of the `reps` replicates draws item indices with replacement and takes the
/// difference of the two means over those items (equivalently, the mean of the per-item
/// differences), so that item difficulty shared by both systems cancels. Returns the percentile
/// interval at `level` and the bootstrap two-sided p-value (see [`PairedDiff::p_two_sided`]).
///
/// `None` when the inputs are empty or of different lengths, `reps` is 0 or `level` is not in
/// (0, 1).
pub fn paired_bootstrap_diff(a: &[f64], b: &[f64], reps: usize, level: f64, seed: u64) -> Option<PairedDiff> {
    if a.is_empty() || a.len() != b.len() || !valid(reps, level) {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let diffs = resampled_means(&d, reps, seed);
    let at_most_0 = diffs.iter().filter(|&&v| v <= 0.0).count() as f64 / reps as f64;
    let at_least_0 = diffs.iter().filter(|&&v| v >= 0.0).count() as f64 / reps as f64;
    let alpha = (1.0 - level) / 2.0;
    Some(PairedDiff {
        estimate: mean(a) - mean(b),
        lo: quantile_sorted(&diffs, alpha),
        hi: quantile_sorted(&diffs, 1.0 - alpha),
        p_two_sided: (2.0 * at_most_0.min(at_least_0)).min(1.0),
    })
}

/// The half-width (hi - lo) / 2 of the 95% paired bootstrap interval of mean(a) - mean(b)
/// ([`paired_bootstrap_diff`] at level 0.95). A report can say "differences smaller than this
/// could not be detected on these items": an observed difference inside ± this value is
/// compatible with no difference at the 5% level. For 0/1 outcomes it is a fraction (multiply by
/// 100 for accuracy points).
///
/// `None` under the same conditions as [`paired_bootstrap_diff`].
pub fn detectable_difference(a: &[f64], b: &[f64], reps: usize, seed: u64) -> Option<f64> {
    paired_bootstrap_diff(a, b, reps, 0.95, seed).map(|d| d.interval().half_width())
}
