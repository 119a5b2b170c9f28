//! The consistency-regularised DPO loss in f64 (spec step 6): the reference the trainer's tensor
//! implementation is tested against.
//!
//! rho± = beta (S_theta(x, y±) - S_ref(x, y±)), D = rho+ - rho-,
//! l = C softplus(-D) + (1 - C) softplus(D), dl/dD = sigmoid(D) - C.

use crate::{Error, Result};

/// softplus(x) = ln(1 + e^x), computed as max(x, 0) + ln(1 + e^-|x|) so it never overflows.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The logistic function 1 / (1 + e^-x), without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The DPO margin D = rho+ - rho- (spec step 6), from summed log-probs S of the chosen and rejected
/// responses under the policy and under the frozen reference M_t.
pub fn dpo_margin(
    s_pol_chosen: f64,
    s_ref_chosen: f64,
    s_pol_rej: f64,
    s_ref_rej: f64,
    beta: f64,
) -> f64 {
    beta * (s_pol_chosen - s_ref_chosen) - beta * (s_pol_rej - s_ref_rej)
}

/// The per-pair loss as a function of the margin (spec step 6):
/// l = C softplus(-D) + (1 - C) softplus(D). Equals ln 2 at D = 0 for every C.
pub fn cdpo_loss_from_margin(d: f64, c: f64) -> f64 {
    c * softplus(-d) + (1.0 - c) * softplus(d)
}

/// The per-pair consistency-regularised DPO loss (spec step 6) from summed log-probs and the
/// pair's C: [`cdpo_loss_from_margin`] of [`dpo_margin`].
pub fn cdpo_loss(
    s_pol_chosen: f64,
    s_ref_chosen: f64,
    s_pol_rej: f64,
    s_ref_rej: f64,
    c: f64,
    beta: f64,
) -> f64 {
    cdpo_loss_from_margin(
        dpo_margin(s_pol_chosen, s_ref_chosen, s_pol_rej, s_ref_rej, beta),
        c,
    )
}

/// dl/dD = sigmoid(D) - C (spec step 6).
pub fn cdpo_dloss_dd(d: f64, c: f64) -> f64 {
    sigmoid(d) - c
}

/// DPO with label smoothing eps, the "conservative DPO" form
/// (1 - eps)(-log sigmoid(D)) + eps(-log sigmoid(-D)); the CREAM loss is this with eps = 1 - C
/// (spec step 6).
pub fn conservative_dpo_loss(d: f64, eps: f64) -> f64 {
    let neg_log_sigmoid = |x: f64| softplus(-x);
    (1.0 - eps) * neg_log_sigmoid(d) + eps * neg_log_sigmoid(-d)
}

/// One preference pair's summed log-probs and its C, as a batch row of the loss (spec step 6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogps {
    /// S_theta(x, y+).
    pub policy_chosen: f64,
    /// S_ref(x, y+), reference = frozen M_t.
    pub reference_chosen: f64,
    /// S_theta(x, y-).
    pub policy_rejected: f64,
    /// S_ref(x, y-).
    pub reference_rejected: f64,
    /// The pair's consistency rate C_i.
    pub c: f64,
}

/// L = mean over the batch of [`cdpo_loss`] (spec step 6).
///
/// # Errors
/// [`Error::Empty`] for an empty batch.
pub fn cdpo_batch_loss(pairs: &[PairLogps], beta: f64) -> Result<f64> {
    if pairs.is_empty() {
        return Err(Error::Empty("DPO batch"));
    }
    let total: f64 = pairs
        .iter()
        .map(|p| {
            cdpo_loss(
                p.policy_chosen,
                p.reference_chosen,
                p.policy_rejected,
                p.reference_rejected,
                p.c,
                beta,
            )
        })
        .sum();
    Ok(total / pairs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_at_extremes() {
        assert_eq!(softplus(1000.0), 1000.0);
        assert_eq!(softplus(-1000.0), 0.0);
        assert!((softplus(0.0) - std::f64::consts::LN_2).abs() < 1e-16);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((cdpo_loss_from_margin(-800.0, 0.9) - 0.9 * 800.0).abs() < 1e-9);
    }

    #[test]
    fn plain_dpo_at_c_one() {
        // C = 1: -log sigmoid(D).
        let d = dpo_margin(-10.0, -12.0, -20.0, -19.0, 0.1);
        assert!((d - 0.3).abs() < 1e-15);
        let expected = -(1.0 / (1.0 + (-0.3f64).exp())).ln();
        assert!((cdpo_loss(-10.0, -12.0, -20.0, -19.0, 1.0, 0.1) - expected).abs() < 1e-15);
    }

    #[test]
    fn batch_is_the_mean() {
        let pair = |c| PairLogps {
            policy_chosen: -1.0,
            reference_chosen: -3.0,
            policy_rejected: -2.0,
            reference_rejected: -2.0,
            c,
        };
        let batch = [pair(1.0), pair(0.0)];
        let expected = (cdpo_loss_from_margin(0.2, 1.0) + cdpo_loss_from_margin(0.2, 0.0)) / 2.0;
        assert!((cdpo_batch_loss(&batch, 0.1).unwrap() - expected).abs() < 1e-15);
        assert_eq!(
            cdpo_batch_loss(&[], 0.1).unwrap_err(),
            Error::Empty("DPO batch")
        );
    }
}
