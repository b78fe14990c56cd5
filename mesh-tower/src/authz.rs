//! Authorization: Istio's AuthorizationPolicy, enforced in front of the local application.
//!
//! [`Authz`] evaluates every request with [`mesh_policy::authz::Engine`] over the policies of
//! the current config snapshot (compiled once per snapshot version, not per request). The
//! request's attributes come from its extensions: the verified [`PeerIdentity`] and
//! [`TlsInfo`] that the inbound acceptor ([`crate::tls`]) puts there, and the
//! [`ConnectionInfo`] the server puts there.
//!
//! A denial comes back as a **response**, not an error: `403` with body
//! `RBAC: access denied`, as Envoy's RBAC filter answers. The [`Verdict`] travels in the
//! request's extensions (for the app behind, when allowed) and in the response's extensions
//! (when denied), so an embedding service or a test can read which policy decided. When no
//! policy applies to the workload the request passes without a verdict (its path normalized,
//! see below). AUDIT matches and dry-run outcomes are logged and counted; they never change
//! the answer.
//!
//! Before anything is decided the request's path is normalized as the snapshot's
//! [`PathNormalization`] says ([`MeshConfig::path_normalization`]: Istio's
//! `meshConfig.pathNormalization`, or the inbound listener's connection manager from xDS;
//! [`normalize_path_with`]). The default, `BASE`, resolves dot segments, backslashes and
//! percent-encoded unreserved characters; `MERGE_SLASHES` also merges runs of slashes;
//! `DECODE_AND_MERGE_SLASHES` also decodes `%2F` and `%5C` first; `NONE` leaves the path alone.
//! The request goes on with the normalized path (its query unchanged): policies and the app
//! see the same path, so `/public/../admin` cannot pass a DENY on `/admin*` and then reach
//! `/admin`. A path that cannot be normalized (`%00`) is answered 400, as Envoy does. This
//! happens whether or not policies apply.
//!
//! [`MeshConfig::path_normalization`]: mesh_core::model::MeshConfig::path_normalization
//!
//! Before authorization, the request is authenticated when a RequestAuthentication applies
//! ([`crate::authn`]): a token that fails is answered `401` (Envoy's `jwt_authn` filter runs
//! before its `rbac` filter), a verified token's [`Claims`] go into the request's extensions
//! and decide `requestPrincipals` and `request.auth.*`. Without a RequestAuthentication this
//! costs one branch.
//!
//! Snapshots are compiled when they are installed, not at their first request: the first time
//! the layer wraps a service inside a tokio runtime (or [`AuthzLayer::compile_ahead`] is
//! called) it compiles the live snapshot and starts a task that compiles each one the store
//! publishes after it ([`ConfigStore::changed`]; the task ends with the layer and its
//! services). So the `jwksUri` keys a RequestAuthentication names are being fetched before
//! traffic arrives, and a reload that keeps a URI keeps its keys without fetching them again.
//! A request that arrives before its snapshot was compiled compiles it itself. A snapshot
//! whose AuthorizationPolicies (or RequestAuthentications) equal the last one's, as after most
//! xDS pushes (endpoints), keeps their compiled forms instead of compiling them again.
//!
//! A request whose token needs keys whose first fetch is still under way waits for that fetch
//! (at most the rule's `timeout`, 5 s when unset; see [`Authenticator::pending_keys`]) before
//! it is authenticated and authorized, as Envoy's `jwt_authn` pauses it; the inner service,
//! taken as it was made ready, is called after the wait, so this layer needs `S: Clone`.
//! Such a request, and a refused one, gets a boxed response future; an allowed one gets the
//! inner service's own.
//!
//! If the snapshot's policies cannot be compiled (a policy this engine does not support that
//! a source other than the Istio loader let through), every request is denied: failing open
//! would silently drop a check the operator asked for.

