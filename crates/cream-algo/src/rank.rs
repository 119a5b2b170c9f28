//! Ordinal ranks (spec step 4) and the first-index argmax/argmin shared by steps 4 and 5.

use crate::{Error, Result};

/// Ordinal ranks of `x`, 1-based, as scipy's `rankdata(x, method="ordinal")` (spec step 4): ties
/// are broken by position, the earlier index getting the lower rank, so the result is always a
/// permutation of `1..=x.len()`. `-0.0` and `0.0` tie, as in numpy.
///
/// # Errors
/// [`Error::Nan`] naming the index of the first NaN.
pub fn ordinal_ranks(x: &[f64]) -> Result<Vec<u32>> {
    reject_nan(x, "x")?;
    let mut order: Vec<usize> = (0..x.len()).collect();
    // A stable sort keeps tied values in index order.
    order.sort_by(|&i, &j| x[i].partial_cmp(&x[j]).expect("NaN was rejected above"));
    let mut ranks = vec![0; x.len()];
    for (rank, i) in (1..).zip(order) {
        ranks[i] = rank;
    }
    Ok(ranks)
}

/// [`Error::Nan`] for the first NaN in `x`, which is called `what` in the message.
pub(crate) fn reject_nan(x: &[f64], what: &'static str) -> Result<()> {
    match x.iter().position(|v| v.is_nan()) {
        Some(index) => Err(Error::Nan { what, index }),
        None => Ok(()),
    }
}

/// Index of the first maximum of a NaN-free `x` (numpy `argmax`); `None` when empty.
pub(crate) fn first_argmax(x: &[f64]) -> Option<usize> {
    first_extremum(x, |v, best| v > best)
}

/// Index of the first minimum of a NaN-free `x` (numpy `argmin`); `None` when empty.
pub(crate) fn first_argmin(x: &[f64]) -> Option<usize> {
    first_extremum(x, |v, best| v < best)
}

fn first_extremum(x: &[f64], better: impl Fn(f64, f64) -> bool) -> Option<usize> {
    (0..x.len()).reduce(|best, i| if better(x[i], x[best]) { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_earlier_index() {
        assert_eq!(ordinal_ranks(&[2.0, 1.0, 2.0, 1.0]).unwrap(), [3, 1, 4, 2]);
        assert_eq!(ordinal_ranks(&[0.0, -0.0]).unwrap(), [1, 2]);
        assert_eq!(ordinal_ranks(&[]).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn nan_is_an_error_naming_its_index() {
        let err = ordinal_ranks(&[1.0, 2.0, f64::NAN, f64::NAN]).unwrap_err();
        assert_eq!(
            err,
            Error::Nan {
                what: "x",
                index: 2
            }
        );
        assert!(err.to_string().contains("x[2]"), "{err}");
    }

    #[test]
    fn argmax_and_argmin_take_the_first_index() {
        let x = [1.0, 3.0, 0.0, 3.0, 0.0];
        assert_eq!(first_argmax(&x), Some(1));
        assert_eq!(first_argmin(&x), Some(2));
        assert_eq!(first_argmax(&[]), None);
    }
}
