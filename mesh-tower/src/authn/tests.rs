//! The JWT authentication layer in front of a real app on 127.0.0.1, configured from Istio
//! YAML through the loader.

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use mesh_core::istio;
use mesh_core::model::{Labels, MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use mesh_policy::testing::TestIssuer;
use serde_json::json;
use tower::ServiceExt;
use tower_layer::Layer;

use super::*;
use crate::authz::{Authz, AuthzLayer, DENIED_BODY};
use crate::testing;

const ISS: &str = "https://idp.example";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn workload() -> Workload {
    Workload {
        labels: Labels::from([("app".to_owned(), "web".to_owned())]),
        ..Workload::default()
    }
}

/// A RequestAuthentication for `issuer` with extra `rule` fields (a YAML flow mapping body).
fn request_authn(issuer: &TestIssuer, rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: jwt, namespace: default }}\nspec:\n  selector: {{ matchLabels: {{ app: web }} }}\n  jwtRules:\n  - {{ issuer: \"{}\", jwks: '{}' {rule} }}\n---\n",
        issuer.issuer,
        issuer.jwks(),
    )
}

fn config(yaml: &str) -> MeshConfig {
    let outcome = istio::load(&[("test.yaml", yaml)], &workload());
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    outcome.config.unwrap()
}

/// An app on 127.0.0.1 that answers with the path it got and its request headers, one
/// `name: value` a line.
async fn header_echo_app() -> std::net::SocketAddr {
    let app = testing::upstream(|req| {
        let mut seen = format!("{}\n", req.uri());
        for (name, value) in req.headers() {
            seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        std::future::ready(Response::new(body::full(seen)))
    });
    app.await.addr()
}

type Svc = Authz<crate::inbound::Inbound>;

async fn proxy(config: MeshConfig) -> (Svc, Arc<ConfigStore>) {
    let store = Arc::new(ConfigStore::new(config));
    let app = header_echo_app().await;
    let svc = AuthzLayer::new(store.clone()).layer(crate::inbound::Inbound::new(
        store.clone(),
        Some(app),
        crate::client::UpstreamClient::new(),
    ));
    (svc, store)
}

struct Answer {
    status: u16,
    body: String,
    www_authenticate: Option<String>,
}

async fn call(svc: &Svc, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(uri).header("host", "web.default:8080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = svc
        .clone()
        .oneshot(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www_authenticate = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        www_authenticate,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn no_token_passes_a_valid_one_is_consumed_an_invalid_one_is_401() {
    let issuer = TestIssuer::new(ISS, "RS256");
    let (svc, _) = proxy(config(&request_authn(&issuer, ""))).await;

    let plain = call(&svc, "/x", &[]).await;
    assert_eq!(plain.status, 200);
    assert!(!plain.body.contains("authorization:"), "{}", plain.body);

    let token = issuer.token(json!({"sub": "alice", "exp": now() + 600}));
    let ok = call(&svc, "/x", &[("authorization", &bearer(&token))]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        !ok.body.contains("authorization:"),
        "the token is not forwarded: {}",
        ok.body
    );

    let forged = TestIssuer::new(ISS, "ES256").token(json!({"sub": "alice"}));
    let bad = call(&svc, "/x?q=1", &[("authorization", &bearer(&forged))]).await;
    assert_eq!(bad.status, 401);
    // Envoy's answer: the status text and a Bearer challenge naming the request.
    assert_eq!(
        bad.body,
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    assert_eq!(
        bad.www_authenticate.as_deref(),
        Some("Bearer realm=\"http://web.default:8080/x?q=1\", error=\"invalid_token\"")
    );

    let same_key_other_payload = {
        let good = issuer.token(json!({"sub": "alice"}));
        let other = issuer.token(json!({"sub": "mallory"}));
        let g: Vec<&str> = good.split('.').collect();
        let o: Vec<&str> = other.split('.').collect();
        format!("{}.{}.{}", g[0], o[1], g[2])
    };
    let bad = call(
        &svc,
        "/x",
        &[("authorization", &bearer(&same_key_other_payload))],
    )
    .await;
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (401, "Jwt verification fails")
    );

    let unknown = TestIssuer::new("https://elsewhere", "RS256").token(json!({"sub": "a"}));
    let bad = call(&svc, "/x", &[("authorization", &bearer(&unknown))]).await;
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (401, "Jwt issuer is not configured")
    );

    let expired = issuer.token(json!({"sub": "a", "exp": now() - 120}));
    let bad = call(&svc, "/x", &[("authorization", &bearer(&expired))]).await;
    assert_eq!((bad.status, bad.body.as_str()), (401, "Jwt is expired"));

    let garbage = call(&svc, "/x", &[("authorization", "Bearer not-a-jwt")]).await;
    assert_eq!(garbage.status, 401);
    // Another scheme is not a token at the default location.
    let basic = call(&svc, "/x", &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(basic.status, 200);
    assert!(
        basic.body.contains("authorization: Basic"),
        "{}",
        basic.body
    );
}

#[tokio::test]
async fn forward_original_token_keeps_it_and_a_wrong_audience_is_403() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let (svc, _) = proxy(config(&request_authn(
        &issuer,
        ", forwardOriginalToken: true, audiences: [orders]",
    )))
    .await;
    let token = issuer.token(json!({"sub": "alice", "aud": "orders"}));
    let ok = call(&svc, "/", &[("authorization", &bearer(&token))]).await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.body.contains(&format!("authorization: Bearer {token}")),
        "{}",
        ok.body
    );
    let other = issuer.token(json!({"sub": "alice", "aud": "billing"}));
    let denied = call(&svc, "/", &[("authorization", &bearer(&other))]).await;
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (403, "Audiences in Jwt are not allowed")
    );
}

#[tokio::test]
async fn require_jwt_recipe_and_claims_in_authorization() {
    let issuer = TestIssuer::new(ISS, "EdDSA");
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: require-jwt, namespace: default }\nspec:\n  selector: { matchLabels: { app: web } }\n  rules:\n  - from: [{ source: { requestPrincipals: [\"*\"] } }]\n  - to: [{ operation: { paths: [/admin] } }]\n    when: [{ key: \"request.auth.claims[groups]\", values: [admins] }]\n";
    let (svc, _) = proxy(config(&(request_authn(&issuer, "") + policy))).await;
    let denied = call(&svc, "/", &[]).await;
    assert_eq!((denied.status, denied.body.as_str()), (403, DENIED_BODY));
    let token = issuer.token(json!({"sub": "alice", "groups": ["dev"]}));
    assert_eq!(
        call(&svc, "/", &[("authorization", &bearer(&token))])
            .await
            .status,
        200
    );

    // A policy on the claim alone: only a token with the group passes.
    let claims_only = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: admins, namespace: default }\nspec:\n  rules:\n  - when: [{ key: \"request.auth.claims[groups]\", values: [admins] }]\n";
    let (svc, _) = proxy(config(&(request_authn(&issuer, "") + claims_only))).await;
    let dev = issuer.token(json!({"sub": "alice", "groups": ["dev"]}));
    let admin = issuer.token(json!({"sub": "bob", "groups": ["dev", "admins"]}));
    assert_eq!(
        call(&svc, "/", &[("authorization", &bearer(&dev))])
            .await
            .status,
        403
    );
    assert_eq!(
        call(&svc, "/", &[("authorization", &bearer(&admin))])
            .await
            .status,
        200
    );
    assert_eq!(call(&svc, "/", &[]).await.status, 403);
}

#[tokio::test]
async fn outputs_are_set_from_the_token_and_never_from_the_client() {
    let issuer = TestIssuer::new(ISS, "PS256");
    let (svc, _) = proxy(config(&request_authn(
        &issuer,
        ", outputPayloadToHeader: x-jwt-payload, outputClaimToHeaders: [{ header: x-user, claim: sub }, { header: x-level, claim: level }, { header: x-admin, claim: admin }]",
    )))
    .await;
    let token = issuer.token(json!({"sub": "alice", "level": 3, "admin": false}));
    let payload = token.split('.').nth(1).unwrap().to_owned();
    let ok = call(
        &svc,
        "/",
        &[("authorization", &bearer(&token)), ("x-user", "root")],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.body.contains(&format!("x-jwt-payload: {payload}\n")),
        "{}",
        ok.body
    );
    assert!(ok.body.contains("x-user: alice\n"), "{}", ok.body);
    assert!(!ok.body.contains("x-user: root"), "{}", ok.body);
    assert!(ok.body.contains("x-level: 3\n"), "{}", ok.body);
    assert!(ok.body.contains("x-admin: false\n"), "{}", ok.body);
    // Without a token, a client's own output headers are removed.
    let spoofed = call(&svc, "/", &[("x-user", "root"), ("x-jwt-payload", "e30")]).await;
    assert_eq!(spoofed.status, 200);
    assert!(!spoofed.body.contains("x-user"), "{}", spoofed.body);
    assert!(!spoofed.body.contains("x-jwt-payload"), "{}", spoofed.body);
}

#[tokio::test]
async fn tokens_are_read_from_the_query_custom_headers_and_cookies() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let token = issuer.token(json!({"sub": "alice"}));
    let forged = TestIssuer::new(ISS, "ES256").token(json!({"sub": "alice"}));
    // Default locations include `access_token`; Envoy leaves a query token in place.
    let (svc, _) = proxy(config(&request_authn(&issuer, ""))).await;
    let ok = call(&svc, &format!("/q?access_token={token}"), &[]).await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.body.starts_with(&format!("/q?access_token={token}\n")),
        "{}",
        ok.body
    );
    assert_eq!(
        call(&svc, &format!("/q?access_token={forged}"), &[])
            .await
            .status,
        401
    );

    let (svc, _) = proxy(config(&request_authn(
        &issuer,
        ", fromHeaders: [{ name: x-token, prefix: \"JWT \" }], fromCookies: [session]",
    )))
    .await;
    let header = format!("JWT {token}");
    let ok = call(&svc, "/", &[("x-token", &header)]).await;
    assert_eq!(ok.status, 200);
    assert!(!ok.body.contains("x-token"), "{}", ok.body);
    // Only the rule's locations count: the default Authorization header is not one.
    let ignored = call(&svc, "/", &[("authorization", &bearer(&forged))]).await;
    assert_eq!(ignored.status, 200);
    let cookie = format!("theme=dark; session={forged}");
    assert_eq!(call(&svc, "/", &[("cookie", &cookie)]).await.status, 401);
    let cookie = format!("theme=dark; session={token}");
    assert_eq!(call(&svc, "/", &[("cookie", &cookie)]).await.status, 200);
}

#[tokio::test]
async fn cors_preflight_is_not_authenticated() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let (svc, _) = proxy(config(&request_authn(&issuer, ""))).await;
    let req = Request::options("/")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("authorization", "Bearer garbage")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
}

/// A JWKS server on 127.0.0.1 whose answer can be switched to 500; each request served is
/// signalled on the returned channel.
async fn jwks_server(
    jwks: String,
) -> (
    String,
    Arc<std::sync::atomic::AtomicBool>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let fail = failing.clone();
    let server = testing::upstream(move |_req| {
        let mut resp = Response::new(body::full(jwks.clone()));
        if fail.load(std::sync::atomic::Ordering::SeqCst) {
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        }
        let tx = tx.clone();
        async move {
            let _ = tx.send(());
            resp
        }
    });
    let addr = server.await.addr();
    (format!("http://{addr}/jwks.json"), failing, rx)
}

#[tokio::test]
async fn jwks_uri_keys_are_fetched_refreshed_and_kept_on_failure() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let (uri, failing, mut served) = jwks_server(issuer.jwks()).await;
    let remote = RemoteJwks::default().refresh_interval(std::time::Duration::from_millis(20));
    // Before any fetch: the slot is empty and tokens of the issuer fail as Envoy's would.
    let slot = remote.keys(&uri, None);
    assert!(slot.is_first_fetch_pending());
    let token = issuer.token(json!({"sub": "alice"}));
    let jwt = Jwt::parse(&token).unwrap();
    assert_eq!(
        jwt.clone()
            .verify(&[], slot.get().as_deref(), now())
            .unwrap_err(),
        JwtError::KidAlgMismatch
    );
    slot.first_fetch().await;
    served.recv().await.unwrap();
    assert!(!slot.is_first_fetch_pending());
    assert!(
        jwt.clone()
            .verify(&[], slot.get().as_deref(), now())
            .is_ok()
    );
    // The server fails from now on: refreshes fail and the last good keys stay.
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    served.recv().await.unwrap();
    served.recv().await.unwrap();
    assert!(jwt.verify(&[], slot.get().as_deref(), now()).is_ok());
    // The same URI shares one slot (and one task).
    assert!(slot.same(&remote.keys(&uri, None)));
}

/// A JWKS server on 127.0.0.1 that answers only once `open` holds `true` (never, if it never
/// does); each fetch is signalled on the returned channel when it arrives.
async fn gated_jwks_server(
    jwks: String,
) -> (
    String,
    tokio::sync::watch::Sender<bool>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let (open, gate) = tokio::sync::watch::channel(false);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = testing::upstream(move |_req| {
        let (jwks, mut gate) = (jwks.clone(), gate.clone());
        let _ = tx.send(());
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Response::new(body::full(jwks))
        }
    });
    let addr = server.await.addr();
    (format!("http://{addr}/jwks.json"), open, rx)
}

