//! Jittered exponential backoff between reconnection attempts (gRPC's connection backoff:
//! 1 s initial, x1.6, 120 s cap, ±20% jitter).

use std::time::Duration;

/// Backoff settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Growth per attempt, in thousandths (1600 = x1.6).
    pub multiplier_milli: u32,
    /// Jitter either side of the delay, in thousandths (200 = ±20%).
    pub jitter_milli: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(120),
            multiplier_milli: 1600,
            jitter_milli: 200,
        }
    }
}

/// The backoff state: the next delay, and a seeded RNG for its jitter.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    current: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff drawing its jitter from an RNG seeded with `seed`.
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Self {
            current: config.initial,
            config,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The delay before the next attempt; each call grows the following one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        let grown = base.as_nanos() * u128::from(self.config.multiplier_milli) / 1000;
        let grown = Duration::from_nanos(u64::try_from(grown).unwrap_or(u64::MAX));
        self.current = grown.min(self.config.max);
        let jitter = u64::from(self.config.jitter_milli.min(1000));
        if jitter == 0 {
            return base;
        }
        // A factor in [1000 - jitter, 1000 + jitter] thousandths.
        let factor = self.rng.u64(1000 - jitter..=1000 + jitter);
        let nanos = base.as_nanos() * u128::from(factor) / 1000;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Back to the initial delay, after a stream made progress.
    pub fn reset(&mut self) {
        self.current = self.config.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_without_jitter() {
        let mut b = Backoff::new(
            BackoffConfig {
                jitter_milli: 0,
                ..BackoffConfig::default()
            },
            1,
        );
        let delays: Vec<u64> = (0..12).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(&delays[..4], &[1000, 1600, 2560, 4096]);
        assert_eq!(*delays.last().unwrap(), 120_000);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds_and_is_seeded() {
        let mut a = Backoff::new(BackoffConfig::default(), 7);
        let mut b = Backoff::new(BackoffConfig::default(), 7);
        let mut expected = Duration::from_secs(1);
        for _ in 0..30 {
            let d = a.next_delay();
            assert_eq!(d, b.next_delay(), "same seed, same delays");
            assert!(
                d >= expected.mul_f64(0.799) && d <= expected.mul_f64(1.201),
                "{d:?} vs {expected:?}"
            );
            expected = expected.mul_f64(1.6).min(Duration::from_secs(120));
        }
    }
}
