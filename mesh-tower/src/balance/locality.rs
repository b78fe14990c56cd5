//! Locality-aware priority levels (Istio's locality failover, Envoy's priority load).
//!
//! Endpoints are ranked by how close they are to the workload: same subzone, same zone, same
//! region, then the rest (with a `failover` entry for the workload's region, its target region
//! comes before the rest). Traffic goes to the closest level while it is healthy; as its
//! healthy share drops, load spills to the next level in proportion, with Envoy's
//! overprovisioning factor of 1.4 (a level keeps all its traffic while 72% or more of it is
//! healthy).

use crate::rng::Rng;
use mesh_core::model::{Cluster, HealthStatus, Locality};
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

/// The candidates of the level this request goes to.
pub(super) fn choose_level(
    cluster: &Cluster,
    local: &Locality,
    candidates: &[usize],
    rng: &Rng,
) -> Vec<usize> {
    // Per level: endpoints that are healthy by status, and the candidates among them.
    let mut levels: BTreeMap<u8, (u64, Vec<usize>)> = BTreeMap::new();
    for e in &cluster.endpoints {
        if e.health == HealthStatus::Healthy {
            levels
                .entry(level(cluster, &e.locality, local))
                .or_default()
                .0 += 1;
        }
    }
    for &i in candidates {
        levels
            .entry(level(cluster, &cluster.endpoints[i].locality, local))
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
