//! Passive outlier detection per endpoint (Istio's `outlierDetection`, Envoy's consecutive
//! 5xx / gateway-error / local-origin detectors), plus an opt-in latency outlier rule.
//!
//! An endpoint is ejected when it reaches a consecutive-failure threshold, unless that would
//! eject more than `maxEjectionPercent` of the cluster (one endpoint may always be ejected,
//! as in Envoy). It returns after `baseEjectionTime` times its ejection multiplier, capped
//! by Envoy's `max_ejection_time` (from xDS; by default, and always from Istio's YAML, which has
//! no such field, 300 s or `baseEjectionTime` when longer).
//! As in Envoy's detector, the multiplier goes up by one with each ejection (while the time it
//! gives stays below the cap plus one base) and down by one for each `interval` the endpoint
//! then spends not ejected, so an endpoint that stays healthy starts over at one base. A
//! success resets its counters.

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
    /// No response within the timeout (Envoy's `LOCAL_ORIGIN_TIMEOUT`): a local-origin
    /// failure when those are counted apart, else a 504.
    LocalOriginTimeout,
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
    /// The ejection multiplier (Envoy's `ejectTimeBackoff`).
    backoff: u32,
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
        // Without the split, a local-origin failure counts as a 503 and a timeout as a 504
        // (Envoy's mapping); with it, both are local-origin failures.
        let outcome = match outcome {
            Outcome::LocalOriginFailure if !policy.split_external_local_origin_errors => {
                Outcome::Status(503)
            }
            Outcome::LocalOriginTimeout if !policy.split_external_local_origin_errors => {
                Outcome::Status(504)
            }
            Outcome::LocalOriginTimeout => Outcome::LocalOriginFailure,
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
            Outcome::LocalOriginFailure | Outcome::LocalOriginTimeout => {
                s.consecutive_local += 1;
            }
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

    /// Ejects the endpoint for `base_ejection_time` times its multiplier, at most the
    /// maximum ejection time.
    pub fn eject(&self, now: Instant, policy: &OutlierDetection) {
        let mut s = self.lock();
        let max = policy.max_ejection_time();
        if !s.eject(now, policy.base_ejection_time, policy.interval, max) {
            return;
        }
        s.consecutive_5xx = 0;
        s.consecutive_gateway = 0;
        s.consecutive_local = 0;
    }

    /// Ejects the endpoint for a latency outlier (counted like any ejection, sharing its
    /// multiplier; without an interval of its own, the rule lets it decay by one for each
    /// `base` spent not ejected).
    pub fn eject_for_latency(&self, now: Instant, base: Duration) {
        let mut s = self.lock();
        let max = OutlierDetection::DEFAULT_MAX_EJECTION_TIME.max(base);
        if s.eject(now, base, base, max) {
            s.latency_ewma_ms = None;
        }
    }
}

