//! Test helpers: counting upstream servers on 127.0.0.1, a config directory, HTTP clients.
#![allow(dead_code)] // Each test binary uses a different part.

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_examples::proxy::{Options, Proxy};
use mesh_tower::body::{self, BoxBody};
use mesh_tower::server::serve;
use mesh_xds_client::test_util::{ServerSnapshot, fixtures};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// An upstream that answers its name and counts requests, optionally after a delay.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
}

/// An upstream named `name` on a 127.0.0.1 port nothing listens on any more (bound, then
/// closed): connecting to it is refused.
pub fn dead_upstream(name: &str) -> Upstream {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Upstream {
        addr,
        name: name.to_owned(),
    }
}

/// Serves `service` (with mesh-tower's server) as upstream `name`, on an ephemeral 127.0.0.1
/// port, until the test ends.
pub async fn serve_upstream<S>(name: &str, service: S) -> Upstream
where
    S: tower::Service<Request<Incoming>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        service,
        std::future::pending(),
        Duration::ZERO,
    ));
    Upstream {
        addr,
        name: name.to_owned(),
    }
}

/// A raw TCP echo server (no HTTP at all) named `name`, on an ephemeral 127.0.0.1 port.
pub async fn tcp_echo(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Upstream {
        addr,
        name: name.to_owned(),
    }
}

/// Starts an upstream named `name` on an ephemeral 127.0.0.1 port.
pub async fn upstream(name: &str, delay: Duration) -> Upstream {
    let reply = name.to_owned();
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let reply = reply.clone();
        async move {
            tokio::time::sleep(delay).await;
            let mut response = Response::new(body::full(reply));
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            response
                .headers_mut()
                .insert("x-path", HeaderValue::try_from(path).unwrap());
            if let Some(user) = req.headers().get("end-user") {
                response.headers_mut().insert("x-end-user", user.clone());
            }
            Ok::<Response<BoxBody>, Infallible>(response)
        }
    });
    serve_upstream(name, service).await
}

/// A config directory holding `mesh.yaml`.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Replaces `mesh.yaml` the way editors and ConfigMaps do: write aside, then rename.
    pub fn replace(&self, yaml: &str) {
        let tmp = self.dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.dir.path().join("mesh.yaml")).unwrap();
    }
}

/// The registry for service `hello` (port 80) with one endpoint per upstream, labelled with
/// `version: <upstream name>`, and a DestinationRule with a subset per version.
pub fn registry(upstreams: &[&Upstream]) -> String {
    let mut endpoints = String::new();
    let mut subsets = String::new();
    for u in upstreams {
        endpoints.push_str(&format!(
            "  - {{ address: 127.0.0.1, ports: {{ http: {} }}, labels: {{ app: hello, version: {} }} }}\n",
            u.addr.port(),
            u.name
        ));
        subsets.push_str(&format!(
            "  - {{ name: {0}, labels: {{ version: {0} }} }}\n",
            u.name
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: hello }}
spec:
  hosts: [hello.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: hello }}
spec:
  host: hello
  subsets:
{subsets}"
    )
}

/// A VirtualService for `hello` splitting by `weights` (subset, weight).
pub fn split(weights: &[(&str, i64)]) -> String {
    let mut routes = String::new();
    for (subset, weight) in weights {
        routes.push_str(&format!(
            "    - {{ destination: {{ host: hello, subset: {subset} }}, weight: {weight} }}\n"
        ));
    }
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  http:
  - route:
{routes}"
    )
}

