//! The bootstrap intervals of `cream_algo::stats` against known values, the normal approximation
//! and constructed paired / unpaired cases.

use cream_algo::{Interval, SplitMix64, bootstrap_mean_ci, detectable_difference, paired_bootstrap_diff};

const REPS: usize = 4000;

/// 300 fixed 0/1 outcomes with exactly 90 ones (p = 0.3), spread evenly.
fn bernoulli_03() -> Vec<f64> {
    (0..300).map(|i| f64::from(u8::from(i % 10 < 3))).collect()
}

/// 0/1 outcomes on `n` items: 1 where `i % 10 < k`.
fn outcomes(n: usize, k: usize) -> Vec<f64> {
    (0..n).map(|i| f64::from(u8::from(i % 10 < k))).collect()
}

fn width(ci: &Interval) -> f64 {
    ci.hi - ci.lo
}

#[test]
fn splitmix64_reference_outputs_and_bounded_draws() {
    // The published SplitMix64 sequence for seed 0.
    let mut g = SplitMix64::new(0);
    assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    assert_eq!(g.next_u64(), 0x06C4_5D18_8009_454F);
    // below(n) stays in range and hits every value of a small range about equally often.
    let mut g = SplitMix64::new(42);
    let mut counts = [0usize; 7];
    for _ in 0..70_000 {
        counts[g.below(7)] += 1;
    }
    for c in counts {
        assert!((9_500..10_500).contains(&c), "{counts:?}");
    }
}

#[test]
fn constant_vector_has_zero_width() {
    for c in [0.0, 1.0, 0.37] {
        let ci = bootstrap_mean_ci(&vec![c; 50], REPS, 0.95, 1).unwrap();
        assert_eq!(width(&ci), 0.0, "{ci:?}");
        assert_eq!((ci.lo, ci.hi), (ci.estimate, ci.estimate), "{ci:?}");
        assert!((ci.estimate - c).abs() < 1e-15);
    }
}

#[test]
fn bernoulli_ci_contains_p_and_matches_the_normal_width() {
    let x = bernoulli_03();
    let (p, n) = (0.3, x.len() as f64);
    let ci = bootstrap_mean_ci(&x, REPS, 0.95, 7).unwrap();
    assert!((ci.estimate - p).abs() < 1e-12, "{ci:?}");
    assert!(ci.lo < p && p < ci.hi, "{ci:?}");
    assert!(ci.contains(p));
    let normal = 2.0 * 1.96 * (p * (1.0 - p) / n).sqrt();
    let rel = (width(&ci) - normal).abs() / normal;
    assert!(rel < 0.15, "bootstrap width {} vs normal {normal} ({:.1}% off)", width(&ci), 100.0 * rel);
    // Roughly symmetric around p for n = 300 (a wrong percentile position would shift it).
    assert!(((ci.hi - p) - (p - ci.lo)).abs() < 0.25 * normal, "{ci:?}");
    // A lower level gives a narrower interval inside the wider one.
    let ci80 = bootstrap_mean_ci(&x, REPS, 0.80, 7).unwrap();
    assert!(ci.lo < ci80.lo && ci80.hi < ci.hi, "{ci80:?} vs {ci:?}");
    let normal80 = 2.0 * 1.2816 * (p * (1.0 - p) / n).sqrt();
    assert!((width(&ci80) - normal80).abs() / normal80 < 0.15, "{ci80:?}");
}

#[test]
fn same_seed_same_result_other_seed_other_bounds() {
    let x = bernoulli_03();
    let a = bootstrap_mean_ci(&x, 500, 0.95, 11).unwrap();
    assert_eq!(a, bootstrap_mean_ci(&x, 500, 0.95, 11).unwrap());
    let others: Vec<Interval> = (12..16).map(|s| bootstrap_mean_ci(&x, 500, 0.95, s).unwrap()).collect();
    assert!(others.iter().all(|o| o.estimate == a.estimate));
    assert!(others.iter().any(|o| (o.lo, o.hi) != (a.lo, a.hi)), "{a:?} {others:?}");

    let (u, v) = (outcomes(200, 6), outcomes(200, 4));
    let d = paired_bootstrap_diff(&u, &v, 500, 0.95, 3).unwrap();
    assert_eq!(d, paired_bootstrap_diff(&u, &v, 500, 0.95, 3).unwrap());
    let others: Vec<_> = (4..8).map(|s| paired_bootstrap_diff(&u, &v, 500, 0.95, s).unwrap()).collect();
    assert!(others.iter().any(|o| (o.lo, o.hi) != (d.lo, d.hi)), "{d:?} {others:?}");
}

