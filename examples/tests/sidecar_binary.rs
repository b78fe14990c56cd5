//! The `mesh-proxy` binary's outside contract: `check` output and exit codes, `run` with
//! ephemeral ports and one start-up line, readiness, and a clean exit on SIGTERM.

mod common;

use common::*;
use http::Request;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_prints_findings_with_field_paths_and_exits_1_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        &dir,
        "bad.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - timeout: 5x
    route: [{ destination: { host: reviews } }]
",
    );
    let out = Command::new(BIN).arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = bad.display();
    assert!(
        stdout.contains(&format!(
            "{file}: VirtualService default/reviews: spec.http[0].timeout: invalid duration \"5x\""
        )),
        "{stdout}"
    );
    assert!(stdout.contains("spec.http[0].route[0].destination.host: host \"reviews.default.svc.cluster.local\" is not in the service registry"), "{stdout}");

    for example in ["config/quickstart", "config/jwt"] {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let out = Command::new(BIN)
            .arg("check")
            .arg(examples)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{example}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn bad_arguments_exit_2_and_a_bad_config_exits_1() {
    let out = Command::new(BIN)
        .args(["run", "--outbound-port", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The environment (OpenTelemetry's, the mesh's) is read as the flags are, and checked as
    // strictly.
    let unknown_mode = "unknown path normalization \"merge\"";
    for (flag, env, message) in [
        (
            None,
            Some(("OTEL_PROPAGATORS", "tracecontext,jaeger")),
            "unsupported trace propagator `jaeger`",
        ),
        (
            None,
            Some(("MESH_PATH_NORMALIZATION", "merge")),
            unknown_mode,
        ),
        (Some("--path-normalization=merge"), None, unknown_mode),
    ] {
        let out = Command::new(BIN)
            .args(["run", "--config", "."])
            .args(flag)
            .envs(env)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag:?} {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir, "bad.yaml", "kind: [");
    let out = Command::new(BIN)
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
            "--config",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid YAML at line"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_its_ports_serves_and_drains_on_sigterm() {
    let v1 = upstream("v1", Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "mesh.yaml", &registry(&[&v1]));
    let sidecar = SidecarProcess::start(
        BIN,
        &["--drain-seconds", "5", "--config", config.to_str().unwrap()],
    );
    let (outbound, health) = (sidecar.addr("outbound"), sidecar.addr("health"));
    assert_eq!(
        get(&client(health, false), "localhost", "/healthz/ready", &[])
            .await
            .0,
        200
    );
    let c = client(outbound, false);

    // A slow request in flight when SIGTERM arrives still completes.
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { get(&c, "hello", "/", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let exit = tokio::spawn(sidecar.terminate());
    let (status, body, _) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert_eq!(exit.await.unwrap(), Some(0));
}

/// SIGTERM while the sidecar is still starting is held until it has started, then drains it:
/// the process exits 0 rather than dying of the signal. The config is a FIFO, so start-up
/// waits, provably inside the process, until the test writes it.
#[test]
fn a_sigterm_during_start_up_is_held_and_drains_once_started() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("mesh.yaml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let mut child = Command::new(BIN)
        .args(["run", "--listen-address", "127.0.0.1", "--config"])
        .arg(&fifo)
        .args(["--outbound-port", "0", "--inbound-port", "0"])
        .args(["--admin-port", "0", "--health-port", "0"])
        // No re-read of the FIFO after start-up: it would block until a writer came.
        .args(["--reload-interval-ms", "600000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Opening a FIFO for writing returns once the sidecar has opened it to read its config.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let killed = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {}", child.id()))
        .status()
        .unwrap();
    assert!(killed.success());
    // A process already killed by the signal has closed its end; the write may then fail.
    let _ = writer.write_all(b"# no resources\n");
    drop(writer);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

/// `--path-normalization` and `--root-namespace`: a DENY on `/admin/*` in the root namespace
/// the flag names applies mesh-wide, and catches `//admin//x` under merge-slashes (the app
/// gets the merged path) but not under Istio's default, base (the app gets it as sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_normalization_and_root_namespace_flags_shape_inbound_authorization() {
    let app = upstream("app", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "mesh.yaml", &deny_admin_in("mesh-root"));
    let app_port = app.addr.port().to_string();
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--app-port",
            &app_port,
            "--root-namespace",
            "mesh-root",
        ];
        args.extend_from_slice(extra);
        SidecarProcess::start(BIN, &args)
    };
    let path_seen = |headers: &http::HeaderMap| {
        headers
            .get("x-path")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };

    let sidecar = start(&["--path-normalization", "merge-slashes"]);
    let inbound = client(sidecar.addr("inbound"), false);
    let (status, body, _) = get(&inbound, "app", "//admin//x", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let (status, _, headers) = get(&inbound, "app", "//public//x?q=//", &[]).await;
    assert_eq!(
        (status, path_seen(&headers).as_str()),
        (200, "/public/x?q=//")
    );
    assert_eq!(sidecar.terminate().await, Some(0));

    let sidecar = start(&[]);
    let inbound = client(sidecar.addr("inbound"), false);
    let (status, _, headers) = get(&inbound, "app", "//admin//x", &[]).await;
    assert_eq!((status, path_seen(&headers).as_str()), (200, "//admin//x"));
    // The root namespace's policy applies: the DENY holds for the path BASE leaves alone.
    let (status, _, _) = get(&inbound, "app", "/admin/x", &[]).await;
    assert_eq!(status, 403);
    assert_eq!(sidecar.terminate().await, Some(0));
}

/// A VirtualService `corsPolicy` is enforced by the sidecar: `check` reports a bad field with
/// its path, and `run` answers an allowed preflight itself and gives a forwarded response the
/// allowed origin (both were silently dropped before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_policy_is_checked_and_a_preflight_answered_by_the_sidecar() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    let cors = |unmatched: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  http:
  - corsPolicy:
      allowOrigins: [{{ exact: \"https://app.example\" }}]
      allowMethods: [GET, POST]
      allowHeaders: [content-type]
      maxAge: 1h
      unmatchedPreflights: {unmatched}
    route: [{{ destination: {{ host: hello }} }}]
"
        )
    };
    let v1 = upstream("v1", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir, "bad.yaml", &(registry(&[&v1]) + &cors("DROP")));
    let out = Command::new(BIN).arg("check").arg(&bad).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "spec.http[0].corsPolicy.unmatchedPreflights: unknown value \"DROP\": expected FORWARD or IGNORE"
        ),
        "{stdout}"
    );

    let config = write(&dir, "mesh.yaml", &(registry(&[&v1]) + &cors("FORWARD")));
    let sidecar = SidecarProcess::start(BIN, &["--config", config.to_str().unwrap()]);
    let c = client(sidecar.addr("outbound"), false);
    let preflight = Request::options("http://hello/api")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = c.request(preflight).await.expect("response");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body, "",
        "answered by the sidecar, not the upstream (which says v1)"
    );
    for (name, value) in [
        ("access-control-allow-origin", "https://app.example"),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-headers", "content-type"),
        ("access-control-max-age", "3600"),
    ] {
        assert_eq!(
            headers.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{name}"
        );
    }

    let (status, body, headers) = get(&c, "hello", "/", &[("origin", "https://app.example")]).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let (_, body, headers) = get(&c, "hello", "/", &[("origin", "https://evil.example")]).await;
    assert_eq!(body, "v1");
    assert!(headers.get("access-control-allow-origin").is_none());
    assert_eq!(sidecar.terminate().await, Some(0));
}

/// Istio's "require a JWT" recipe through the binary: a RequestAuthentication with inline
/// keys and an AuthorizationPolicy allowing `requestPrincipals: ["*"]`. No token: 403 from
/// authorization; a bad token: 401 from authentication; a good one reaches the app, without
/// its `Authorization` header and with the claim the rule copies to `end-user`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_jwt_recipe_through_the_binary() {
    let app = upstream("app", Duration::ZERO).await;
    let issuer = mesh_policy::testing::TestIssuer::new("https://login.example", "ES256");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: login, namespace: default }}
