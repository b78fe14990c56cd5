//! The connection pool behind [`super::UpstreamClient`], on hyper's low-level
//! `client::conn::{http1, http2}` API.
//!
//! One [`Pool`] holds the connections made with one set of [`PoolSettings`] (and, for TLS,
//! one set of expected identities), keyed by endpoint authority:
//!
//! - HTTP/1.1: a stack of idle connections per endpoint (the most recently used on top, so
//!   warm connections are reused and the rest age out). A request takes one (or connects),
//!   and its response body puts the connection back when the body ends. A request that came
//!   over HTTP/2 polls the connection in its own task while it has it; otherwise the
//!   connection runs in a task of its own (see [`super::driver`] for why both). A body dropped
//!   before its end closes its connection, and a `101 Switching Protocols` hands its
//!   connection to a task of its own and to the upgrade.
//! - HTTP/2 (prior knowledge): one connection per endpoint, shared by every request; the first
//!   requests to an endpoint wait for one connect rather than each opening a connection.
//!
//! A request sent on a pooled connection that turns out closed before the request was written
//! is sent again, once, on a new connection (hyper gives the request back), so that an upstream
//! closing idle keep-alive connections does not surface as a reset.
//!
//! Idle connections older than the pool's idle timeout are dropped when a request comes by and
//! by a reaper (one task per pool, started with its first connection, ending with the pool).
//! Connections are counted in the pool's own entries and retired after their last allowed
//! request or once older than their maximum duration ([`Lifetime`]).

use super::carried::{CarriedExtensions, GivenBack, Unwritten};
use super::connection::{Lifetime, PoolSettings};
use super::driver::{Driver, spawn_connection};
use crate::body::{self, BoxBody, BoxError};
use crate::error::ProxyError;
use crate::retry::Unsent;
use arc_swap::ArcSwap;
use bytes::Bytes;
use foldhash::HashMap;
use futures_util::future::{BoxFuture, Either, FutureExt, Shared};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_service::Service;

/// How long a request waits for a pooled HTTP/1.1 connection that is not ready yet before it
/// also opens a new one (see `Pool::checkout_http1`).
const READY_GRACE: Duration = Duration::from_millis(5);

type Http1 = http1::SendRequest<BoxBody>;
/// An HTTP/1.1 connection, polled in place or by a task of its own.
type Conn1 = Conn<Http1, Driver>;
/// An HTTP/1.1 connection and the response it brought.
type Sent = (Conn1, Response<Incoming>);
type Http2 = http2::SendRequest<BoxBody>;

/// What makes the pool's connections: a `tower::Service<Uri>` yielding an I/O stream
/// (`HttpConnector`, [`crate::tls::MtlsConnector`]).
pub(super) trait Connector: Clone + Send + Sync + 'static {
    /// The connection.
    type Io: Read + Write + Unpin + Send + 'static;
    /// Connects to `uri`.
    fn connect(
        &self,
        uri: Uri,
    ) -> impl Future<Output = Result<Self::Io, BoxError>> + Send + 'static;
}

impl<C> Connector for C
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Io = C::Response;

    fn connect(
        &self,
        uri: Uri,
    ) -> impl Future<Output = Result<Self::Io, BoxError>> + Send + 'static {
        use tower::ServiceExt;
        self.clone().oneshot(uri).map(|r| r.map_err(Into::into))
    }
}

/// The connections made by one connector with one set of settings, by endpoint authority.
pub(super) struct Pool<C> {
    connector: C,
    settings: PoolSettings,
    /// Read on every request, written when an endpoint is first seen or reaped.
    hosts: ArcSwap<HashMap<Box<str>, Arc<Host>>>,
    reaping: AtomicBool,
    /// Ends the reaper when the pool is dropped.
    stop: Arc<Notify>,
}

/// The connections to one endpoint.
struct Host {
    authority: Authority,
    /// HTTP/1.1 connections between requests, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection.
    shared: Mutex<SharedConn>,
}

/// A connection and what the pool counts of it: an HTTP/2 connection's I/O runs in a task of
/// its own, an HTTP/1.1 connection's in the `driver` its requests poll.
struct Conn<S, D = ()> {
    sender: S,
    driver: D,
    established: Instant,
    requests: u32,
}

