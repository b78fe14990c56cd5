//! The config store: the live [`MeshConfig`] snapshot behind an atomic swap.
//!
//! Every source (YAML files, xDS) validates a complete snapshot first and only then
//! [`publish`](ConfigStore::publish)es it; a source whose change fails validation
//! [`reject`](ConfigStore::reject)s it instead, and the last good snapshot keeps serving.
//! A request calls [`load`](ConfigStore::load) once and keeps that `Arc` for its whole life, so
//! a swap never changes the config under an in-flight request.
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
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    last_rejection: ArcSwapOption<Rejection>,
    next_version: AtomicU64,
}

impl ConfigStore {
    /// A store serving `initial` as version 1.
    pub fn new(initial: MeshConfig) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot {
                version: 1,
                config: initial,
            }),
            last_rejection: ArcSwapOption::empty(),
            next_version: AtomicU64::new(2),
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

    /// The live snapshot's version.
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Replaces the live snapshot with a validated `config`; returns its version.
    pub fn publish(&self, config: MeshConfig) -> u64 {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        self.current.store(Arc::new(Snapshot { version, config }));
        version
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