spec:
  jwtRules:
  - issuer: https://login.example
    jwks: '{}'
    outputClaimToHeaders: [{{ header: end-user, claim: sub }}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: require-jwt, namespace: default }}
spec:
  rules:
  - from: [{{ source: {{ requestPrincipals: [\"*\"] }} }}]
",
        issuer.jwks()
    );
    let config = write(&dir, "mesh.yaml", &yaml);
    let out = Command::new(BIN)
        .arg("check")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let app_port = app.addr.port().to_string();
    let sidecar = SidecarProcess::start(
        BIN,
        &[
            "--config",
            config.to_str().unwrap(),
            "--app-port",
            &app_port,
        ],
    );
    let inbound = client(sidecar.addr("inbound"), false);

    let (status, body, _) = get(&inbound, "app", "/", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    let forged = mesh_policy::testing::TestIssuer::new("https://login.example", "ES256")
        .token(serde_json::json!({"sub": "mallory"}));
    let (status, body, headers) = get(
        &inbound,
        "app",
        "/",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!((status, body.as_str()), (401, "Jwt verification fails"));
    assert!(
        headers.get("www-authenticate").is_some_and(|v| v
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"http://app/\"")),
        "{headers:?}"
    );

    let token = issuer.token(serde_json::json!({"sub": "alice"}));
    let (status, body, headers) = get(
        &inbound,
        "app",
        "/",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "app"));
    assert_eq!(headers.get("x-end-user").unwrap(), "alice");
    let (_, metrics, _) = get(
        &client(sidecar.addr("admin"), false),
        "localhost",
        "/stats/prometheus",
        &[],
    )
    .await;
    assert!(
        metrics.contains("mesh_jwt_authn_denied_total 1\n"),
        "{metrics}"
    );
    assert_eq!(sidecar.terminate().await, Some(0));
}