/// An HTTP/1.1 connection between requests.
struct Idle {
    conn: Conn1,
    since: Instant,
}

/// The HTTP/2 connection to an endpoint, or the connect under way.
#[derive(Default)]
struct SharedConn {
    conn: Option<Conn<Http2>>,
    last_used: Option<Instant>,
    connecting: Option<Connecting>,
}

/// An HTTP/2 connect that every request waiting for the endpoint's connection awaits.
type Connecting = Shared<BoxFuture<'static, Result<Http2, SharedError>>>;

impl<C: std::fmt::Debug> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connector", &self.connector)
            .field("settings", &self.settings)
            .field("endpoints", &self.hosts.load().len())
            .finish()
    }
}

impl<C> Drop for Pool<C> {
    fn drop(&mut self) {
        // A permit is kept if the reaper is not waiting yet.
        self.stop.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn connect_failure(authority: &Authority, source: BoxError) -> BoxError {
    ProxyError::ConnectFailure {
        endpoint: authority.to_string(),
        source,
    }
    .into()
}

/// `error`, after giving `req` back to the retry layer (the upstream never saw it).
fn unsent(req: Request<BoxBody>, error: BoxError) -> BoxError {
    Unsent::give_back(req);
    error
}

/// `error`, after giving back the `copy` of a request whose HTTP/2 stream was refused (the
/// upstream did not process it), when one was kept.
fn refused(copy: Option<Request<BoxBody>>, error: BoxError) -> BoxError {
    if let Some(copy) = copy
        && crate::retry::error_chain_mentions(error.as_ref(), "REFUSED_STREAM")
    {
        Unsent::give_back(copy);
    }
    error
}

/// An HTTP/1.1 request hyper did not send: given back to the retry layer when hyper gave it
/// back unwritten.
fn not_sent(host: &Host, e: Unwritten<BoxBody>) -> BoxError {
    let error = reset(&host.authority, e.error);
    match e.back {
        GivenBack::Request(req) => unsent(req, error),
        GivenBack::Extensions(_) => error,
    }
}

/// An HTTP/2 request hyper did not send: given back unwritten, or its `copy` (with the
/// request's own extensions) given back when the upstream refused its stream.
fn not_sent_http2(host: &Host, e: Unwritten<BoxBody>, copy: Option<Request<BoxBody>>) -> BoxError {
    let error = reset(&host.authority, e.error);
    match e.back {
        GivenBack::Request(req) => unsent(req, error),
        GivenBack::Extensions(extensions) => refused(
            copy.map(|mut copy| {
                *copy.extensions_mut() = extensions;
                copy
            }),
            error,
        ),
    }
}

fn reset(authority: &Authority, source: hyper::Error) -> BoxError {
    ProxyError::UpstreamReset {
        endpoint: authority.to_string(),
        source: source.into(),
    }
    .into()
}

fn retired(host: &Host) {
    tracing::debug!(endpoint = %host.authority, "upstream connection retired");
}

impl<C: Connector> Pool<C> {
    /// An empty pool of connections made by `connector` with `settings`.
    pub(super) fn new(connector: C, settings: PoolSettings) -> Arc<Self> {
        Arc::new(Self {
            connector,
            settings,
            hosts: ArcSwap::default(),
            reaping: AtomicBool::new(false),
            stop: Arc::new(Notify::new()),
        })
    }

    /// Sends `req` (its URI in the form the protocol needs) to `authority` over a pooled
    /// connection. Errors are [`ProxyError::ConnectFailure`] when no connection could be
    /// made, else [`ProxyError::UpstreamReset`]. `finish` gets the response.
    ///
    /// Over HTTP/1.1, `in_place` has the request's own task poll the connection while the
    /// request has it (see [`super::driver`]); otherwise the connection runs in a task of its
    /// own from then on.
    ///
    /// One box per request, holding only its protocol's state: an HTTP/1.1 request's future
    /// does not carry the (larger) HTTP/2 send's, nor the other way round.
    pub(super) fn send<F>(
        self: Arc<Self>,
        req: Request<BoxBody>,
        authority: Authority,
        in_place: bool,
        finish: F,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>>
    where
        F: FnOnce(Response<BoxBody>) -> Response<BoxBody> + Send + 'static,
    {
        let host = self.host(&authority);
        // Each path's future is boxed as it is: an async block around it would hold the
        // arguments twice (its own and the inner future's).
        if self.settings.http2 {
            Box::pin(self.send_http2(host, req, finish))
        } else {
            Box::pin(self.send_http1(host, req, in_place, finish))
        }
    }

    /// The endpoint's entry, made on first use.
    fn host(&self, authority: &Authority) -> Arc<Host> {
        if let Some(host) = self.hosts.load().get(authority.as_str()) {
            return host.clone();
        }
        let fresh = Arc::new(Host {
            authority: authority.clone(),
            idle: Mutex::default(),
            shared: Mutex::default(),
        });
        self.hosts.rcu(|hosts| {
            let mut hosts = HashMap::clone(hosts);
            hosts
                .entry(authority.as_str().into())
                .or_insert_with(|| fresh.clone());
            hosts
        });
        self.hosts
            .load()
            .get(authority.as_str())
            .cloned()
            .unwrap_or(fresh)
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the comment in the body"
    )]
    fn send_http1<F>(
        self: Arc<Self>,
        host: Arc<Host>,
        mut req: Request<BoxBody>,
        in_place: bool,
        finish: F,
    ) -> impl Future<Output = Result<Response<BoxBody>, BoxError>>
    where
        F: FnOnce(Response<BoxBody>) -> Response<BoxBody>,
    {
        // An async block, not an `async fn`: that would keep its arguments twice (as passed
        // and as moved into its body), in every request's boxed state.
        async move {
            let (mut conn, reused) = match self.checkout_http1(&host, in_place).await {
                Ok(checkedout) => checkedout,
                Err(e) => return Err(unsent(req, e)),
            };
            if !in_place {
                conn.driver.detach();
            }
            conn.requests += 1;
            let carried = CarriedExtensions::off(&mut req);
            let sent = conn.sender.try_send_request(req);
            let sent = if conn.driver.is_attached() {
                conn.driver.drive(sent).await
            } else {
                sent.await
            };
            let response = match carried.back(sent) {
                Ok(response) => response,
                // The pooled connection closed before the request was written: once more, on a
                // new connection (an upstream's keep-alive timeout is no failure).
                Err(Unwritten {
                    back: GivenBack::Request(req),
                    ..
                }) if reused => {
                    let (fresh, response) = self.resend_http1(&host, req, in_place).await?;
                    conn = fresh;
                    response
                }
                Err(e) => return Err(not_sent(&host, e)),
            };
            let reuse = response.status() != StatusCode::SWITCHING_PROTOCOLS;
            if !reuse {
                // The upgrade takes the connection's I/O once hyper's connection has finished.
                conn.driver.detach();
            }
            let lifetime = self.settings.lifetime;
            Ok(finish(response.map(|inner| {
                body::erase(PooledBody {
                    inner,
                    conn: Some(Checkedout {
                        host,
                        conn,
                        lifetime,
                        reuse,
                    }),
                })
            })))
        }
    }

    /// Sends `req`, which a pooled connection gave back unwritten, on a new connection.
    ///
    /// Boxed: rare, and its state (a second send) would otherwise size every request's future.
    fn resend_http1<'a>(
        self: &'a Arc<Self>,
        host: &'a Host,
        mut req: Request<BoxBody>,
        in_place: bool,
    ) -> BoxFuture<'a, Result<Sent, BoxError>> {
        Box::pin(async move {
            tracing::trace!(endpoint = %host.authority, "pooled connection closed; sending again");
            let mut conn = match self.connect_http1(host, in_place).await {
                Ok(conn) => conn,
                Err(e) => return Err(unsent(req, e)),
            };
            conn.requests += 1;
            let carried = CarriedExtensions::off(&mut req);
            let sent = conn.sender.try_send_request(req);
            let response = carried
                .back(conn.driver.drive(sent).await)
                .map_err(|e| not_sent(host, e))?;
            Ok((conn, response))
        })
    }

