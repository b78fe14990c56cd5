//! Transparent interception end to end, inside two network namespaces the test creates.
//!
//! ```text
//!  client netns (10.200.0.1)                       server netns (10.200.0.2)
//!  app (the test, uid 0) --OUTPUT--> 15001         PREROUTING --> 15006
//!                        mesh-proxy (uid 1337) ==mTLS==> mesh-proxy (uid 1337) --> 127.0.0.1:port
//!                                                                       upstream app (the test)
//! ```
//!
//! The app calls plain `10.200.0.2:PORT`; `mesh-proxy iptables --apply` in each namespace
//! sends the call through both sidecars, which speak mutual TLS and apply the server's
//! AuthorizationPolicy (HTTP paths, TCP ports). An excluded port goes straight through.
//!
//! Needs root, `ip` (iproute2), `iptables` and `setpriv` (util-linux); without them the test
//! prints why and passes without checking anything.

mod common;

use common::{Dial, get};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_policy::testing::TestCa;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const CLIENT_IP: &str = "10.200.0.1";
const SERVER_IP: &str = "10.200.0.2";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/frontend";
const SERVER_ID: &str = "spiffe://cluster.local/ns/server/sa/echo";
const PROXY_UID: &str = "1337";
/// Ports of the upstream in the server namespace.
const HTTP_PORT: u16 = 8080;
/// An HTTP port no service declares: the client sidecar passes calls through, in plaintext
/// (the server's PeerAuthentication is PERMISSIVE on it).
const PASSTHROUGH_PORT: u16 = 8081;
const TCP_PORT: u16 = 9000;
const DENIED_TCP_PORT: u16 = 9001;
const EXCLUDED_PORT: u16 = 7000;

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables", "iptables-restore", "setpriv"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|d| d.join(tool).is_file());
        if !found {
            return Some(format!(
                "`{tool}` not found (Debian: apt-get install iproute2 iptables util-linux)"
            ));
        }
    }
    None
}

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair; deleted (with the veths and every rule in them)
/// when dropped, so a failing test leaves nothing behind.
struct Topology {
    client: String,
    server: String,
}

