//! Plain TCP through the sidecar: a service's `TCP` port forwarded from a local port, bytes
//! echoed both ways, and Istio's TCP metrics counting the connection and its bytes.

mod common;

use common::*;
use mesh_examples::proxy::Proxy;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_echo_through_a_tcp_port_with_istio_tcp_metrics() {
    // A TCP echo server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: echo }}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 9000, name: tcp, protocol: TCP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ tcp: {} }} }}]
",
        echo.port()
    );
    let config = ConfigDir::new(&yaml);
    let mut options = test_options(vec![config.path()]);
    options.tcp_forwards = vec![(
        ([127, 0, 0, 1], 0).into(),
        "echo.default.svc.cluster.local".into(),
        9000,
    )];
    let proxy = Proxy::start(options).await.unwrap();
    let local = proxy.tcp_forwards()[0];

    let mut stream = TcpStream::connect(local).await.unwrap();
    let mut total = 0u64;
    for message in ["hello", "through the mesh", "bye"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, message.as_bytes());
        total += message.len() as u64;
    }
    drop(stream);

    // The connection is counted when it closes.
    let admin = client(proxy.admin, false);
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get(&admin, "localhost", "/stats/prometheus", &[]).await.1;
        if metrics.contains("istio_tcp_connections_closed_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains("destination_service=\"echo.default.svc.cluster.local\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(value("istio_tcp_connections_opened_total"), 1);
    assert_eq!(value("istio_tcp_connections_closed_total"), 1);
    assert_eq!(value("istio_tcp_sent_bytes_total"), total);
    assert_eq!(value("istio_tcp_received_bytes_total"), total);
    assert!(metrics.contains("request_protocol=\"tcp\""));
    proxy.shutdown().await;
}
