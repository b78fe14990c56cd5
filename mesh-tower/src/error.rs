//! The proxy's errors, and the one place where an error becomes a response.
//!
//! Layers fail with a [`ProxyError`] (boxed as a [`BoxError`], as tower passes errors); the
//! stack's edge calls [`to_response`], which maps it the way Envoy does and marks the
//! response with Envoy's [`ResponseFlag`]. A layer above the one that failed can give the
//! response headers of its own by wrapping the error in [`WithHeaders`] (the router does, with
//! the CORS headers of an allowed origin, as Envoy's CORS filter encodes local replies too).

use crate::body::{self, BoxBody, BoxError};
use crate::flags::{ResponseFlag, ResponseFlags};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// Why the proxy could not serve a request from an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No virtual host or route matches the request.
    #[error("no route for {authority:?}")]
    NoRoute {
        /// The authority that was looked up.
        authority: String,
    },
    /// The request names no destination (no `Host`, no absolute URI).
    #[error("request has no host")]
    MissingHost,
    /// The route's cluster is not in the snapshot.
    #[error("cluster {0} not found")]
    ClusterNotFound(String),
    /// The cluster has no endpoint to send to.
    #[error("no healthy upstream in {0}")]
    NoHealthyUpstream(String),
    /// Connecting to the upstream failed.
    #[error("upstream connect error to {endpoint}: {source}")]
    ConnectFailure {
        /// The endpoint tried.
        endpoint: String,
        /// The connect error.
        #[source]
        source: BoxError,
    },
    /// The upstream connection failed after the request was sent.
    #[error("upstream connection to {endpoint} failed: {source}")]
    UpstreamReset {
        /// The endpoint tried.
        endpoint: String,
        /// The I/O or protocol error.
        #[source]
        source: BoxError,
    },
    /// The request could not be turned into a valid upstream request.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The route timeout (or, with `per_try`, one try's timeout) expired.
    #[error("upstream request timeout")]
    Timeout {
        /// Whether it was a per-try timeout.
        per_try: bool,
    },
    /// A circuit breaker limit was reached (connections, pending requests, requests, retries).
    #[error("upstream overflow: {0}")]
    Overflow(String),
    /// A retry was refused because the cluster's `maxRetries` retries were already in
    /// flight: the retry layer answers with the previous try's result, as Envoy does.
    #[error("upstream retry overflow: {0}")]
    RetryOverflow(String),
    /// A local rate limit was reached.
    #[error("local_rate_limited")]
    RateLimited,
    /// A response stream sent nothing for the stream idle timeout.
    #[error("stream idle timeout")]
    StreamIdleTimeout,
}

impl ProxyError {
    /// The status code and response flag Envoy uses for this error.
    pub fn status_and_flag(&self) -> (StatusCode, ResponseFlag) {
        match self {
            Self::NoRoute { .. } => (StatusCode::NOT_FOUND, ResponseFlag::NoRouteFound),
            // Envoy's `missing_host_header`: the request names no host to route by.
            Self::MissingHost => (
                StatusCode::BAD_REQUEST,
                ResponseFlag::DownstreamProtocolError,
            ),
            Self::ClusterNotFound(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::NoClusterFound,
            ),
            Self::NoHealthyUpstream(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::NoHealthyUpstream,
            ),
            Self::ConnectFailure { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::UpstreamConnectionFailure,
            ),
            Self::UpstreamReset { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::UpstreamConnectionTermination,
            ),
            Self::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                ResponseFlag::DownstreamProtocolError,
            ),
            Self::Timeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                ResponseFlag::UpstreamRequestTimeout,
            ),
            Self::Overflow(_) | Self::RetryOverflow(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::UpstreamOverflow,
            ),
            Self::RateLimited => (StatusCode::TOO_MANY_REQUESTS, ResponseFlag::RateLimited),
            Self::StreamIdleTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, ResponseFlag::StreamIdleTimeout)
            }
        }
    }
}

/// A failure on its way to the stack's edge with headers its response is to carry: the
/// CORS headers the router decided for a request from an allowed origin. [`to_response`]
/// answers as it would for the wrapped error, with these headers added (each replacing any of
/// its name).
///
/// It is the wrapped error as far as `Display` and `source` go, so its text is the wrapped
/// error's; look for the wrapped error with [`WithHeaders::get_ref`], not by downcasting.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use mesh_tower::error::{self, ProxyError, WithHeaders};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("access-control-allow-origin", HeaderValue::from_static("https://app.example"));
/// let error = WithHeaders::new(ProxyError::Timeout { per_try: false }.into(), headers);
/// let response = error::to_response(&error.into());
/// assert_eq!(response.status(), 504);
/// assert_eq!(response.headers()["access-control-allow-origin"], "https://app.example");
/// ```
#[derive(Debug)]
pub struct WithHeaders {
    error: BoxError,
    headers: HeaderMap,
}

impl WithHeaders {
    /// `error`, whose response is to carry `headers`.
    pub fn new(error: BoxError, headers: HeaderMap) -> Self {
        Self { error, headers }
    }

    /// The wrapped error.
    pub fn get_ref(&self) -> &BoxError {
        &self.error
    }

    /// The headers the response is to carry.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The wrapped error, without the headers.
    pub fn into_inner(self) -> BoxError {
        self.error
    }
}

impl std::fmt::Display for WithHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for WithHeaders {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Turns any error from a stack into the response the client gets.
///
/// [`ProxyError`]s map as Envoy maps them; any other error is an upstream failure (503 with
/// `UC`). The body is Envoy-style plain text, e.g. `no healthy upstream`. A [`WithHeaders`]
/// answers as the error it wraps, with its headers.
pub fn to_response(error: &BoxError) -> Response<BoxBody> {
    if let Some(with) = error.downcast_ref::<WithHeaders>() {
        let mut response = to_response(&with.error);
        response.headers_mut().extend(with.headers.clone());
        return response;
    }
    let (status, flag) = match error.downcast_ref::<ProxyError>() {
        Some(e) => e.status_and_flag(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlag::UpstreamConnectionTermination,
        ),
    };
    let text = match error.downcast_ref::<ProxyError>() {
        Some(ProxyError::NoHealthyUpstream(_)) => "no healthy upstream".to_owned(),
        _ => error.to_string(),
    };
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    ResponseFlags::mark(&mut response, flag);
    response
}