impl Topology {
    fn create() -> Result<Self, String> {
        let id = format!(
            "{}{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() % 1000)
                .unwrap_or(0)
        );
        let topology = Self {
            client: format!("mesh-c-{id}"),
            server: format!("mesh-s-{id}"),
        };
        let (c, s) = (topology.client.as_str(), topology.server.as_str());
        run(&["ip", "netns", "add", c])?;
        run(&["ip", "netns", "add", s])?;
        // Interface names are at most 15 bytes; they live inside the namespaces only.
        run(&[
            "ip", "link", "add", "veth-c", "netns", c, "type", "veth", "peer", "name", "veth-s",
            "netns", s,
        ])?;
        for (ns, dev, ip) in [(c, "veth-c", CLIENT_IP), (s, "veth-s", SERVER_IP)] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(topology)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// Runs `f` on a new thread inside network namespace `ns`, on its own runtime; every socket
/// it opens belongs to that namespace.
fn in_netns<F, Fut, T>(ns: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// A sidecar process in a namespace, as uid/gid 1337; killed when dropped.
struct Sidecar {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Sidecar {
    /// The sidecar with the mesh config and certificates in `dir`, and `workload` flags.
    fn start(ns: &str, dir: &Path, workload: &[&str]) -> Self {
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let (cert, key, ca) = (
            path(&format!("{ns}.crt")),
            path(&format!("{ns}.key")),
            path("ca.crt"),
        );
        let config = path("mesh.yaml");
        let mut args = vec!["--config", &config, "--cert", &cert, "--key", &key];
        args.extend(["--ca", &ca]);
        args.extend(workload);
        Self::start_with(ns, &args)
    }

    /// `mesh-proxy run --intercept ARGS` in `ns`.
    fn start_with(ns: &str, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "setpriv", "--reuid", PROXY_UID])
            .args(["--regid", PROXY_UID, "--clear-groups", "--", BIN, "run"])
            .arg("--intercept")
            .args(["--access-log", "json", "--drain-seconds", "1"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec mesh-proxy");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let sidecar = Self { child, lines, rx };
        if !sidecar.wait_for_line("mesh-proxy listening") {
            panic!("the sidecar in {ns} did not start:\n{}", sidecar.output());
        }
        sidecar
    }

    /// Whether a line containing `needle` came (already, or within 30 s of silence; at most
    /// 600 more lines).
    fn wait_for_line(&self, needle: &str) -> bool {
        if self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            return true;
        }
        for _ in 0..600 {
            match self.rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the upstream app in the server namespace saw.
#[derive(Debug, Default)]
struct Seen {
    /// HTTP requests: (path, peer address).
    http: Vec<(String, SocketAddr)>,
    /// TCP connections: (local port, peer address).
    tcp: Vec<(u16, SocketAddr)>,
}

/// The upstream app: HTTP on 8080 and 8081 answering `hello from echo`, TCP echo on 9000,
/// 9001 and 7000.
async fn upstream_app(seen: Arc<Mutex<Seen>>, stop: tokio::sync::oneshot::Receiver<()>) {
    use http::{Request, Response};
    use hyper::body::Incoming;
    for port in [HTTP_PORT, PASSTHROUGH_PORT] {
        let http = TcpListener::bind(("0.0.0.0", port)).await.unwrap();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = http.accept().await {
                let record = record.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    record
                        .lock()
                        .unwrap()
                        .http
                        .push((req.uri().path().to_owned(), peer));
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            bytes::Bytes::from_static(b"hello from echo"),
                        )))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
    }
    for port in [TCP_PORT, DENIED_TCP_PORT, EXCLUDED_PORT] {
        let listener = TcpListener::bind(("0.0.0.0", port)).await.unwrap();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                record.lock().unwrap().tcp.push((port, peer));
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    }
    let _ = stop.await;
}

/// Sends `message` to `addr` and reads the echo; `None` when the connection is closed first.
async fn echo(addr: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(message).await.ok()?;
    let mut back = vec![0u8; message.len()];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back)).await;
    match read {
        Ok(Ok(_)) => Some(back),
        _ => None,
    }
}

/// The sidecar's `/stats/prometheus` (its admin port, 127.0.0.1:15000 in its namespace).
async fn stats() -> String {
    let client: Client<Dial, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(Dial(([127, 0, 0, 1], 15000).into()));
    get(&client, "127.0.0.1:15000", "/stats/prometheus", &[])
        .await
        .1
}

/// The sum of `metric`'s series whose labels contain every one of `labels`.
fn sum(text: &str, metric: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn config() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: echo, namespace: server }}
spec:
  hosts: [echo.server.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{ number: {HTTP_PORT}, name: http, protocol: HTTP }}
  - {{ number: {TCP_PORT}, name: tcp, protocol: TCP }}
  - {{ number: {DENIED_TCP_PORT}, name: tcp-other, protocol: TCP }}
  endpoints: [{{ address: {SERVER_IP}, serviceAccount: echo }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: echo, namespace: server }}
spec:
  host: echo.server.svc.cluster.local
  trafficPolicy: {{ tls: {{ mode: ISTIO_MUTUAL }} }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: echo, namespace: server }}
spec:
  selector: {{ matchLabels: {{ app: echo }} }}
  mtls: {{ mode: STRICT }}
  portLevelMtls: {{ "{PASSTHROUGH_PORT}": {{ mode: PERMISSIVE }} }}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: echo, namespace: server }}
spec:
  action: ALLOW
  rules:
  - from: [{{ source: {{ principals: [cluster.local/ns/client/sa/frontend] }} }}]
    to: [{{ operation: {{ ports: ["{HTTP_PORT}"], paths: ["/api/*"] }} }}]
  - from: [{{ source: {{ namespaces: [client] }} }}]
    to: [{{ operation: {{ ports: ["{TCP_PORT}"] }} }}]
  - to: [{{ operation: {{ ports: ["{PASSTHROUGH_PORT}"] }} }}]
