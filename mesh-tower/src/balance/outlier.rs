//! Passive outlier detection per endpoint (Istio's `outlierDetection`, Envoy's consecutive
//! 5xx / gateway-error / local-origin detectors), plus an opt-in latency outlier rule.
//!
//! An endpoint is ejected when it reaches a consecutive-failure threshold, unless that would
//! eject more than `maxEjectionPercent` of the cluster (one endpoint may always be ejected,
//! as in Envoy). It returns after `baseEjectionTime` times the number of times it has been
//! ejected. A success resets its counters.

use mesh_core::model::OutlierDetection;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What one try's outcome was, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The connection failed or was reset before a response (a local-origin failure).
    LocalOriginFailure,
}

/// One endpoint's detector state.
#[derive(Debug, Default)]
pub struct OutlierState {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    latency_ewma_ms: Option<f64>,
}

impl OutlierState {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.lock().ejected_until.is_some_and(|t| t > now)
    }

    /// Until when the endpoint is ejected, if it is at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.lock().ejected_until.filter(|t| *t > now)
    }

    /// How many times the endpoint has been ejected.
    pub fn times_ejected(&self) -> u32 {
        self.lock().times_ejected
    }

    /// The endpoint's latency EWMA, in milliseconds, once it has one.
    pub fn latency_ewma_ms(&self) -> Option<f64> {
        self.lock().latency_ewma_ms
    }

    /// Records a try's outcome. Returns `true` when the endpoint crossed a threshold and
    /// should be ejected (the caller checks the cluster-wide cap, then calls [`eject`]).
    ///
    /// [`eject`]: Self::eject
    pub fn record(&self, outcome: Outcome, policy: &OutlierDetection) -> bool {
        let mut s = self.lock();
        // Without the split, a local-origin failure counts as a 503 (Envoy's mapping).
        let outcome = match outcome {
            Outcome::LocalOriginFailure if !policy.split_external_local_origin_errors => {
                Outcome::Status(503)
            }
            other => other,
        };
        match outcome {
            Outcome::Status(status) if status >= 500 => {
                s.consecutive_5xx += 1;
                if matches!(status, 502..=504) {
                    s.consecutive_gateway += 1;
                } else {
                    s.consecutive_gateway = 0;
                }
            }
            Outcome::Status(_) => {
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                s.consecutive_local = 0;
            }
            Outcome::LocalOriginFailure => s.consecutive_local += 1,
        }
        let over = |count: u32, threshold: Option<u32>| threshold.is_some_and(|t| count >= t);
        over(s.consecutive_5xx, policy.consecutive_5xx_errors)
            || over(s.consecutive_gateway, policy.consecutive_gateway_errors)
            || over(
                s.consecutive_local,
                policy.consecutive_local_origin_failures,
            )
    }

    /// Feeds a try's latency into the endpoint's EWMA (weight 0.2 for the newest).
    pub fn record_latency(&self, latency: Duration) {
        let mut s = self.lock();
        let ms = latency.as_secs_f64() * 1_000.0;
        s.latency_ewma_ms = Some(match s.latency_ewma_ms {
            Some(prev) => prev * 0.8 + ms * 0.2,
            None => ms,
        });
    }

    /// Ejects the endpoint for `base_ejection_time` times the number of its ejections.
    pub fn eject(&self, now: Instant, policy: &OutlierDetection) {
        let mut s = self.lock();
        if s.ejected_until.is_some_and(|t| t > now) {
            return;
        }
        s.times_ejected += 1;
        s.ejected_until = Some(now + policy.base_ejection_time * s.times_ejected);
        s.consecutive_5xx = 0;
        s.consecutive_gateway = 0;
        s.consecutive_local = 0;
    }

    /// Ejects the endpoint for a latency outlier (counted like any ejection).
    pub fn eject_for_latency(&self, now: Instant, base: Duration) {
        let mut s = self.lock();
        if s.ejected_until.is_some_and(|t| t > now) {
            return;
        }
        s.times_ejected += 1;
        s.ejected_until = Some(now + base * s.times_ejected);
        s.latency_ewma_ms = None;
    }
}

/// Whether ejecting one more of `total` endpoints, `ejected` of which are out, stays within
/// `max_percent` (one endpoint may always be ejected).
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= total * max_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(n: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: Some(n),
            base_ejection_time: Duration::from_secs(30),
            ..OutlierDetection::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_after_exactly_n_failures_and_out_twice_as_long_the_second_time() {
        let p = policy(3);
        let e = OutlierState::default();
        assert!(!e.record(Outcome::Status(500), &p));
        assert!(!e.record(Outcome::Status(503), &p));
        assert!(
            e.record(Outcome::Status(500), &p),
            "the third consecutive 5xx ejects"
        );
        let t0 = Instant::now();
        e.eject(t0, &p);
        assert!(e.is_ejected(t0 + Duration::from_secs(29)));
        assert!(!e.is_ejected(t0 + Duration::from_secs(30)));

        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..3 {
            e.record(Outcome::Status(500), &p);
        }
        let t1 = Instant::now();
        e.eject(t1, &p);
        assert!(
            e.is_ejected(t1 + Duration::from_secs(59)),
            "the second ejection lasts 2 x base"
        );
        assert!(!e.is_ejected(t1 + Duration::from_secs(60)));
        assert_eq!(e.times_ejected(), 2);
    }

    #[test]
    fn a_success_resets_the_count() {
        let p = policy(3);
        let e = OutlierState::default();
        e.record(Outcome::Status(500), &p);
        e.record(Outcome::Status(500), &p);
        e.record(Outcome::Status(200), &p);
        assert!(!e.record(Outcome::Status(500), &p));
    }

    #[test]
    fn local_origin_failures_count_as_5xx_unless_split() {
        let mut p = policy(2);
        let e = OutlierState::default();
        e.record(Outcome::LocalOriginFailure, &p);
        assert!(e.record(Outcome::LocalOriginFailure, &p));
        p.split_external_local_origin_errors = true;
        p.consecutive_local_origin_failures = Some(3);
        let e = OutlierState::default();
        e.record(Outcome::LocalOriginFailure, &p);
        assert!(!e.record(Outcome::LocalOriginFailure, &p));
        assert!(e.record(Outcome::LocalOriginFailure, &p));
    }

    #[test]
    fn the_cap_allows_at_least_one() {
        assert!(may_eject(0, 3, 10));
        assert!(!may_eject(1, 3, 10));
        assert!(may_eject(1, 10, 20));
        assert!(!may_eject(2, 10, 20));
    }
}
