//! Seedable, lock-free randomness for splits, percentages, ids and jitter.
//!
//! A generator from entropy draws from the calling thread's own generator (`fastrand`'s
//! thread-local Wyrand): worker threads share no state, so a draw (several per request:
//! trace and request ids, sampling, the balancer's pick) is a plain add, not an atomic one
//! bouncing a cache line between cores. A seeded generator instead advances one shared atomic
//! counter and mixes it (SplitMix64), so that a test gets the same sequence every run, whatever
//! thread draws.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A cheap, cloneable source of uniform random numbers. Clones of a seeded generator share
/// its one sequence; clones of one from entropy (and the default) draw from each thread's own.
///
/// ```
/// use mesh_tower::rng::Rng;
/// let a = Rng::with_seed(7);
/// let b = Rng::with_seed(7);
/// assert_eq!(a.below(100), b.below(100));
/// assert!(a.below(10) < 10);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Rng {
    /// The shared SplitMix64 counter of a seeded generator; `None`: the thread's generator.
    seeded: Option<Arc<AtomicU64>>,
}

impl Rng {
    /// A generator with a fixed seed, for tests and reproducible runs.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seeded: Some(Arc::new(AtomicU64::new(seed))),
        }
    }

    /// A generator that draws from each thread's own generator, seeded from the OS by
    /// `fastrand`.
    pub fn from_entropy() -> Self {
        Self { seeded: None }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&self) -> u64 {
        let Some(state) = &self.seeded else {
            return fastrand::u64(..);
        };
        let mut z = state
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

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_uniform(rng: &Rng) {
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[rng.below(10) as usize] += 1;
        }
        for b in buckets {
            assert!((9_500..10_500).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn draws_are_uniform_enough_for_splits() {
        assert_uniform(&Rng::with_seed(42));
        assert_uniform(&Rng::from_entropy());
    }

    #[test]
    fn a_seeded_sequence_is_shared_by_clones_and_threads_and_repeats() {
        let sequence = |rng: Rng| -> Vec<u64> {
            let clone = rng.clone();
            let mut drawn = vec![rng.next_u64()];
            drawn.push(std::thread::spawn(move || clone.next_u64()).join().unwrap());
            drawn.push(rng.next_u64());
            drawn
        };
        let first = sequence(Rng::with_seed(7));
        assert_eq!(first, sequence(Rng::with_seed(7)));
        assert_ne!(first[0], first[1], "a clone continues the sequence");
    }

    #[test]
    fn generators_from_entropy_differ_between_threads() {
        let rng = Rng::from_entropy();
        let here: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        let there: Vec<u64> = std::thread::spawn(move || (0..4).map(|_| rng.next_u64()).collect())
            .join()
            .unwrap();
        assert_ne!(here, there);
    }
}
