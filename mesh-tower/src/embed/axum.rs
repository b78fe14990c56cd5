//! The embedding API for axum 0.8 (feature `axum`): [`MeshListener`] as an
//! `axum::serve::Listener`, a make-service that puts each connection's [`PeerInfo`] into its
//! requests, and extractors for the peer identity and the authorization verdict.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use mesh_tower::embed::Mesh;
//! use mesh_tower::embed::axum::{PeerIdentity, with_peer_info};
//!
//! async fn whoami(PeerIdentity(peer): PeerIdentity) -> String {
//!     format!("hello {}", peer.id)
//! }
//!
//! # async fn example(mesh: Mesh) -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new()
//!     .route("/", get(whoami))
//!     .layer(mesh.inbound_layer()); // authorization, rate limit, telemetry
//! // TLS by PeerAuthentication (STRICT / PERMISSIVE / DISABLE), the workload's credentials.
//! let listener = mesh.listener(tokio::net::TcpListener::bind("0.0.0.0:8443").await?)?;
//! axum::serve(listener, with_peer_info(app))
//!     .with_graceful_shutdown(mesh.shutdown_signal())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! The extractors read what [`AddPeerInfo`] and the inbound layer put into the request's
//! extensions:
//! - [`PeerIdentity`]: the client's verified SPIFFE identity. Taken as `PeerIdentity` the
//!   handler only runs for mutual TLS clients; others get `403` with [`MissingPeerIdentity`]'s
//!   text. Taken as `Option<PeerIdentity>` it is `None` for plaintext (PERMISSIVE) or
//!   server-only TLS clients.
//! - [`Verdict`]: the AuthorizationPolicy decision that let the request through (which policy
//!   and rule), present when a policy applies to the workload. Taken as `Verdict` without one,
//!   the handler is not run and the client gets `500` ([`MissingVerdict`]: a server set-up
//!   error, not the client's); `Option<Verdict>` is `None` then.

use super::listener::{AddPeerInfo, MeshListener, MeshStream, PeerInfo};
use ::axum::extract::{FromRequestParts, OptionalFromRequestParts};
use ::axum::response::{IntoResponse, Response};
use ::axum::serve::{IncomingStream, Listener};
use http::StatusCode;
use http::request::Parts;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use tower_service::Service;

impl Listener for MeshListener {
    type Io = MeshStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (MeshStream, SocketAddr) {
        match MeshListener::accept(self).await {
            Ok(accepted) => accepted,
            Err(e) => {
                // axum's contract: accept never fails. The accept task only ends on a panic;
                // say so once and accept nothing more.
                tracing::error!(error = %e, "mesh listener stopped accepting");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(MeshListener::local_addr(self))
    }
}

/// Makes `app`'s per-connection service for `axum::serve` over a [`MeshListener`]: each
/// request carries its connection's [`PeerInfo`] as extensions ([`crate::server::ConnectionInfo`],
/// [`crate::tls::TlsInfo`], [`mesh_policy::PeerIdentity`]), before `app` (and the inbound
/// layer inside it) sees it.
pub fn with_peer_info<S>(app: S) -> WithPeerInfo<S> {
    WithPeerInfo { app }
}

/// The make-service [`with_peer_info`] returns.
#[derive(Clone, Debug)]
pub struct WithPeerInfo<S> {
    app: S,
}

impl<S: Clone> Service<IncomingStream<'_, MeshListener>> for WithPeerInfo<S> {
    type Response = AddPeerInfo<S>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<AddPeerInfo<S>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, MeshListener>) -> Self::Future {
        let info: PeerInfo = stream.io().info().clone();
        std::future::ready(Ok(AddPeerInfo::new(self.app.clone(), info)))
    }
}

/// Extracts the client's verified SPIFFE identity (mutual TLS); see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(pub mesh_policy::PeerIdentity);

impl std::ops::Deref for PeerIdentity {
    type Target = mesh_policy::PeerIdentity;
    fn deref(&self) -> &mesh_policy::PeerIdentity {
        &self.0
    }
}

/// The rejection of [`PeerIdentity`]: the request did not come over mutual TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("a verified peer identity is required: connect with mutual TLS and a workload certificate")]
pub struct MissingPeerIdentity;

impl IntoResponse for MissingPeerIdentity {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerIdentity {
    type Rejection = MissingPeerIdentity;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, MissingPeerIdentity> {
        parts
            .extensions
            .get::<mesh_policy::PeerIdentity>()
            .cloned()
            .map(Self)
            .ok_or(MissingPeerIdentity)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for PeerIdentity {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(parts
            .extensions
            .get::<mesh_policy::PeerIdentity>()
            .cloned()
            .map(Self))
    }
}

/// Extracts the authorization verdict that allowed the request; see the module docs.
#[derive(Clone, Debug)]
pub struct Verdict(pub mesh_policy::authz::Verdict);

impl std::ops::Deref for Verdict {
    type Target = mesh_policy::authz::Verdict;
    fn deref(&self) -> &mesh_policy::authz::Verdict {
        &self.0
    }
}

/// The rejection of [`Verdict`]: no AuthorizationPolicy applied to the request, or the
/// inbound layer is not in front of the handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error(
    "no authorization verdict: no AuthorizationPolicy applies to this workload, or the mesh's inbound layer is not in front of this handler"
)]
pub struct MissingVerdict;

impl IntoResponse for MissingVerdict {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Verdict {
    type Rejection = MissingVerdict;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, MissingVerdict> {
        parts
            .extensions
            .get::<mesh_policy::authz::Verdict>()
            .cloned()
            .map(Self)
            .ok_or(MissingVerdict)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Verdict {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(parts
            .extensions
            .get::<mesh_policy::authz::Verdict>()
            .cloned()
            .map(Self))
    }
}
