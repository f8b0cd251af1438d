//! A tiny deterministic random number generator whose whole state is one `u64`.
//!
//! The trainer needs randomness it can checkpoint and restore bit for bit (data order, dropout seeds), so it uses
//! SplitMix64 (Steele, Lea & Flood 2014) instead of a thread-local generator: the state is a plain integer that
//! goes into `state.json` and comes back unchanged on `--resume`.

use serde::{Deserialize, Serialize};

/// SplitMix64: passes BigCrush, one add and a few xor-shift-multiplies per draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    /// The whole generator state; saving and restoring it replays the same stream.
    pub state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one purpose and one index (e.g. the data order of epoch 3), independent of the others
    /// derived from the same seed.
    pub fn derive(seed: u64, purpose: &str, index: u64) -> Self {
        let mut mixer = Self::new(seed ^ 0x6B75_6265_7475_6E65);
        let mut acc = mixer.next_u64();
        for byte in purpose.bytes() {
            acc = Self::new(acc ^ u64::from(byte)).next_u64();
        }
        Self::new(Self::new(acc ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (`bound > 0`), without modulo bias (Lemire's multiply-shift with rejection).
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0, "below(0) has no valid result");
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // Reference: the SplitMix64 C code by Vigna (prng.di.unimi.it/splitmix64.c) seeded with 0 yields
        // 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f as its first three outputs.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn restoring_the_state_replays_the_stream() {
        let mut rng = SplitMix64::derive(7, "dropout", 0);
        rng.next_u64();
        let saved = rng;
        let first: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        let mut restored = saved;
        let again: Vec<u64> = (0..5).map(|_| restored.next_u64()).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn shuffle_is_a_permutation_and_depends_on_the_index() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        SplitMix64::derive(1, "order", 0).shuffle(&mut a);
        SplitMix64::derive(1, "order", 1).shuffle(&mut b);
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<u32>>());
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(3);
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }
}
