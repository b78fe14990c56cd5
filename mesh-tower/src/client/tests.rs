//! The upstream client's pools against real hyper servers on 127.0.0.1 that count the
//! connections they accept.

use super::UpstreamClient;
use super::connection::{Lifetime, PoolSettings};
use crate::body::{self, BoxBody, BoxError};
use crate::context::RequestContext;
use crate::retry::Unsent;
use crate::testing::{self, Protocol, Upstream};
use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Barrier;

/// What the upstream does with a request, by path: `/stream` answers a body that sends one
/// chunk and then never ends, `/close` answers with `Connection: close`, `/barrier` waits until
/// `barrier` requests are in, `/early` answers `ok` at once and reads the request body after,
/// `/names` answers the request's URI authority and Host header (`-` for none), `/echo`
/// answers the request body once it has all come; anything else answers `ok`.
async fn handle(req: Request<Incoming>, barrier: Arc<Barrier>) -> Response<BoxBody> {
    match req.uri().path() {
        "/echo" => {
            let upload = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(body::full(upload))
        }
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("first")))).await;
                // Keeps the body open until the client goes away.
                tx.closed().await;
            });
            let stream = tokio_stream(rx);
            Response::new(body::boxed(StreamBody::new(stream)))
        }
        "/close" => {
            let mut response = Response::new(body::full("bye"));
            response
                .headers_mut()
                .insert(http::header::CONNECTION, "close".parse().unwrap());
            response
        }
        "/barrier" => {
            barrier.wait().await;
            Response::new(body::full("ok"))
        }
        "/early" => {
            let upload = req.into_body();
            tokio::spawn(async move {
                let _ = upload.collect().await;
            });
            Response::new(body::full("ok"))
        }
        "/names" => {
            let authority = req.uri().authority().map_or("-", |a| a.as_str());
            let host = req
                .headers()
                .get(http::header::HOST)
                .map_or("-", |h| h.to_str().unwrap());
            Response::new(body::full(format!("authority={authority} host={host}")))
        }
        _ => Response::new(body::full("ok")),
    }
}

