//! Consistent hashing with a Maglev lookup table (Eisenbud et al., NSDI 2016).
//!
//! Each target fills the table following its own permutation of the slots (from two stable hashes of its
//! name), taking turns, so every target owns ⌊M/N⌋ or ⌈M/N⌉ slots; a key's owner is the target in the
//! key's slot. The table is a pure function of the target names: every node builds the same one.

use super::hash::{KEY_SEED, OFFSET_SEED, SKIP_SEED, stable_hash};
use super::round_robin::RoundRobin;
use super::{BalancerSnapshot, LoadBalancer, RoutingKey};

/// Slots in the Maglev table: a prime (so every skip walks every slot), ≫ 100 × the largest cluster.
pub const TABLE_SIZE: usize = 65_537;

const EMPTY: u32 = u32::MAX;

/// The Maglev lookup table: slot → index of the owning target.
pub(crate) struct MaglevTable {
    slots: Box<[u32]>,
    targets: usize,
}

impl MaglevTable {
    /// The table for targets with these names, in this (index) order.
    pub(crate) fn build<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> MaglevTable {
        let targets = names.len();
        if targets == 0 {
            return MaglevTable {
                slots: Box::new([]),
                targets,
            };
        }
        let size = TABLE_SIZE as u64;
        // (next slot, skip) per target; permutation(i)[j] = (offset + j * skip) mod M.
        let mut cursors: Vec<(u64, u64)> = names
            .map(|name| {
                let offset = stable_hash(OFFSET_SEED, name.as_bytes()) % size;
                let skip = stable_hash(SKIP_SEED, name.as_bytes()) % (size - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut slots = vec![EMPTY; TABLE_SIZE].into_boxed_slice();
        let mut filled = 0;
        'fill: loop {
            for (index, (next, skip)) in cursors.iter_mut().enumerate() {
                // Terminates: M is prime and 1 ≤ skip < M, so the permutation reaches every empty slot.
                let slot = loop {
                    let slot = *next as usize;
                    *next = (*next + *skip) % size;
                    if slots[slot] == EMPTY {
                        break slot;
                    }
                };
                // The table fills within the first round when targets ≥ slots, so index < TABLE_SIZE.
                slots[slot] = index as u32;
                filled += 1;
                if filled == TABLE_SIZE {
                    break 'fill;
                }
            }
        }
        MaglevTable { slots, targets }
    }

    /// The slot a key hashes to.
    fn slot(key: &RoutingKey) -> Option<usize> {
        let hash = match key {
            RoutingKey::Session(id) => stable_hash(KEY_SEED, id.as_bytes()),
            // Canonical form: an IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) must
            // hash like the same client seen over IPv4.
            RoutingKey::Client(ip) => match ip.to_canonical() {
                std::net::IpAddr::V4(v4) => stable_hash(KEY_SEED, &v4.octets()),
                std::net::IpAddr::V6(v6) => stable_hash(KEY_SEED, &v6.octets()),
            },
            RoutingKey::None => return None,
        };
        Some((hash % TABLE_SIZE as u64) as usize)
    }

    /// The owner of `key`'s slot, then the other targets in the order they first appear walking the
    /// table forward from that slot.
    fn walk(&self, start: usize) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.targets);
        let mut seen = vec![false; self.targets];
        for offset in 0..self.slots.len() {
            let index = self.slots[(start + offset) % self.slots.len()] as usize;
            if let Some(seen) = seen.get_mut(index).filter(|seen| !**seen) {
                *seen = true;
                order.push(index);
                if order.len() == self.targets {
                    return order;
                }
            }
        }
        // Only with more targets than slots can one own no slot; list it anyway, in name order.
        order.extend((0..self.targets).filter(|&index| !seen[index]));
        order
    }
}

/// Sticky: a key always goes to its Maglev owner while the target set is unchanged. Requests with
/// [`RoutingKey::None`] have nothing to stick to and are spread round robin instead of all landing on
/// one member.
#[derive(Debug, Default)]
pub struct ConsistentHash {
    keyless: RoundRobin,
}

impl ConsistentHash {
    /// A consistent-hash balancer.
    pub fn new() -> ConsistentHash {
        ConsistentHash::default()
    }
}

