//! The config store: the live [`MeshConfig`] snapshot behind an atomic swap.
//!
//! Every source (YAML files, xDS) validates a complete snapshot first and only then
//! [`publish`](ConfigStore::publish)es it; a source whose change fails validation
//! [`reject`](ConfigStore::reject)s it instead, and the last good snapshot keeps serving.
//! A request calls [`load`](ConfigStore::load) once and keeps that `Arc` for its whole life, so
//! a swap never changes the config under an in-flight request. A task that prepares something
//! for each snapshot as it is installed (a layer compiling its policies, fetching the keys they
//! name) awaits [`changed`](ConfigStore::changed) instead of polling.
//!
//! ```
//! use mesh_core::model::MeshConfig;
//! use mesh_core::store::ConfigStore;
//!
//! let store = ConfigStore::new(MeshConfig::default());
//! let before = store.load();
//! assert_eq!(store.version(), 1);
//! store.reject("files", vec!["VirtualService default/reviews: spec.http[0]: bad".into()]);
//! assert_eq!(store.version(), 1, "a rejected change does not replace the snapshot");
//! store.publish(MeshConfig::default());
//! assert_eq!(store.version(), 2);
//! assert_eq!(before.version, 1, "an in-flight request keeps its snapshot");
//! ```

use crate::model::MeshConfig;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// A published snapshot and its version (1 for the first, one more for each publish).
#[derive(Debug)]
pub struct Snapshot {
    /// The snapshot's version in this store.
    pub version: u64,
    /// The configuration.
    pub config: MeshConfig,
}

impl Deref for Snapshot {
    type Target = MeshConfig;

    fn deref(&self) -> &MeshConfig {
        &self.config
    }
}

/// A change that failed validation, kept for the admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// Which source produced the change (`files`, `xds`).
    pub source: String,
    /// The version that kept serving when the change was rejected.
    pub serving_version: u64,
    /// The errors, each naming the resource and field.
    pub errors: Vec<String>,
}

/// Holds the live snapshot; cheap to share (`Arc<ConfigStore>`), one atomic read per load.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// The version of `current`, readable without loading it; written after `current`.
    version: AtomicU64,
    /// Held while publishing: versions are stored in the order they are numbered.
    publishing: Mutex<()>,
    id: u64,
    last_rejection: ArcSwapOption<Rejection>,
    /// Tasks waiting in [`ConfigStore::changed`], woken by the next publish.
    waiters: Mutex<Vec<Waker>>,
}

/// The next store's [`ConfigStore::id`].
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

impl ConfigStore {
    /// A store serving `initial` as version 1.
    pub fn new(initial: MeshConfig) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot {
                version: 1,
                config: initial,
            }),
            version: AtomicU64::new(1),
            publishing: Mutex::new(()),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            last_rejection: ArcSwapOption::empty(),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// The live snapshot. Keep the `Arc` for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Calls `f` with the live snapshot, without taking a reference of it (no reference count
    /// written): for a caller that keeps its own reference only when it needs one.
    pub fn with_current<R>(&self, f: impl FnOnce(&Arc<Snapshot>) -> R) -> R {
        f(&self.current.load())
    }

    /// The live snapshot's version: one atomic load, without the snapshot (while a publish is
    /// under way, the version before it, whose snapshot was live a moment ago).
    ///
    /// A caller that keeps a snapshot can check it is still the live one by its version
    /// alone, and [`load`](Self::load) again only when a new one was published.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// This store's identity, unique among the process's stores (an address can be reused
    /// once a store is dropped; an id is not).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Replaces the live snapshot with a validated `config`; returns its version.
    pub fn publish(&self, config: MeshConfig) -> u64 {
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let version = self.version.load(Ordering::Relaxed) + 1;
        self.current.store(Arc::new(Snapshot { version, config }));
        self.version.store(version, Ordering::Release);
        // Taken after the version is stored: a waiter that checked the version before this
        // lock registered its waker in time, one that checks after it sees the new version.
        let waiters =
            std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner));
        waiters.into_iter().for_each(Waker::wake);
        version
    }

    /// Resolves, with the live version, once a snapshot newer than version `seen` is live (at
    /// once if one already is). Not tied to an async runtime; cancel-safe (drop it at will).
    ///
    /// ```
    /// # use mesh_core::{model::MeshConfig, store::ConfigStore};
    /// # use std::{future::Future, pin::pin, task::{Context, Poll, Waker}};
    /// let store = ConfigStore::new(MeshConfig::default());
    /// let mut cx = Context::from_waker(Waker::noop());
    /// let mut changed = pin!(store.changed(store.version()));
    /// assert!(changed.as_mut().poll(&mut cx).is_pending());
    /// store.publish(MeshConfig::default());
    /// assert_eq!(changed.poll(&mut cx), Poll::Ready(2));
    /// ```
    pub fn changed(&self, seen: u64) -> Changed<'_> {
        Changed { store: self, seen }
    }

    /// Records that `source` produced a change that failed validation. The live snapshot is
    /// left as it is.
    pub fn reject(&self, source: &str, errors: Vec<String>) {
        self.last_rejection.store(Some(Arc::new(Rejection {
            source: source.to_owned(),
            serving_version: self.version(),
            errors,
        })));
    }

    /// The last rejected change, if any.
    pub fn last_rejection(&self) -> Option<Arc<Rejection>> {
        self.last_rejection.load_full()
    }
}

/// The future of [`ConfigStore::changed`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Changed<'a> {
    store: &'a ConfigStore,
    seen: u64,
}

impl Future for Changed<'_> {
    type Output = u64;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let newer = |v: u64| (v > self.seen).then_some(v);
        if let Some(v) = newer(self.store.version()) {
            return Poll::Ready(v);
        }
        let mut waiters = self
            .store
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock, which `publish` takes after storing the version.
        if let Some(v) = newer(self.store.version()) {
            return Poll::Ready(v);
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::ConfigStore;
    use crate::model::MeshConfig;

    #[test]
    fn concurrent_publishes_leave_the_version_that_of_the_live_snapshot() {
        let store = ConfigStore::new(MeshConfig::default());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let version = store.publish(MeshConfig::default());
                        assert!(store.version() >= version);
                    }
                });
            }
        });
        assert_eq!(store.version(), 201);
        assert_eq!(store.load().version, 201);
    }

    #[test]
    fn a_publish_wakes_the_tasks_waiting_for_a_change_once() {
        use std::future::Future;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Poll, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let store = ConfigStore::new(MeshConfig::default());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut changed = std::pin::pin!(store.changed(1));
        // Polled twice while waiting: one waker kept, one wake.
        assert!(changed.as_mut().poll(&mut cx).is_pending());
        assert!(changed.as_mut().poll(&mut cx).is_pending());
        store.publish(MeshConfig::default());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(changed.as_mut().poll(&mut cx), Poll::Ready(2));
        store.publish(MeshConfig::default());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "nobody was waiting any more"
        );
        // A version already seen as old resolves at once.
        assert_eq!(
            std::pin::pin!(store.changed(1)).poll(&mut cx),
            Poll::Ready(3)
        );
    }

    #[test]
    fn each_store_has_an_id_of_its_own() {
        let (a, b) = (
            ConfigStore::new(MeshConfig::default()),
            ConfigStore::new(MeshConfig::default()),
        );
        assert_ne!(a.id(), b.id());
    }
}