impl State {
    /// Ejects at `now` for `base` times the multiplier, at most `max`, unless already
    /// ejected; whether it did.
    fn eject(&mut self, now: Instant, base: Duration, interval: Duration, max: Duration) -> bool {
        let ended = match self.ejected_until {
            Some(until) if until > now => return false,
            ended => ended,
        };
        // Envoy lowers the multiplier on each interval tick that finds the endpoint not
        // ejected; counted here, lazily, from the end of the last ejection.
        if let Some(ended) = ended
            && !interval.is_zero()
        {
            let healthy = (now - ended).as_nanos() / interval.as_nanos();
            let healthy = u32::try_from(healthy).unwrap_or(u32::MAX);
            self.backoff = self.backoff.saturating_sub(healthy);
        }
        // Envoy's rule: raised while it stays below the cap plus one base.
        if base.saturating_mul(self.backoff) < max.saturating_add(base) {
            self.backoff += 1;
        }
        self.times_ejected += 1;
        self.ejected_until = Some(now + base.saturating_mul(self.backoff).min(max));
        true
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

    /// How long ejecting `e` at `now` puts it out.
    fn ejection(e: &OutlierState, now: Instant, p: &OutlierDetection) -> Duration {
        e.eject(now, p);
        e.ejected_until(now).unwrap() - now
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_back_to_back_grow_to_envoys_300_s_cap_and_stay_there() {
        let p = policy(1);
        let e = OutlierState::default();
        let mut times = vec![];
        for _ in 0..14 {
            let out = ejection(&e, Instant::now(), &p);
            times.push(out.as_secs());
            // Ejected again the moment it returns: no interval to decay in.
            tokio::time::advance(out).await;
        }
        assert_eq!(
            times,
            [
                30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300, 300
            ]
        );
        assert_eq!(e.times_ejected(), 14);

        // A base above 300 s is its own cap.
        let p = OutlierDetection {
            base_ejection_time: Duration::from_secs(400),
            ..policy(1)
        };
        let e = OutlierState::default();
        let first = ejection(&e, Instant::now(), &p);
        tokio::time::advance(first).await;
        let second = ejection(&e, Instant::now(), &p);
        assert_eq!((first.as_secs(), second.as_secs()), (400, 400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_max_ejection_time_caps_the_growth() {
        let p = OutlierDetection {
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Some(Duration::from_secs(25)),
            ..policy(1)
        };
        let e = OutlierState::default();
        let mut times = vec![];
        for _ in 0..6 {
            let out = ejection(&e, Instant::now(), &p);
            times.push(out.as_secs());
            tokio::time::advance(out).await;
        }
        // Envoy: the multiplier stops at 4 (4 x 10 s is not below 25 s + 10 s).
        assert_eq!(times, [10, 20, 25, 25, 25, 25]);
        // Above the default: a longer cap than 300 s lets the ejection grow past it.
        let p = OutlierDetection {
            base_ejection_time: Duration::from_secs(200),
            max_ejection_time: Some(Duration::from_secs(500)),
            ..policy(1)
        };
        let e = OutlierState::default();
        let mut times = vec![];
        for _ in 0..4 {
            let out = ejection(&e, Instant::now(), &p);
            times.push(out.as_secs());
            tokio::time::advance(out).await;
        }
        assert_eq!(times, [200, 400, 500, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_multiplier_goes_down_by_one_for_each_interval_spent_healthy() {
        // base 30 s, interval 10 s.
        let p = policy(1);
        let e = OutlierState::default();
        for expected in [30, 60, 90] {
            let out = ejection(&e, Instant::now(), &p);
            assert_eq!(out.as_secs(), expected);
            tokio::time::advance(out).await;
        }
        // Two intervals healthy: the multiplier drops from 3 to 1, the next ejection is 2 x.
        tokio::time::advance(Duration::from_secs(25)).await;
        let out = ejection(&e, Instant::now(), &p);
        assert_eq!(out.as_secs(), 60);
        tokio::time::advance(out).await;
        // Healthy long enough: back to one base.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(ejection(&e, Instant::now(), &p).as_secs(), 30);
        assert_eq!(e.times_ejected(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_ejections_are_capped_too() {
        let e = OutlierState::default();
        let base = Duration::from_secs(100);
        let mut times = vec![];
        for _ in 0..5 {
            let now = Instant::now();
            e.eject_for_latency(now, base);
            let out = e.ejected_until(now).unwrap() - now;
            times.push(out.as_secs());
            tokio::time::advance(out).await;
        }
        assert_eq!(times, [100, 200, 300, 300, 300]);
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
    fn timeouts_count_as_504_unless_local_origin_failures_are_split() {
        let mut p = policy(5);
        p.consecutive_gateway_errors = Some(2);
        let e = OutlierState::default();
        e.record(Outcome::LocalOriginTimeout, &p);
        assert!(
            e.record(Outcome::LocalOriginTimeout, &p),
            "two gateway errors"
        );
        p.split_external_local_origin_errors = true;
        p.consecutive_local_origin_failures = Some(3);
        let e = OutlierState::default();
        e.record(Outcome::LocalOriginTimeout, &p);
        assert!(
            !e.record(Outcome::LocalOriginTimeout, &p),
            "not gateway errors"
        );
        assert!(
            e.record(Outcome::LocalOriginFailure, &p),
            "third local failure"
        );
    }

    #[test]
    fn the_cap_allows_at_least_one() {
        assert!(may_eject(0, 3, 10));
        assert!(!may_eject(1, 3, 10));
        assert!(may_eject(1, 10, 20));
        assert!(!may_eject(2, 10, 20));
    }
}