    /// An idle connection to `host` (and `true`), else a new one (polled in place by its
    /// requests when `in_place`).
    async fn checkout_http1(
        self: &Arc<Self>,
        host: &Host,
        in_place: bool,
    ) -> Result<(Conn1, bool), BoxError> {
        let now = Instant::now();
        let mut spent = 0;
        let (ready, pending) = {
            let mut idle = lock(&host.idle);
            loop {
                let Some(top) = idle.last() else {
                    break (None, None);
                };
                if !self.keeps(top, now) {
                    let lifetime = &self.settings.lifetime;
                    spent += usize::from(lifetime.is_expired(top.conn.established, now));
                    idle.pop();
                    continue;
                }
                if top.conn.sender.is_ready() {
                    break (idle.pop(), None);
                }
                // The most recent one is not ready yet: an older ready one, else wait for it.
                match idle
                    .iter()
                    .rposition(|i| i.conn.sender.is_ready() && self.keeps(i, now))
                {
                    Some(i) => break (Some(idle.remove(i)), None),
                    None => break (None, idle.pop()),
                }
            }
        };
        for _ in 0..spent {
            retired(host);
        }
        if let Some(idle) = ready {
            return Ok((idle.conn, true));
        }
        let Some(waiting) = pending else {
            return Ok((self.connect_http1(host, in_place).await?, false));
        };
        self.wait_until_ready(host, waiting, in_place).await
    }

