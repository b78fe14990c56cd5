//! istiod's inbound listener (`virtualInbound`, `tests/fixtures/inbound_listener.json`) drives
//! the sidecar's inbound side: its RBAC filters become the authorization policies (DENY, ALLOW,
//! shadow rules as dry-run), its local rate limit the port's token bucket, and real requests
//! through the authorization layer and the inbound forwarder on 127.0.0.1 are allowed and
//! denied as the policies say.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use mesh_core::model::{AuthzAction, LocalRateLimit, Workload};
use mesh_core::store::ConfigStore;
use mesh_policy::{PeerIdentity, SpiffeId};
use mesh_tower::authz::AuthzLayer;
use mesh_tower::client::UpstreamClient;
use mesh_tower::inbound::Inbound;
use mesh_tower::server::ConnectionInfo;
use mesh_xds_client::json::load_config_dump;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, ServiceExt};

fn fixture(port: Option<u16>) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inbound_listener.json");
    let text = std::fs::read_to_string(path).unwrap();
    let Some(port) = port else { return text };
    // The chain is for the app's port; the test's app listens on an ephemeral one.
    let mut value: Value = serde_json::from_str(&text).unwrap();
    value["filter_chains"][0]["filter_chain_match"]["destination_port"] = Value::from(port);
    value.to_string()
}

#[test]
fn inbound_listener_translates_into_authorization_and_rate_limit() {
    let config = load_config_dump(&fixture(None))
        .unwrap()
        .translate(&Workload::default())
        .unwrap();
    let names: Vec<(&str, &AuthzAction, bool)> = config
        .authorization
        .iter()
        .map(|p| (p.name.as_str(), &p.action, p.dry_run))
        .collect();
    assert_eq!(
        names,
        [
            (
                "ns[default]-policy[deny-admin]-rule[0]",
                &AuthzAction::Deny,
                false
            ),
            (
                "ns[default]-policy[reviews-viewer]-rule[0]",
                &AuthzAction::Allow,
                false
            ),
            (
                "ns[default]-policy[reviews-viewer]-rule[1]",
                &AuthzAction::Allow,
                false
            ),
            (
                "ns[default]-policy[dry-run-deny-frontend]-rule[0]",
                &AuthzAction::Deny,
                true
            ),
        ]
    );
    // rule[0]: GET|HEAD on /reviews* from productpage.
    let viewer = &config.authorization[1].rules;
    assert_eq!(viewer.len(), 1);
    assert_eq!(viewer[0].to[0].methods.values, ["GET", "HEAD"]);
    assert_eq!(viewer[0].to[0].paths.values, ["/reviews*"]);
    assert_eq!(
        viewer[0].from[0].principals.values,
        ["cluster.local/ns/default/sa/bookinfo-productpage"]
    );
    // rule[1]: namespace frontend but not the untrusted account, with a header condition;
    // port 9080, not DELETE.
    let r1 = &config.authorization[2].rules[0];
    assert_eq!(r1.from[0].namespaces.values, ["frontend"]);
    assert_eq!(
        r1.from[0].principals.not_values,
        ["cluster.local/ns/frontend/sa/untrusted"]
    );
    assert_eq!(r1.when[0].key, "request.headers[x-canary]");
    assert_eq!(r1.to[0].ports.values, ["9080"]);
    assert_eq!(r1.to[0].methods.not_values, ["DELETE"]);

    // One inbound port, to the local app, with the bucket.
    assert_eq!(config.inbound.len(), 1);
    assert_eq!(config.inbound[0].port, 9080);
    assert_eq!(
        config.inbound[0].default_endpoint,
        SocketAddr::from(([127, 0, 0, 1], 9080))
    );
    assert_eq!(
        config.inbound[0].rate_limit,
        Some(LocalRateLimit {
            max_tokens: 100,
            tokens_per_fill: 10,
            fill_interval: Duration::from_secs(1),
        })
    );
    // No outbound routes from an inbound listener.
    assert!(config.routes.virtual_hosts().is_empty());
}

