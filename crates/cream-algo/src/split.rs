//! Prompt ids and deterministic splits of the prompt pool (spec "Objects": the pool is split evenly
//! across iterations, each iteration sees new prompts; spec pitfall 7: C_j is keyed by prompt id).

/// Domain tag of [`prompt_id`]; bump it to change every id.
const PROMPT_ID_DOMAIN: &[u8] = b"cream-prompt/1";
/// Domain tag of [`hash_fraction`].
const FRACTION_DOMAIN: &[u8] = b"cream-fraction/1";

/// The stable id of a prompt: the first 16 hex characters of
/// blake3("cream-prompt/1" | len(source) as u64 LE | source | text). The length prefix keeps
/// (source, text) pairs from colliding by moving bytes between the two.
pub fn prompt_id(source: &str, text: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(PROMPT_ID_DOMAIN);
    hasher.update(&(source.len() as u64).to_le_bytes());
    hasher.update(source.as_bytes());
    hasher.update(text.as_bytes());
    hasher.finalize().to_hex()[..16].to_owned()
}

/// A deterministic, uniformly spread value in [0, 1) for `id` under `salt`, for hash splits
/// (e.g. keep a prompt for held-out use when `hash_fraction(id, "heldout") < 0.1`): the top 53 bits
/// of blake3("cream-fraction/1" | len(salt) as u64 LE | salt | id) as a fraction.
pub fn hash_fraction(id: &str, salt: &str) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(FRACTION_DOMAIN);
    hasher.update(&(salt.len() as u64).to_le_bytes());
    hasher.update(salt.as_bytes());
    hasher.update(id.as_bytes());
    let head: [u8; 8] = hasher.finalize().as_bytes()[..8]
        .try_into()
        .expect("8 bytes");
    (u64::from_le_bytes(head) >> 11) as f64 / (1u64 << 53) as f64
}

/// Splits `items` into `parts` consecutive chunks whose sizes differ by at most one, the larger
/// chunks first, order preserved (spec "Objects": the prompt pool D_U split across iterations).
///
/// # Panics
/// When `parts` is 0.
pub fn split_evenly<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    assert!(parts > 0, "split_evenly: cannot split into 0 parts");
    let (base, extra) = (items.len() / parts, items.len() % parts);
    let mut items = items.into_iter();
    (0..parts)
        .map(|k| items.by_ref().take(base + usize::from(k < extra)).collect())
        .collect()
}

/// Splits `items` into `parts` chunks that each hold the same share of every stratum (the value of
/// `stratum`, e.g. a prompt's task), so no chunk is confounded with one task: each stratum, in
/// order of first appearance, is split with [`split_evenly`] and chunk `k` concatenates the
/// strata's `k`-th pieces. Within a stratum the input order is kept, so a deterministic (hash)
/// order of `items` gives a deterministic split. Per stratum, chunk sizes differ by at most one.
///
/// # Panics
/// When `parts` is 0.
pub fn split_stratified<T>(items: Vec<T>, parts: usize, stratum: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    assert!(parts > 0, "split_stratified: cannot split into 0 parts");
    let mut names: Vec<String> = Vec::new();
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        let key = stratum(&item);
        match names.iter().position(|n| n == key) {
            Some(i) => groups[i].push(item),
            None => {
                names.push(key.to_owned());
                groups.push(vec![item]);
            }
        }
    }
    let mut chunks: Vec<Vec<T>> = (0..parts).map(|_| Vec::new()).collect();
    for group in groups {
        for (chunk, piece) in chunks.iter_mut().zip(split_evenly(group, parts)) {
            chunk.extend(piece);
        }
    }
    chunks
}
