//! A tiny, portable, seedable PRNG. Sampling must be reproducible across machines, batch sizes
//! and crate upgrades, so we do not depend on `rand`'s algorithm choices.

/// SplitMix64 (Steele, Lea & Flood 2014): 64-bit state, passes BigCrush, trivially seedable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// The RNG seed of one sample: blake3 over (run seed, prompt id, sample index), so a sample's
/// randomness does not depend on batch size, batch order or sharding.
pub fn sample_seed(run_seed: u64, prompt_id: &str, sample_idx: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"cream-sample-seed/1");
    h.update(&run_seed.to_le_bytes());
    h.update(&(prompt_id.len() as u64).to_le_bytes());
    h.update(prompt_id.as_bytes());
    h.update(&sample_idx.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("32-byte hash"))
}