    /// Waits for `waiting`, an idle connection not ready yet.
    ///
    /// Right after a response body ends, hyper's dispatcher may not have taken the connection
    /// up again (on a multi-threaded runtime it runs beside us): wait for that. Only past a
    /// grace period does a new connection race it, for a connection still sending a request
    /// body that the upstream answered early. (Racing at once made a new connection whenever
    /// the dispatcher was a moment late: connection churn under load.)
    ///
    /// Boxed, as [`Pool::connect_http1`] is: rare, and its state (a timer, the race) would
    /// otherwise size every request's future.
    fn wait_until_ready<'a>(
        self: &'a Arc<Self>,
        host: &'a Host,
        mut waiting: Idle,
        in_place: bool,
    ) -> BoxFuture<'a, Result<(Conn1, bool), BoxError>> {
        Box::pin(async move {
            let connect = pin!(async {
                tokio::time::sleep(READY_GRACE).await;
                self.connect_http1(host, in_place).await
            });
            let ready = std::future::poll_fn(|cx| waiting.conn.sender.poll_ready(cx));
            match futures_util::future::select(ready, connect).await {
                Either::Left((Ok(()), _)) => Ok((waiting.conn, true)),
                Either::Left((Err(_closed), connect)) => Ok((connect.await?, false)),
                Either::Right((connected, ready)) => {
                    drop(ready);
                    lock(&host.idle).push(waiting);
                    Ok((connected?, false))
                }
            }
        })
    }

    /// Whether an idle connection may still be handed out at `now`.
    fn keeps(&self, idle: &Idle, now: Instant) -> bool {
        !idle.conn.sender.is_closed()
            && now.saturating_duration_since(idle.since) < self.settings.idle_timeout
            && !self
                .settings
                .lifetime
                .is_expired(idle.conn.established, now)
    }

    /// A new HTTP/1.1 connection to `host`, polled in place by its requests when `in_place`,
    /// else by a task of its own.
    ///
    /// Boxed: connecting (the connector's future, the handshake) takes a few KiB of state, and
    /// inline it would size, and be copied with, every request's future, most of which reuse
    /// a pooled connection.
    fn connect_http1<'a>(
        self: &'a Arc<Self>,
        host: &'a Host,
        in_place: bool,
    ) -> BoxFuture<'a, Result<Conn1, BoxError>> {
        Box::pin(async move {
            let io = self
                .connector
                .connect(uri(&host.authority))
                .await
                .map_err(|e| connect_failure(&host.authority, e))?;
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| connect_failure(&host.authority, e.into()))?;
            self.reap_from_now_on();
            let connection = connection.with_upgrades();
            let driver = if in_place {
                Driver::new(connection)
            } else {
                // Spawned as it is, not boxed as a driver holds it: hyper's connection is then
                // inlined into the task's poll.
                spawn_connection(connection);
                Driver::elsewhere()
            };
            Ok(Conn {
                sender,
                driver,
                established: Instant::now(),
                requests: 0,
            })
        })
    }

    #[expect(clippy::manual_async_fn, reason = "smaller: see `send_http1`")]
    fn send_http2<F>(
        self: Arc<Self>,
        host: Arc<Host>,
        mut req: Request<BoxBody>,
        finish: F,
    ) -> impl Future<Output = Result<Response<BoxBody>, BoxError>>
    where
        F: FnOnce(Response<BoxBody>) -> Response<BoxBody>,
    {
        // An async block: see `send_http1`.
        async move {
            let (mut sender, reused) = match self.checkout_http2(&host).await {
                Ok(checkedout) => checkedout,
                Err(e) => return Err(unsent(req, e)),
            };
            // hyper keeps a request whose stream the upstream refused: a copy to give back.
            let copy = Unsent::copy_for_http2(&req);
            let carried = CarriedExtensions::off(&mut req);
            let response = match carried.back(sender.try_send_request(req).await) {
                Ok(response) => response,
                // The checkout sees the closed connection and replaces it. Boxed: a rare path,
                // kept out of every request's future.
                Err(Unwritten {
                    back: GivenBack::Request(req),
                    ..
                }) if reused => Box::pin(self.resend_http2(&host, req, copy)).await?,
                Err(e) => return Err(not_sent_http2(&host, e, copy)),
            };
            Ok(finish(response.map(body::boxed)))
        }
    }

    /// Sends `req` again, on the connection a new checkout gives.
    async fn resend_http2(
        self: &Arc<Self>,
        host: &Host,
        mut req: Request<BoxBody>,
        copy: Option<Request<BoxBody>>,
    ) -> Result<Response<Incoming>, BoxError> {
        let (mut sender, _) = match self.checkout_http2(host).await {
            Ok(checkedout) => checkedout,
            Err(e) => return Err(unsent(req, e)),
        };
        let carried = CarriedExtensions::off(&mut req);
        carried
            .back(sender.try_send_request(req).await)
            .map_err(|e| not_sent_http2(host, e, copy))
    }

    /// The endpoint's HTTP/2 connection (and whether it was there before), counted for one
    /// more request; connects when there is none (one connect at a time).
    async fn checkout_http2(self: &Arc<Self>, host: &Host) -> Result<(Http2, bool), BoxError> {
        let mut connected: Option<(Http2, Connecting)> = None;
        // A connection made for us can be retired by the others waiting for it
        // (`maxRequestsPerConnection`) before we count ourselves on it: connect again then.
        for _ in 0..3 {
            let connecting = {
                let now = Instant::now();
                let mut shared = lock(&host.shared);
                if let Some((sender, ours)) = connected.take()
                    && shared.connecting.as_ref().is_some_and(|c| c.ptr_eq(&ours))
                {
                    // The first of its waiters to come back installs the new connection.
                    shared.connecting = None;
                    shared.conn = Some(Conn {
                        sender,
                        driver: (),
                        established: now,
                        requests: 0,
                    });
                    shared.last_used = Some(now);
                }
                if let Some(conn) = &shared.conn
                    && !self.keeps_shared(conn, shared.last_used, now)
                {
                    if self.settings.lifetime.is_expired(conn.established, now) {
                        retired(host);
                    }
                    shared.conn = None;
                }
                if let Some(conn) = &mut shared.conn {
                    conn.requests += 1;
                    let sender = conn.sender.clone();
                    let reused = conn.requests > 1;
                    if self.settings.lifetime.is_spent(conn.requests) {
                        shared.conn = None;
                        retired(host);
                    }
                    shared.last_used = Some(now);
                    return Ok((sender, reused));
                }
                match &shared.connecting {
                    // (A failure nobody was left waiting for is not handed to later requests.)
                    Some(connecting) if !matches!(connecting.peek(), Some(Err(_))) => {
                        connecting.clone()
                    }
                    _ => {
                        let connecting = self.connect_http2(&host.authority).shared();
                        shared.connecting = Some(connecting.clone());
                        connecting
                    }
                }
            };
            match connecting.clone().await {
                Ok(sender) => connected = Some((sender, connecting)),
                Err(e) => {
                    // The next request tries again.
                    let mut shared = lock(&host.shared);
                    if shared
                        .connecting
                        .as_ref()
                        .is_some_and(|c| c.ptr_eq(&connecting))
                    {
                        shared.connecting = None;
                    }
                    return Err(connect_failure(&host.authority, Box::new(e)));
                }
            }
        }
        // Still no connection to count on: use the last one made.
        match connected {
            Some((sender, _)) => Ok((sender, false)),
            None => Err(connect_failure(
                &host.authority,
                "HTTP/2 connections retired as soon as made".into(),
            )),
        }
    }

    /// Whether the HTTP/2 connection, last used then, may still be handed out at `now`.
    fn keeps_shared(&self, conn: &Conn<Http2>, last_used: Option<Instant>, now: Instant) -> bool {
        !conn.sender.is_closed()
            && last_used
                .is_some_and(|t| now.saturating_duration_since(t) < self.settings.idle_timeout)
            && !self.settings.lifetime.is_expired(conn.established, now)
    }

    /// Connects to `authority` over HTTP/2 (prior knowledge).
    fn connect_http2(
        self: &Arc<Self>,
        authority: &Authority,
    ) -> BoxFuture<'static, Result<Http2, SharedError>> {
        let connect = self.connector.connect(uri(authority));
        self.reap_from_now_on();
        Box::pin(async move {
            let io = connect.await.map_err(SharedError::new)?;
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            let (sender, connection) = builder
                .handshake(io)
                .await
                .map_err(|e| SharedError::new(e.into()))?;
            spawn_connection(connection);
            Ok(sender)
        })
    }

    /// Starts the reaper, once.
    fn reap_from_now_on(self: &Arc<Self>) {
        if self.reaping.load(Ordering::Relaxed) || self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let stop = self.stop.clone();
        let shortest = match self.settings.lifetime.max_duration {
            Some(max) => self.settings.idle_timeout.min(max),
            None => self.settings.idle_timeout,
        };
        let every = shortest.max(Duration::from_millis(10));
        tokio::spawn(reaper(pool, stop, every));
    }

    /// Drops the idle connections past their idle timeout or lifetime, and the endpoints left
    /// without connections. Returns when the next of the connections kept will be past its
    /// idle timeout or lifetime, if it is not used before.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let hosts = self.hosts.load();
        let mut unused = false;
        let mut next: Option<Instant> = None;
        let mut due = |used: Instant, established: Instant| {
            let at = self.expiry(used, established);
            next = Some(next.map_or(at, |n| n.min(at)));
        };
        let lifetime = &self.settings.lifetime;
        for host in hosts.values() {
            let mut spent = 0;
            lock(&host.idle).retain_mut(|i| {
                // Sees whether the upstream closed it meanwhile.
                i.conn.driver.poll_idle();
                let keep = self.keeps(i, now);
                spent += usize::from(!keep && lifetime.is_expired(i.conn.established, now));
                if keep {
                    due(i.since, i.conn.established);
                }
                keep
            });
            {
                let mut shared = lock(&host.shared);
                if let Some(conn) = &shared.conn {
                    if self.keeps_shared(conn, shared.last_used, now) {
                        due(shared.last_used.unwrap_or(now), conn.established);
                    } else {
                        spent += usize::from(lifetime.is_expired(conn.established, now));
                        shared.conn = None;
                    }
                }
            }
            for _ in 0..spent {
                retired(host);
            }
            unused |= host.is_unused();
        }
        drop(hosts);
        if unused {
            self.hosts.rcu(|hosts| {
                hosts
                    .iter()
                    .filter(|(_, host)| !host.is_unused())
                    .map(|(k, host)| (k.clone(), host.clone()))
                    .collect::<HashMap<_, _>>()
            });
        }
        next
    }

    /// When a connection last used at `used` and established at `established` is past its
    /// idle timeout or its lifetime, whichever comes first.
    fn expiry(&self, used: Instant, established: Instant) -> Instant {
        let idle = used + self.settings.idle_timeout;
        match self.settings.lifetime.max_duration {
            Some(max) => idle.min(established + max),
            None => idle,
        }
    }

    /// The number of idle HTTP/1.1 connections to `authority` (for tests).
    #[cfg(test)]
    pub(super) fn idle(&self, authority: &str) -> usize {
        self.hosts
            .load()
            .get(authority)
            .map_or(0, |h| lock(&h.idle).len())
    }

    /// The number of idle HTTP/1.1 connections to `authority` that the requests poll in
    /// place, not a task of their own (for tests).
    #[cfg(test)]
    pub(super) fn idle_in_place(&self, authority: &str) -> usize {
        self.hosts.load().get(authority).map_or(0, |h| {
            lock(&h.idle)
                .iter()
                .filter(|i| i.conn.driver.is_attached())
                .count()
        })
    }

    /// What ends the reaper; the reaper holds a clone while it runs (for tests).
    #[cfg(test)]
    pub(super) fn stop_signal(&self) -> Arc<Notify> {
        self.stop.clone()
    }

    /// Puts `sender`, whose connection a task of its own polls, into the pool as an idle
    /// connection to `authority` (for tests).
    #[cfg(test)]
    pub(super) fn insert_idle(&self, authority: &Authority, sender: Http1) {
        let now = Instant::now();
        lock(&self.host(authority).idle).push(Idle {
            conn: Conn {
                sender,
                driver: Driver::elsewhere(),
                established: now,
                requests: 0,
            },
            since: now,
        });
    }
}