/// The frames `rx` receives, as a stream.
fn tokio_stream<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
{
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An upstream speaking HTTP/1.1 (or h2c with `http2`); `/barrier` waits for `parties`.
async fn upstream(http2: bool, parties: usize) -> Upstream {
    serve(testing::listener().await, http2, parties)
}

/// An upstream on `addr` (answering as [`upstream`] does, `/barrier` for one party).
async fn upstream_at(addr: std::net::SocketAddr, http2: bool) -> Upstream {
    serve(TcpListener::bind(addr).await.unwrap(), http2, 1)
}

/// Serves [`handle`] on `listener`.
fn serve(listener: TcpListener, http2: bool, parties: usize) -> Upstream {
    let barrier = Arc::new(Barrier::new(parties));
    testing::serve(listener, Protocol::http2(http2), move |req| {
        handle(req, barrier.clone())
    })
}

fn get(path: &str) -> Request<BoxBody> {
    Request::get(format!("http://upstream.test{path}"))
        .body(body::empty())
        .unwrap()
}

/// Sends `GET path` to `upstream` and reads the whole answer.
async fn fetch(client: &UpstreamClient, upstream: &Upstream, path: &str, http2: bool) -> String {
    let response = client
        .send(get(path), upstream.authority(), http2)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Sends `GET /` to `upstream` through the plaintext pool for `settings`, expects `200 OK`,
/// and reads the whole answer.
async fn fetch_with(client: &UpstreamClient, upstream: &Upstream, settings: &PoolSettings) {
    let response = client
        .send_plain(get("/"), upstream.authority(), settings)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
}

/// What the upstream saw of the request's name when the client sent `req` over HTTP/1.1 or h2c.
async fn names_seen(req: Request<BoxBody>, http2: bool) -> String {
    let upstream = upstream(http2, 1).await;
    let client = UpstreamClient::new();
    let response = client.send(req, upstream.authority(), http2).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// `GET /names` as an HTTP/1.1 server hands it over: origin form, the name in Host.
fn origin_form(host: &str) -> Request<BoxBody> {
    Request::get("/names")
        .header(http::header::HOST, host)
        .body(body::empty())
        .unwrap()
}

#[tokio::test]
async fn the_request_name_goes_in_host_over_http1_and_in_authority_over_http2() {
    // Over HTTP/1.1 the upstream gets the origin form and the name in Host...
    let seen = names_seen(origin_form("reviews.test:9080"), false).await;
    assert_eq!(seen, "authority=- host=reviews.test:9080");
    let seen = names_seen(get("/names"), false).await;
    assert_eq!(seen, "authority=- host=upstream.test");
    // ...over HTTP/2 the name in `:authority` and no Host to disagree with it, whether the
    // name came in Host (an HTTP/1.1 client) or in the URI (an HTTP/2 client); never the
    // endpoint's address.
    let seen = names_seen(origin_form("reviews.test:9080"), true).await;
    assert_eq!(seen, "authority=reviews.test:9080 host=-");
    let seen = names_seen(get("/names"), true).await;
    assert_eq!(seen, "authority=upstream.test host=-");
}

#[tokio::test]
async fn a_request_with_no_name_is_sent_with_the_endpoint_as_its_name() {
    for http2 in [false, true] {
        let upstream = upstream(http2, 1).await;
        let client = UpstreamClient::new();
        let req = Request::get("/names").body(body::empty()).unwrap();
        let response = client.send(req, upstream.authority(), http2).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let endpoint = upstream.authority();
        let expected = if http2 {
            format!("authority={endpoint} host=-")
        } else {
            format!("authority=- host={endpoint}")
        };
        assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expected);
    }
}

#[tokio::test]
async fn sequential_http1_requests_reuse_one_connection() {
    let upstream = upstream(false, 1).await;
    let client = UpstreamClient::new();
    for _ in 0..5 {
        assert_eq!(fetch(&client, &upstream, "/", false).await, "ok");
    }
    assert_eq!(upstream.accepted(), 1);
    assert_eq!(client.pools.http1.idle(upstream.authority().as_str()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http1_requests_open_a_connection_each_and_then_reuse_them() {
    let upstream = upstream(false, 4).await;
    let client = UpstreamClient::new();
    for round in 1..=3 {
        // The upstream answers none of the four until all four are in: four connections.
        let answers = futures_util::future::join_all(
            (0..4).map(|_| fetch(&client, &upstream, "/barrier", false)),
        )
        .await;
        assert!(answers.iter().all(|a| a == "ok"));
        assert_eq!(upstream.accepted(), 4, "round {round}");
    }
}

/// `GET path` as hyper's HTTP/2 server hands it over: the request polls its HTTP/1.1
/// upstream connection in place.
fn get_over_http2(path: &str) -> Request<BoxBody> {
    came_over(Version::HTTP_2, get(path))
}

/// `req` as it comes from a downstream speaking `version`: over HTTP/2, a request polls its
/// HTTP/1.1 upstream connection in place; over HTTP/1.1, a task of the connection's own does.
fn came_over(version: Version, mut req: Request<BoxBody>) -> Request<BoxBody> {
    *req.version_mut() = version;
    req
}

/// The downstream protocols, for the tests that hold for both ways of polling a connection.
const DOWNSTREAMS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];

/// Sends `req` to `upstream` over HTTP/1.1, expects `200 OK`, and reads the whole answer.
async fn fetch_req(client: &UpstreamClient, upstream: &Upstream, req: Request<BoxBody>) -> String {
    let response = client.send(req, upstream.authority(), false).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_body_dropped_midway_does_not_give_its_connection_back() {
    for downstream in DOWNSTREAMS {
        let upstream = upstream(false, 1).await;
        let client = UpstreamClient::new();
        let response = client
            .send(
                came_over(downstream, get("/stream")),
                upstream.authority(),
                false,
            )
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        drop(body);
        assert_eq!(client.pools.http1.idle(upstream.authority().as_str()), 0);

        let get = || came_over(downstream, get("/"));
        assert_eq!(fetch_req(&client, &upstream, get()).await, "ok");
        let accepted = upstream.accepted();
        assert_eq!(
            accepted, 2,
            "{downstream:?}: the unfinished one was not reused"
        );
        assert_eq!(fetch_req(&client, &upstream, get()).await, "ok");
        assert_eq!(
            upstream.accepted(),
            2,
            "{downstream:?}: the finished one was"
        );
    }
}

#[tokio::test]
async fn a_response_never_read_but_already_complete_gives_its_connection_back() {
    for downstream in DOWNSTREAMS {
        let upstream = upstream(false, 1).await;
        let client = UpstreamClient::new();
        let head = Request::head("http://upstream.test/")
            .body(body::empty())
            .unwrap();
        let response = client
            .send(came_over(downstream, head), upstream.authority(), false)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        let get = came_over(downstream, get("/"));
        assert_eq!(fetch_req(&client, &upstream, get).await, "ok");
        assert_eq!(upstream.accepted(), 1, "{downstream:?}");
    }
}

#[tokio::test]
async fn an_upstream_closing_its_connections_causes_no_failed_request() {
    for downstream in DOWNSTREAMS {
        let upstream = upstream(false, 1).await;
        let client = UpstreamClient::new();
        for _ in 0..3 {
            let close = came_over(downstream, get("/close"));
            assert_eq!(fetch_req(&client, &upstream, close).await, "bye");
        }
        assert_eq!(upstream.accepted(), 3, "{downstream:?}");
    }
}

#[tokio::test]
async fn a_pooled_connection_closed_before_the_request_was_written_is_retried_on_a_new_one() {
    let upstream = upstream(false, 1).await;
    let client = UpstreamClient::new();
    // A connection whose task we end: the request queued on it comes back unwritten.
    let stream = tokio::net::TcpStream::connect(upstream.addr())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = killed => {}
            _ = connection => {}
        }
    });
    sender.ready().await.unwrap();
    client
        .pools
        .http1
        .insert_idle(&upstream.authority(), sender);
    kill.send(()).unwrap();
    // On this single-threaded runtime the connection task runs only once the request has been
    // queued on it (the pooled connection looked ready).
    assert_eq!(fetch(&client, &upstream, "/", false).await, "ok");
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http2_requests_share_one_connection() {
    let upstream = upstream(true, 8).await;
    let client = UpstreamClient::new();
    let answers =
        futures_util::future::join_all((0..8).map(|_| fetch(&client, &upstream, "/barrier", true)))
            .await;
    assert!(answers.iter().all(|a| a == "ok"));
    assert_eq!(fetch(&client, &upstream, "/", true).await, "ok");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn requests_from_http2_poll_their_http1_connection_in_place_and_give_it_back() {
    let upstream = upstream(false, 1).await;
    let client = UpstreamClient::new();
    let idle = || client.pools.http1.idle(upstream.authority().as_str());
    let in_place = || {
        client
            .pools
            .http1
            .idle_in_place(upstream.authority().as_str())
    };
    for _ in 0..5 {
        assert_eq!(
            fetch_req(&client, &upstream, get_over_http2("/")).await,
            "ok"
        );
    }
    assert_eq!(upstream.accepted(), 1);
    assert_eq!((idle(), in_place()), (1, 1));

    // A request from HTTP/1.1 hands the connection to a task of its own, for good; requests
    // from HTTP/2 keep using it.
    assert_eq!(fetch(&client, &upstream, "/", false).await, "ok");
    assert_eq!((idle(), in_place()), (1, 0));
    assert_eq!(
        fetch_req(&client, &upstream, get_over_http2("/")).await,
        "ok"
    );
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_concurrent_requests_from_tasks_on_two_threads_share_the_connections_they_open() {
    let upstream = Arc::new(upstream(false, 4).await);
    let client = UpstreamClient::new();
    for round in 1..=3 {
        // Four tasks, as hyper's HTTP/2 server spawns one per stream; the upstream answers
        // none of the four until all four are in: four connections, then reused.
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    fetch_req(&client, &upstream, get_over_http2("/barrier")).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), "ok");
        }
        assert_eq!(upstream.accepted(), 4, "round {round}");
        let in_place = client
            .pools
            .http1
            .idle_in_place(upstream.authority().as_str());
        assert_eq!(in_place, 4, "round {round}");
    }
}

/// An idle connection polled in place has nobody polling it between requests: one the
/// upstream closed meanwhile is found closed when the next request is queued on it, and that
/// request goes out on a new connection.
#[tokio::test]
async fn in_place_a_connection_the_upstream_closed_while_idle_is_replaced_without_a_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let close = Arc::new(tokio::sync::Notify::new());
    let close_signal = close.clone();
    // Answers one request per connection (keep-alive, as far as the client knows), then
    // closes the connection when told to.
    let upstream = testing::serve_tcp(testing::listener().await, move |mut stream| {
        let closed_tx = closed_tx.clone();
        let close = close_signal.clone();
        async move {
            let mut buf = [0u8; 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            stream.write_all(answer).await.unwrap();
            close.notified().await;
            drop(stream);
            let _ = closed_tx.send(());
        }
    });
    let client = UpstreamClient::new();
    assert_eq!(
        fetch_req(&client, &upstream, get_over_http2("/")).await,
        "ok"
    );
    let in_place = || {
        client
            .pools
            .http1
            .idle_in_place(upstream.authority().as_str())
    };
    assert_eq!(in_place(), 1);
    close.notify_one();
    closed.recv().await.unwrap();
    assert_eq!(in_place(), 1, "closed, but nobody polled it to see");
    assert_eq!(
        fetch_req(&client, &upstream, get_over_http2("/")).await,
        "ok"
    );
    assert_eq!(upstream.accepted(), 2);
}

/// An HTTP/1.1 pool with a 5 s idle timeout and one idle connection to a new upstream.
struct IdlePool {
    upstream: Upstream,
    client: UpstreamClient,
    settings: PoolSettings,
    pool: super::PlainClient,
}

impl IdlePool {
    async fn new() -> Self {
        let upstream = upstream(false, 1).await;
        let client = UpstreamClient::new();
        let mut settings = PoolSettings::new(false);
        settings.idle_timeout = Duration::from_secs(5);
        let pool = client.plain(&settings);
        let idle = Self {
            upstream,
            client,
            settings,
            pool,
        };
        idle.fetch().await;
        assert_eq!(idle.idle(), 1);
        idle
    }

    async fn fetch(&self) {
        fetch_with(&self.client, &self.upstream, &self.settings).await;
    }

    /// Lets `idle` pass (time paused), then fetches again.
    async fn fetch_after(&self, idle: Duration) {
        tokio::time::pause();
        tokio::time::advance(idle).await;
        tokio::time::resume();
        self.fetch().await;
    }

    fn idle(&self) -> usize {
        self.pool.idle(self.upstream.authority().as_str())
    }

    /// Lets the reaper run (time paused) until no connection is idle, or gives up.
    async fn reaped(&self) -> bool {
        for _ in 0..10 {
            if self.idle() == 0 {
                return true;
            }
            tokio::task::yield_now().await;
        }
        self.idle() == 0
    }
}

#[tokio::test]
async fn an_idle_http1_connection_past_the_idle_timeout_is_dropped() {
    let idle = IdlePool::new().await;

    idle.fetch_after(Duration::from_secs(4)).await;
    assert_eq!(
        idle.upstream.accepted(),
        1,
        "within the idle timeout: reused"
    );

    // Past it, the reaper drops the connection without a request coming by.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(6)).await;
    let reaped = idle.reaped().await;
    tokio::time::resume();
    assert!(reaped, "reaped");
    idle.fetch().await;
    assert_eq!(idle.upstream.accepted(), 2);
}

#[tokio::test]
async fn the_reaper_closes_an_idle_connection_at_its_idle_timeout_not_a_period_later() {
    let idle = IdlePool::new().await;

    // Used again at 4 s, after the reaper's first look (at 5 s) it is idle until 9 s. A reaper
    // that only looked every idle timeout would keep it until 10 s.
    idle.fetch_after(Duration::from_secs(4)).await;
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(1_500)).await;
    tokio::task::yield_now().await;
    assert_eq!(idle.idle(), 1, "idle for 1.5 s: kept");
    tokio::time::advance(Duration::from_millis(4_000)).await;
    let reaped = idle.reaped().await;
    tokio::time::resume();
    assert!(reaped, "idle for 5.5 s: closed");
    assert_eq!(idle.upstream.accepted(), 1);
}

#[tokio::test]
async fn an_http2_connection_unused_past_the_idle_timeout_is_replaced() {
    let upstream = upstream(true, 1).await;
    let client = UpstreamClient::new();
    let mut settings = PoolSettings::new(true);
    settings.idle_timeout = Duration::from_secs(5);
    fetch_with(&client, &upstream, &settings).await;
    fetch_with(&client, &upstream, &settings).await;
    assert_eq!(upstream.accepted(), 1);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(6)).await;
    tokio::time::resume();
    fetch_with(&client, &upstream, &settings).await;
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn connections_are_retired_after_max_requests() {
    for http2 in [false, true] {
        let upstream = upstream(http2, 1).await;
        let client = UpstreamClient::new();
        let mut settings = PoolSettings::new(http2);
        settings.lifetime = Lifetime {
            max_requests: 2,
            max_duration: None,
        };
        for _ in 0..5 {
            fetch_with(&client, &upstream, &settings).await;
        }
        assert_eq!(upstream.accepted(), 3, "http2: {http2}");
    }
}

#[tokio::test]
async fn a_connection_past_its_max_duration_is_not_handed_out() {
    for http2 in [false, true] {
        let upstream = upstream(http2, 1).await;
        let client = UpstreamClient::new();
        let mut settings = PoolSettings::new(http2);
        settings.lifetime = Lifetime {
            max_requests: 0,
            max_duration: Some(Duration::from_secs(2)),
        };
        fetch_with(&client, &upstream, &settings).await;
        fetch_with(&client, &upstream, &settings).await;
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(3)).await;
        tokio::time::resume();
        fetch_with(&client, &upstream, &settings).await;
        assert_eq!(upstream.accepted(), 2, "http2: {http2}");
    }
}

