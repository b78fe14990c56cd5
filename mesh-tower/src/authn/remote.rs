//! Keys from a `jwksUri`, fetched and refreshed by the proxy.
//!
//! In Istio, istiod fetches each `jwksUri` and inlines the keys in the `jwt_authn` filter it
//! sends (its `JwtKeyResolver`), refreshing them every `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`
//! (20 minutes by default) and keeping the last keys it got when a refresh fails; when it never
//! got any, it inlines a key that verifies nothing, so tokens of that issuer are refused.
//! Without istiod, this proxy does the same itself: [`RemoteJwks::keys`] starts one task per
//! URI (when called inside a tokio runtime) that fetches at once, then every
//! [`JWKS_REFRESH_INTERVAL`] (after a failure, sooner: every 30 s until one succeeds), keeping
//! the last good keys. The task ends when no compiled config uses the URI any more; while one
//! does, compiling another config that names the URI shares its keys and fetches nothing.
//!
//! `keys` is called when a config is installed (the authorization layer compiles each snapshot
//! as it is published), so the first fetch starts before traffic, as istiod's does. A request
//! whose token needs keys whose first fetch is still under way waits for it
//! ([`RemoteKeys::first_fetch`]), at most the rule's `timeout` (Istio's `jwtRules[].timeout`,
//! 5 s when unset), as Envoy's `jwt_authn` pauses a request while the `remote_jwks` fetch it
//! needs is in flight; then it is verified with whatever keys there are. Later refreshes never
//! make a request wait: the last good keys keep serving.
//!
//! `http://` and `https://` are fetched with hyper over one connection per fetch; TLS
//! verifies the server against the system's roots (the bundles Go reads, as istiod is a Go
//! program), or the roots given with [`RemoteJwks::with_roots`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use mesh_core::model::Jwks;
use mesh_policy::jwt::KeySet;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// How often keys are fetched again: Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL` default.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// How soon a failed fetch is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// istiod's default timeout for a JWKS fetch (`jwtRules[].timeout` unset); also how long a
/// request waits for a first fetch.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Where Go looks for the system's CA bundle on Linux (`crypto/x509/root_linux.go`).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// One URI's keys, shared by the compiled configs that use it, the requests waiting for its
/// first fetch and (weakly) its fetch task.
#[derive(Debug)]
struct Slot {
    keys: ArcSwapOption<KeySet>,
    /// Whether the first fetch has ended (with keys or without); set after `keys`.
    settled: AtomicBool,
    /// Becomes `true` when the first fetch ends; closed when the fetch task is gone.
    first_fetch: tokio::sync::watch::Receiver<bool>,
    /// The bound of each fetch, and of a request's wait for the first one.
    timeout: Duration,
}

/// The keys of one `jwksUri`, as [`RemoteJwks::keys`] gives them: a cheap, shared handle.
#[derive(Clone, Debug)]
pub struct RemoteKeys(Arc<Slot>);

impl RemoteKeys {
    /// The keys of the last fetch that succeeded; `None` until one has.
    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.0.keys.load_full()
    }

    /// Whether the first fetch is still under way: one atomic load.
    pub fn is_first_fetch_pending(&self) -> bool {
        !self.0.settled.load(Ordering::Acquire)
    }

    /// Resolves when the first fetch has ended, with keys or without (at once if it has), or
    /// after the fetch's timeout, whichever comes first. Later refreshes are not waited for.
    pub async fn first_fetch(&self) {
        if !self.is_first_fetch_pending() {
            return;
        }
        let mut first_fetch = self.0.first_fetch.clone();
        // `Err`: the fetch task is gone (its runtime shut down): nothing to wait for.
        let _ = tokio::time::timeout(self.0.timeout, first_fetch.wait_for(|done| *done)).await;
    }

    /// Whether `self` and `other` are the same URI's keys (one slot, one fetch task).
    #[cfg(test)]
    pub(super) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The keys of every `jwksUri` in use, with their fetch tasks. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct RemoteJwks {
    slots: Arc<Mutex<HashMap<String, Weak<Slot>>>>,
    roots: Option<Arc<RootCertStore>>,
    refresh: Option<Duration>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("invalid URI: {0}")]
    Uri(String),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error("timed out")]
    Timeout,
    #[error("invalid JWKS: {0}")]
    Jwks(String),
    #[error("no CA roots for https")]
    NoRoots,
}

