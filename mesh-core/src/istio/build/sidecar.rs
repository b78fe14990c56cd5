//! The Sidecar resource: its ingress listeners (where inbound traffic for each port goes) and
//! its outbound traffic policy.

use super::{At, Findings, values};
use crate::istio::{Resource, Spec, api};
use crate::model::{InboundListener, OutboundTrafficPolicy, Workload, selects};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What the Sidecar that applies to a workload sets.
#[derive(Default)]
pub(super) struct SidecarSettings {
    /// Its ingress listeners.
    pub(super) inbound: Vec<InboundListener>,
    /// Its `outboundTrafficPolicy.mode`.
    pub(super) outbound_traffic_policy: OutboundTrafficPolicy,
    /// The services its `egress` listeners import; `None` without egress listeners (every
    /// service is in view).
    pub(super) egress: Option<Egress>,
}

/// A Sidecar's egress listeners: which services, on which ports, the workload sees (Istio's
/// Sidecar scoping).
#[derive(Debug, Default)]
pub(super) struct Egress {
    /// The listeners bound to a port: each one alone decides what is seen on its port.
    by_port: Vec<(u16, Hosts)>,
    /// The listener without a port (at most one, the last): what is seen on every other port.
    catch_all: Option<Hosts>,
}

/// One listener's `namespace/host` patterns: (namespace, host), namespace `None` for `*`;
/// host `*`, `*.suffix` or exact.
type Hosts = Vec<(Option<String>, String)>;

impl Egress {
    /// Whether port `port` of the service `host` of `namespace` is imported: by the listener
    /// bound to that port when there is one, else by the listener without a port, as istiod
    /// builds each port's listener and routes from one egress listener
    /// (`GetEgressListenerForRDS`).
    pub(super) fn imports(&self, namespace: &str, host: &str, port: u16) -> bool {
        let hosts = match self.by_port.iter().find(|(p, _)| *p == port) {
            Some((_, hosts)) => hosts,
            None => match &self.catch_all {
                Some(hosts) => hosts,
                None => return false,
            },
        };
        hosts.iter().any(|(ns, pattern)| {
            ns.as_deref().is_none_or(|ns| ns == namespace)
                && match pattern.strip_prefix('*') {
                    Some("") => true,
                    Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
                    None => host == pattern,
                }
        })
    }
}

/// The settings of the Sidecar that applies to `workload` (the first one in its namespace
/// whose selector matches; a Sidecar without a selector applies to the namespace).
pub(super) fn settings(
    resources: &[&Resource],
    workload: &Workload,
    findings: &mut Findings,
) -> SidecarSettings {
    let mut chosen: Option<(&Resource, SidecarSettings)> = None;
    for res in resources {
        let Spec::Sidecar(sidecar) = &res.spec else {
            continue;
        };
        // Every Sidecar is checked, whether or not it applies here.
        let settings = SidecarSettings {
            inbound: listeners(res, findings),
            outbound_traffic_policy: outbound_traffic_policy(sidecar, &mut findings.at(res)),
            egress: egress(sidecar, &res.namespace, &mut findings.at(res)),
        };
        let applies = res.namespace == workload.namespace
            && sidecar
                .workload_selector
                .as_ref()
                .is_none_or(|s| selects(&s.labels, &workload.labels));
        match &chosen {
            _ if !applies => {}
            Some((first, _)) => findings.warn(
                res,
                "spec.workloadSelector",
                format!(
                    "{} already applies to this workload; this Sidecar is ignored",
                    first.key()
                ),
            ),
            None => chosen = Some((res, settings)),
        }
    }
    chosen.map(|(_, settings)| settings).unwrap_or_default()
}

/// The egress listeners, with Istio's validation: at most one listener without a port, and it
/// comes last; one listener per port. Hosts are `namespace/dnsName` (Istio's form): namespace
/// `.` is the Sidecar's own, `*` any, `~` none; the name `*`, `*.suffix` or a full host name.
fn egress(sidecar: &api::Sidecar, namespace: &str, at: &mut At<'_>) -> Option<Egress> {
    if sidecar.egress.is_empty() {
        return None;
    }
    let mut out = Egress::default();
    let last = sidecar.egress.len() - 1;
    for (i, listener) in sidecar.egress.iter().enumerate() {
        let field = format!("spec.egress[{i}]");
        if listener.bind.is_some() || listener.capture_mode.is_some() {
            at.warn(
                &field,
                "bind and captureMode are not applied: outbound traffic is captured on every \
                 address",
            );
        }
        if listener.hosts.is_empty() {
            at.error(&format!("{field}.hosts"), "at least one host is required");
        }
        let hosts = egress_hosts(&listener.hosts, namespace, &field, at);
        match &listener.port {
            Some(port) => {
                let Some(number) =
                    at.check(&format!("{field}.port.number"), values::port(port.number))
                else {
                    continue;
                };
                if out.by_port.iter().any(|(p, _)| *p == number) {
                    at.error(
                        &format!("{field}.port.number"),
                        format!("another egress listener is bound to port {number}; ports must be unique"),
                    );
                    continue;
                }
                out.by_port.push((number, hosts));
            }
            None if out.catch_all.is_some() => at.error(
                &format!("{field}.port"),
                "only one egress listener may leave out its port",
            ),
            None if i != last => at.error(
                &format!("{field}.port"),
                "the egress listener without a port must be the last one",
            ),
            None => out.catch_all = Some(hosts),
        }
    }
    Some(out)
}

