//! Istio's API resources as they are written in YAML (camelCase, unknown fields rejected).
//!
//! These mirror `networking.istio.io` v1/v1beta1/v1alpha3 and `security.istio.io` v1/v1beta1
//! field for field, deprecated fields included, so that real configs parse; what the mesh does
//! with each field is decided when the model is built.
#![allow(missing_docs)]

use serde::Deserialize;
use std::collections::BTreeMap;

/// `metadata`: only name, namespace and annotations matter; other fields are tolerated.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A Kubernetes-style object with a spec.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: S,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry / WorkloadEntry

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// VirtualService

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// A VirtualService's `tcp` rule: opaque TCP connections matching `match` go to `route`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// Istio's `L4MatchAttributes`: the conditions of a `tcp` rule's match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    /// Deprecated in Istio and not implemented there either.
    #[serde(default)]
    pub source_subnet: Option<String>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// A VirtualService's `tls` rule: TLS connections (not terminated) matching `match`, by their
/// ClientHello's SNI among others, go to `route`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// Istio's `TLSMatchAttributes`: the conditions of a `tls` rule's match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// Istio's `RouteDestination` (a `tcp` or `tls` rule's destination: no header operations).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    #[serde(default)]
    pub delegate: Option<Delegate>,
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// Istio's `StringMatch`: exactly one of exact, prefix, regex (empty: presence only).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    pub status: u32,
    #[serde(default)]
    pub body: Option<HttpBody>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default)]
    pub string: Option<String>,
    #[serde(default)]
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: Option<i64>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub exponential_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    #[serde(default)]
    pub percent: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<i64>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub http2_error: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage (older Istio releases).
    #[serde(default)]
    pub percent: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default)]
    pub tunnel: Option<serde_json::Value>,
    #[serde(default)]
    pub proxy_protocol: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
    #[serde(default)]
    pub warmup: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    #[serde(default)]
    pub maglev: Option<Maglev>,
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    #[serde(default)]
    pub table_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: Option<u32>,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    #[serde(default)]
    pub max_concurrent_streams: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated: same as consecutiveGatewayErrors.
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    #[serde(default)]
    pub min_health_percent: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub ca_crl: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Sidecar

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
    #[serde(default)]
    pub egress: Vec<IstioEgressListener>,
    #[serde(default)]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub egress_proxy: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    #[serde(default)]
    pub port: Option<SidecarPort>,
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub capture_mode: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    pub port: SidecarPort,
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub capture_mode: Option<String>,
    #[serde(default)]
    pub default_endpoint: Option<String>,
    #[serde(default)]
    pub tls: Option<serde_json::Value>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Security

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    #[serde(default)]
    pub selector: Option<SecuritySelector>,
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
}

/// `security.istio.io` RequestAuthentication: end-user JWT validation for the selected
/// workloads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    #[serde(default)]
    pub selector: Option<SecuritySelector>,
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// One issuer's JWT rule (`spec.jwtRules[]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A header a JWT is read from (`fromHeaders[]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

/// A claim copied to a request header (`outputClaimToHeaders[]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// The security API's workload selector (`matchLabels`, unlike networking's `labels`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecuritySelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Operation,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    #[serde(default)]
    pub selector: Option<SecuritySelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: Option<String>,
}