"#
    )
}

#[test]
fn a_plain_ip_call_goes_through_both_sidecars_with_mtls_and_authorization() {
    if let Some(why) = missing_prerequisite() {
        println!("SKIPPED interception test: {why}");
        return;
    }
    let topology = match Topology::create() {
        Ok(t) => t,
        Err(e) => {
            println!("SKIPPED interception test: cannot create network namespaces: {e}");
            return;
        }
    };
    let (client_ns, server_ns) = (topology.client.clone(), topology.server.clone());

    // Config and certificates, readable by the sidecars' user.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mesh root");
    std::fs::write(dir.path().join("mesh.yaml"), config()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.bundle_pem()).unwrap();
    for (ns, id) in [(&client_ns, CLIENT_ID), (&server_ns, SERVER_ID)] {
        let leaf = ca.issue(id);
        std::fs::write(dir.path().join(format!("{ns}.crt")), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join(format!("{ns}.key")), &leaf.key_pem).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    // The init container's job in each namespace; the excluded port on both sides.
    let excluded = EXCLUDED_PORT.to_string();
    let iptables = |ns: &str, extra: &[&str]| {
        let mut cmd = vec!["ip", "netns", "exec", ns, BIN, "iptables", "--apply"];
        cmd.extend(["--proxy-uid", PROXY_UID]);
        cmd.extend(extra);
        run(&cmd).unwrap();
    };
    iptables(&client_ns, &["--exclude-outbound-ports", &excluded]);
    iptables(&server_ns, &["--exclude-inbound-ports", &excluded]);
    // Applying again replaces the rules rather than adding a second copy.
    iptables(&client_ns, &["--exclude-outbound-ports", &excluded]);
    let nat = |ns: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-t", "nat", "-S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = nat(&client_ns);
    assert_eq!(
        rules.matches("-A OUTPUT -p tcp -j ISTIO_OUTPUT").count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules.matches("--dport 7000 -j RETURN").count(),
        1,
        "{rules}"
    );

    // The upstream app in the server namespace.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let app = {
        let seen = seen.clone();
        in_netns(&server_ns, move || upstream_app(seen, stopped))
    };

    let client_sidecar = Sidecar::start(
        &client_ns,
        dir.path(),
        &[
            "--workload-namespace",
            "client",
            "--service-account",
            "frontend",
            "--workload-labels",
            "app=frontend",
        ],
    );
    let server_sidecar = Sidecar::start(
        &server_ns,
        dir.path(),
        &[
            "--workload-namespace",
            "server",
            "--service-account",
            "echo",
            "--workload-labels",
            "app=echo",
        ],
    );

    // The app in the client namespace calls plain IP:port addresses.
    let server = |port: u16| -> SocketAddr { format!("{SERVER_IP}:{port}").parse().unwrap() };
    let (allowed, denied, passthrough, tcp, tcp_denied, client_before) =
        in_netns(&client_ns, move || async move {
            let client: Client<Dial, Full<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build(Dial(server(HTTP_PORT)));
            let host = format!("{SERVER_IP}:{HTTP_PORT}");
            let allowed = get(&client, &host, "/api/hello", &[]).await;
            let denied = get(&client, &host, "/admin", &[]).await;
            let plain: Client<Dial, Full<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build(Dial(server(PASSTHROUGH_PORT)));
            let passthrough = get(
                &plain,
                &format!("{SERVER_IP}:{PASSTHROUGH_PORT}"),
                "/pass",
                &[],
            )
            .await;
            let tcp = echo(server(TCP_PORT), b"ping over tcp").await;
            let tcp_denied = echo(server(DENIED_TCP_PORT), b"let me in").await;
            let before = stats().await;
            (
                (allowed.0, allowed.1),
                (denied.0, denied.1),
                (passthrough.0, passthrough.1),
                tcp,
                tcp_denied,
                before,
            )
        })
        .join()
        .unwrap();
    let diagnostics = || {
        format!(
            "client sidecar:\n{}\nserver sidecar:\n{}\nupstream saw {:?}",
            client_sidecar.output(),
            server_sidecar.output(),
            seen.lock().unwrap()
        )
    };

    // HTTP: allowed path reaches the upstream through both sidecars; the other gets 403.
    assert_eq!(
        allowed,
        (200, "hello from echo".to_owned()),
        "{}",
        diagnostics()
    );
    assert_eq!(denied.0, 403, "{}", diagnostics());
    assert_eq!(denied.1, "RBAC: access denied");
    // No service owns 10.200.0.2:8081: PassthroughCluster, then the server sidecar (PERMISSIVE
    // there) hands it to the app.
    assert_eq!(
        passthrough,
        (200, "hello from echo".to_owned()),
        "{}",
        diagnostics()
    );
    // TCP: the echo works on the allowed port; the denied port is closed before the app.
    assert_eq!(
        tcp.as_deref(),
        Some(&b"ping over tcp"[..]),
        "{}",
        diagnostics()
    );
    assert_eq!(tcp_denied, None, "{}", diagnostics());
    {
        let seen = seen.lock().unwrap();
        let paths: Vec<&str> = seen.http.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/api/hello", "/pass"], "{}", diagnostics());
        // The server sidecar delivered them: the app sees loopback peers.
        assert!(seen.http.iter().all(|(_, peer)| peer.ip().is_loopback()));
        let ports: Vec<u16> = seen.tcp.iter().map(|(p, _)| *p).collect();
        assert_eq!(ports, [TCP_PORT], "{}", diagnostics());
        assert!(seen.tcp[0].1.ip().is_loopback());
    }

    // The server sidecar saw the client's verified identity over mutual TLS.
    let server_stats = in_netns(&server_ns, stats).join().unwrap();
    let principal = format!("source_principal=\"{CLIENT_ID}\"");
    let mtls = "connection_security_policy=\"mutual_tls\"";
    assert_eq!(
        sum(
            &server_stats,
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                &principal,
                "response_code=\"200\""
            ]
        ),
        1,
        "{server_stats}"
    );
    assert_eq!(
        sum(
            &server_stats,
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                &principal,
                "response_code=\"403\""
            ]
        ),
        1,
        "{server_stats}"
    );
    let server_tcp_opened = |text: &str| {
        sum(
            text,
            "istio_tcp_connections_opened_total",
            &["reporter=\"destination\"", &principal, mtls],
        )
    };
    // One allowed and one denied connection, both from the client's identity.
    assert_eq!(server_tcp_opened(&server_stats), 2, "{server_stats}");
    let client_tcp_opened = |text: &str| {
        sum(
            text,
            "istio_tcp_connections_opened_total",
            &["reporter=\"source\""],
        )
    };
    assert_eq!(
        sum(
            &client_before,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                mtls,
                "destination_service=\"echo.server.svc.cluster.local\""
            ]
        ),
        2,
        "{client_before}"
    );
    assert!(
        sum(
            &client_before,
            "istio_requests_total",
            &["reporter=\"source\"", "response_code=\"200\""]
        ) >= 1,
        "{client_before}"
    );
    // The excluded port is not intercepted: the app sees the client's own address, and
    // neither sidecar counted a connection.
    let (excluded_echo, client_after) = in_netns(&client_ns, move || async move {
        let back = echo(server(EXCLUDED_PORT), b"straight through").await;
        (back, stats().await)
    })
    .join()
    .unwrap();
    assert_eq!(excluded_echo.as_deref(), Some(&b"straight through"[..]));
    {
        let seen = seen.lock().unwrap();
        let direct: Vec<&(u16, SocketAddr)> = seen
            .tcp
            .iter()
            .filter(|(p, _)| *p == EXCLUDED_PORT)
            .collect();
        assert_eq!(direct.len(), 1, "{}", diagnostics());
        assert_eq!(direct[0].1.ip().to_string(), CLIENT_IP);
    }
    let server_after = in_netns(&server_ns, stats).join().unwrap();
    assert_eq!(
        client_tcp_opened(&client_after),
        client_tcp_opened(&client_before)
    );
    assert_eq!(
        server_tcp_opened(&server_after),
        server_tcp_opened(&server_stats)
    );
    let all_series = |text: &str| -> BTreeMap<String, u64> {
        text.lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse::<f64>().ok()? as u64))
            })
            .collect()
    };
    assert_eq!(all_series(&server_after), all_series(&server_stats));

    // --remove undoes --apply: a second run finds nothing and still succeeds.
    for ns in [&client_ns, &server_ns] {
        run(&["ip", "netns", "exec", ns, BIN, "iptables", "--remove"]).unwrap();
        run(&["ip", "netns", "exec", ns, BIN, "iptables", "--remove"]).unwrap();
        let rules = nat(ns);
        assert!(!rules.contains("ISTIO"), "{rules}");
    }

    let _ = stop.send(());
    app.join().unwrap();
    drop(client_sidecar);
    drop(server_sidecar);
    drop(topology);
}