/// A 127.0.0.1 port nothing listens on (bound, then closed).
async fn closed_port() -> Authority {
    Authority::try_from(testing::closed_port().await.to_string()).unwrap()
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_failure() {
    let authority = closed_port().await;
    let client = UpstreamClient::new();
    for http2 in [false, true] {
        let e = client
            .send(get("/"), authority.clone(), http2)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<crate::error::ProxyError>(),
                Some(crate::error::ProxyError::ConnectFailure { .. })
            ),
            "{e:?}"
        );
    }
}

/// `GET path` with an app header and extension, whose context asks for the request back
/// when the upstream does not see it (as the retry layer asks); and the slot it comes back in.
fn to_give_back(path: &str) -> (Request<BoxBody>, Unsent) {
    let mut req = get(path);
    req.headers_mut()
        .insert("x-app", http::HeaderValue::from_static("kept"));
    req.extensions_mut().insert(Marker("app"));
    let unsent = Unsent::new(true);
    RequestContext::of_mut(&mut req).unsent = Some(unsent.clone());
    (req, unsent)
}

/// Asserts that `unsent` holds the request [`to_give_back`] made for `path`, freed of its slot.
fn assert_given_back(unsent: &Unsent, path: &str) {
    let back = unsent.take().expect("the request comes back");
    assert_eq!(back.uri().path(), path);
    assert_eq!(back.headers()["x-app"], "kept");
    assert_eq!(back.extensions().get::<Marker>(), Some(&Marker("app")));
    assert!(RequestContext::of(&back).unwrap().unsent.is_none());
}

