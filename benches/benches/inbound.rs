//! The inbound stack beside the bare service: authorization through `mesh_policy`'s engine
//! with 10 and 1,000 policies (the request matches the last one) in two shapes (each policy
//! names its own source namespace, path prefix and header; or each names its own exact path
//! and all share the source namespace), and the whole in-process
//! inbound stack as the sidecar assembles it (telemetry as the destination reporter ->
//! authorization -> the service), each with the overhead printed as ns/request and as a ratio.
//!
//! In-process, no network and no TLS (the handshake is in the `security` bench): the request
//! carries the verified peer identity and the connection info the TLS listener would add; the
//! innermost service answers at once in place of the forward to the local app.

use criterion::Criterion;
use http::{Request, Response};
use mesh_benches::{Bare, compare, runtime};
use mesh_core::model::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ConditionMatch, MeshConfig, OperationMatch,
    SourceMatch, ValueMatch,
};
use mesh_core::store::ConfigStore;
use mesh_policy::{PeerIdentity, SpiffeId};
use mesh_tower::authz::AuthzLayer;
use mesh_tower::body::{self, BoxBody};
use mesh_tower::server::ConnectionInfo;
use mesh_tower::telemetry::{Reporter, RequestBody, Telemetry, TelemetryLayer};
use std::sync::Arc;
use tower::{Layer, ServiceExt};

// The sidecar's allocator, for the bare service and the stack alike (as in `layers.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn values(v: &[&str]) -> ValueMatch {
    ValueMatch {
        values: v.iter().map(|s| (*s).to_owned()).collect(),
        not_values: Vec::new(),
    }
}

/// `n` policies (one DENY in ten), each one rule over the source namespace, method, path and
/// a header; only the last one matches the benchmark request.
fn policies(n: usize) -> Vec<AuthorizationPolicy> {
    (0..n)
        .map(|i| AuthorizationPolicy {
            name: format!("default/p{i}"),
            action: if i % 10 == 0 && i + 1 != n {
                AuthzAction::Deny
            } else {
                AuthzAction::Allow
            },
            rules: vec![AuthzRule {
                from: vec![SourceMatch {
                    namespaces: values(&[&format!("ns{i}")]),
                    ..SourceMatch::default()
                }],
                to: vec![OperationMatch {
                    methods: values(&["GET", "POST"]),
                    paths: values(&[&format!("/api/v{i}/*"), "/items/{*}/detail"]),
                    ..OperationMatch::default()
                }],
                when: vec![ConditionMatch {
                    key: "request.headers[x-tenant]".into(),
                    values: values(&[&format!("t{i}")]),
                }],
            }],
            dry_run: false,
        })
        .collect()
}

/// `n` policies (one DENY in ten) as a large mesh has them: each allows `GET`/`POST` on its own
/// exact path (`/api/v{i}/users`; the DENY ones `/admin/v{i}`) to the one client namespace of
/// the benchmark request; only the last one matches it.
fn exact_paths(n: usize) -> Vec<AuthorizationPolicy> {
    let client = format!("ns{}", n.saturating_sub(1));
    (0..n)
        .map(|i| {
            let deny = i % 10 == 0 && i + 1 != n;
            AuthorizationPolicy {
                name: format!("default/p{i}"),
                action: if deny {
                    AuthzAction::Deny
                } else {
                    AuthzAction::Allow
                },
                rules: vec![AuthzRule {
                    from: vec![SourceMatch {
                        namespaces: values(&[&client]),
                        ..SourceMatch::default()
                    }],
                    to: vec![OperationMatch {
                        methods: values(&["GET", "POST"]),
                        paths: values(&[&if deny {
                            format!("/admin/v{i}")
                        } else {
                            format!("/api/v{i}/users")
                        }]),
                        ..OperationMatch::default()
                    }],
                    when: Vec::new(),
                }],
                dry_run: false,
            }
        })
        .collect()
}

/// A request from namespace `ns{last}` that the last of `n` policies allows, carrying what the
/// mTLS listener adds (peer identity, connection info).
fn template(n: usize) -> Request<()> {
    let last = n.saturating_sub(1);
    let mut req = Request::builder()
        .uri(format!("/api/v{last}/users?page=2"))
        .header(http::header::HOST, "backend.default.svc.cluster.local:8080")
        .header("x-tenant", format!("t{last}"))
        .header("x-request-id", "bench-0123456789abcdef")
        .header(http::header::USER_AGENT, "mesh-bench")
        .body(())
        .expect("a valid request");
    let id = SpiffeId::parse(&format!("spiffe://cluster.local/ns/ns{last}/sa/web"))
        .expect("a SPIFFE ID");
    req.extensions_mut().insert(PeerIdentity::from(id));
    req.extensions_mut().insert(ConnectionInfo {
        peer: ([10, 0, 0, 7], 41_000).into(),
        local: ([10, 0, 0, 8], 8080).into(),
        redirected: false,
    });
    req
}

fn store(authorization: Vec<AuthorizationPolicy>) -> Arc<ConfigStore> {
    Arc::new(ConfigStore::new(MeshConfig {
        authorization,
        ..MeshConfig::default()
    }))
}

fn inbound(c: &mut Criterion) {
    let rt = runtime();
    // The service the inbound stack ends in (the sidecar's forward to the app): answers at once.
    let app = tower::service_fn(|_req: Request<RequestBody<BoxBody>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(body::empty()))
    });
    for n in [10, 1_000] {
        let template: &'static Request<()> = Box::leak(Box::new(template(n)));
        let make = move || template.clone().map(|()| body::empty());
        let authz = AuthzLayer::new(store(policies(n))).layer(Bare);
        let status = rt
            .block_on(authz.clone().oneshot(make()))
            .expect("an answer")
            .status();
        assert_eq!(status, 200, "the last of {n} policies allows the request");
        compare(
            c,
            &rt,
            "inbound",
            &format!("authz ({n} policies)"),
            authz,
            make,
        );

        let authz = AuthzLayer::new(store(exact_paths(n))).layer(Bare);
        let status = rt
            .block_on(authz.clone().oneshot(make()))
            .expect("an answer")
            .status();
        assert_eq!(
            status, 200,
            "the last of {n} exact paths allows the request"
        );
        compare(
            c,
            &rt,
            "inbound",
            &format!("authz ({n} exact paths)"),
            authz,
            make,
        );

        let telemetry = Telemetry::new(Reporter::Destination, MeshConfig::default().workload);
        let stack =
            TelemetryLayer::new(telemetry).layer(AuthzLayer::new(store(policies(n))).layer(app));
        compare(
            c,
            &rt,
            "inbound",
            &format!("inbound stack ({n} policies)"),
            stack,
            make,
        );
    }
}

fn main() {
    let mut c = mesh_benches::criterion();
    inbound(&mut c);
    c.final_summary();
    mesh_benches::print_table("inbound overhead over the bare service");
}
