//! Locality-aware priority levels (Istio's locality failover, Envoy's priority load).
//!
//! Endpoints with an EDS `priority` are ranked by it first (0 before 1, ...). Within a
//! priority (and without EDS priorities), endpoints are ranked by how close they are to the
//! workload: same subzone, same zone, same region, then the rest (with a `failover` entry for
//! the workload's region, its target region comes before the rest). Traffic goes to the
//! closest level while it is healthy; as its healthy share drops, load spills to the next
//! level in proportion, with Envoy's overprovisioning factor of 1.4 (a level keeps all its
//! traffic while 72% or more of it is healthy).
//!
//! A `distribute` rule for the workload's locality (Istio's YAML, or xDS locality weights with
//! `locality_weighted_lb_config`, a rule from any locality) replaces the locality levels: the
//! EDS priorities alone rank, then a destination locality of the chosen priority is drawn by
//! its weight scaled by its available share (Envoy's locality weighted load balancing).

use crate::rng::Rng;
use mesh_core::model::{Cluster, Labels, Locality, LocalityDistribute};
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

/// The `distribute` rule for the workload's locality, if any.
pub(super) fn distribute_rule<'a>(
    cluster: &'a Cluster,
    local: &Locality,
) -> Option<&'a LocalityDistribute> {
    cluster
        .policy
        .load_balancer
        .locality
        .as_ref()?
        .distribute
        .iter()
        .find(|d| locality_matches(&d.from, local))
}

/// The candidates of one destination locality of `rule`, drawn by weight as Envoy's locality
/// weighted load balancing does: each destination's weight is scaled by its available share
/// (its candidates over its endpoints at that priority, times the overprovisioning factor,
/// at most 1); `None` when no destination has a candidate.
fn distributed(
    cluster: &Cluster,
    rule: &LocalityDistribute,
    candidates: &[usize],
    rng: &Rng,
) -> Option<Vec<usize>> {
    let priority = cluster.endpoints[*candidates.first()?].priority;
    let targets: Vec<(f64, Vec<usize>)> = rule
        .to
        .iter()
        .filter_map(|(pattern, weight)| {
            let members = candidates
                .iter()
                .copied()
                .filter(|i| locality_matches(pattern, &cluster.endpoints[*i].locality))
                .collect::<Vec<_>>();
            let total = cluster
                .endpoints
                .iter()
                .filter(|e| e.priority == priority && locality_matches(pattern, &e.locality))
                .count();
            let share =
                (members.len() as f64 * OVERPROVISIONING as f64 / 100.0 / total.max(1) as f64)
                    .min(1.0);
            let weight = f64::from(*weight) * share;
            (weight > 0.0).then_some((weight, members))
        })
        .collect();
    let total: f64 = targets.iter().map(|t| t.0).sum();
    if total <= 0.0 {
        return None;
    }
    let mut draw = f64::from(rng.ppm()) / 1_000_000.0 * total;
    let last = targets.len() - 1;
    for (i, (weight, members)) in targets.into_iter().enumerate() {
        draw -= weight;
        if draw < 0.0 || i == last {
            return Some(members);
        }
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
    let rule = distribute_rule(cluster, local);
    let chosen = choose_priority(
        cluster,
        local,
        workload_labels,
        candidates,
        rng,
        rule.is_none(),
    );
    // A `distribute` rule (Envoy: locality weighted load balancing) spreads the chosen
    // priority over its localities; when none of them has a candidate, Envoy uses the whole
    // priority, and so does the mesh.
    match rule.and_then(|rule| distributed(cluster, rule, &chosen, rng)) {
        Some(members) => members,
        None => chosen,
    }
}

/// The candidates of the level this request goes to, by EDS priority, then (`by_locality`)
/// failoverPriority labels and locality.
fn choose_priority(
    cluster: &Cluster,
    local: &Locality,
    workload_labels: &Labels,
    candidates: &[usize],
    rng: &Rng,
    by_locality: bool,
) -> Vec<usize> {
    // EDS priority first (a control plane such as istiod has already ranked the
    // endpoints), then failoverPriority labels, then locality. With a `distribute` rule,
    // the rule places the traffic among localities: the priorities alone rank (Istio sets
    // no failover with `distribute`).
    let level = |e: &mesh_core::model::Endpoint| -> u64 {
        if !by_locality {
            return u64::from(e.priority) << 16;
        }
        (u64::from(e.priority) << 16)
            + u64::from(label_level(cluster, e, workload_labels)) * 8
            + if local.region.is_empty() {
                // The workload's locality is unknown: the priorities alone rank.
                0
            } else {
                u64::from(level(cluster, &e.locality, local))
            }
    };
    // Per level: its endpoints, whatever their status (Envoy's priority health is the
    // available hosts over all the hosts of the priority, so endpoints EDS marks unhealthy
    // or draining lower it), and the candidates among them.
    let mut levels: BTreeMap<u64, (u64, Vec<usize>)> = BTreeMap::new();
    for e in &cluster.endpoints {
        levels.entry(level(e)).or_default().0 += 1;
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