#[tokio::test]
async fn a_request_whose_connect_failed_is_given_back() {
    let authority = closed_port().await;
    let client = UpstreamClient::new();
    for http2 in [false, true] {
        let (req, unsent) = to_give_back("/connect");
        client
            .send(req, authority.clone(), http2)
            .await
            .unwrap_err();
        assert_given_back(&unsent, "/connect");
    }
}

#[tokio::test]
async fn a_refused_http2_stream_gives_back_a_copy_and_another_reset_gives_back_nothing() {
    let upstream = testing::serve_tcp(testing::listener().await, |stream| async move {
        let mut conn = h2::server::handshake(stream).await.unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            respond.send_reset(if req.uri().path() == "/refused" {
                h2::Reason::REFUSED_STREAM
            } else {
                h2::Reason::INTERNAL_ERROR
            });
        }
    });
    let authority = upstream.authority();
    let client = UpstreamClient::new();
    let (req, unsent) = to_give_back("/refused");
    let e = client.send(req, authority.clone(), true).await.unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<crate::error::ProxyError>(),
            Some(crate::error::ProxyError::UpstreamReset { .. })
        ),
        "{e:?}"
    );
    assert_given_back(&unsent, "/refused");
    // The upstream may have begun on it: nothing to send again.
    let (req, unsent) = to_give_back("/reset");
    client.send(req, authority, true).await.unwrap_err();
    assert!(unsent.take().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_waiting_on_one_failed_connect_all_fail_and_the_next_connects_again() {
    // A port nothing listens on (bound, then closed), listened on again afterwards.
    let addr = testing::closed_port().await;
    let authority = Authority::try_from(addr.to_string()).unwrap();
    let client = UpstreamClient::new();
    let failures = futures_util::future::join_all(
        (0..8).map(|_| client.send(get("/"), authority.clone(), true)),
    )
    .await;
    for failure in failures {
        let e = failure.expect_err("no upstream: every request fails");
        assert!(
            matches!(
                e.downcast_ref::<crate::error::ProxyError>(),
                Some(crate::error::ProxyError::ConnectFailure { .. })
            ),
            "{e:?}"
        );
    }
    // The failure is not handed to later requests: the next one connects again.
    let upstream = upstream_at(addr, true).await;
    assert_eq!(fetch(&client, &upstream, "/", true).await, "ok");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn the_reaper_ends_with_its_pool() {
    let upstream = upstream(false, 1).await;
    let client = UpstreamClient::new();
    assert_eq!(fetch(&client, &upstream, "/", false).await, "ok");
    let stop = client.pools.http1.stop_signal();
    assert_eq!(Arc::strong_count(&stop), 3, "pool, reaper and ours");
    drop(client);
    for _ in 0..10 {
        if Arc::strong_count(&stop) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(Arc::strong_count(&stop), 1, "the reaper has ended");
}

/// `POST path` whose body is what is sent on the channel, as it comes, until it is dropped.
fn upload(
    path: &str,
) -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    Request<BoxBody>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = Request::post(format!("http://upstream.test{path}"))
        .body(body::boxed(StreamBody::new(tokio_stream(rx))))
        .unwrap();
    (tx, req)
}

/// A request body that arrives piece by piece while the request waits for its answer: the
/// connection (polled in place, or by its own task) sends each piece as it comes.
#[tokio::test]
async fn an_upload_streamed_piece_by_piece_reaches_the_upstream_whole() {
    for downstream in DOWNSTREAMS {
        let upstream = upstream(false, 1).await;
        let client = UpstreamClient::new();
        let (tx, upload) = upload("/echo");
        let sender = tokio::spawn(async move {
            for piece in ["one ", "two ", "three"] {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.send(Ok(Frame::data(Bytes::from(piece)))).await.unwrap();
            }
        });
        let upload = came_over(downstream, upload);
        let echoed = tokio::time::timeout(
            Duration::from_secs(10),
            fetch_req(&client, &upstream, upload),
        )
        .await
        .expect("each piece is sent as it comes");
        assert_eq!(echoed, "one two three", "{downstream:?}");
        sender.await.unwrap();
        assert_eq!(client.pools.http1.idle(upstream.authority().as_str()), 1);
    }
}

/// An upstream may answer before the request body is all sent (an upload it refuses): the
/// connection is then busy until the body ends, and the next request must not wait for it.
#[tokio::test]
async fn a_request_after_an_early_answer_to_an_unfinished_upload_gets_a_connection() {
    for downstream in DOWNSTREAMS {
        let upstream = upstream(false, 1).await;
        let client = UpstreamClient::new();
        let (tx, upload) = upload("/early");
        tx.send(Ok(Frame::data(Bytes::from("part of an upload"))))
            .await
            .unwrap();
        let upload = came_over(downstream, upload);
        assert_eq!(fetch_req(&client, &upstream, upload).await, "ok");
        let next = tokio::time::timeout(
            Duration::from_secs(5),
            fetch_req(&client, &upstream, came_over(downstream, get("/"))),
        )
        .await
        .expect("the next request does not wait for the upload's connection");
        assert_eq!(next, "ok");
        assert_eq!(upstream.accepted(), 2, "{downstream:?}");
        drop(tx);
    }
}

#[test]
fn hop_by_hop_headers_are_stripped_and_te_trailers_kept() {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("host", "svc"),
        ("connection", "keep-alive, x-conn-only"),
        ("x-conn-only", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("trailer", "grpc-status"),
        ("te", "trailers"),
        ("x-request-id", "abc"),
    ] {
        headers.append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    super::strip_hop_by_hop(&mut headers);
    let mut left: Vec<_> = headers.keys().map(|n| n.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["host", "te", "x-request-id"]);

    // Any other TE is hop-by-hop too; a message with none of them is left as it is.
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::TE, http::HeaderValue::from_static("gzip"));
    headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
    super::strip_hop_by_hop(&mut headers);
    assert_eq!(headers.len(), 1);
    assert!(headers.contains_key(http::header::ACCEPT));
    let untouched = headers.clone();
    super::strip_hop_by_hop(&mut headers);
    assert_eq!(headers, untouched);
}

/// A marker the caller puts on a request.
#[derive(Clone, Debug, PartialEq)]
struct Marker(&'static str);

#[tokio::test]
async fn a_response_carries_its_requests_extensions_back_up() {
    for http2 in [false, true] {
        let upstream = upstream(http2, 1).await;
        let client = UpstreamClient::new();
        let mut req = get("/");
        req.extensions_mut().insert(Marker("caller"));
        RequestContext::of_mut(&mut req).grpc = Some(false);
        let response = client.send(req, upstream.authority(), http2).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.extensions().get::<Marker>(),
            Some(&Marker("caller")),
            "http2: {http2}"
        );
        let context = RequestContext::of_response(&response).expect("the request's context");
        assert_eq!(context.grpc, Some(false));
    }
}
