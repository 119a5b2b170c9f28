//! Property tests of the ranking statistics and the DPO loss against their definitions.

use cream_algo::{
    cdpo_dloss_dd, cdpo_loss, cdpo_loss_from_margin, conservative_dpo_loss, kendall_tau_b,
    kendall_tau_ordinal, ordinal_ranks, spearman_rho,
};
use proptest::prelude::*;

/// Equal-length vectors with many ties (values from a small set).
fn tied_pair() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (2usize..12).prop_flat_map(|n| {
        let v = prop::collection::vec((-3i8..=3).prop_map(f64::from), n);
        (v.clone(), v)
    })
}

/// Distinct values in random order.
fn distinct() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::btree_set(-1000i32..1000, 2..16)
        .prop_map(|s| s.into_iter().map(f64::from).collect::<Vec<_>>())
        .prop_shuffle()
}

/// scipy's `rankdata(method="ordinal")` by its definition: 1 + the number of smaller values + the
/// number of equal values at earlier positions.
fn brute_ordinal_ranks(x: &[f64]) -> Vec<u32> {
    (0..x.len())
        .map(|i| {
            let before = (0..x.len())
                .filter(|&j| x[j] < x[i] || (x[j] == x[i] && j < i))
                .count();
            u32::try_from(before + 1).unwrap()
        })
        .collect()
}

/// Kendall's tau by its definition over the pairs of two tie-free rank vectors.
fn brute_tau(ra: &[u32], rb: &[u32]) -> f64 {
    let n = ra.len();
    let mut score = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            let s = (i64::from(ra[i]) - i64::from(ra[j])) * (i64::from(rb[i]) - i64::from(rb[j]));
            score += s.signum();
        }
    }
    score as f64 / (n * (n - 1) / 2) as f64
}

/// tau-b by its definition: (C - D) / sqrt((n0 - n1)(n0 - n2)).
fn brute_tau_b(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len();
    let (mut score, mut n0, mut n1, mut n2) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        for j in i + 1..n {
            n0 += 1.0;
            n1 += f64::from(u8::from(a[i] == a[j]));
            n2 += f64::from(u8::from(b[i] == b[j]));
            score += ((a[i] - a[j]) * (b[i] - b[j])).signum()
                * f64::from(u8::from(a[i] != a[j] && b[i] != b[j]));
        }
    }
    (n1 < n0 && n2 < n0).then(|| score / ((n0 - n1) * (n0 - n2)).sqrt())
}

/// -ln sigmoid(x) = -ln(1 / (1 + e^-x)) as written, without the softplus rearrangement; accurate
/// to about 1e-15 relative for |x| <= 30 (the tests stay in that range).
fn naive_neg_log_sigmoid(x: f64) -> f64 {
    -(1.0 / (1.0 + (-x).exp())).ln()
}