impl Host {
    /// Whether nothing uses the endpoint's entry: no connection, no request holds it (the
    /// map's own reference only).
    fn is_unused(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1 && lock(&self.idle).is_empty() && {
            let shared = lock(&self.shared);
            shared.conn.is_none() && shared.connecting.is_none()
        }
    }
}

/// Reaps `pool` until it is dropped: when the next kept connection expires, or after `every`
/// (its idle timeout) when none is kept, so that a connection is closed within about 10 ms
/// of its idle timeout, as Envoy's per-connection idle timer closes it.
async fn reaper<C: Connector>(pool: Weak<Pool<C>>, stop: Arc<Notify>, every: Duration) {
    const GRANULARITY: Duration = Duration::from_millis(10);
    let mut wake = Instant::now() + every;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = stop.notified() => return,
        }
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        // A connection idle from now on expires `every` from now at the earliest.
        let next = pool.reap(now).map_or(now + every, |at| at.min(now + every));
        wake = next.max(now + GRANULARITY);
    }
}

/// The URI a connector connects to.
fn uri(authority: &Authority) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    // Scheme, authority and path given: always valid.
    Uri::from_parts(parts).unwrap_or_default()
}

/// A connect error, shared by the requests that waited for the connect.
#[derive(Clone, Debug)]
struct SharedError(Arc<BoxError>);

