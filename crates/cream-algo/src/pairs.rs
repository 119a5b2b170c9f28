//! Preference-pair selection (spec step 5).

use crate::Result;
use crate::rank::{first_argmax, first_argmin, reject_nan};

/// `(chosen, rejected)` = (first argmax, first argmin) of the *current* model's rewards of one
/// prompt's responses (spec step 5). `None` when they coincide, i.e. all rewards are equal (or
/// there are fewer than two): the prompt is dropped. No de-duplication, no margin filter.
///
/// # Errors
/// [`crate::Error::Nan`] naming the first NaN reward.
pub fn select_pair(rewards: &[f64]) -> Result<Option<(usize, usize)>> {
    reject_nan(rewards, "rewards")?;
    Ok(first_argmax(rewards)
        .zip(first_argmin(rewards))
        .filter(|(chosen, rejected)| chosen != rejected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn first_extremes_and_drops() {
        assert_eq!(
            select_pair(&[0.1, 0.5, -2.0, 0.5, -2.0]).unwrap(),
            Some((1, 2))
        );
        assert_eq!(select_pair(&[3.0, 3.0, 3.0]).unwrap(), None);
        assert_eq!(select_pair(&[3.0]).unwrap(), None);
        assert_eq!(select_pair(&[]).unwrap(), None);
        assert_eq!(
            select_pair(&[1.0, f64::NAN]).unwrap_err(),
            Error::Nan {
                what: "rewards",
                index: 1
            }
        );
    }
}