/// One egress listener's `hosts`, checked; a bad entry is an error naming it and is left out.
fn egress_hosts(entries: &[String], namespace: &str, field: &str, at: &mut At<'_>) -> Hosts {
    let mut hosts = Hosts::new();
    for (j, entry) in entries.iter().enumerate() {
        let Some((ns, host)) = entry.split_once('/') else {
            at.error(
                &format!("{field}.hosts[{j}]"),
                format!("{entry:?} is not namespace/dnsName (use ./{entry} for this namespace, */{entry} for any)"),
            );
            continue;
        };
        let ns = match ns {
            "~" => continue, // Imports nothing.
            "*" => None,
            "." => Some(namespace.to_owned()),
            "" => {
                at.error(&format!("{field}.hosts[{j}]"), "the namespace is empty");
                continue;
            }
            ns => Some(ns.to_owned()),
        };
        let host = host.to_ascii_lowercase();
        if values::hostname(&host, true).is_err() {
            at.error(
                &format!("{field}.hosts[{j}]"),
                format!("{entry:?}: the name must be *, *.suffix or a host name"),
            );
            continue;
        }
        hosts.push((ns, host));
    }
    hosts
}

/// `outboundTrafficPolicy.mode`: `ALLOW_ANY` (the default) or `REGISTRY_ONLY`.
fn outbound_traffic_policy(sidecar: &api::Sidecar, at: &mut At<'_>) -> OutboundTrafficPolicy {
    let Some(policy) = &sidecar.outbound_traffic_policy else {
        return OutboundTrafficPolicy::AllowAny;
    };
    if policy.egress_proxy.is_some() {
        at.error(
            "spec.outboundTrafficPolicy.egressProxy",
            "an egress proxy for unknown destinations is not supported by this proxy",
        );
    }
    match policy.mode.as_deref() {
        None | Some("ALLOW_ANY") => OutboundTrafficPolicy::AllowAny,
        Some("REGISTRY_ONLY") => OutboundTrafficPolicy::RegistryOnly,
        Some(other) => {
            at.error(
                "spec.outboundTrafficPolicy.mode",
                format!("unknown mode {other:?}: expected ALLOW_ANY or REGISTRY_ONLY"),
            );
            OutboundTrafficPolicy::AllowAny
        }
    }
}

fn listeners(res: &Resource, findings: &mut Findings) -> Vec<InboundListener> {
    let Spec::Sidecar(sidecar) = &res.spec else {
        return Vec::new();
    };
    let mut at = findings.at(res);
    unsupported(sidecar, &mut at);
    let mut out = Vec::new();
    for (i, ingress) in sidecar.ingress.iter().enumerate() {
        let field = format!("spec.ingress[{i}]");
        if ingress.tls.is_some() {
            // The app would be reached in plaintext where the Sidecar asks for TLS.
            at.error(
                &format!("{field}.tls"),
                "terminating TLS with the Sidecar's own certificate is not supported by this proxy",
            );
        }
        if ingress.connection_pool.is_some() {
            at.warn(
                &format!("{field}.connectionPool"),
                "inbound connection pool limits are not applied by this proxy; ignored",
            );
        }
        if ingress.bind.is_some() || ingress.capture_mode.is_some() {
            at.warn(
                &field,
                "bind and captureMode are not applied: the inbound listener's address and \
                 capture come from the sidecar's flags",
            );
        }
        let Some(port) = at.check(
            &format!("{field}.port.number"),
            values::port(ingress.port.number),
        ) else {
            continue;
        };
        let name = ingress.port.name.clone().unwrap_or_default();
        let Some(protocol) = at.check(
            &format!("{field}.port.protocol"),
            values::protocol(ingress.port.protocol.as_deref(), &name),
        ) else {
            continue;
        };
        let default_endpoint = match ingress.default_endpoint.as_deref() {
            None => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            Some(text) => at.check(&format!("{field}.defaultEndpoint"), endpoint(text)),
        };
        if let Some(default_endpoint) = default_endpoint {
            out.push(InboundListener {
                port,
                protocol,
                default_endpoint,
                rate_limit: None,
            });
        }
    }
    out
}

/// Warnings for the parts of a Sidecar this proxy does not apply where leaving them out only
/// keeps more in view (the ones that would weaken what Istio enforces are errors where they
/// are read).
fn unsupported(sidecar: &api::Sidecar, at: &mut At<'_>) {
    if sidecar.inbound_connection_pool.is_some() {
        at.warn(
            "spec.inboundConnectionPool",
            "inbound connection pool limits are not applied by this proxy; ignored",
        );
    }
}

/// `127.0.0.1:8080`, `0.0.0.0:8080` (the app on any address: loopback is used), `[::1]:8080`.
fn endpoint(text: &str) -> Result<SocketAddr, String> {
    if text.starts_with("unix://") {
        return Err("unix domain socket endpoints are not supported".to_owned());
    }
    let mut addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8080"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    if addr.port() == 0 {
        return Err(format!("{text:?} needs a port"));
    }
    Ok(addr)
}