/// The local app: answers `app PATH`.
async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("app {}", req.uri().path()),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn inbound_rbac_allows_and_denies_real_requests() {
    let app = app().await;
    let config = load_config_dump(&fixture(Some(app.port())))
        .unwrap()
        .translate(&Workload::default())
        .unwrap();
    assert_eq!(config.inbound[0].default_endpoint, app);
    let store = Arc::new(ConfigStore::new(config));
    let inbound =
        AuthzLayer::new(store.clone()).layer(Inbound::new(store, None, UpstreamClient::new()));
    let call = |method: &'static str, path: &'static str, peer: Option<&str>, canary: bool| {
        let inbound = inbound.clone();
        let peer = peer.map(|p| PeerIdentity::from(SpiffeId::parse(p).unwrap()));
        async move {
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", format!("reviews:{}", app.port()));
            if canary {
                req = req.header("x-canary", "yes");
            }
            let mut req = req.body(Empty::<Bytes>::new()).unwrap();
            if let Some(peer) = peer {
                req.extensions_mut().insert(peer);
            }
            req.extensions_mut().insert(ConnectionInfo {
                peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
                local: SocketAddr::from(([127, 0, 0, 1], 9080)),
                redirected: false,
            });
            let resp = inbound.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
    const FRONTEND: &str = "spiffe://cluster.local/ns/frontend/sa/web";
    const UNTRUSTED: &str = "spiffe://cluster.local/ns/frontend/sa/untrusted";
    // rule[0]
    assert_eq!(
        call("GET", "/reviews/1", Some(PRODUCTPAGE), false).await,
        (200, "app /reviews/1".to_owned())
    );
    assert_eq!(
        call("POST", "/reviews/1", Some(PRODUCTPAGE), false).await.0,
        403
    );
    assert_eq!(
        call("GET", "/ratings", Some(PRODUCTPAGE), false).await.0,
        403
    );
    // rule[1]: frontend with the canary header, any path on 9080 but DELETE.
    assert_eq!(call("PUT", "/any", Some(FRONTEND), true).await.0, 200);
    assert_eq!(call("PUT", "/any", Some(FRONTEND), false).await.0, 403);
    assert_eq!(call("DELETE", "/any", Some(FRONTEND), true).await.0, 403);
    assert_eq!(call("PUT", "/any", Some(UNTRUSTED), true).await.0, 403);
    // The DENY filter wins over ALLOW; plaintext (no peer) matches no ALLOW rule.
    assert_eq!(call("GET", "/admin/x", Some(FRONTEND), true).await.0, 403);
    assert_eq!(call("GET", "/reviews/1", None, false).await.0, 403);
}

#[test]
fn unsupported_rbac_is_refused_with_the_field() {
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut value: Value = serde_json::from_str(&fixture(None)).unwrap();
        patch(&mut value);
        let errors = load_config_dump(&value.to_string())
            .unwrap()
            .translate(&Workload::default())
            .unwrap_err();
        errors[0].to_string()
    };
    // A CEL condition.
    let err = with(&|v| {
        v["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][1]["typed_config"]["rules"]
            ["policies"]["ns[default]-policy[reviews-viewer]-rule[0]"]["condition"] =
            serde_json::json!({"const_expr": {"bool_value": true}});
    });
    assert!(
        err.contains("http_filters[1].typed_config.rules.policies[ns[default]-policy[reviews-viewer]-rule[0]].condition: CEL conditions are not supported"),
        "{err}"
    );
    // A rate limit enforced on half the requests.
    let err = with(&|v| {
        v["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][2]["typed_config"]["filter_enforced"]
            ["default_value"]["numerator"] = Value::from(50);
    });
    assert!(
        err.contains(
            "http_filters[2].typed_config.filter_enforced: enabling or enforcing for a fraction"
        ),
        "{err}"
    );
    // Two value lists on one attribute joined by AND.
    let err = with(&|v| {
        let rules = &mut v["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][1]["typed_config"]
            ["rules"]["policies"]["ns[default]-policy[reviews-viewer]-rule[0]"]["permissions"][0]["and_rules"]
            ["rules"];
        rules
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"url_path": {"path": {"exact": "/other"}}}));
    });
    assert!(err.contains("cannot be expressed"), "{err}");
}

/// Inbound listener with one HTTP chain whose filters are `filters` (JSON), router last.
fn inbound_with(filters: Value) -> Result<mesh_core::model::MeshConfig, String> {
    let mut http_filters = filters.as_array().cloned().unwrap_or_default();
    http_filters.push(serde_json::json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let listener = serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "virtualInbound",
        "traffic_direction": "INBOUND",
        "filter_chains": [{
            "filter_chain_match": {"destination_port": 8080},
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "inbound_0.0.0.0_8080",
                    "route_config": {"name": "inbound|8080||"},
                    "http_filters": http_filters
                }
            }]
        }]
    });
    load_config_dump(&listener.to_string())
        .map_err(|e| e.to_string())?
        .translate(&Workload::default())
        .map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
}

