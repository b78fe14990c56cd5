//! The service a server-side stack's workload is an instance of, for its metrics'
//! `destination_service` labels: the service of the workload port a request came in on
//! ([`MeshConfig::workload_service_ports`](mesh_core::model::MeshConfig::workload_service_ports)),
//! else the first of the live config's
//! [`MeshConfig::workload_services`](mesh_core::model::MeshConfig::workload_services).

use super::UpstreamInfo;
use arc_swap::ArcSwapOption;
use mesh_core::store::ConfigStore;
use std::sync::Arc;

/// Finds the local service in a config store, once per config version.
#[derive(Debug)]
pub(super) struct LocalService {
    store: Arc<ConfigStore>,
    /// The last version looked at and what it named: one `Arc` per version and service, so
    /// the label cache tells them apart by pointer as it does endpoints.
    cached: ArcSwapOption<Named>,
}

/// What one config version names.
#[derive(Debug)]
struct Named {
    version: u64,
    /// The first of the workload's services: for a port none names.
    first: Option<Arc<UpstreamInfo>>,
    /// The service of each workload port that names one.
    by_port: Vec<(u16, Arc<UpstreamInfo>)>,
}

impl Named {
    fn for_port(&self, port: Option<u16>) -> Option<Arc<UpstreamInfo>> {
        port.and_then(|p| self.by_port.iter().find(|(q, _)| *q == p))
            .map(|(_, info)| info.clone())
            .or_else(|| self.first.clone())
    }
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

    /// The live config's service for a request to workload port `port`
    /// ([`MeshConfig::workload_service_ports`](mesh_core::model::MeshConfig)), else its
    /// first service, if it names one.
    pub(super) fn get(&self, port: Option<u16>) -> Option<Arc<UpstreamInfo>> {
        let version = self.store.version();
        // Read through the guard: no count of the shared `Named` per request.
        if let Some(named) = &*self.cached.load()
            && named.version == version
        {
            return named.for_port(port);
        }
        let named = Arc::new(self.name());
        self.cached.store(Some(named.clone()));
        named.for_port(port)
    }

    fn name(&self) -> Named {
        let snapshot = self.store.load();
        let config = &snapshot.config;
        let info = |host: &String| {
            Arc::new(UpstreamInfo {
                authority: String::new(),
                service: host.clone(),
                namespace: Some(config.workload.namespace.clone()),
                labels: Default::default(),
                service_account: None,
                workload: None,
                cluster: None,
            })
        };
        let first = config.workload_services.first().map(info);
        let by_port = config
            .workload_service_ports
            .iter()
            .map(|(port, host)| match &first {
                // The same service keeps one `Arc`.
                Some(f) if f.service == *host => (*port, f.clone()),
                _ => (*port, info(host)),
            })
            .collect();
        Named {
            version: snapshot.version,
            first,
            by_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::MeshConfig;

    #[test]
    fn a_port_with_a_service_of_its_own_is_named_by_it_and_any_other_by_the_first() {
        let config = MeshConfig {
            workload_services: vec![
                "ratings.shop.svc.cluster.local".to_owned(),
                "ratings-admin.shop.svc.cluster.local".to_owned(),
            ],
            workload_service_ports: [
                (8080, "ratings.shop.svc.cluster.local".to_owned()),
                (8081, "ratings-admin.shop.svc.cluster.local".to_owned()),
            ]
            .into(),
            ..MeshConfig::default()
        };
        let store = Arc::new(ConfigStore::new(config));
        let local = LocalService::new(store.clone());
        let service = |port| local.get(port).map(|info| info.service.clone());
        assert_eq!(
            service(Some(8081)).as_deref(),
            Some("ratings-admin.shop.svc.cluster.local")
        );
        assert_eq!(
            service(Some(8080)).as_deref(),
            Some("ratings.shop.svc.cluster.local")
        );
        // A port no service names, and a request whose port is unknown: the first.
        assert_eq!(
            service(Some(9999)).as_deref(),
            Some("ratings.shop.svc.cluster.local")
        );
        assert_eq!(
            service(None).as_deref(),
            Some("ratings.shop.svc.cluster.local")
        );
        // One `Arc` per service and version (the label cache compares pointers).
        assert!(Arc::ptr_eq(
            &local.get(Some(8080)).unwrap(),
            &local.get(None).unwrap()
        ));
        assert!(Arc::ptr_eq(
            &local.get(Some(8081)).unwrap(),
            &local.get(Some(8081)).unwrap()
        ));
        // A new version names again.
        store.publish(MeshConfig::default());
        assert!(local.get(Some(8081)).is_none());
    }
}
