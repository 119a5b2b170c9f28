//! Prompt ids and splits.

use cream_algo::{hash_fraction, prompt_id, split_evenly, split_stratified};

#[test]
fn split_evenly_sizes_and_order() {
    for n in 0..30 {
        for parts in 1..8 {
            let chunks = split_evenly((0..n).collect(), parts);
            assert_eq!(chunks.len(), parts);
            let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "n {n}, parts {parts}: {sizes:?}");
            assert!(
                sizes.windows(2).all(|w| w[0] >= w[1]),
                "larger chunks first: {sizes:?}"
            );
            assert_eq!(chunks.concat(), (0..n).collect::<Vec<_>>());
        }
    }
    assert_eq!(
        split_evenly(vec!['a', 'b', 'c', 'd', 'e'], 2),
        [vec!['a', 'b', 'c'], vec!['d', 'e']]
    );
}

#[test]
#[should_panic(expected = "0 parts")]
fn split_into_zero_parts_panics() {
    split_evenly(vec![1], 0);
}

#[test]
fn prompt_id_is_pinned_and_sensitive() {
    let id = prompt_id("oasst1", "What is the capital of France?");
    assert_eq!(id, "47e3ed50ae1109ac");
    assert_eq!(id, prompt_id("oasst1", "What is the capital of France?"));
    assert_eq!(id.len(), 16);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_ne!(id, prompt_id("oasst2", "What is the capital of France?"));
    assert_ne!(id, prompt_id("oasst1", "What is the capital of France? "));
    // The length prefix separates source from text.
    assert_ne!(prompt_id("ab", "c"), prompt_id("a", "bc"));
}

#[test]
fn hash_fraction_is_deterministic_uniform_and_salted() {
    let ids: Vec<String> = (0..2000)
        .map(|i| prompt_id("src", &i.to_string()))
        .collect();
    let fractions: Vec<f64> = ids.iter().map(|id| hash_fraction(id, "heldout")).collect();
    assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
    let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
    assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
    let below = fractions.iter().filter(|&&f| f < 0.1).count();
    assert!((150..250).contains(&below), "{below} of 2000 below 0.1");
    assert_eq!(hash_fraction(&ids[0], "heldout"), fractions[0]);
    let resalted = ids
        .iter()
        .filter(|id| hash_fraction(id, "other") != hash_fraction(id, "heldout"));
    assert_eq!(resalted.count(), ids.len());
}

#[test]
fn split_stratified_gives_every_chunk_every_stratum() {
    // A pool ordered as the prepare stage writes it: all of one task, then all of the other.
    for (n_a, n_b) in [(8, 8), (7, 5), (64, 64), (3, 10), (1, 1)] {
        for parts in 1..5 {
            let pool: Vec<(&str, usize)> =
                (0..n_a).map(|i| ("gsm8k", i)).chain((0..n_b).map(|i| ("socialiqa", i))).collect();
            let chunks = split_stratified(pool.clone(), parts, |x| x.0);
            assert_eq!(chunks.len(), parts);
            for (task, n) in [("gsm8k", n_a), ("socialiqa", n_b)] {
                let counts: Vec<usize> = chunks.iter().map(|c| c.iter().filter(|x| x.0 == task).count()).collect();
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(max - min <= 1, "{task}: {n_a}+{n_b} into {parts}: {counts:?}");
                assert_eq!(counts.iter().sum::<usize>(), n);
            }
            // Nothing lost or repeated; order kept within a stratum.
            let mut all: Vec<_> = chunks.concat();
            all.sort();
            let mut want = pool.clone();
            want.sort();
            assert_eq!(all, want);
            for c in &chunks {
                for w in c.windows(2) {
                    if w[0].0 == w[1].0 {
                        assert!(w[0].1 < w[1].1, "order within a stratum kept: {c:?}");
                    }
                }
            }
        }
    }
    // The consecutive split this replaces puts one task per chunk.
    let pool: Vec<(&str, u8)> = vec![("a", 0), ("a", 1), ("b", 0), ("b", 1)];
    assert_eq!(split_stratified(pool, 2, |x| x.0), [vec![("a", 0), ("b", 0)], vec![("a", 1), ("b", 1)]]);
}
