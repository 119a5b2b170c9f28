//! The arithmetic of a [`crate::Frozen`] snapshot's matrix products: exact f32 (the default) or
//! the opt-in fast mode, bf16 weights and activations with f32 sums ([`crate::bf16`]).
//!
//! Only the weight matrices of the frozen path change (q|k|v, o, gate|up, down and the vocabulary
//! projection); embeddings, norms, RoPE, attention, softmax and the log-sum-exp stay f32.
//! Training never uses a frozen snapshot, so it is f32 whatever this says.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::bf16::Bf16Matrix;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Exact f32 products (results as before the fast mode existed).
    #[default]
    F32,
    /// bf16-rounded weights and activations, f32 accumulation (AVX512_BF16 on the CPU). See the
    /// README's "Fast mode" for its measured deviation from f32.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => bail!("unknown precision {s:?} (expected \"f32\" or \"bf16\")"),
        }
    }
}

/// A frozen weight `(in, out)` in the representation its precision multiplies with.
pub(crate) enum FrozenWeight {
    /// Contiguous f32 `(in, out)`.
    F32(Tensor),
    Bf16(Bf16Matrix),
}

impl FrozenWeight {
    /// From a contiguous f32 `(in, out)` matrix.
    pub(crate) fn new(w_t: Tensor, precision: Precision) -> Result<Self> {
        Ok(match precision {
            Precision::F32 => FrozenWeight::F32(w_t),
            Precision::Bf16 => FrozenWeight::Bf16(Bf16Matrix::new(&w_t)?),
        })
    }

    /// `x @ w` for `x` of shape `(m, in)`.
    pub(crate) fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            FrozenWeight::F32(w) => x.matmul(w)?,
            FrozenWeight::Bf16(w) => w.matmul(x)?,
        })
    }

    pub(crate) fn out_dim(&self) -> usize {
        match self {
            FrozenWeight::F32(w) => w.dim(1).expect("2-d weight"),
            FrozenWeight::Bf16(w) => w.out_dim(),
        }
    }
}
