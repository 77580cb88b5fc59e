//! Each target in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BalancerSnapshot, LoadBalancer, RoutingKey};

/// Each target in turn, ignoring the key; fallbacks are the targets after the owner, wrapping around.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A rotation starting at the first target.
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }

    /// The rotation over `count` targets, advancing it by one.
    pub(crate) fn rotation(&self, count: usize) -> Vec<usize> {
        if count == 0 {
            return Vec::new();
        }
        // Relaxed is enough: only the counter's own sequence matters, not ordering with other memory.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        (0..count).map(|step| (start + step) % count).collect()
    }
}

impl LoadBalancer for RoundRobin {
    fn candidates(&self, _key: &RoutingKey, snapshot: &BalancerSnapshot) -> Vec<usize> {
        self.rotation(snapshot.targets().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::targets;

    #[test]
    fn rotation_is_exactly_even() {
        for count in [3u16, 5, 10] {
            let snapshot = BalancerSnapshot::from_targets(targets(count));
            let balancer = RoundRobin::new();
            let rounds = 1_000;
            let mut hits = vec![0usize; usize::from(count)];
            for i in 0..rounds * usize::from(count) {
                let candidates = balancer.candidates(&RoutingKey::None, &snapshot);
                assert_eq!(candidates[0], i % usize::from(count), "strict rotation");
                hits[candidates[0]] += 1;
            }
            assert!(
                hits.iter().all(|&h| h == rounds),
                "{count} members: {hits:?}"
            );
        }
    }

    #[test]
    fn fallbacks_follow_the_owner() {
        let snapshot = BalancerSnapshot::from_targets(targets(4));
        let balancer = RoundRobin::new();
        balancer.candidates(&RoutingKey::None, &snapshot);
        balancer.candidates(&RoutingKey::None, &snapshot);
        assert_eq!(
            balancer.candidates(&RoutingKey::None, &snapshot),
            [2, 3, 0, 1]
        );
    }
}
