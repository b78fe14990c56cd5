//! The Sidecar resource's ingress listeners: where inbound traffic for each port goes.

use super::{Findings, values};
use crate::istio::{Resource, Spec};
use crate::model::{InboundListener, Workload, selects};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The inbound listeners of the Sidecar that applies to `workload` (the first one in its
/// namespace whose selector matches; a Sidecar without a selector applies to the namespace).
pub(super) fn inbound(
    resources: &[&Resource],
    workload: &Workload,
    findings: &mut Findings,
) -> Vec<InboundListener> {
    let mut chosen: Option<(&Resource, Vec<InboundListener>)> = None;
    for res in resources {
        let Spec::Sidecar(sidecar) = &res.spec else {
            continue;
        };
        // Every Sidecar is checked, whether or not it applies here.
        let listeners = listeners(res, findings);
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
            None => chosen = Some((res, listeners)),
        }
    }
    chosen.map(|(_, listeners)| listeners).unwrap_or_default()
}

fn listeners(res: &Resource, findings: &mut Findings) -> Vec<InboundListener> {
    let Spec::Sidecar(sidecar) = &res.spec else {
        return Vec::new();
    };
    let mut at = findings.at(res);
    let mut out = Vec::new();
    for (i, ingress) in sidecar.ingress.iter().enumerate() {
        let field = format!("spec.ingress[{i}]");
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