proptest! {
    #[test]
    fn ordinal_ranks_match_definition(x in prop::collection::vec((-3i8..=3).prop_map(f64::from), 0..20)) {
        prop_assert_eq!(ordinal_ranks(&x).unwrap(), brute_ordinal_ranks(&x));
    }

    #[test]
    fn tau_matches_brute_force_with_ties((a, b) in tied_pair()) {
        let tau = kendall_tau_ordinal(&a, &b).unwrap();
        let expected = brute_tau(&brute_ordinal_ranks(&a), &brute_ordinal_ranks(&b));
        prop_assert!((tau - expected).abs() < 1e-12, "{} vs {}", tau, expected);
        prop_assert!((-1.0..=1.0).contains(&tau));
    }

    #[test]
    fn tau_is_symmetric((a, b) in tied_pair()) {
        prop_assert_eq!(kendall_tau_ordinal(&a, &b).unwrap(), kendall_tau_ordinal(&b, &a).unwrap());
    }

    #[test]
    fn tau_of_same_and_reversed_order(a in distinct()) {
        let reversed: Vec<f64> = a.iter().map(|v| -v).collect();
        prop_assert_eq!(kendall_tau_ordinal(&a, &a).unwrap(), 1.0);
        prop_assert_eq!(kendall_tau_ordinal(&a, &reversed).unwrap(), -1.0);
        prop_assert_eq!(kendall_tau_b(&a, &reversed).unwrap(), Some(-1.0));
    }

    #[test]
    fn tau_b_matches_definition_and_ordinal_without_ties((a, b) in tied_pair(), c in distinct()) {
        match (kendall_tau_b(&a, &b).unwrap(), brute_tau_b(&a, &b)) {
            (Some(t), Some(e)) => prop_assert!((t - e).abs() < 1e-12, "{} vs {}", t, e),
            (t, e) => prop_assert_eq!(t, e),
        }
        let d: Vec<f64> = c.iter().map(|v| (v * 7.0) % 13.0 + v / 1e4).collect();
        let tau_b = kendall_tau_b(&c, &d).unwrap().unwrap();
        prop_assert!((tau_b - kendall_tau_ordinal(&c, &d).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn spearman_is_bounded((a, b) in tied_pair()) {
        let rho = spearman_rho(&a, &b).unwrap();
        prop_assert!((-1.0..=1.0).contains(&rho), "{}", rho);
        prop_assert!((spearman_rho(&a, &a).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cdpo_loss_matches_naive_definition(d in -30.0f64..30.0, c in 0.0f64..=1.0) {
        // C (-ln sigmoid(D)) + (1 - C)(-ln sigmoid(-D)), written out directly.
        let want = c * naive_neg_log_sigmoid(d) + (1.0 - c) * naive_neg_log_sigmoid(-d);
        let l = cdpo_loss_from_margin(d, c);
        prop_assert!((l - want).abs() <= 1e-12 * (1.0 + want.abs()), "D {} C {}: {} vs {}", d, c, l, want);
        // Conservative DPO with label smoothing eps = 1 - C is the same loss by its own definition.
        let eps = 1.0 - c;
        let conservative = conservative_dpo_loss(d, eps);
        let want_cons = (1.0 - eps) * naive_neg_log_sigmoid(d) + eps * naive_neg_log_sigmoid(-d);
        prop_assert!((conservative - want_cons).abs() <= 1e-12 * (1.0 + want_cons.abs()), "{} vs {}", conservative, want_cons);
    }

    #[test]
    fn cdpo_loss_known_values(d in -30.0f64..30.0, c in 0.0f64..=1.0) {
        // D = 0: ln 2 for every C.
        prop_assert!((cdpo_loss_from_margin(0.0, c) - std::f64::consts::LN_2).abs() < 1e-15);
        // C = 1 is plain DPO, -ln sigmoid(D); C = 0 prefers the rejected response, -ln sigmoid(-D).
        let dpo = naive_neg_log_sigmoid(d);
        prop_assert!((cdpo_loss_from_margin(d, 1.0) - dpo).abs() <= 1e-12 * (1.0 + dpo), "{}", d);
        let anti = naive_neg_log_sigmoid(-d);
        prop_assert!((cdpo_loss_from_margin(d, 0.0) - anti).abs() <= 1e-12 * (1.0 + anti), "{}", d);
        // C = 1/2 is symmetric in D.
        prop_assert!((cdpo_loss_from_margin(d, 0.5) - cdpo_loss_from_margin(-d, 0.5)).abs() < 1e-12);
    }

    #[test]
    fn cdpo_loss_is_minimal_at_logit_c(c in 0.01f64..0.99, h in 0.01f64..5.0) {
        // For 0 < C < 1 the loss is strictly convex in D with its minimum where sigmoid(D) = C.
        let d_star = (c / (1.0 - c)).ln();
        let at = cdpo_loss_from_margin(d_star, c);
        prop_assert!(at < cdpo_loss_from_margin(d_star - h, c), "C {}: not below at -{}", c, h);
        prop_assert!(at < cdpo_loss_from_margin(d_star + h, c), "C {}: not below at +{}", c, h);
        // The minimum value is the binary entropy of C (in nats).
        let entropy = -c * c.ln() - (1.0 - c) * (1.0 - c).ln();
        prop_assert!((at - entropy).abs() < 1e-12, "{} vs {}", at, entropy);
        // dl/dD is negative below the minimum, zero at it and positive above.
        prop_assert!(cdpo_dloss_dd(d_star - h, c) < 0.0 && cdpo_dloss_dd(d_star + h, c) > 0.0);
        prop_assert!(cdpo_dloss_dd(d_star, c).abs() < 1e-12);
    }

    #[test]
    fn loss_is_ln2_when_policy_equals_reference(
        s_chosen in -500.0f64..0.0, s_rejected in -500.0f64..0.0, c in 0.0f64..=1.0, beta in 0.01f64..1.0,
    ) {
        let l = cdpo_loss(s_chosen, s_chosen, s_rejected, s_rejected, c, beta);
        prop_assert!((l - std::f64::consts::LN_2).abs() < 1e-15, "{}", l);
    }

    #[test]
    fn dloss_dd_matches_finite_difference(d in -30.0f64..30.0, c in 0.0f64..=1.0) {
        let h = 1e-5;
        let numeric = (cdpo_loss_from_margin(d + h, c) - cdpo_loss_from_margin(d - h, c)) / (2.0 * h);
        let analytic = cdpo_dloss_dd(d, c);
        prop_assert!((numeric - analytic).abs() < 1e-7, "{} vs {}", numeric, analytic);
    }
}