use crate::authn::{Authenticator, InvalidRule, RemoteJwks, unauthenticated_response};
use crate::body::{self, BoxBody, BoxError};
use crate::error::{self, ProxyError};
use crate::future::{self, ResponseFuture};
use crate::server::ConnectionInfo;
use crate::tls::TlsInfo;
use arc_swap::ArcSwapOption;
use http::header::{CONTENT_TYPE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use mesh_core::store::{ConfigStore, Snapshot};
use mesh_policy::PeerIdentity;
use mesh_policy::authz::{
    Attributes, Decision, Engine, InvalidPolicy, PathNormalization, Verdict, normalize_path_with,
};
use mesh_policy::jwt::Claims;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The body of a denied request, as Envoy's RBAC filter sends it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Counters of decisions, shared by every clone of a layer (for the admin endpoint).
#[derive(Debug, Default)]
pub struct AuthzStats {
    /// Requests allowed.
    pub allowed: AtomicU64,
    /// Requests denied.
    pub denied: AtomicU64,
    /// Requests an AUDIT policy matched.
    pub audited: AtomicU64,
    /// Requests dry-run policies would have denied.
    pub shadow_denied: AtomicU64,
    /// Requests refused by JWT authentication (401/403 before authorization).
    pub unauthenticated: AtomicU64,
}

impl AuthzStats {
    /// The counters in Prometheus text format, for the admin endpoint.
    pub fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP mesh_authz_requests_total Inbound requests by authorization decision.\n\
             # TYPE mesh_authz_requests_total counter\n",
        );
        for (decision, counter) in [
            ("allow", &self.allowed),
            ("deny", &self.denied),
            ("audit", &self.audited),
            ("dry_run_deny", &self.shadow_denied),
        ] {
            out.push_str(&format!(
                "mesh_authz_requests_total{{decision=\"{decision}\"}} {}\n",
                counter.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP mesh_jwt_authn_denied_total Inbound requests refused by JWT authentication.\n\
             # TYPE mesh_jwt_authn_denied_total counter\n\
             mesh_jwt_authn_denied_total {}\n",
            self.unauthenticated.load(Ordering::Relaxed)
        ));
        out
    }
}

/// The engine of one snapshot version, and its path normalization.
#[derive(Debug)]
struct Compiled {
    version: u64,
    /// The snapshot compiled (the live one, shared with the store until the next publish),
    /// to tell whether the next one changes what is compiled.
    snapshot: Arc<Snapshot>,
    engine: Arc<Result<Engine, InvalidPolicy>>,
    /// The RequestAuthentication; `Ok(None)` when none applies.
    authn: Arc<Result<Option<Authenticator>, InvalidRule>>,
    path_normalization: PathNormalization,
}

/// Shared state: the store, the engine cache and the counters.
#[derive(Debug)]
struct Shared {
    store: Arc<ConfigStore>,
    compiled: ArcSwapOption<Compiled>,
    stats: Arc<AuthzStats>,
    remote_jwks: RemoteJwks,
    /// Seconds since the Unix epoch, for tokens' `exp` and `nbf`.
    clock: fn() -> u64,
    /// Whether the task compiling each published snapshot was started.
    compiling_ahead: AtomicBool,
    /// Dropped with this: ends that task.
    alive: tokio::sync::watch::Sender<()>,
}

/// The system clock, in seconds since the Unix epoch (JWT times are wall-clock times).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shared {
    fn engine(&self) -> Arc<Compiled> {
        let snapshot = self.store.load();
        if let Some(c) = self.compiled.load_full()
            && c.version == snapshot.version
        {
            return c;
        }
        // A publish that leaves the policies as they were (most xDS pushes: endpoints) keeps
        // their compiled forms.
        let previous = self.compiled.load_full();
        let previous = previous.as_deref();
        let engine = match previous {
            Some(p) if p.snapshot.authorization == snapshot.authorization => p.engine.clone(),
            _ => {
                let engine = Engine::new(&snapshot.authorization);
                if let Err(e) = &engine {
                    tracing::error!(error = %e, "authorization policies cannot be enforced; denying all requests");
                }
                Arc::new(engine)
            }
        };
        let authn = match previous {
            Some(p) if p.snapshot.request_authentication == snapshot.request_authentication => {
                p.authn.clone()
            }
            _ => {
                let authn = Authenticator::new(&snapshot.request_authentication, &self.remote_jwks);
                if let Err(e) = &authn {
                    tracing::error!(error = %e, "request authentication cannot be enforced; denying all requests");
                }
                Arc::new(authn)
            }
        };
        let compiled = Arc::new(Compiled {
            version: snapshot.version,
            path_normalization: snapshot.path_normalization,
            snapshot,
            engine,
            authn,
        });
        self.compiled.store(Some(compiled.clone()));
        compiled
    }

    /// Compiles the live snapshot now and, in a task, each snapshot published after it, so
    /// that what a snapshot needs fetched (`jwksUri` keys) is fetched when it is installed.
    /// Once per layer; outside a tokio runtime, nothing (snapshots then compile at their
    /// first request).
    fn compile_ahead(self: &Arc<Self>) {
        if self.compiling_ahead.load(Ordering::Acquire)
            || self.compiling_ahead.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.compiling_ahead.store(false, Ordering::Release);
            return;
        };
        let seen = self.engine().version;
        runtime.spawn(compile_each(
            Arc::downgrade(self),
            self.store.clone(),
            self.alive.subscribe(),
            seen,
        ));
    }
}

