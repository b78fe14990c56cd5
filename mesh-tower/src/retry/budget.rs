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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const SLOTS: usize = 10;

/// Shared retry budget; clones share the window.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    percent: u64,
    min_retries: u64,
    slot_length: Duration,
    window: Mutex<Window>,
    exhausted: AtomicU64,
}

#[derive(Debug)]
struct Window {
    /// Requests and retries per slot, the current slot at `head`.
    slots: [(u64, u64); SLOTS],
    head: usize,
    head_start: Instant,
}

impl Default for RetryBudget {
    /// 20% of requests, a floor of 3 retries, over 10 s.
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
                slot_length,
                window: Mutex::new(Window {
                    slots: [(0, 0); SLOTS],
                    head: 0,
                    head_start: Instant::now(),
                }),
                exhausted: AtomicU64::new(0),
            }),
        }
    }

    fn with_window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut window = self.inner.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(window.head_start);
        let steps = (elapsed.as_nanos() / self.inner.slot_length.as_nanos().max(1)) as usize;
        if steps > 0 {
            for _ in 0..steps.min(SLOTS) {
                window.head = (window.head + 1) % SLOTS;
                let head = window.head;
                window.slots[head] = (0, 0);
            }
            window.head_start += self.inner.slot_length * steps.min(u32::MAX as usize) as u32;
            if steps >= SLOTS {
                window.head_start = now;
            }
        }
        f(&mut window)
    }

    /// Counts one original request (not a retry).
    pub fn record_request(&self) {
        self.with_window(|w| w.slots[w.head].0 += 1);
    }

    /// Whether the budget allows a retry now (and counts it); a refusal is counted too.
    pub fn try_retry(&self) -> bool {
        let allowed = self.with_window(|w| {
            let (requests, retries) = w
                .slots
                .iter()
                .fold((0, 0), |(q, r), (sq, sr)| (q + sq, r + sr));
            let allowance = (requests * self.inner.percent / 100).max(self.inner.min_retries);
            let ok = retries < allowance;
            if ok {
                w.slots[w.head].1 += 1;
            }
            ok
        });
        if !allowed {
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
