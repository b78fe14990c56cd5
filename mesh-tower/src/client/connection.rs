//! How the connections to one cluster are made, kept and retired: Istio's
//! `connectionPool.tcp` (`connectTimeout`, `tcpKeepalive`, `maxConnectionDuration`) and
//! `connectionPool.http` (`idleTimeout`, `maxRequestsPerConnection`).
//!
//! The client's pool counts the requests each connection has carried and when it was
//! established, and retires a connection (it finishes what it carries and is never handed out
//! again) once it has served `maxRequestsPerConnection` requests or outlived
//! `maxConnectionDuration`; an idle connection past its lifetime is dropped, not reused.

use mesh_core::model::{ConnectionPool, TcpKeepalive};
use std::time::Duration;
use tokio::time::Instant;

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

    /// Whether a connection that has carried `requests` requests may carry no more.
    pub fn is_spent(&self, requests: u32) -> bool {
        self.max_requests > 0 && requests >= self.max_requests
    }

    /// Whether a connection `established` then is too old to be handed out at `now`.
    pub fn is_expired(&self, established: Instant, now: Instant) -> bool {
        self.max_duration
            .is_some_and(|d| now.saturating_duration_since(established) >= d)
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
