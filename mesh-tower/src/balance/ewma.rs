//! The peak-EWMA latency estimate of one endpoint, as linkerd2-proxy balances on (after
//! Finagle): a new round-trip time above the estimate replaces it at once (peak), one below
//! it is blended in with a weight that grows with the time since the last observation
//! (exponential decay over `decay`), and the estimate decays toward zero while nothing is
//! observed, so that an endpoint that was slow is tried again.
//!
//! The balancer's cost of an endpoint is `estimate x (requests in flight + 1)`.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The estimate of an endpoint never observed: it gets tried, and its first answers set it.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// One endpoint's round-trip time estimate.
#[derive(Debug)]
pub struct PeakEwma {
    state: Mutex<Option<Estimate>>,
}

#[derive(Clone, Copy, Debug)]
struct Estimate {
    rtt_ns: f64,
    at: Instant,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    /// An endpoint not observed yet.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(None),
        }
    }

    /// Records a round trip of `rtt` that ended at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant, decay: Duration) {
        let sample = rtt.as_nanos() as f64;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let rtt_ns = match *state {
            None => sample,
            Some(current) if sample > current.rtt_ns => sample,
            Some(current) => {
                let weight = decay_weight(now.saturating_duration_since(current.at), decay);
                current.rtt_ns * weight + sample * (1.0 - weight)
            }
        };
        *state = Some(Estimate { rtt_ns, at: now });
    }

    /// The estimate at `now`, in nanoseconds, decayed since the last observation.
    pub fn estimate_ns(&self, now: Instant, decay: Duration) -> f64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            None => DEFAULT_RTT.as_nanos() as f64,
            Some(e) => e.rtt_ns * decay_weight(now.saturating_duration_since(e.at), decay),
        }
    }
}

/// The weight an estimate keeps after `elapsed`: `exp(-elapsed / decay)`.
fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_raises_the_estimate_at_once_and_fast_ones_bring_it_down_over_time() {
        let ewma = PeakEwma::new();
        let now = Instant::now();
        assert_eq!(
            ewma.estimate_ns(now, DECAY),
            30e6,
            "default before any answer"
        );
        ewma.observe(Duration::from_millis(10), now, DECAY);
        assert_eq!(ewma.estimate_ns(now, DECAY), 10e6);
        ewma.observe(Duration::from_millis(500), now, DECAY);
        assert_eq!(ewma.estimate_ns(now, DECAY), 500e6, "peak: taken at once");
        // A fast answer right after barely moves it; one a decay period later moves it most
        // of the way.
        ewma.observe(Duration::from_millis(10), now, DECAY);
        assert!(ewma.estimate_ns(now, DECAY) > 499e6);
        let later = now + DECAY;
        ewma.observe(Duration::from_millis(10), later, DECAY);
        let blended = ewma.estimate_ns(later, DECAY);
        let expected = 500e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!((blended - expected).abs() < 1.0, "{blended} vs {expected}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_answers_the_estimate_decays_toward_zero() {
        let ewma = PeakEwma::new();
        let now = Instant::now();
        ewma.observe(Duration::from_millis(800), now, DECAY);
        let after = ewma.estimate_ns(now + DECAY * 3, DECAY);
        assert!((after - 800e6 * (-3f64).exp()).abs() < 1.0, "{after}");
    }
}