/// Compiles each snapshot `store` publishes after version `seen`, until the layer is gone.
async fn compile_each(
    shared: Weak<Shared>,
    store: Arc<ConfigStore>,
    mut alive: tokio::sync::watch::Receiver<()>,
    mut seen: u64,
) {
    loop {
        tokio::select! {
            _ = store.changed(seen) => {}
            // Nothing is ever sent: this is the layer's `Shared` being dropped.
            _ = alive.changed() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        seen = shared.engine().version;
    }
}

/// Applies [`Authz`] to a service.
#[derive(Clone, Debug)]
pub struct AuthzLayer {
    shared: Arc<Shared>,
}

impl AuthzLayer {
    /// Authorization by the policies in `store`'s current snapshot.
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                compiled: ArcSwapOption::empty(),
                stats: Arc::default(),
                remote_jwks: RemoteJwks::default(),
                clock: unix_now,
                compiling_ahead: AtomicBool::new(false),
                alive: tokio::sync::watch::Sender::new(()),
            }),
        }
    }

    /// Fetches `jwksUri` keys with `remote` (its CA roots and refresh interval) instead of a
    /// default [`RemoteJwks`]. Call it on a new layer, before it is cloned.
    pub fn remote_jwks(mut self, remote: RemoteJwks) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.remote_jwks = remote;
        }
        self
    }

    /// Reads tokens' times against `clock` (seconds since the Unix epoch) instead of the
    /// system clock: for tests. Call it on a new layer, before it is cloned.
    pub fn clock(mut self, clock: fn() -> u64) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.clock = clock;
        }
        self
    }

    /// Compiles the store's live snapshot now, and each one published after it as it is
    /// published, so that the `jwksUri` keys a snapshot names are fetched when it is installed.
    /// [`Layer::layer`] does it the first time it runs in a tokio runtime; call it to start
    /// before any service is made. Outside a tokio runtime it does nothing.
    pub fn compile_ahead(&self) {
        self.shared.compile_ahead();
    }

    /// The decision counters.
    pub fn stats(&self) -> Arc<AuthzStats> {
        self.shared.stats.clone()
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    /// Also, the first time inside a tokio runtime, compiles the live snapshot and starts
    /// compiling each published one ([`AuthzLayer::compile_ahead`]).
    fn layer(&self, inner: S) -> Authz<S> {
        self.shared.compile_ahead();
        Authz {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Decides each request before `S` sees it; see the module docs.
#[derive(Clone, Debug)]
pub struct Authz<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The attributes of `req` (its extensions and headers); `jwt`: whether the snapshot
/// authenticates requests (else no verified claims are looked for).
fn attributes<'a, B>(req: &'a Request<B>, jwt: bool) -> Attributes<'a> {
    let ext = req.extensions();
    let conn = ext.get::<ConnectionInfo>();
    let tls = ext.get::<TlsInfo>();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str));
    Attributes {
        peer: ext.get::<PeerIdentity>(),
        source_ip: conn.map(|c| c.peer.ip()),
        remote_ip: None,
        destination_ip: conn.map(|c| c.local.ip()),
        destination_port: tls
            .and_then(|t| t.workload_port)
            .or(conn.map(|c| c.local.port())),
        sni: tls.and_then(|t| t.sni.as_deref()),
        host,
        method: req.method().as_str(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        headers: Some(req.headers()),
        request_auth: if jwt { ext.get::<Claims>() } else { None },
    }
}

/// Evaluates `req` against `compiled`; an uncompilable snapshot denies.
fn evaluate<B>(compiled: &Compiled, req: &Request<B>) -> Option<Verdict> {
    (*compiled.engine).as_ref().ok().map(|e| {
        let jwt = matches!(*compiled.authn, Ok(Some(_)));
        e.evaluate(&attributes(req, jwt))
    })
}