impl LoadBalancer for ConsistentHash {
    fn candidates(&self, key: &RoutingKey, snapshot: &BalancerSnapshot) -> Vec<usize> {
        if snapshot.is_empty() {
            return Vec::new();
        }
        match MaglevTable::slot(key) {
            Some(slot) => snapshot.maglev().walk(slot),
            None => self.keyless.rotation(snapshot.targets().len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::balancer::Target;
    use crate::balancer::tests::{assert_permutation, targets};

    const KEYS: usize = 100_000;

    fn session(i: usize) -> RoutingKey {
        RoutingKey::Session(format!("session-{i}"))
    }

    /// Owner name of every key in `keys`.
    fn owners(snapshot: &BalancerSnapshot, keys: usize) -> Vec<String> {
        let balancer = ConsistentHash::new();
        (0..keys)
            .map(|i| {
                let owner = balancer.candidates(&session(i), snapshot)[0];
                snapshot.targets()[owner].name.clone()
            })
            .collect()
    }

    #[test]
    fn table_shares_are_within_one_slot() {
        for count in [1u16, 3, 5, 10, 64] {
            let snapshot = BalancerSnapshot::from_targets(targets(count));
            let mut slots = vec![0usize; usize::from(count)];
            for &index in snapshot.maglev().slots.iter() {
                slots[index as usize] += 1;
            }
            let min = slots.iter().min().copied().unwrap_or_default();
            let max = slots.iter().max().copied().unwrap_or_default();
            assert!(max - min <= 1, "{count} members: {min}..{max}");
        }
    }

    #[test]
    fn keys_spread_within_five_percent_of_the_mean() {
        for count in [3u16, 5, 10] {
            let snapshot = BalancerSnapshot::from_targets(targets(count));
            let balancer = ConsistentHash::new();
            let mut hits = vec![0usize; usize::from(count)];
            for i in 0..KEYS {
                hits[balancer.candidates(&session(i), &snapshot)[0]] += 1;
            }
            let mean = KEYS as f64 / f64::from(count);
            let worst = hits
                .iter()
                .map(|&h| (h as f64 - mean).abs() / mean)
                .fold(0.0, f64::max);
            println!(
                "{count} members: hits {hits:?}, max deviation {:.2}%",
                worst * 100.0
            );
            assert!(worst <= 0.05, "{count} members: {hits:?}");
        }
    }

    #[test]
    fn client_ips_spread_too() {
        let snapshot = BalancerSnapshot::from_targets(targets(5));
        let balancer = ConsistentHash::new();
        let mut hits = [0usize; 5];
        for i in 0..KEYS as u32 {
            let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            hits[balancer.candidates(&RoutingKey::Client(ip), &snapshot)[0]] += 1;
        }
        let mean = KEYS as f64 / 5.0;
        assert!(
            hits.iter().all(|&h| (h as f64 - mean).abs() <= 0.05 * mean),
            "{hits:?}"
        );
    }

    #[test]
    fn ipv4_mapped_address_routes_like_ipv4() {
        let snapshot = BalancerSnapshot::from_targets(targets(10));
        let balancer = ConsistentHash::new();
        for i in 0..200u8 {
            let v4 = IpAddr::from([192, 168, 7, i]);
            let IpAddr::V4(inner) = v4 else {
                unreachable!()
            };
            let mapped = IpAddr::V6(inner.to_ipv6_mapped());
            assert_eq!(
                balancer.candidates(&RoutingKey::Client(v4), &snapshot),
                balancer.candidates(&RoutingKey::Client(mapped), &snapshot)
            );
        }
    }

    #[test]
    fn removing_a_member_moves_few_keys_and_adding_it_back_restores_all() {
        let all = targets(10);
        let before = owners(&BalancerSnapshot::from_targets(all.clone()), KEYS);
        let removed = "node-4";
        let without: Vec<Target> = all.iter().filter(|t| t.name != removed).cloned().collect();
        let after = owners(&BalancerSnapshot::from_targets(without), KEYS);

        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let owned_by_removed = before.iter().filter(|b| *b == removed).count();
        let moved_pct = 100.0 * moved as f64 / KEYS as f64;
        println!(
            "1 of 10 leaves: {moved} of {KEYS} keys moved ({moved_pct:.2}%), {owned_by_removed} were on {removed}"
        );
        assert!(moved_pct <= 12.0, "{moved_pct:.2}% moved");
        assert!(
            before
                .iter()
                .zip(&after)
                .filter(|(b, _)| *b == removed)
                .all(|(_, a)| a != removed)
        );
        assert!(after.iter().all(|a| a != removed));

        let restored = owners(&BalancerSnapshot::from_targets(all), KEYS);
        assert_eq!(
            restored, before,
            "the table is a pure function of the member set"
        );
    }

    #[test]
    fn every_node_computes_the_same_candidates() {
        // Two nodes, each with its own balancer and a member list received in a different order.
        let mut shuffled = targets(10);
        shuffled.reverse();
        shuffled.swap(2, 7);
        let here = BalancerSnapshot::from_targets(targets(10));
        let there = BalancerSnapshot::from_targets(shuffled);
        let (a, b) = (ConsistentHash::new(), ConsistentHash::new());
        for i in 0..2_000 {
            let names = |snapshot: &BalancerSnapshot, list: Vec<usize>| -> Vec<String> {
                list.into_iter()
                    .map(|index| snapshot.targets()[index].name.clone())
                    .collect()
            };
            let key = session(i);
            let list = a.candidates(&key, &here);
            assert_permutation(&list, 10);
            assert_eq!(
                names(&here, list),
                names(&there, b.candidates(&key, &there))
            );
        }
    }

    #[test]
    fn keyless_requests_rotate() {
        let snapshot = BalancerSnapshot::from_targets(targets(3));
        let balancer = ConsistentHash::new();
        let owners: Vec<usize> = (0..6)
            .map(|_| balancer.candidates(&RoutingKey::None, &snapshot)[0])
            .collect();
        assert_eq!(owners, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn golden_owners() {
        // Generated once from this implementation for node-1..node-5 on 127.0.0.1:8081..8085. If this
        // fails, a change moved keys between members: every running cluster would lose session
        // stickiness on upgrade. Fix the change; do not regenerate the table.
        const SESSIONS: [(&str, &str); 24] = [
            ("golden-0", "node-4"),
            ("golden-1", "node-3"),
            ("golden-2", "node-5"),
            ("golden-3", "node-2"),
            ("golden-4", "node-5"),
            ("golden-5", "node-1"),
            ("golden-6", "node-1"),
            ("golden-7", "node-3"),
            ("golden-8", "node-3"),
            ("golden-9", "node-5"),
            ("golden-10", "node-4"),
            ("golden-11", "node-1"),
            ("golden-12", "node-5"),
            ("golden-13", "node-1"),
            ("golden-14", "node-2"),
            ("golden-15", "node-5"),
            ("golden-16", "node-1"),
            ("golden-17", "node-1"),
            ("golden-18", "node-1"),
            ("golden-19", "node-3"),
            ("golden-20", "node-4"),
            ("golden-21", "node-1"),
            ("golden-22", "node-1"),
            ("golden-23", "node-3"),
        ];
        const CLIENTS: [([u8; 4], &str); 6] = [
            ([10, 1, 2, 0], "node-5"),
            ([10, 1, 2, 1], "node-5"),
            ([10, 1, 2, 2], "node-2"),
            ([10, 1, 2, 3], "node-1"),
            ([10, 1, 2, 4], "node-1"),
            ([10, 1, 2, 5], "node-3"),
        ];
        let snapshot = BalancerSnapshot::from_targets(targets(5));
        let balancer = ConsistentHash::new();
        let owner = |key: RoutingKey| -> String {
            snapshot.targets()[balancer.candidates(&key, &snapshot)[0]]
                .name
                .clone()
        };
        for (id, expected) in SESSIONS {
            assert_eq!(
                owner(RoutingKey::Session(id.into())),
                expected,
                "session {id}"
            );
        }
        for (ip, expected) in CLIENTS {
            let ip = IpAddr::from(ip);
            assert_eq!(owner(RoutingKey::Client(ip)), expected, "client {ip}");
        }
    }
}
