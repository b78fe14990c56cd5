use super::Labels;
use std::fmt;
use std::net::IpAddr;

/// A fully qualified service host name (`reviews.default.svc.cluster.local`, `api.example.com`).
pub type Hostname = String;

/// A service in the registry (from a ServiceEntry, or from xDS clusters).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    /// The service's host name.
    pub hostname: Hostname,
    /// The namespace the service belongs to.
    pub namespace: String,
    /// The ports the service exposes.
    pub ports: Vec<ServicePort>,
    /// How endpoint addresses are resolved.
    pub resolution: Resolution,
    /// Whether the service is part of the mesh (mTLS applies) or outside it.
    pub location: ServiceLocation,
    /// Identities the service's endpoints may present (ServiceEntry `subjectAltNames`).
    pub subject_alt_names: Vec<String>,
    /// The service's virtual addresses (ServiceEntry `addresses`, a Kubernetes ClusterIP):
    /// an intercepted connection to one of them, on a service port, goes to the service.
    pub addresses: Vec<ipnet::IpNet>,
}

impl Service {
    /// The service port numbered `number`, if it exists.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// A port of a service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    /// The port number clients address.
    pub number: u16,
    /// The port's name (`http`, `grpc-web`).
    pub name: String,
    /// The protocol spoken on the port.
    pub protocol: Protocol,
    /// The port on the endpoints, when it differs from `number`.
    pub target_port: Option<u16>,
}

/// The application protocol of a port, as Istio names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1 (or HTTP/2 when the client speaks it).
    #[default]
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// HTTPS: TLS the mesh does not terminate.
    Https,
    /// TLS the mesh does not terminate.
    Tls,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// Whether requests on this protocol are HTTP (routable by the route table).
    pub const fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }

    /// Whether the port carries TLS the mesh does not terminate (`HTTPS`, `TLS`): a
    /// VirtualService's `tls` rules route its connections by SNI.
    pub const fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }
}

/// How the addresses of a service's endpoints are found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Resolution {
    /// Endpoints are given as IP addresses.
    #[default]
    Static,
    /// Endpoints are host names resolved through DNS.
    Dns,
    /// Connect to the address the client asked for.
    None,
}

/// Whether a service is inside the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum ServiceLocation {
    /// Inside the mesh: its workloads run a mesh proxy.
    #[default]
    MeshInternal,
    /// Outside the mesh.
    MeshExternal,
}

/// The address of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Address {
    /// An IP address.
    Ip(IpAddr),
    /// A DNS name, resolved when connecting.
    Dns(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Dns(name) => f.write_str(name),
        }
    }
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// Where the instance is.
    pub address: Address,
    /// The port to connect to.
    pub port: u16,
    /// The instance's labels, which subsets select on.
    pub labels: Labels,
    /// The relative load-balancing weight (1 when unset).
    pub weight: u32,
    /// Where the instance runs.
    pub locality: Locality,
    /// The instance's health as the source reports it.
    pub health: HealthStatus,
    /// The instance's service account, when known (its expected SPIFFE identity).
    pub service_account: Option<String>,
    /// The instance's namespace, when known.
    pub namespace: Option<String>,
    /// Envoy's priority level (EDS `priority`; 0, the first, when unset): traffic stays on
    /// the lowest level while it is healthy and spills to the next as its healthy share drops.
    pub priority: u32,
    /// The workload the instance belongs to (Istio's workload name, such as `reviews-v1`),
    /// when the source says (istiod's EDS endpoint metadata does), for metric labels.
    pub workload: Option<String>,
    /// The cluster the instance runs in (Istio's cluster id), when the source says.
    pub cluster_id: Option<String>,
}

impl Endpoint {
    /// `address:port`, as it appears in logs and `/clusters`.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

/// The health of an endpoint as the config source reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum HealthStatus {
    /// Healthy, or unknown (treated as healthy).
    #[default]
    Healthy,
    /// Unhealthy: never chosen.
    Unhealthy,
    /// Draining (EDS `DRAINING`): takes no new requests, as in Envoy.
    Draining,
    /// Degraded (EDS `DEGRADED`): able to serve, but chosen only when no healthy endpoint is
    /// left, as Envoy routes to degraded hosts only when the healthy ones are not enough.
    Degraded,
}

/// A place in the topology: `region/zone/subzone`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Locality {
    /// The region (`us-east1`).
    pub region: String,
    /// The zone within the region.
    pub zone: String,
    /// The subzone within the zone.
    pub subzone: String,
}

impl Locality {
    /// Parses Istio's `region/zone/subzone` form (trailing parts optional).
    ///
    /// ```
    /// use mesh_core::model::Locality;
    /// let l = Locality::parse("eu-west/zone-a");
    /// assert_eq!((l.region.as_str(), l.zone.as_str(), l.subzone.as_str()), ("eu-west", "zone-a", ""));
    /// ```
    pub fn parse(s: &str) -> Self {
        let mut parts = s.splitn(3, '/');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        Self {
            region: next(),
            zone: next(),
            subzone: next(),
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}
