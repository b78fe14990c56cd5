//! `/explain`: what a request like this one would meet, without sending it. Which virtual
//! host and route match, where the route sends it (destinations, weights, subsets and their
//! endpoints), and the policies on the way: retries, timeout, faults, mirrors, rate limit,
//! circuit-breaker limits, outlier detection and the load balancer.

use crate::route::matching::{RequestView, first_match};
use http::Request;
use mesh_core::model::{MeshConfig, RouteAction};
use serde_json::{Value, json};

/// Explains how `config` would handle a request with this method, authority, path (with
/// query) and headers, and what its authorization policies decide for it coming from `peer`
/// (a SPIFFE ID; `None`: plaintext).
///
/// `port` is the destination port the request is sent to, which picks the routes of that
/// port when the config has routes per port (xDS): an intercepted call's original port.
/// `None` is what the route layer does for the plain outbound listener: the authority's port,
/// else 80 ([`crate::route::destination_port`]).
///
/// ```
/// use mesh_core::{istio, model::Workload};
/// let yaml = r#"
/// apiVersion: networking.istio.io/v1
/// kind: ServiceEntry
/// metadata: { name: hello }
/// spec:
///   hosts: [hello.default.svc.cluster.local]
///   ports: [{ number: 80, name: http }]
///   resolution: STATIC
///   endpoints: [{ address: 127.0.0.1, ports: { http: 8080 } }]
/// "#;
/// let config = istio::load(&[("hello.yaml", yaml)], &Workload::default()).config.unwrap();
/// let answer = mesh_tower::explain::explain(&config, "GET", "hello", None, "/", &[], None);
/// assert_eq!(answer["port"], 80);
/// assert_eq!(answer["route"]["name"], "default");
/// assert_eq!(answer["route"]["destinations"][0]["cluster"], "outbound|80||hello.default.svc.cluster.local");
/// ```
pub fn explain(
    config: &MeshConfig,
    method: &str,
    authority: &str,
    port: Option<u16>,
    path: &str,
    headers: &[(String, String)],
    peer: Option<&str>,
) -> Value {
    let mut builder = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = match builder.body(()) {
        Ok(req) => req,
        Err(e) => return json!({ "error": format!("not a valid request: {e}") }),
    };
    // Inbound, the workload's policies apply whatever the outbound routes say.
    let authz = authorization(config, method, authority, path, &req, peer);
    let port = port.unwrap_or_else(|| crate::route::destination_port(&req, authority));
    let Some(vhost_index) = config.routes.find_index_on_port(Some(port), authority) else {
        return json!({
            "authority": authority,
            "port": port,
            "virtual_host": null,
            "authorization": authz,
            "outcome": "404 no route (NR): no virtual host matches the authority",
        });
    };
    let vhost = &config.routes.virtual_hosts()[vhost_index];
    let view = RequestView::new(&req, authority);
    let matched = vhost.routes.iter().enumerate().find_map(|(i, r)| {
        if r.matches.is_empty() {
            Some((i, None))
        } else {
            first_match(&r.matches, &view, &config.workload).map(|m| (i, Some(m)))
        }
    });
    let Some((route_index, match_index)) = matched else {
        return json!({
            "authority": authority,
            "port": port,
            "virtual_host": vhost.name,
            "authorization": authz,
            "outcome": "404 no route (NR): no route of the virtual host matches",
        });
    };
    let route = &vhost.routes[route_index];
    let action = match &route.action {
        RouteAction::Forward(forward) => {
            let total = forward.total_weight().max(1);
            let destinations: Vec<Value> = forward
                .destinations
                .iter()
                .map(|d| {
                    let cluster = config.cluster(&d.cluster);
                    json!({
                        "cluster": d.cluster,
                        "weight": d.weight,
                        "share_percent": f64::from(d.weight) * 100.0 / f64::from(total),
                        "subset": cluster.and_then(|c| c.subset.clone()),
                        "endpoints": cluster.map(|c| c.endpoints.iter().map(|e| e.authority()).collect::<Vec<_>>()),
                        "load_balancer": cluster.map(|c| format!("{:?}", c.policy.load_balancer.algorithm)),
                        "limits": cluster.map(|c| json!({
                            "max_connections": c.policy.connection_pool.max_connections,
                            "http1_max_pending_requests": c.policy.connection_pool.http1_max_pending_requests,
                            "http2_max_requests": c.policy.connection_pool.http2_max_requests,
                        })),
                        "outlier_detection": cluster.and_then(|c| c.policy.outlier_detection.as_ref()).map(|o| json!({
                            "consecutive_5xx_errors": o.consecutive_5xx_errors,
                            "base_ejection_time_ms": o.base_ejection_time.as_millis() as u64,
                            "max_ejection_percent": o.max_ejection_percent,
                        })),
                        "tls": cluster.and_then(|c| c.policy.tls.as_ref()).map(|t| format!("{:?}", t.mode)),
                        "missing": cluster.is_none(),
                    })
                })
                .collect();
            json!({ "forward": destinations, "rewrite": forward.rewrite })
        }
        RouteAction::Redirect(r) => json!({ "redirect": r }),
        RouteAction::DirectResponse(d) => json!({ "direct_response": { "status": d.status } }),
    };
    json!({
        "authority": authority,
        "port": port,
        "virtual_host": vhost.name,
        "authorization": authz,
        "route": {
            "name": route.name,
            "index": route_index,
            "matched_condition": match_index,
            "destinations": action.get("forward").cloned().unwrap_or(Value::Null),
            "action": action,
            "retry": route.retry.as_ref().map(|r| json!({
                "attempts": r.attempts,
                "retry_on": r.retry_on.to_string(),
                "per_try_timeout_ms": r.per_try_timeout.map(|t| t.as_millis() as u64),
            })),
            "timeout_ms": route.timeout.map(|t| t.as_millis() as u64),
            "fault": route.fault,
            "mirrors": route.mirrors,
            "hedge": route.hedge,
            "rate_limit": route.rate_limit,
        },
    })
}

/// What the workload's AuthorizationPolicies decide for a request like this one arriving
/// inbound from `peer` (a SPIFFE ID), with the policy and rule that decided.
pub fn authorization<B>(
    config: &MeshConfig,
    method: &str,
    authority: &str,
    path: &str,
    req: &Request<B>,
    peer: Option<&str>,
) -> Value {
    let engine = match mesh_policy::authz::Engine::new(&config.authorization) {
        Ok(engine) => engine,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let peer = match peer.map(mesh_policy::SpiffeId::parse).transpose() {
        Ok(peer) => peer.map(mesh_policy::PeerIdentity::from),
        Err(e) => return json!({ "error": format!("peer: {e}") }),
    };
    let attributes = mesh_policy::authz::Attributes {
        peer: peer.as_ref(),
        host: Some(authority),
        headers: Some(req.headers()),
        ..mesh_policy::authz::Attributes::new(method, path)
    };
    let verdict = engine.evaluate(&attributes);
    json!({
        "allowed": verdict.is_allowed(),
        "explanation": verdict.to_string(),
        "policies": config.authorization.len(),
    })
}