/// A RequestAuthentication whose rules take their keys from `jwksUri`s: `(issuer, uri)`.
fn jwks_uri_rules(rules: &[(&str, &str)]) -> MeshConfig {
    let rules: Vec<String> = rules
        .iter()
        .map(|(issuer, uri)| format!("{{ issuer: \"{issuer}\", jwksUri: \"{uri}\" }}"))
        .collect();
    config(&format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: jwt }}\nspec:\n  jwtRules: [{}]\n",
        rules.join(", ")
    ))
}

/// The proxy in front of the header echo app, fetching `jwksUri` keys with `remote`.
async fn proxy_with(store: &Arc<ConfigStore>, remote: &RemoteJwks) -> Svc {
    let app = header_echo_app().await;
    AuthzLayer::new(store.clone())
        .remote_jwks(remote.clone())
        .layer(crate::inbound::Inbound::new(
            store.clone(),
            Some(app),
            crate::client::UpstreamClient::new(),
        ))
}

/// The next fetch `served` signals, failing the test when none comes within 5 s.
async fn next_fetch(served: &mut tokio::sync::mpsc::UnboundedReceiver<()>, what: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(5), served.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no JWKS fetch"))
        .unwrap();
}

#[tokio::test]
async fn a_valid_token_in_the_first_request_waits_for_the_first_jwks_fetch() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let (uri, open, mut served) = gated_jwks_server(issuer.jwks()).await;
    let store = Arc::new(ConfigStore::new(jwks_uri_rules(&[(ISS, &uri)])));
    let svc = proxy_with(&store, &RemoteJwks::default()).await;
    let token = issuer.token(json!({"sub": "alice"}));
    let first =
        tokio::spawn(async move { call(&svc, "/", &[("authorization", &bearer(&token))]).await });
    // The fetch reached the JWKS server, which holds its answer: the request waits for it.
    next_fetch(&mut served, "start-up").await;
    tokio::task::yield_now().await;
    assert!(!first.is_finished(), "the request waits for the keys");
    open.send_replace(true);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.lines().next()), (200, Some("/")));
    assert!(!first.body.contains("authorization:"), "{}", first.body);
    assert!(served.try_recv().is_err(), "one fetch only");
}