/// Normalizes `req`'s path in place as `mode` says ([`normalize_path_with`]), keeping its
/// query. A path that is already normal (the common case) costs one scan of its bytes and no
/// allocation.
fn normalize<B>(req: &mut Request<B>, mode: PathNormalization) -> Result<(), BoxError> {
    let path = req.uri().path();
    // `*` (OPTIONS) and authority-form targets (CONNECT) have no path to normalize.
    if !path.starts_with('/') {
        return Ok(());
    }
    let bad =
        |e: &dyn std::fmt::Display| -> BoxError { ProxyError::BadRequest(e.to_string()).into() };
    let mut normalized = match normalize_path_with(path, mode) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(bad(&e)),
    };
    if let Some(query) = req.uri().query() {
        normalized.push('?');
        normalized.push_str(query);
    }
    // Cannot fail: the output is ASCII the URI grammar allows, and the rest comes from a URI.
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(normalized).map_err(|e| bad(&e))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| bad(&e))?;
    Ok(())
}

/// The 403 response Envoy's RBAC filter sends.
pub fn denied_response() -> Response<BoxBody> {
    let mut response = Response::new(body::full(DENIED_BODY));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

impl Shared {
    /// Authenticates and authorizes `req` (in place: claims, verdict, the token header): the
    /// response that refuses it, `None` when it goes on.
    fn decide<B>(&self, compiled: &Compiled, req: &mut Request<B>) -> Option<Response<BoxBody>> {
        match &*compiled.authn {
            Ok(None) => {}
            Ok(Some(authn)) => match authn.authenticate(req, (self.clock)()) {
                Ok(Some(claims)) => {
                    req.extensions_mut().insert(claims);
                }
                Ok(None) => {}
                Err(e) => {
                    self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, path = %req.uri().path(), "JWT authentication failed");
                    let tls = req.extensions().get::<TlsInfo>().is_some();
                    return Some(unauthenticated_response(&e, req, tls));
                }
            },
            Err(_) => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                return Some(denied_response());
            }
        }
        if (*compiled.engine).as_ref().is_ok_and(Engine::is_empty) {
            // No policy applies: allowed, and nothing to record (no verdict is inserted).
            self.stats.allowed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let verdict = evaluate(compiled, req);
        let stats = &self.stats;
        let allowed = verdict.as_ref().is_some_and(Verdict::is_allowed);
        if let Some(v) = &verdict {
            if let Some(audit) = &v.audit {
                stats.audited.fetch_add(1, Ordering::Relaxed);
                tracing::info!(policy = %audit, verdict = %v, path = %req.uri().path(), "authorization audit");
            }
            if let Some(shadow) = &v.shadow {
                if shadow.decision == Decision::Deny {
                    stats.shadow_denied.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(
                    shadow = %shadow.reason,
                    enforced = %v.reason,
                    path = %req.uri().path(),
                    "authorization dry-run"
                );
            }
        }
        if allowed {
            stats.allowed.fetch_add(1, Ordering::Relaxed);
            if let Some(v) = verdict {
                req.extensions_mut().insert(v);
            }
            None
        } else {
            stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                verdict = %verdict.as_ref().map_or_else(|| "policies cannot be enforced".to_owned(), ToString::to_string),
                path = %req.uri().path(),
                "request denied"
            );
            let mut response = denied_response();
            if let Some(v) = verdict {
                response.extensions_mut().insert(v);
            }
            Some(response)
        }
    }
}

