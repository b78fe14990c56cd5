//! The xDS resource types this client understands, and their type URLs.

use std::fmt;

/// An xDS resource type served over ADS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    ClusterLoadAssignment,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    RouteConfiguration,
    /// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
    Secret,
}

impl ResourceType {
    /// Every type, in the order subscriptions are sent (CDS before EDS, LDS before RDS, as
    /// Envoy orders them so that warming never waits on a later request).
    pub const ALL: [ResourceType; 5] = [
        Self::Cluster,
        Self::ClusterLoadAssignment,
        Self::Listener,
        Self::RouteConfiguration,
        Self::Secret,
    ];

    /// The type URL on the wire.
    pub const fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            Self::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    /// The type with this URL, if this client understands it.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether the type is subscribed to as a wildcard (every resource the server has): LDS
    /// and CDS. The others are subscribed to by name, as the wildcard types reference them.
    pub const fn is_wildcard(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }

    /// The short name used in logs and errors (`Listener`, `Cluster`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::ClusterLoadAssignment => "ClusterLoadAssignment",
            Self::Listener => "Listener",
            Self::RouteConfiguration => "RouteConfiguration",
            Self::Secret => "Secret",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