#[tokio::test(start_paused = true)]
async fn a_jwks_server_that_never_answers_holds_requests_for_the_fetch_timeout_only() {
    let inline = TestIssuer::new("https://inline.example", "EdDSA");
    let remote = TestIssuer::new(ISS, "ES256");
    let (uri, _never, _served) = gated_jwks_server(remote.jwks()).await;
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: jwt }}\nspec:\n  jwtRules:\n  - {{ issuer: \"{}\", jwks: '{}' }}\n  - {{ issuer: \"{ISS}\", jwksUri: \"{uri}\" }}\n",
        inline.issuer,
        inline.jwks(),
    );
    let store = Arc::new(ConfigStore::new(config(&yaml)));
    // An app in memory: with paused time, no I/O but the fetch's.
    let app = tower::service_fn(|_req: Request<http_body_util::Empty<bytes::Bytes>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(body::full("app")))
    });
    let svc = AuthzLayer::new(store).layer(app);
    let call = |token: Option<String>| {
        let svc = svc.clone();
        async move {
            let mut req = Request::get("/x").header("host", "web");
            if let Some(token) = token {
                req = req.header("authorization", bearer(&token));
            }
            let start = tokio::time::Instant::now();
            let resp = svc
                .oneshot(req.body(http_body_util::Empty::new()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                String::from_utf8(body.to_vec()).unwrap(),
                start.elapsed(),
            )
        }
    };
    let zero = std::time::Duration::ZERO;
    // Neither a request without a token nor one whose token needs no fetched key waits.
    assert_eq!(call(None).await, (200, "app".into(), zero));
    let token = inline.token(json!({"sub": "alice"}));
    assert_eq!(call(Some(token)).await, (200, "app".into(), zero));
    // A token of the jwksUri issuer waits for the fetch, which times out after 5 s: refused
    // as against istiod's placeholder key.
    let token = remote.token(json!({"sub": "alice"}));
    let (status, body, waited) = call(Some(token.clone())).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "Jwks doesn't have key to match kid or alg from Jwt")
    );
    assert!(
        (std::time::Duration::from_secs(5)..std::time::Duration::from_secs(6)).contains(&waited),
        "{waited:?}"
    );
    // The first fetch is over: its retries never hold a request.
    let (status, _, waited) = call(Some(token)).await;
    assert_eq!((status, waited), (401, zero));
}

