//! The service a server-side stack's workload is an instance of, for its metrics'
//! `destination_service` labels: the first of the live config's
//! [`MeshConfig::workload_services`](mesh_core::model::MeshConfig::workload_services).

use super::UpstreamInfo;
use arc_swap::ArcSwapOption;
use mesh_core::store::ConfigStore;
use std::sync::Arc;

/// Finds the local service in a config store, once per config version.
#[derive(Debug)]
pub(super) struct LocalService {
    store: Arc<ConfigStore>,
    /// The last version looked at and what it named: one `Arc` per version, so the label
    /// cache tells it apart by pointer as it does endpoints.
    cached: ArcSwapOption<(u64, Option<Arc<UpstreamInfo>>)>,
}

impl LocalService {
    pub(super) fn new(store: Arc<ConfigStore>) -> Self {
        Self {
            store,
            cached: ArcSwapOption::empty(),
        }
    }

    /// The live config's path normalization (what the inbound side's authorization applied).
    pub(super) fn path_normalization(&self) -> mesh_core::model::PathNormalization {
        self.store
            .with_current(|snapshot| snapshot.config.path_normalization)
    }

    /// The live config's local service, if it names one.
    pub(super) fn get(&self) -> Option<Arc<UpstreamInfo>> {
        let version = self.store.version();
        if let Some(cached) = &*self.cached.load()
            && cached.0 == version
        {
            return cached.1.clone();
        }
        let snapshot = self.store.load();
        let info = snapshot.config.workload_services.first().map(|host| {
            Arc::new(UpstreamInfo {
                authority: String::new(),
                service: host.clone(),
                namespace: Some(snapshot.config.workload.namespace.clone()),
                labels: Default::default(),
                service_account: None,
                workload: None,
                cluster: None,
            })
        });
        self.cached
            .store(Some(Arc::new((snapshot.version, info.clone()))));
        info
    }
}
