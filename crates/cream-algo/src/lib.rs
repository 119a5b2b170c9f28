//! `cream-algo`: the pure functions of CREAM (arXiv 2410.12735), as `docs/cream-spec.md` specifies
//! them. No I/O, no tensors: every stage binary calls these, and the tests pin them to scipy's
//! numbers in `shared/golden/smollm2_dpo.json`.
//!
//! - [`rank`]: ordinal ranks (spec step 4).
//! - [`consistency`]: Kendall tau / tau-b / Spearman / TopOrder agreement between two rankings and
//!   the consistency rate C (spec step 4).
//! - [`pairs`]: chosen/rejected selection from the current model's rewards (spec step 5).
//! - [`loss`]: the consistency-regularised DPO loss in f64, the reference for the trainer (spec step 6).
//! - [`extract`]: final-answer extraction for evaluation (spec "Evaluation").
//! - [`split`]: prompt ids and deterministic splits of the prompt pool (spec "Objects", M_{t+1}).

pub mod consistency;
pub mod extract;
pub mod loss;
pub mod pairs;
pub mod rank;
pub mod split;
pub mod stats;

pub use consistency::{
    CMode, Method, PromptConsistency, dataset_c, kendall_tau_b, kendall_tau_ordinal,
    prompt_consistency, spearman_rho, top_order,
};
pub use extract::{
    extract_answer_text, extract_choice, extract_number, gsm8k_gold, normalize_answer_text, normalize_number, numbers_equal,
};
pub use loss::{
    PairLogps, cdpo_batch_loss, cdpo_dloss_dd, cdpo_loss, cdpo_loss_from_margin,
    conservative_dpo_loss, dpo_margin, sigmoid, softplus,
};
pub use pairs::select_pair;
pub use rank::ordinal_ranks;
pub use split::{hash_fraction, prompt_id, split_evenly, split_stratified};
pub use stats::{
    Interval, PairedDiff, SplitMix64, bootstrap_mean_ci, detectable_difference, paired_bootstrap_diff,
};

/// Why a function of this crate rejected its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A reward or score is NaN; ranks, argmax and consistency are undefined for it.
    #[error("{what}[{index}] is NaN; rewards must be numbers (check the scoring stage's output)")]
    Nan {
        /// Which input vector.
        what: &'static str,
        /// Position of the first NaN in it.
        index: usize,
    },
    /// Two reward vectors of one prompt have different lengths.
    #[error(
        "{left} has {left_len} values but {right} has {right_len}; both must rank the same responses"
    )]
    LengthMismatch {
        /// Name of the first vector.
        left: &'static str,
        /// Its length.
        left_len: usize,
        /// Name of the second vector.
        right: &'static str,
        /// Its length.
        right_len: usize,
    },
    /// A ranking comparison needs at least two responses per prompt.
    #[error("need at least 2 responses per prompt to compare rankings, got {len}")]
    TooShort {
        /// The length that was given.
        len: usize,
    },
    /// An aggregate over no values.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A GSM8K `answer` field without a number after its `####` marker.
    #[error("GSM8K answer field has no number after '####': {0:?}")]
    Gsm8kGold(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