/// With `--intercept`, connections made to the listeners directly (no iptables rule) are
/// served as before: the outbound port as an explicit HTTP proxy, the inbound port towards
/// `--app-port`. Needs no root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_listeners_still_serve_direct_connections() {
    let hello = common::upstream("v1", Duration::ZERO).await;
    let config = common::ConfigDir::new(&common::registry(&[&hello]));
    let mut options = common::test_options(vec![config.path()]);
    options.intercept = true;
    options.app = Some(hello.addr);
    let proxy = mesh_examples::proxy::Proxy::start(options).await.unwrap();

    let outbound = common::client(proxy.outbound, false);
    let (status, body, _) = get(&outbound, "hello", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    let h2c = common::client(proxy.outbound, true);
    let (status, body, _) = get(&h2c, "hello", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    let (status, _, _) = get(&outbound, "nowhere", "/", &[]).await;
    assert_eq!(
        status, 404,
        "an unknown name is no route, as without --intercept"
    );

    let inbound = common::client(proxy.inbound, false);
    let (status, body, headers) = get(&inbound, "anything", "/in", &[]).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert_eq!(headers["x-path"], "/in");
    proxy.shutdown().await;
}

/// Envoy routes an intercepted call by the listener of its original destination port, then
/// by `Host`. With istiod's routes for two ports of `reviews` (listeners `0.0.0.0_8080` and
/// `0.0.0.0_9080`, RDS `"8080"` and `"9080"` both listing `reviews`, and each its own `*`),
/// a call to port 9080 with `Host: reviews` (no port) meets port 9080's routes; merged, port
/// 8080's (first by listener name) answered every port.
///
/// The control plane and the upstreams run in the client namespace on 127.0.0.1, where the
/// sidecar's own connections are not redirected; the app calls the server namespace's
/// address, where nothing listens on 8080 or 9080: only the sidecar can answer.
#[test]
fn an_intercepted_call_meets_the_xds_routes_of_its_original_port() {
    if let Some(why) = missing_prerequisite() {
        println!("SKIPPED interception test: {why}");
        return;
    }
    let topology = match Topology::create() {
        Ok(t) => t,
        Err(e) => {
            println!("SKIPPED interception test: cannot create network namespaces: {e}");
            return;
        }
    };
    let client_ns = topology.client.clone();
    let (ready, control_plane) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let control = in_netns(&client_ns, move || async move {
        let a = common::upstream("a", Duration::ZERO).await;
        let b = common::upstream("b", Duration::ZERO).await;
        let server = mesh_xds_client::test_util::ManagementServer::start(
            "127.0.0.1:0".parse().unwrap(),
            common::two_port_xds_snapshot(a.addr, b.addr),
        )
        .await
        .unwrap();
        ready.send(server.addr()).unwrap();
        let _ = stopped.await;
        server.shutdown().await;
    });
    let xds = control_plane
        .recv_timeout(Duration::from_secs(30))
        .expect("the control plane starts")
        .to_string();
    run(&[
        "ip",
        "netns",
        "exec",
        &client_ns,
        BIN,
        "iptables",
        "--apply",
        "--proxy-uid",
        PROXY_UID,
    ])
    .unwrap();
    let sidecar = Sidecar::start_with(&client_ns, &["--xds", &xds]);
    assert!(
        sidecar.wait_for_line("xDS snapshot published"),
        "{}",
        sidecar.output()
    );

    let answers = in_netns(&client_ns, move || async move {
        let mut answers = BTreeMap::new();
        for port in [8080, 9080] {
            let addr: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
            for http2 in [false, true] {
                let client: Client<Dial, Full<bytes::Bytes>> =
                    Client::builder(TokioExecutor::new())
                        .http2_only(http2)
                        .build(Dial(addr));
                for host in ["reviews", "ratings"] {
                    let (status, body, _) = get(&client, host, "/", &[]).await;
                    answers.insert((port, http2, host), format!("{status} {body}"));
                }
            }
        }
        // Not redirected (the app names the capture listener itself): the authority's port.
        let direct: Client<Dial, Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build(Dial(([127, 0, 0, 1], 15001).into()));
        for host in ["ratings:9080", "ratings:8080"] {
            let (status, body, _) = get(&direct, host, "/", &[]).await;
            answers.insert((15001, false, host), format!("{status} {body}"));
        }
        // The admin port shows each port's routes and explains a call to a given port.
        let admin: Client<Dial, Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build(Dial(([127, 0, 0, 1], 15000).into()));
        let json = |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap();
        let dump = json(get(&admin, "localhost", "/config_dump", &[]).await.1);
        let explained = json(
            get(&admin, "localhost", "/explain?host=reviews&port=9080", &[])
                .await
                .1,
        );
        (answers, dump, explained)
    })
    .join()
    .unwrap();
    let (answers, dump, explained) = answers;
    let ports: Vec<&serde_json::Value> = dump["config"]["routes"]["ports"]
        .as_array()
        .expect("the routes' ports in the dump")
        .iter()
        .map(|p| &p["port"])
        .collect();
    assert_eq!(ports, [8080, 9080], "{}", dump["config"]["routes"]);
    assert_eq!(explained["port"], 9080, "{explained}");
    assert_eq!(
        explained["route"]["destinations"][0]["cluster"],
        common::REVIEWS_9080,
        "{explained}"
    );
    let _ = stop.send(());
    control.join().unwrap();
    let want = |port, http2, host| answers[&(port, http2, host)].as_str();
    for http2 in [false, true] {
        assert_eq!(want(8080, http2, "reviews"), "200 a", "{answers:?}");
        assert_eq!(want(9080, http2, "reviews"), "200 b", "{answers:?}");
        assert_eq!(want(8080, http2, "ratings"), "200 a", "{answers:?}");
        assert_eq!(want(9080, http2, "ratings"), "200 b", "{answers:?}");
    }
    assert_eq!(want(15001, false, "ratings:9080"), "200 b", "{answers:?}");
    assert_eq!(want(15001, false, "ratings:8080"), "200 a", "{answers:?}");
    drop(sidecar);
    drop(topology);
}

/// `mesh-proxy iptables --dry-run` prints the rules without root or iptables; a bad value is
/// exit code 2 with the flag named.
#[test]
fn iptables_dry_run_prints_the_rules_and_bad_values_exit_2() {
    let out = Command::new(BIN)
        .args(["iptables", "--apply", "--dry-run", "--proxy-uid", "2000"])
        .args([
            "--exclude-outbound-ports",
            "5432",
            "--include-inbound-ports",
            "8080",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "iptables -t nat -D OUTPUT -p tcp -j ISTIO_OUTPUT",
        "iptables-restore --noflush <<EOF",
        "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 2000 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "COMMIT",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
    let out = Command::new(BIN)
        .args([
            "iptables",
            "--apply",
            "--dry-run",
            "--exclude-inbound-ports",
            "22,ssh",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--exclude-inbound-ports \"ssh\""), "{err}");
}