#[test]
fn rejects_empty_and_mismatched_inputs() {
    assert_eq!(bootstrap_mean_ci(&[], REPS, 0.95, 1), None);
    assert_eq!(bootstrap_mean_ci(&[1.0], 0, 0.95, 1), None);
    assert_eq!(bootstrap_mean_ci(&[1.0], 10, 1.0, 1), None);
    assert_eq!(bootstrap_mean_ci(&[1.0], 10, 0.0, 1), None);
    assert_eq!(paired_bootstrap_diff(&[], &[], REPS, 0.95, 1), None);
    assert_eq!(paired_bootstrap_diff(&[1.0, 0.0], &[1.0], REPS, 0.95, 1), None);
    assert_eq!(detectable_difference(&[1.0], &[1.0, 0.0], REPS, 1), None);
}

#[test]
fn paired_diff_of_identical_vectors_is_zero_with_p_one() {
    let x = bernoulli_03();
    let d = paired_bootstrap_diff(&x, &x, REPS, 0.95, 5).unwrap();
    assert_eq!((d.estimate, d.lo, d.hi, d.p_two_sided), (0.0, 0.0, 0.0, 1.0), "{d:?}");
    assert_eq!(detectable_difference(&x, &x, REPS, 5), Some(0.0));
}

#[test]
fn paired_diff_all_right_vs_all_wrong() {
    let (a, b) = (vec![1.0; 120], vec![0.0; 120]);
    let d = paired_bootstrap_diff(&a, &b, REPS, 0.95, 9).unwrap();
    assert_eq!((d.estimate, d.lo, d.hi), (1.0, 1.0, 1.0), "{d:?}");
    assert!(d.p_two_sided < 1e-3, "{d:?}");
    // Reversed: the same p, the negated interval.
    let r = paired_bootstrap_diff(&b, &a, REPS, 0.95, 9).unwrap();
    assert_eq!((r.estimate, r.lo, r.hi), (-1.0, -1.0, -1.0), "{r:?}");
    assert!(r.p_two_sided < 1e-3, "{r:?}");
}

#[test]
fn paired_diff_is_antisymmetric_and_p_tracks_the_effect() {
    // a right on 60% of the items, b on 40% of them (b's items a subset of a's).
    let (a, b) = (outcomes(300, 6), outcomes(300, 4));
    let d = paired_bootstrap_diff(&a, &b, REPS, 0.95, 21).unwrap();
    let r = paired_bootstrap_diff(&b, &a, REPS, 0.95, 21).unwrap();
    assert!((d.estimate - 0.2).abs() < 1e-12, "{d:?}");
    assert!(d.lo < 0.2 && 0.2 < d.hi && d.lo > 0.0, "{d:?}");
    let close = |x: f64, y: f64| (x - y).abs() < 1e-12;
    assert!(close(r.estimate, -d.estimate) && close(r.lo, -d.hi) && close(r.hi, -d.lo), "{r:?} vs {d:?}");
    assert_eq!(r.p_two_sided, d.p_two_sided);
    assert!(d.p_two_sided < 1e-3, "{d:?}");
    // A difference of one item in 300 is not significant.
    let mut c = a.clone();
    c[9] = 1.0;
    let small = paired_bootstrap_diff(&c, &a, REPS, 0.95, 21).unwrap();
    assert!(small.p_two_sided > 0.2, "{small:?}");
    assert!(small.lo <= 0.0 && 0.0 <= small.hi, "{small:?}");
}

#[test]
fn paired_ci_is_narrower_than_unpaired_for_correlated_systems() {
    // Shared item difficulty: b is right exactly where a is right except on 10% of the items
    // (a: 60% right, b: 50% right), so per-item differences vary far less than the outcomes.
    let (a, b) = (outcomes(300, 6), outcomes(300, 5));
    let paired = paired_bootstrap_diff(&a, &b, REPS, 0.95, 2).unwrap();
    // Unpaired: the two means resampled independently; their half-widths add in quadrature.
    let (ca, cb) = (bootstrap_mean_ci(&a, REPS, 0.95, 3).unwrap(), bootstrap_mean_ci(&b, REPS, 0.95, 4).unwrap());
    let unpaired = (ca.half_width().powi(2) + cb.half_width().powi(2)).sqrt();
    let paired_hw = detectable_difference(&a, &b, REPS, 2).unwrap();
    assert_eq!(paired_hw, paired.interval().half_width());
    assert!(paired_hw < 0.6 * unpaired, "paired half-width {paired_hw} vs unpaired {unpaired}");
    // The paired half-width is that of the per-item differences: 1.96 sqrt(0.1 * 0.9 / 300).
    let normal = 1.96 * (0.1f64 * 0.9 / 300.0).sqrt();
    assert!((paired_hw - normal).abs() / normal < 0.15, "{paired_hw} vs {normal}");
    assert!(paired.lo > 0.0 && paired.p_two_sided < 0.01, "{paired:?}");
}