/// A selector-less AuthorizationPolicy in `namespace` that denies `/admin/*`.
pub fn deny_admin_in(namespace: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: deny-admin, namespace: {namespace} }}
spec:
  action: DENY
  rules: [{{ to: [{{ operation: {{ paths: [\"/admin/*\"] }} }}] }}]
"
    )
}

/// Sidecar options over `paths` with every listener on an ephemeral 127.0.0.1 port, a fast
/// config reload and a fixed seed.
pub fn test_options(paths: Vec<PathBuf>) -> Options {
    let mut options = Options::new(paths, [127, 0, 0, 1].into());
    for addr in [
        &mut options.outbound,
        &mut options.inbound,
        &mut options.admin,
        &mut options.health,
    ] {
        addr.set_port(0);
    }
    options.reload_interval = Duration::from_millis(50);
    options.seed = Some(1);
    options
}

/// Starts the sidecar in-process on ephemeral 127.0.0.1 ports over `config`.
pub async fn start_proxy(config: &ConfigDir) -> Proxy {
    Proxy::start(test_options(vec![config.path()]))
        .await
        .expect("the proxy starts")
}

/// The `mesh-proxy` binary, started with `args`, and its start-up line.
pub struct SidecarProcess {
    pub child: std::process::Child,
    pub line: String,
}

impl SidecarProcess {
    /// Starts `binary run ARGS` with ephemeral ports on 127.0.0.1 and waits (at most 30 s)
    /// for the line that lists the bound ports.
    pub fn start(binary: &str, args: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(binary)
            .args([
                "run",
                "--outbound-port",
                "0",
                "--inbound-port",
                "0",
                "--admin-port",
                "0",
                "--health-port",
                "0",
                "--listen-address",
                "127.0.0.1",
            ])
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("mesh-proxy starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a start-up line");
            if line.contains("mesh-proxy listening") {
                break line;
            }
        };
        Self { child, line }
    }

    /// The address of listener `name` (`outbound`, `inbound`, `admin`, `health`).
    pub fn addr(&self, name: &str) -> SocketAddr {
        let start = self
            .line
            .find(&format!("{name}="))
            .expect("listener in the line")
            + name.len()
            + 1;
        self.line[start..]
            .split_whitespace()
            .next()
            .and_then(|a| {
                a.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .expect("an address")
    }

    /// Sends SIGTERM (with the shell's `kill`: a minimal machine may lack procps) and waits.
    pub async fn terminate(mut self) -> Option<i32> {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", self.child.id()))
            .status();
        tokio::task::spawn_blocking(move || self.child.wait().ok().and_then(|s| s.code()))
            .await
            .ok()
            .flatten()
    }
}

/// A connector that dials one address whatever the URI says, as an app whose traffic is
/// captured by the sidecar (the URI keeps naming the destination service).
#[derive(Clone, Debug)]
pub struct Dial(pub SocketAddr);

impl tower::Service<http::Uri> for Dial {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = futures_util::future::BoxFuture<'static, std::io::Result<Self::Response>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

pub type HttpClient = Client<Dial, Full<Bytes>>;

/// A client whose connections all go to `addr`: HTTP/1.1 (keep-alive) or h2c (prior
/// knowledge, where the URI's authority becomes `:authority`).
/// The sidecar's `/stats/prometheus` text, from its admin port `admin`.
pub async fn prometheus(admin: SocketAddr) -> String {
    let (status, text, _) = get(&client(admin, false), "localhost", "/stats/prometheus", &[]).await;
    assert_eq!(status, 200, "{text}");
    text
}

pub fn client(addr: SocketAddr, http2: bool) -> HttpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    builder.build(Dial(addr))
}

/// GETs `http://host/path` with extra headers; returns status, body, and headers.
pub async fn get(
    client: &HttpClient,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, http::HeaderMap) {
    let mut req = Request::get(format!("http://{host}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// Sends `n` requests over `concurrency` connections and counts the answers by body
/// (non-200 answers count as `status NNN`).
pub async fn tally(client: &HttpClient, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let counts = counts.clone();
        let share = n / concurrency + usize::from(worker < n % concurrency);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let (status, body, _) = get(&client, "hello", "/", &[]).await;
                let key = if status == 200 {
                    body
                } else {
                    format!("status {status}")
                };
                *counts.lock().unwrap().entry(key).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

/// The share of `key` in `counts`, in percent.
pub fn percent(counts: &BTreeMap<String, usize>, key: &str) -> f64 {
    let total: usize = counts.values().sum();
    100.0 * *counts.get(key).unwrap_or(&0) as f64 / total as f64
}

/// A config store over Istio `yaml` for workload `<sa>-v1` in `namespace` with service account
/// `sa`.
pub fn store_for(yaml: &str, namespace: &str, sa: &str) -> Arc<mesh_core::store::ConfigStore> {
    let workload = mesh_core::model::Workload {
        namespace: namespace.to_owned(),
        service_account: sa.to_owned(),
        workload_name: format!("{sa}-v1"),
        ..mesh_core::model::Workload::default()
    };
    let outcome = mesh_core::istio::load(&[("mesh.yaml", yaml)], &workload);
    let mut config = outcome.config.expect("config loads");
    config.workload = workload;
    Arc::new(mesh_core::store::ConfigStore::new(config))
}

/// `outbound|8080||reviews.default.svc.cluster.local`, the cluster of port 8080's routes in
/// [`two_port_xds_snapshot`].
pub const REVIEWS_8080: &str = "outbound|8080||reviews.default.svc.cluster.local";
/// The cluster of port 9080's routes in [`two_port_xds_snapshot`].
pub const REVIEWS_9080: &str = "outbound|9080||reviews.default.svc.cluster.local";

/// istiod's shape for `reviews` on two HTTP ports: listeners `0.0.0.0_8080` and
/// `0.0.0.0_9080`, RDS `"8080"` and `"9080"` each listing `reviews` with and without the port
/// and a `*` virtual host; everything on port 8080 goes to the upstream at `a`, on 9080 to
/// the one at `b`.
pub fn two_port_xds_snapshot(a: SocketAddr, b: SocketAddr) -> ServerSnapshot {
    let rds = |port: u16, cluster: &str| {
        let with_port = format!("reviews:{port}");
        let mut rc = fixtures::route_config(
            &port.to_string(),
            &["reviews", &with_port],
            &[(cluster, 100)],
        );
        let mut any =
            fixtures::route_config("", &["*"], &[(cluster, 100)]).virtual_hosts[0].clone();
        any.name = "allow_any".into();
        rc.virtual_hosts.push(any);
        rc
    };
    let mut s = ServerSnapshot::new("1");
    s.listener(fixtures::listener(8080, "8080"))
        .listener(fixtures::listener(9080, "9080"))
        .route(rds(8080, REVIEWS_8080))
        .route(rds(9080, REVIEWS_9080))
        .cluster(fixtures::eds_cluster(REVIEWS_8080))
        .endpoints(fixtures::endpoints(REVIEWS_8080, &[a]))
        .cluster(fixtures::eds_cluster(REVIEWS_9080))
        .endpoints(fixtures::endpoints(REVIEWS_9080, &[b]));
    s
}