impl SharedError {
    fn new(e: BoxError) -> Self {
        Self(Arc::new(e))
    }
}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// An HTTP/1.1 response body that gives its connection back to the pool once it has ended.
struct PooledBody {
    inner: Incoming,
    conn: Option<Checkedout>,
}

/// A connection out of its pool for one request.
struct Checkedout {
    host: Arc<Host>,
    conn: Conn1,
    lifetime: Lifetime,
    /// False after `101 Switching Protocols`: the connection belongs to the upgrade.
    reuse: bool,
}

impl PooledBody {
    /// The body has ended: the connection goes back, unless retired.
    fn release(&mut self) {
        let Some(out) = self.conn.take() else {
            return;
        };
        if !out.reuse {
            return;
        }
        let now = Instant::now();
        let mut conn = out.conn;
        if out.lifetime.is_spent(conn.requests) || out.lifetime.is_expired(conn.established, now) {
            retired(&out.host);
            return;
        }
        if conn.driver.is_attached() {
            // hyper takes the connection up for the next request once it has seen the
            // response end, usually in the poll that read the end.
            if !conn.sender.is_ready() {
                conn.driver.poll_idle();
            }
            if !conn.sender.is_ready() {
                // Still sending a request body the upstream answered early, or closing: it
                // finishes in a task of its own and closes (its sender is dropped here).
                conn.driver.detach();
                return;
            }
        }
        // (A connection in a task of its own may take a moment to be ready again: a
        // checkout waits for it.)
        lock(&out.host.idle).push(Idle { conn, since: now });
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    // Boxed here, on the rare error, rather than by a wrapper on every frame.
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        let frame = match &mut this.conn {
            Some(out) => out
                .conn
                .driver
                .poll_with(cx, |cx| Pin::new(&mut *inner).poll_frame(cx)),
            None => Pin::new(inner).poll_frame(cx),
        };
        match ready!(frame) {
            Some(Ok(frame)) => {
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // The connection is broken: hyper closes it with the sender.
            Some(Err(e)) => {
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.release();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body never polled to its end that has nothing left (HEAD, 204, 304, or the server
        // stopped polling at the end of the length) still frees its connection; one dropped
        // midway does not (hyper closes the connection when its sender goes).
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
