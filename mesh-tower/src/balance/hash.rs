//! Consistent hashing tables: Envoy's ring hash (Karger) and Maglev, over weighted endpoints.
//!
//! Both map a request's hash key to an endpoint so that the same key keeps reaching the same
//! endpoint, and removing one of N endpoints moves only about 1/N of the keys.

use std::hash::{Hash, Hasher};

/// A stable 64-bit hash (SipHash-1-3 with fixed keys, as `std` builds it).
pub fn hash64(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn next_prime(mut n: u64) -> u64 {
    let is_prime = |n: u64| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// A hash table mapping keys to endpoint indices.
#[derive(Debug)]
pub enum Table {
    /// Points on a ring, each owning the arc up to it.
    Ring(Vec<(u64, usize)>),
    /// Maglev's lookup table.
    Maglev(Vec<usize>),
}

impl Table {
    /// A ring with at least `min_size` points in all, each endpoint's share in proportion to
    /// its weight. `endpoints` are `(name, weight)`; the name (address) places the points.
    pub fn ring(endpoints: &[(String, u32)], min_size: u64) -> Self {
        let total: u64 = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        let mut points = Vec::new();
        if total == 0 {
            return Self::Ring(points);
        }
        let size = min_size.clamp(1, 1 << 23);
        // Points per unit of weight, rounded up to a power of two so that adding or removing
        // an endpoint rarely changes it: then only the changed endpoint's keys move.
        let per_weight = size.div_ceil(total).next_power_of_two();
        for (i, (name, weight)) in endpoints.iter().enumerate() {
            let n = per_weight * u64::from((*weight).max(1));
            for replica in 0..n {
                points.push((hash64((name, replica)), i));
            }
        }
        points.sort_unstable();
        Self::Ring(points)
    }

    /// A Maglev table of `size` entries (a prime; Envoy's default is 65,537), filled by each
    /// endpoint's permutation in turn, weights as extra turns.
    pub fn maglev(endpoints: &[(String, u32)], size: u64) -> Self {
        // A prime size makes every permutation visit every slot.
        let m = next_prime(size.clamp(2, 1 << 20)) as usize;
        if endpoints.is_empty() {
            return Self::Maglev(Vec::new());
        }
        let perms: Vec<(usize, usize)> = endpoints
            .iter()
            .map(|(name, _)| {
                let offset = (hash64((name, "offset")) % m as u64) as usize;
                let skip = (hash64((name, "skip")) % (m as u64 - 1).max(1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; endpoints.len()];
        let mut table = vec![usize::MAX; m];
        let mut filled = 0;
        // Each round, an endpoint of weight w claims w slots, each the next free slot of its
        // permutation.
        'fill: loop {
            for (i, (_, weight)) in endpoints.iter().enumerate() {
                for _ in 0..(*weight).max(1) {
                    let (offset, skip) = perms[i];
                    loop {
                        let slot = (offset + next[i] * skip) % m;
                        next[i] += 1;
                        if table[slot] == usize::MAX {
                            table[slot] = i;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Self::Maglev(table)
    }

    /// The endpoint index for a request whose key hashes to `hash`.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        match self {
            Self::Ring(points) => {
                if points.is_empty() {
                    return None;
                }
                let i = points.partition_point(|(p, _)| *p < hash);
                Some(points[i % points.len()].1)
            }
            Self::Maglev(table) => table
                .get((hash % table.len().max(1) as u64) as usize)
                .copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    /// The share of keys that moved, and the share that moved between endpoints that stayed.
    fn moved_share(build: impl Fn(&[(String, u32)]) -> Table) -> (f64, f64) {
        let all = endpoints(10);
        let before = build(&all);
        let mut fewer = all.clone();
        let removed = fewer.remove(3);
        let after = build(&fewer);
        let mut moved = 0;
        let mut stray = 0;
        let keys = 20_000;
        for key in 0..keys {
            let h = hash64(key);
            let b = &all[before.lookup(h).unwrap()].0;
            let a = &fewer[after.lookup(h).unwrap()].0;
            if a != b {
                moved += 1;
            }
            if b != &removed.0 && a != b {
                stray += 1;
            }
        }
        (moved as f64 / keys as f64, stray as f64 / keys as f64)
    }

    #[test]
    fn removing_one_of_ten_moves_about_a_tenth_of_the_keys() {
        let (ring, stray) = moved_share(|e| Table::ring(e, 8192));
        assert!((0.05..=0.16).contains(&ring), "ring moved {ring}");
        assert_eq!(stray, 0.0, "a ring moves only the removed endpoint's keys");
        // Maglev trades a little disruption for even spread (the paper's ~1-7%).
        let (maglev, stray) = moved_share(|e| Table::maglev(e, 65_537));
        assert!((0.05..=0.20).contains(&maglev), "maglev moved {maglev}");
        assert!(
            stray <= 0.08,
            "maglev moved {stray} between endpoints that stayed"
        );
    }

    #[test]
    fn load_is_spread_and_lookups_are_stable() {
        for table in [
            Table::ring(&endpoints(4), 4096),
            Table::maglev(&endpoints(4), 65_537),
        ] {
            let mut counts = [0u32; 4];
            for key in 0..40_000u32 {
                counts[table.lookup(hash64(key)).unwrap()] += 1;
            }
            for c in counts {
                assert!((7_000..13_000).contains(&c), "{counts:?}");
            }
            assert_eq!(
                table.lookup(hash64("user-1")),
                table.lookup(hash64("user-1"))
            );
        }
    }
}
