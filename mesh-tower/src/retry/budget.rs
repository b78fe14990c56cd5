//! The retry budget: retries may add at most a share of the recent request load.
//!
//! Like Finagle's `RetryBudget` and Envoy's `retry_budget`: over a sliding window (10 s), a
//! retry is allowed while the retries in the window stay below `percent` of the requests in
//! it, or below a small floor (`min_retries`, 3 by default) so that a quiet service can still
//! retry. In an outage where every request fails, retries therefore add at most `percent`
//! (plus the floor) to the load, instead of multiplying it by the attempts.
//!
//! ```
//! use mesh_tower::retry::RetryBudget;
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let budget = RetryBudget::new(20, 3, std::time::Duration::from_secs(10));
//! for _ in 0..100 {
//!     budget.record_request();
//! }
//! let retries = std::iter::from_fn(|| budget.try_retry().then_some(())).take(1_000).count();
//! assert_eq!(retries, 20);
//! # });
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const SLOTS: usize = 10;

/// Each slot counts requests in this many counters, each on its own cache line: a thread
/// counts in one of them ([`stripe`]), so the sidecar's workers, which all count every
/// request, do not all write one cache line. Retries are rare and counted in one.
const STRIPES: usize = 8;

/// This thread's request counter of a slot: threads take the stripes in turn as they first
/// count (a sidecar's workers get one each, up to [`STRIPES`] workers).
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// A counter alone on its cache line (two lines: adjacent-line prefetch pairs them).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// Shared retry budget; clones share the window.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

/// The window is `SLOTS` slots of `slot_length`, each tagged with the epoch (slot number since
/// `origin`) it counts, all atomics: no lock per request. A slot is reset by the first caller
/// that finds it tagged with an older epoch; a count landing between that tag swap and the
/// reset can be lost, and two racing retries can both pass the check: the budget is a bound on
/// the load within a request or two, as a sliding window of counters is anyway.
#[derive(Debug)]
struct Inner {
    percent: u64,
    min_retries: u64,
    slot_nanos: u64,
    origin: Instant,
    slots: [Slot; SLOTS],
    exhausted: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    epoch: AtomicU64,
    retries: AtomicU64,
    requests: [Padded; STRIPES],
}

impl Slot {
    fn requests(&self) -> u64 {
        self.requests
            .iter()
            .map(|r| r.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(20, 3, Duration::from_secs(10))
    }
}

impl RetryBudget {
    /// Retries may be `percent`% of the requests in `window`, and at least `min_retries`.
    pub fn new(percent: u32, min_retries: u32, window: Duration) -> Self {
        let slot_length = (window / SLOTS as u32).max(Duration::from_millis(1));
        Self {
            inner: Arc::new(Inner {
                percent: u64::from(percent),
                min_retries: u64::from(min_retries),
                slot_nanos: u64::try_from(slot_length.as_nanos()).unwrap_or(u64::MAX),
                origin: Instant::now(),
                slots: Default::default(),
                exhausted: AtomicU64::new(0),
            }),
        }
    }

    /// The current slot number since the budget was made.
    fn epoch(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.inner.origin);
        u64::try_from(elapsed.as_nanos() / u128::from(self.inner.slot_nanos)).unwrap_or(u64::MAX)
    }

    /// The slot counting `epoch`, reset first when it still holds an older one.
    fn slot(&self, epoch: u64) -> &Slot {
        let slot = &self.inner.slots[(epoch % SLOTS as u64) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for counter in &slot.requests {
                counter.0.store(0, Ordering::Relaxed);
            }
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts one original request (not a retry).
    pub fn record_request(&self) {
        self.slot(self.epoch()).requests[stripe()]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the budget allows a retry now (and counts it); a refusal is counted too.
    pub fn try_retry(&self) -> bool {
        let epoch = self.epoch();
        let current = self.slot(epoch);
        let oldest = epoch.saturating_sub(SLOTS as u64 - 1);
        let (requests, retries) = self
            .inner
            .slots
            .iter()
            .filter(|s| (oldest..=epoch).contains(&s.epoch.load(Ordering::Acquire)))
            .fold((0, 0), |(q, r), s| {
                (q + s.requests(), r + s.retries.load(Ordering::Relaxed))
            });
        let allowance = (requests * self.inner.percent / 100).max(self.inner.min_retries);
        let allowed = retries < allowance;
        if allowed {
            current.retries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inner.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// How many retries the budget has refused.
    pub fn exhausted(&self) -> u64 {
        self.inner.exhausted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let budget = RetryBudget::new(50, 0, Duration::from_secs(10));
        for _ in 0..10 {
            budget.record_request();
        }
        assert_eq!(
            std::iter::from_fn(|| budget.try_retry().then_some(()))
                .take(100)
                .count(),
            5
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            !budget.try_retry(),
            "old requests no longer pay for retries"
        );
        assert_eq!(budget.exhausted(), 2);
        budget.record_request();
        budget.record_request();
        assert!(budget.try_retry());
    }

    #[test]
    fn requests_counted_from_many_threads_all_pay_for_retries() {
        let budget = RetryBudget::new(20, 0, Duration::from_secs(10));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        budget.record_request();
                    }
                });
            }
        });
        let retries = std::iter::from_fn(|| budget.try_retry().then_some(()))
            .take(10_000)
            .count();
        assert_eq!(retries, 800, "20% of 4,000 requests");
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_lets_a_quiet_service_retry() {
        let budget = RetryBudget::default();
        budget.record_request();
        assert_eq!(
            std::iter::from_fn(|| budget.try_retry().then_some(()))
                .take(10)
                .count(),
            3
        );
    }
}