impl RemoteJwks {
    /// Fetches `https://` URIs trusting `roots` instead of the system's.
    pub fn with_roots(mut self, roots: Arc<RootCertStore>) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Refreshes every `interval` instead of [`JWKS_REFRESH_INTERVAL`].
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh = Some(interval);
        self
    }

    /// The keys of `uri` (empty until the first fetch succeeds). The first call for a URI
    /// (or the first since no handle of it was left) starts its fetch task at once, each fetch
    /// bounded by `timeout` (5 s when `None`); while a handle is kept, later calls share its
    /// keys and fetch nothing.
    ///
    /// Outside a tokio runtime nothing is fetched: the keys stay empty, no request waits for
    /// them, and the URI is not remembered (a later call inside a runtime fetches it).
    pub fn keys(&self, uri: &str, timeout: Option<Duration>) -> RemoteKeys {
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(uri, "no tokio runtime: the JWKS is not fetched");
            let (_, first_fetch) = tokio::sync::watch::channel(true);
            return RemoteKeys(Arc::new(Slot {
                keys: ArcSwapOption::empty(),
                settled: AtomicBool::new(true),
                first_fetch,
                timeout,
            }));
        };
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.get(uri).and_then(Weak::upgrade) {
            return RemoteKeys(slot);
        }
        slots.retain(|_, w| w.strong_count() > 0);
        let (settled, first_fetch) = tokio::sync::watch::channel(false);
        let slot = Arc::new(Slot {
            keys: ArcSwapOption::empty(),
            settled: AtomicBool::new(false),
            first_fetch,
            timeout,
        });
        slots.insert(uri.to_owned(), Arc::downgrade(&slot));
        runtime.spawn(refresh(
            self.clone(),
            uri.to_owned(),
            Arc::downgrade(&slot),
            settled,
        ));
        RemoteKeys(slot)
    }

    fn roots(&self) -> Option<Arc<RootCertStore>> {
        if let Some(roots) = &self.roots {
            return Some(roots.clone());
        }
        let mut roots = RootCertStore::empty();
        for bundle in SYSTEM_BUNDLES {
            if let Ok(certs) = CertificateDer::pem_file_iter(bundle) {
                roots.add_parsable_certificates(certs.flatten());
                if !roots.is_empty() {
                    break;
                }
            }
        }
        (!roots.is_empty()).then(|| Arc::new(roots))
    }
}

/// The fetch loop of one URI; ends when `slot` is no longer used. `settled` tells the requests
/// waiting for the first fetch that it ended.
async fn refresh(
    remote: RemoteJwks,
    uri: String,
    slot: Weak<Slot>,
    settled: tokio::sync::watch::Sender<bool>,
) {
    let interval = remote.refresh.unwrap_or(JWKS_REFRESH_INTERVAL);
    let Some(timeout) = slot.upgrade().map(|s| s.timeout) else {
        return;
    };
    let mut settled = Some(settled);
    loop {
        let result = match tokio::time::timeout(timeout, fetch(&remote, &uri)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout),
        };
        let Some(current) = slot.upgrade() else {
            return;
        };
        let wait = match result {
            Ok(keys) => {
                tracing::debug!(uri, keys = keys.len(), "JWKS fetched");
                current.keys.store(Some(Arc::new(keys)));
                interval
            }
            Err(e) => {
                // The last good keys stay (istiod keeps its cached keys the same way).
                tracing::warn!(uri, error = %e, "JWKS fetch failed");
                if current.keys.load().is_some() {
                    interval
                } else {
                    RETRY_INTERVAL.min(interval)
                }
            }
        };
        if let Some(settled) = settled.take() {
            // After the keys: a request that sees the first fetch ended sees its keys.
            current.settled.store(true, Ordering::Release);
            settled.send_replace(true);
        }
        drop(current);
        tokio::time::sleep(wait).await;
        if slot.strong_count() == 0 {
            return;
        }
    }
}

/// One fetch of `uri`, for tests: whether it got keys.
#[cfg(test)]
pub(super) async fn fetch_once(remote: &RemoteJwks, uri: &str) -> Result<usize, String> {
    fetch(remote, uri)
        .await
        .map(|k| k.len())
        .map_err(|e| e.to_string())
}

async fn fetch(remote: &RemoteJwks, uri: &str) -> Result<KeySet, FetchError> {
    let parsed: http::Uri = uri.parse().map_err(|e| FetchError::Uri(format!("{e}")))?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::Uri("not http:// or https://".into())),
    };
    let authority = parsed
        .authority()
        .ok_or_else(|| FetchError::Uri("no host".into()))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let request = http::Request::get(parsed.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| FetchError::Uri(e.to_string()))?;
    let response = if https {
        let roots = remote.roots().ok_or(FetchError::NoRoots)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Uri(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name =
            ServerName::try_from(host.to_owned()).map_err(|e| FetchError::Uri(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| FetchError::Body(e.to_string()))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|e| FetchError::Body(e.to_string()))?;
    let jwks = Jwks::parse(text).map_err(|e| FetchError::Jwks(e.to_string()))?;
    KeySet::new(&jwks).map_err(|e| FetchError::Jwks(e.to_string()))
}

async fn send<IO>(
    io: TokioIo<IO>,
    request: http::Request<http_body_util::Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, FetchError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "JWKS connection");
        }
    });
    Ok(sender.send_request(request).await?)
}
