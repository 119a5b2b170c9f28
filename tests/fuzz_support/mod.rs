//! Time-bounded property fuzzing, shared by the `fuzz` tests of several crates (included with
//! `#[path]`). Under `cargo test` a target runs one round of proptest cases (256, or
//! `PROPTEST_CASES`); with `FUZZ_SECS=N` (`just fuzz`) it keeps running fresh randomly seeded
//! rounds for N seconds. A failure panics with the minimal failing input: add it to the target's
//! regression cases.
#![allow(dead_code)]

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

pub fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let secs = std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rounds = 0u64;
    loop {
        let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("fuzz target {name}: {e}");
        }
        rounds += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    if secs > 0 {
        eprintln!("fuzz target {name}: {rounds} rounds of {} cases, no failure", Config::default().cases);
    }
}

/// `bytes` with up to `edits` random mutations: (position fraction, kind, byte); kind 0 flips,
/// 1 inserts, 2 deletes, 3 truncates.
pub fn mutate(bytes: &[u8], edits: &[(f64, u8, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(at, kind, byte) in edits {
        let i = ((at * out.len() as f64) as usize).min(out.len().saturating_sub(1));
        match kind % 4 {
            0 if !out.is_empty() => out[i] ^= byte.max(1),
            1 => out.insert(i, byte),
            2 if !out.is_empty() => {
                out.remove(i);
            }
            3 => out.truncate(i),
            _ => {}
        }
    }
    out
}
