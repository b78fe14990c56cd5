//! Locality-aware priority levels (Istio's locality failover, Envoy's priority load).
//!
//! Endpoints with an EDS `priority` are ranked by it first (0 before 1, ...). Within a
//! priority (and without EDS priorities), endpoints are ranked by how close they are to the
//! workload: same subzone, same zone, same region, then the rest (with a `failover` entry for
//! the workload's region, its target region comes before the rest). Traffic goes to the
//! closest level while it is healthy; as its healthy share drops, load spills to the next
//! level in proportion, with Envoy's overprovisioning factor of 1.4 (a level keeps all its
//! traffic while 72% or more of it is healthy).

use crate::rng::Rng;
use mesh_core::model::{Cluster, HealthStatus, Labels, Locality};
use std::collections::BTreeMap;

/// Envoy's overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;

/// The level of `endpoint` for a workload at `local` (0 is closest).
pub(super) fn level(cluster: &Cluster, endpoint: &Locality, local: &Locality) -> u8 {
    let same_region = endpoint.region == local.region;
    if same_region && endpoint.zone == local.zone && endpoint.subzone == local.subzone {
        0
    } else if same_region && endpoint.zone == local.zone {
        1
    } else if same_region {
        2
    } else {
        let failover = cluster
            .policy
            .load_balancer
            .locality
            .as_ref()
            .and_then(|l| l.failover.iter().find(|f| f.from == local.region));
        match failover {
            Some(f) if f.to == endpoint.region => 3,
            Some(_) => 4,
            None => 3,
        }
    }
}

/// Whether `locality` matches an Istio locality pattern (`region/zone/subzone`, where `*`
/// matches anything and missing parts match everything).
pub(super) fn locality_matches(pattern: &str, locality: &Locality) -> bool {
    let parts = [
        locality.region.as_str(),
        locality.zone.as_str(),
        locality.subzone.as_str(),
    ];
    pattern
        .split('/')
        .zip(parts)
        .all(|(p, part)| p == "*" || p == part)
}

/// With a `distribute` rule for the workload's locality: the candidates of a destination
/// locality drawn by the rule's weights (`None` when no rule applies or none of its
/// destinations has a candidate).
fn distributed(
    cluster: &Cluster,
    local: &Locality,
    candidates: &[usize],
    rng: &Rng,
) -> Option<Vec<usize>> {
    let lb = cluster.policy.load_balancer.locality.as_ref()?;
    let rule = lb
        .distribute
        .iter()
        .find(|d| locality_matches(&d.from, local))?;
    // Only destinations with candidates share the traffic, in proportion to their weights.
    let targets: Vec<(&str, u32, Vec<usize>)> = rule
        .to
        .iter()
        .map(|(pattern, weight)| {
            let members = candidates
                .iter()
                .copied()
                .filter(|i| locality_matches(pattern, &cluster.endpoints[*i].locality))
                .collect::<Vec<_>>();
            (pattern.as_str(), *weight, members)
        })
        .filter(|(_, weight, members)| *weight > 0 && !members.is_empty())
        .collect();
    let total: u32 = targets.iter().map(|t| t.1).sum();
    if total == 0 {
        return None;
    }
    let mut draw = rng.below(total);
    for (_, weight, members) in targets {
        if draw < weight {
            return Some(members);
        }
        draw -= weight;
    }
    None
}

/// With `failoverPriority` labels: how many of them, from the first, the endpoint does not
/// share with the workload (0 when it shares them all). Istio groups endpoints this way
/// before locality.
fn label_level(cluster: &Cluster, endpoint: &mesh_core::model::Endpoint, workload: &Labels) -> u8 {
    let Some(labels) = cluster
        .policy
        .load_balancer
        .locality
        .as_ref()
        .map(|l| &l.failover_priority)
        .filter(|l| !l.is_empty())
    else {
        return 0;
    };
    let matched = labels
        .iter()
        .take_while(|label| {
            let mine = workload.get(label.as_str());
            mine.is_some() && endpoint.labels.get(label.as_str()) == mine
        })
        .count();
    u8::try_from(labels.len() - matched).unwrap_or(u8::MAX)
}

/// The candidates of the level this request goes to.
pub(super) fn choose_level(
    cluster: &Cluster,
    local: &Locality,
    workload_labels: &Labels,
    candidates: &[usize],
    rng: &Rng,
) -> Vec<usize> {
    if let Some(members) = distributed(cluster, local, candidates, rng) {
        return members;
    }
    // EDS priority first (a control plane such as istiod has already ranked the
    // endpoints), then failoverPriority labels, then locality.
    let level = |e: &mesh_core::model::Endpoint| -> u64 {
        (u64::from(e.priority) << 16)
            + u64::from(label_level(cluster, e, workload_labels)) * 8
            + if local.region.is_empty() {
                // The workload's locality is unknown: the priorities alone rank.
                0
            } else {
                u64::from(level(cluster, &e.locality, local))
            }
    };
    // Per level: endpoints that are healthy by status, and the candidates among them.
    let mut levels: BTreeMap<u64, (u64, Vec<usize>)> = BTreeMap::new();
    for e in &cluster.endpoints {
        if e.health == HealthStatus::Healthy {
            levels.entry(level(e)).or_default().0 += 1;
        }
    }
    for &i in candidates {
        levels
            .entry(level(&cluster.endpoints[i]))
            .or_default()
            .1
            .push(i);
    }
    if levels.len() <= 1 {
        return candidates.to_vec();
    }
    // Envoy's priority load: each level takes min(what is left, 1.4 x its healthy share).
    let mut left = 100u64;
    let mut loads = Vec::new();
    for (total, available) in levels.values() {
        let health = (available.len() as u64 * OVERPROVISIONING / (*total).max(1)).min(100);
        let load = health.min(left);
        left -= load;
        loads.push(load);
    }
    let assigned: u64 = loads.iter().sum();
    if assigned == 0 {
        return candidates.to_vec();
    }
    let mut draw = u64::from(rng.below(assigned as u32));
    for ((_, available), load) in levels.into_values().zip(loads) {
        if draw < load {
            return available;
        }
        draw -= load;
    }
    candidates.to_vec()
}