#[tokio::test]
async fn jwks_uri_keys_are_fetched_when_the_config_is_installed_and_kept_across_reloads() {
    let first = TestIssuer::new(ISS, "ES256");
    let second = TestIssuer::new("https://second.example", "RS256");
    let (uri1, _, mut served1) = jwks_server(first.jwks()).await;
    let (uri2, _, mut served2) = jwks_server(second.jwks()).await;
    let store = Arc::new(ConfigStore::new(jwks_uri_rules(&[(ISS, &uri1)])));
    let remote = RemoteJwks::default();
    // Start-up: the keys are fetched before any request.
    let svc = proxy_with(&store, &remote).await;
    next_fetch(&mut served1, "start-up").await;
    // A reload that adds a jwksUri fetches it at once, and not the one already known.
    store.publish(jwks_uri_rules(&[(ISS, &uri1), (&second.issuer, &uri2)]));
    next_fetch(&mut served2, "reload").await;
    for issuer in [&first, &second] {
        let token = issuer.token(json!({"sub": "alice"}));
        let answer = call(&svc, "/", &[("authorization", &bearer(&token))]).await;
        assert_eq!(answer.status, 200, "{}: {}", issuer.issuer, answer.body);
    }
    assert!(served1.try_recv().is_err(), "one fetch of the first URI");
    assert!(served2.try_recv().is_err(), "one fetch of the second URI");
}