impl<S, B> Service<Request<B>> for Authz<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    /// The inner service's own future when the request is allowed at once; boxed when it is
    /// refused or waits for JWT keys.
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let compiled = self.shared.engine();
        if let Err(e) = normalize(&mut req, compiled.path_normalization) {
            tracing::debug!(error = %e, "request path cannot be normalized");
            return future::acted(std::future::ready(Ok(error::to_response(&e))));
        }
        if let Ok(Some(authn)) = &*compiled.authn
            && let Some(keys) = authn.pending_keys(&req)
        {
            // The token's keys are being fetched for the first time: wait for them, with the
            // inner service taken as it was made ready.
            tracing::debug!(path = %req.uri().path(), "waiting for the first JWKS fetch");
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let shared = self.shared.clone();
            return future::acted(async move {
                keys.await;
                match shared.decide(&compiled, &mut req) {
                    None => inner.call(req).await,
                    Some(refused) => Ok(refused),
                }
            });
        }
        match self.shared.decide(&compiled, &mut req) {
            None => future::passed(self.inner.call(req)),
            Some(refused) => future::acted(std::future::ready(Ok(refused))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use mesh_core::model::{
        AuthorizationPolicy, AuthzAction, AuthzRule, MeshConfig, OperationMatch, SourceMatch,
        ValueMatch,
    };
    use mesh_policy::SpiffeId;
    use mesh_policy::authz::Reason;
    use tower::ServiceExt;

    fn frontend_only(action: AuthzAction) -> MeshConfig {
        MeshConfig {
            authorization: vec![AuthorizationPolicy {
                name: "backend/frontend-only".into(),
                action,
                rules: vec![AuthzRule {
                    from: vec![SourceMatch {
                        namespaces: ValueMatch {
                            values: vec!["frontend".into()],
                            not_values: vec![],
                        },
                        ..SourceMatch::default()
                    }],
                    ..AuthzRule::default()
                }],
                dry_run: false,
            }],
            ..MeshConfig::default()
        }
    }

    /// An app that answers with the verdict it saw.
    fn app() -> impl Service<
        Request<()>,
        Response = Response<BoxBody>,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|req: Request<()>| async move {
            let seen = req
                .extensions()
                .get::<Verdict>()
                .map_or_else(|| "none".to_owned(), ToString::to_string);
            Ok(Response::new(body::full(seen)))
        })
    }

    fn request(ns: Option<&str>) -> Request<()> {
        let mut req = Request::get("/x").body(()).unwrap();
        if let Some(ns) = ns {
            let id = SpiffeId::from_parts("cluster.local", ns, "web").unwrap();
            req.extensions_mut().insert(PeerIdentity::from(id));
        }
        req
    }

    async fn text(r: Response<BoxBody>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_publish_that_keeps_the_policies_keeps_their_compiled_forms() {
        let store = Arc::new(ConfigStore::new(frontend_only(AuthzAction::Allow)));
        let layer = AuthzLayer::new(store.clone());
        let first = layer.shared.engine();
        // Another snapshot with the same policies (as an xDS endpoint push makes).
        let mut endpoints_only = frontend_only(AuthzAction::Allow);
        endpoints_only.workload_services = vec!["web.default.svc.cluster.local".into()];
        store.publish(endpoints_only);
        let second = layer.shared.engine();
        assert_ne!(first.version, second.version);
        assert!(
            Arc::ptr_eq(&first.engine, &second.engine),
            "engine recompiled"
        );
        assert!(Arc::ptr_eq(&first.authn, &second.authn), "authn recompiled");
        // Other policies: compiled anew.
        store.publish(frontend_only(AuthzAction::Deny));
        let third = layer.shared.engine();
        assert!(!Arc::ptr_eq(&second.engine, &third.engine));
        assert!(Arc::ptr_eq(&second.authn, &third.authn));
    }

    #[tokio::test]
    async fn allowed_requests_carry_the_verdict_and_denied_ones_get_403() {
        let store = Arc::new(ConfigStore::new(frontend_only(AuthzAction::Allow)));
        let layer = AuthzLayer::new(store.clone());
        let svc = layer.layer(app());

        let ok = svc
            .clone()
            .oneshot(request(Some("frontend")))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(text(ok).await, "allowed by backend/frontend-only rules[0]");

        let denied = svc.clone().oneshot(request(Some("other"))).await.unwrap();
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            denied
                .extensions()
                .get::<Verdict>()
                .map(|v| v.reason.clone()),
            Some(Reason::NoAllowMatched)
        );
        assert_eq!(text(denied).await, DENIED_BODY);
        let plaintext = svc.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(plaintext.status(), StatusCode::FORBIDDEN);

        // A new snapshot is compiled once and applies at the next request.
        store.publish(frontend_only(AuthzAction::Deny));
        let now_denied = svc
            .clone()
            .oneshot(request(Some("frontend")))
            .await
            .unwrap();
        assert_eq!(now_denied.status(), StatusCode::FORBIDDEN);
        let now_ok = svc.clone().oneshot(request(Some("other"))).await.unwrap();
        assert_eq!(text(now_ok).await, "allowed: no ALLOW policy applies");
        // No policies at all: passed through without a verdict.
        store.publish(MeshConfig::default());
        let untouched = svc.oneshot(request(None)).await.unwrap();
        assert_eq!(text(untouched).await, "none");
        let stats = layer.stats();
        assert_eq!(stats.allowed.load(Ordering::Relaxed), 3);
        assert_eq!(stats.denied.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn policies_that_cannot_be_enforced_deny_everything() {
        let store = Arc::new(ConfigStore::new(frontend_only(AuthzAction::Custom(
            "opa".into(),
        ))));
        let svc = AuthzLayer::new(store).layer(app());
        let r = svc.oneshot(request(Some("frontend"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.extensions().get::<Verdict>().is_none());
    }

    /// An app on 127.0.0.1 that answers with the path and query it received.
    async fn echo_app() -> std::net::SocketAddr {
        let app = crate::testing::upstream(|req| {
            let seen = req.uri().path_and_query().map_or("", |p| p.as_str());
            std::future::ready(Response::new(body::full(seen.to_owned())))
        });
        app.await.addr()
    }

    fn deny_admin() -> MeshConfig {
        MeshConfig {
            authorization: vec![AuthorizationPolicy {
                name: "default/deny-admin".into(),
                action: AuthzAction::Deny,
                rules: vec![AuthzRule {
                    to: vec![OperationMatch {
                        paths: ValueMatch {
                            values: vec!["/admin*".into()],
                            not_values: vec![],
                        },
                        ..OperationMatch::default()
                    }],
                    ..AuthzRule::default()
                }],
                dry_run: false,
            }],
            ..MeshConfig::default()
        }
    }

    /// Authorization by `store`'s policies in front of an app that answers the path it got.
    async fn in_front_of_echo_app(store: &Arc<ConfigStore>) -> Authz<crate::inbound::Inbound> {
        let app = echo_app().await;
        AuthzLayer::new(store.clone()).layer(crate::inbound::Inbound::new(
            store.clone(),
            Some(app),
            crate::client::UpstreamClient::new(),
        ))
    }

    /// GETs `uri` through `svc`: the status and the body.
    async fn get(svc: &Authz<crate::inbound::Inbound>, uri: &str) -> (u16, String) {
        let req = Request::get(uri)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        (resp.status().as_u16(), text(resp).await)
    }

    #[tokio::test]
    async fn paths_are_normalized_before_authorization_and_for_the_app() {
        let store = Arc::new(ConfigStore::new(deny_admin()));
        let svc = in_front_of_echo_app(&store).await;
        let call = |uri: &'static str| get(&svc, uri);
        // The DENY on `/admin*` holds however the path spells `/admin`.
        for uri in [
            "/admin",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/%61dmin",
            "/public/..\\admin",
            "/./admin/x?debug=1",
        ] {
            assert_eq!(call(uri).await, (403, DENIED_BODY.to_owned()), "{uri}");
        }
        // Allowed requests reach the app with the normalized path and their query unchanged.
        assert_eq!(
            call("/public/./a/../b?x=%2e").await,
            (200, "/public/b?x=%2e".into())
        );
        assert_eq!(call("/%7Euser/%41").await, (200, "/~user/A".into()));
        assert_eq!(call("/plain/path?q").await, (200, "/plain/path?q".into()));
        // BASE keeps an encoded slash encoded: `/a%2Fadmin` is not under `/admin`.
        assert_eq!(call("/a%2Fadmin").await, (200, "/a%2Fadmin".into()));
        // A path that cannot be normalized is refused with 400, as Envoy does.
        assert_eq!(call("/a%00b").await.0, 400);
        // Without policies the app still gets the normalized path.
        store.publish(MeshConfig::default());
        assert_eq!(call("/x/../admin").await, (200, "/admin".into()));
    }

    #[tokio::test]
    async fn the_snapshots_path_normalization_decides_what_policies_and_the_app_see() {
        let store = Arc::new(ConfigStore::new(deny_admin()));
        let svc = in_front_of_echo_app(&store).await;
        let call = |uri: &'static str| get(&svc, uri);
        let denied = (403, DENIED_BODY.to_owned());
        let with_mode = |mode| MeshConfig {
            path_normalization: mode,
            ..deny_admin()
        };
        // A new snapshot's mode applies from the next request on.
        store.publish(with_mode(PathNormalization::None));
        assert_eq!(
            call("/public/../admin?q").await,
            (200, "/public/../admin?q".into())
        );
        store.publish(with_mode(PathNormalization::Base));
        assert_eq!(call("//admin//x").await, (200, "//admin//x".into()));
        assert_eq!(call("/public/../admin").await, denied);
        store.publish(with_mode(PathNormalization::MergeSlashes));
        assert_eq!(call("//admin//x").await, denied);
        assert_eq!(call("//a//b?x=//").await, (200, "/a/b?x=//".into()));
        assert_eq!(call("/%2Fadmin").await, (200, "/%2Fadmin".into()));
        store.publish(with_mode(PathNormalization::DecodeAndMergeSlashes));
        assert_eq!(call("/%2Fadmin").await, denied);
        assert_eq!(call("/x%5C..%5Cadmin").await, denied);
        assert_eq!(call("/a%2fb").await, (200, "/a/b".into()));
        assert_eq!(call("/a%2f%00").await.0, 400);
    }
}
