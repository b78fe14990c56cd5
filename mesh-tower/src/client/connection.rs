//! How the connections to one cluster are made, kept and retired: Istio's
//! `connectionPool.tcp` (`connectTimeout`, `tcpKeepalive`, `maxConnectionDuration`) and
//! `connectionPool.http` (`idleTimeout`, `maxRequestsPerConnection`).
//!
//! Connections are pooled by hyper-util; each one carries a [`ConnectionStats`] from the
//! moment it is established, so that the client can retire it (hyper-util's *poison*: it
//! finishes what it carries and is never handed out again) once it has served
//! `maxRequestsPerConnection` requests or outlived `maxConnectionDuration`. The lifetime is
//! kept by a timer armed with the connection's first request, so an idle pooled connection
//! past its lifetime is dropped, not reused.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{CaptureConnection, Connected, Connection};
use mesh_core::model::{ConnectionPool, TcpKeepalive};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

/// How long an idle pooled connection is kept when the DestinationRule does not say
/// (`connectionPool.http.idleTimeout`). Envoy's default is one hour; a shorter one avoids
/// reusing connections that upstream servers with short keep-alive timeouts have closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The settings that shape a pool's connections; clusters with equal settings share a pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// TCP keepalive probes, when set.
    pub keepalive: Option<TcpKeepalive>,
    /// How long an idle connection stays in the pool.
    pub idle_timeout: Duration,
    /// Whether the pool speaks HTTP/2 (prior knowledge).
    pub http2: bool,
    /// When connections are retired.
    pub lifetime: Lifetime,
    /// Which set of connections (see [`crate::balance::StreamSlot`]): each slot is a pool of
    /// its own, so HTTP/2 streams past `maxConcurrentStreams` go over another connection.
    pub slot: u32,
}

impl PoolSettings {
    /// Envoy's defaults: 10 s to connect, no keepalive probes.
    pub fn new(http2: bool) -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            keepalive: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            http2,
            lifetime: Lifetime::default(),
            slot: 0,
        }
    }

    /// The settings `pool` asks for.
    pub fn of(pool: &ConnectionPool, http2: bool) -> Self {
        Self {
            connect_timeout: pool.connect_timeout,
            keepalive: pool.tcp_keepalive.clone(),
            idle_timeout: pool.http_idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            http2,
            lifetime: Lifetime::of(pool),
            slot: 0,
        }
    }
}

/// When a connection is retired: after `max_requests` requests (0: never) or once older than
/// `max_duration`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lifetime {
    /// `maxRequestsPerConnection` (0: unlimited).
    pub max_requests: u32,
    /// `maxConnectionDuration`.
    pub max_duration: Option<Duration>,
}

impl Lifetime {
    /// The lifetime `pool` sets.
    pub fn of(pool: &ConnectionPool) -> Self {
        Self {
            max_requests: pool.max_requests_per_connection,
            max_duration: pool.max_connection_duration,
        }
    }

    /// Whether connections need to be watched at all.
    pub fn is_limited(&self) -> bool {
        self.max_requests > 0 || self.max_duration.is_some()
    }

    /// Counts one more request on the connection `captured` used, and retires the connection
    /// when that was its last. Returns whether it was retired.
    pub fn account(&self, captured: &CaptureConnection) -> bool {
        let metadata = captured.connection_metadata();
        let Some(connected) = metadata.as_ref() else {
            return false;
        };
        let mut extras = http::Extensions::new();
        connected.get_extras(&mut extras);
        let Some(stats) = extras.get::<Arc<ConnectionStats>>() else {
            return false;
        };
        let served = stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let spent = self.max_requests > 0 && served >= self.max_requests;
        let expired = self
            .max_duration
            .is_some_and(|d| stats.established.elapsed() >= d);
        if spent || expired {
            connected.poison();
        } else if let Some(max) = self.max_duration
            && !stats.timer_armed.swap(true, Ordering::Relaxed)
        {
            let deadline = stats.established + max;
            let captured = captured.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                if let Some(connected) = captured.connection_metadata().as_ref() {
                    connected.poison();
                }
            });
        }
        spent || expired
    }
}

/// What is known of one upstream connection.
#[derive(Debug)]
pub struct ConnectionStats {
    established: Instant,
    requests: AtomicU32,
    timer_armed: AtomicBool,
}

impl ConnectionStats {
    fn new() -> Self {
        Self {
            established: Instant::now(),
            requests: AtomicU32::new(0),
            timer_armed: AtomicBool::new(false),
        }
    }
}

/// Applies `settings` to a TCP connector.
pub fn configure(
    connector: &mut hyper_util::client::legacy::connect::HttpConnector,
    settings: &PoolSettings,
) {
    connector.set_nodelay(true);
    connector.enforce_http(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    if let Some(keepalive) = &settings.keepalive {
        // Envoy's (and Linux's) default of 2 hours before the first probe when only some of
        // the three are set.
        connector.set_keepalive(Some(keepalive.time.unwrap_or(Duration::from_secs(7200))));
        connector.set_keepalive_interval(keepalive.interval);
        connector.set_keepalive_retries(keepalive.probes);
    }
}

/// A connector whose connections carry their [`ConnectionStats`] when their pool limits
/// their lifetime (hyper-util copies a connection's extra into every response's extensions:
/// an allocation per response that unlimited pools do without).
#[derive(Clone, Debug)]
pub struct Tracked<C> {
    inner: C,
    track: bool,
}

impl<C> Tracked<C> {
    /// Tracks the connections `inner` makes for a pool whose connections live by `lifetime`.
    pub fn new(inner: C, lifetime: &Lifetime) -> Self {
        Self {
            inner,
            track: lifetime.is_limited(),
        }
    }
}

impl<C> Service<http::Uri> for Tracked<C>
where
    C: Service<http::Uri>,
{
    type Response = TrackedIo<C::Response>;
    type Error = C::Error;
    type Future = futures_util::future::MapOk<C::Future, fn(C::Response) -> TrackedIo<C::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        use futures_util::TryFutureExt;
        let wrap: fn(C::Response) -> TrackedIo<C::Response> = if self.track {
            TrackedIo::tracked
        } else {
            TrackedIo::untracked
        };
        self.inner.call(uri).map_ok(wrap)
    }
}

pin_project_lite::pin_project! {
    /// A connection with its [`ConnectionStats`] (when its pool limits its lifetime).
    #[derive(Debug)]
    pub struct TrackedIo<T> {
        #[pin]
        io: T,
        stats: Option<Arc<ConnectionStats>>,
    }
}

impl<T> TrackedIo<T> {
    fn tracked(io: T) -> Self {
        Self {
            io,
            stats: Some(Arc::new(ConnectionStats::new())),
        }
    }

    fn untracked(io: T) -> Self {
        Self { io, stats: None }
    }
}

impl<T: Connection> Connection for TrackedIo<T> {
    fn connected(&self) -> Connected {
        match &self.stats {
            Some(stats) => self.io.connected().extra(stats.clone()),
            None => self.io.connected(),
        }
    }
}

impl<T: Read> Read for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: Write> Write for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}