/// `https://`: the server's certificate is checked against the given roots.
#[tokio::test]
async fn jwks_uri_keys_are_fetched_over_https_from_a_trusted_server_only() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let issuer = TestIssuer::new(ISS, "EdDSA");
    let ca = mesh_policy::testing::TestCa::new("jwks-ca");
    let leaf = ca.issue_with(&mesh_policy::testing::LeafSpec {
        dns: &["localhost"],
        ..Default::default()
    });
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let jwks = issuer.jwks();
    let server = testing::serve_tcp(testing::listener().await, move |stream| {
        let (acceptor, jwks) = (acceptor.clone(), jwks.clone());
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = body::full(jwks.clone());
                async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        }
    });
    let uri = format!("https://localhost:{}/keys", server.port());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let trusted = RemoteJwks::default().with_roots(Arc::new(roots));
    let slot = trusted.keys(&uri, None);
    let token = issuer.token(json!({"sub": "alice"}));
    slot.first_fetch().await;
    assert!(
        Jwt::parse(&token)
            .unwrap()
            .verify(&[], slot.get().as_deref(), now())
            .is_ok()
    );
    // Other roots: the fetch fails at the handshake and the keys stay unknown.
    let other = mesh_policy::testing::TestCa::new("other-ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(other.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let untrusting = RemoteJwks::default().with_roots(Arc::new(roots));
    let result = super::remote::fetch_once(&untrusting, &uri).await;
    assert!(
        result
            .as_ref()
            .is_err_and(|e| e.contains("invalid peer certificate")),
        "{result:?}"
    );
}
