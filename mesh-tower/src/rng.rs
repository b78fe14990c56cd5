//! Seedable, lock-free randomness for splits, percentages and jitter.
//!
//! Every draw advances one shared atomic counter and mixes it (SplitMix64), so concurrent
//! requests never contend on a lock and a test that seeds the generator gets the same
//! sequence every run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A cheap, cloneable source of uniform random numbers; clones share one sequence.
///
/// ```
/// use mesh_tower::rng::Rng;
/// let a = Rng::with_seed(7);
/// let b = Rng::with_seed(7);
/// assert_eq!(a.below(100), b.below(100));
/// assert!(a.below(10) < 10);
/// ```
#[derive(Clone, Debug)]
pub struct Rng {
    state: Arc<AtomicU64>,
}

impl Rng {
    /// A generator with a fixed seed, for tests and reproducible runs.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            state: Arc::new(AtomicU64::new(seed)),
        }
    }

    /// A generator seeded from the OS-backed `fastrand` seed.
    pub fn from_entropy() -> Self {
        Self::with_seed(fastrand::u64(..))
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in `0..n` (0 when `n` is 0), without modulo bias worth measuring.
    pub fn below(&self, n: u32) -> u32 {
        // Lemire's multiply-shift: the high half of a 32x32 product is below n.
        ((u64::from(self.next_u64() as u32) * u64::from(n)) >> 32) as u32
    }

    /// A uniform draw in `0..1_000_000`, to compare with a
    /// [`Percentage`](mesh_core::model::Percentage).
    pub fn ppm(&self) -> u32 {
        self.below(1_000_000)
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::from_entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough_for_splits() {
        let rng = Rng::with_seed(42);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[rng.below(10) as usize] += 1;
        }
        for b in buckets {
            assert!((9_500..10_500).contains(&b), "{buckets:?}");
        }
    }
}
