//! Endpoint choice within the chosen cluster: round-robin over its healthy endpoints, in
//! proportion to their weights.
//!
//! This is the simple balancer the foundation needs; the resilience work replaces it with
//! outlier-aware P2C least-request and the other Istio algorithms.

use crate::body::{BoxBody, BoxError};
use crate::error::ProxyError;
use crate::split::Target;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_core::model::{ClusterName, Endpoint, HealthStatus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The endpoint the balancer chose, as `host:port`.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `address:port` of the chosen endpoint.
    pub authority: http::uri::Authority,
}

/// Round-robin per cluster; the position survives config swaps (it is keyed by name).
#[derive(Clone, Debug, Default)]
pub struct RoundRobinLayer {
    positions: Arc<RwLock<HashMap<ClusterName, Arc<AtomicUsize>>>>,
}

impl RoundRobinLayer {
    /// A balancer with fresh positions.
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, cluster: &ClusterName) -> Arc<AtomicUsize> {
        if let Some(p) = self
            .positions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
        {
            return p.clone();
        }
        self.positions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.clone())
            .or_default()
            .clone()
    }

    /// Picks the next endpoint of `endpoints`, weights counted as repeated turns.
    fn pick<'e>(&self, cluster: &ClusterName, endpoints: &'e [Endpoint]) -> Option<&'e Endpoint> {
        let healthy = |e: &&Endpoint| e.health == HealthStatus::Healthy;
        let total: usize = endpoints
            .iter()
            .filter(healthy)
            .map(|e| e.weight.max(1) as usize)
            .sum();
        if total == 0 {
            return None;
        }
        let mut turn = self.position(cluster).fetch_add(1, Ordering::Relaxed) % total;
        for e in endpoints.iter().filter(healthy) {
            let w = e.weight.max(1) as usize;
            if turn < w {
                return Some(e);
            }
            turn -= w;
        }
        None
    }
}

impl<S> Layer<S> for RoundRobinLayer {
    type Service = RoundRobin<S>;

    fn layer(&self, inner: S) -> RoundRobin<S> {
        RoundRobin {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`RoundRobinLayer`] makes.
#[derive(Clone, Debug)]
pub struct RoundRobin<S> {
    layer: RoundRobinLayer,
    inner: S,
}

impl<S, B> Service<Request<B>> for RoundRobin<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let chosen = req.extensions().get::<Target>().map(|t| {
            let c = &t.cluster;
            self.layer
                .pick(&c.name, &c.endpoints)
                .ok_or_else(|| ProxyError::NoHealthyUpstream(c.name.to_string()))
                .and_then(|e| {
                    e.authority().parse().map_err(|_| {
                        ProxyError::BadRequest(format!(
                            "endpoint {} is not a valid authority",
                            e.authority()
                        ))
                    })
                })
        });
        let authority = match chosen {
            Some(Ok(authority)) => authority,
            Some(Err(e)) => return Box::pin(async move { Err(e.into()) }),
            None => {
                let e = ProxyError::BadRequest("the balancer needs a target cluster".into());
                return Box::pin(async move { Err(e.into()) });
            }
        };
        req.extensions_mut().insert(Upstream { authority });
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::{Address, Locality};

    fn endpoint(port: u16, weight: u32) -> Endpoint {
        Endpoint {
            address: Address::Ip([127, 0, 0, 1].into()),
            port,
            labels: Default::default(),
            weight,
            locality: Locality::default(),
            health: HealthStatus::Healthy,
            service_account: None,
            namespace: None,
        }
    }

    #[test]
    fn turns_follow_weights_and_skip_unhealthy_endpoints() {
        let lb = RoundRobinLayer::new();
        let name = ClusterName::new("c");
        let mut endpoints = vec![endpoint(1, 1), endpoint(2, 2), endpoint(3, 1)];
        endpoints[2].health = HealthStatus::Unhealthy;
        let ports: Vec<u16> = (0..6)
            .map(|_| lb.pick(&name, &endpoints).unwrap().port)
            .collect();
        assert_eq!(ports, [1, 2, 2, 1, 2, 2]);
        endpoints
            .iter_mut()
            .for_each(|e| e.health = HealthStatus::Unhealthy);
        assert!(lb.pick(&name, &endpoints).is_none());
    }
}