#[test]
fn rbac_actions_and_rate_limit_modes() {
    let rbac = |rules: Value| {
        serde_json::json!([{
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": rules
            }
        }])
    };
    // ALLOW with no policy: Istio's allow-nothing.
    let c = inbound_with(rbac(serde_json::json!({"action": "ALLOW"}))).unwrap();
    assert_eq!(c.authorization.len(), 1);
    assert!(c.authorization[0].rules.is_empty());
    // DENY with no policy: nothing.
    let c = inbound_with(rbac(serde_json::json!({"action": "DENY"}))).unwrap();
    assert!(c.authorization.is_empty());
    // LOG is AUDIT; a principal `any` and a permission `any` give one empty rule.
    let c = inbound_with(rbac(serde_json::json!({
        "action": "LOG",
        "policies": {"audit": {"permissions": [{"any": true}], "principals": [{"any": true}]}}
    })))
    .unwrap();
    assert_eq!(c.authorization[0].action, AuthzAction::Audit);
    assert_eq!(c.authorization[0].rules.len(), 1);
    assert!(
        c.authorization[0].rules[0].from.is_empty() && c.authorization[0].rules[0].to.is_empty()
    );
    // An IP principal with a CIDR.
    let c = inbound_with(rbac(serde_json::json!({
        "action": "DENY",
        "policies": {"net": {
            "permissions": [{"any": true}],
            "principals": [{"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
                           {"remote_ip": {"address_prefix": "203.0.113.7"}}]
        }}
    })))
    .unwrap();
    let rules = &c.authorization[0].rules;
    assert_eq!(rules.len(), 2, "one rule per principal alternative");
    assert_eq!(rules[0].from[0].ip_blocks.values, ["10.0.0.0/8"]);
    assert_eq!(rules[1].from[0].remote_ip_blocks.values, ["203.0.113.7/32"]);

    // local_ratelimit: unset fractions are 0% (no limit); 100%/100% enforces the bucket.
    let limit = |enabled: u32, enforced: u32| {
        serde_json::json!([{
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 5, "fill_interval": "0.5s"},
                "filter_enabled": {"runtime_key": "e", "default_value": {"numerator": enabled}},
                "filter_enforced": {"runtime_key": "f", "default_value": {"numerator": enforced}}
            }
        }])
    };
    let c = inbound_with(limit(100, 0)).unwrap();
    assert_eq!(c.inbound[0].port, 8080);
    assert_eq!(c.inbound[0].rate_limit, None, "shadow mode only counts");
    let c = inbound_with(limit(100, 100)).unwrap();
    assert_eq!(
        c.inbound[0].rate_limit,
        Some(LocalRateLimit {
            max_tokens: 5,
            tokens_per_fill: 1,
            fill_interval: Duration::from_millis(500),
        })
    );
    let err = inbound_with(limit(100, 30)).unwrap_err();
    assert!(err.contains("filter_enforced"), "{err}");
    // Another HTTP filter is still refused inbound.
    let err = inbound_with(serde_json::json!([{
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
    }]))
    .unwrap_err();
    assert!(
        err.contains("HTTP filter envoy.filters.http.ext_authz is not supported"),
        "{err}"
    );
}
