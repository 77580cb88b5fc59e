//! The target with the fewest requests in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::{BalancerSnapshot, LoadBalancer, RoutingKey};

/// Requests in flight per target name, shared by the router (which holds guards) and the balancer.
///
/// Entries are never removed: names come from the cluster's membership, so the map stays small.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    counters: Arc<RwLock<HashMap<String, Arc<AtomicUsize>>>>,
}

impl InFlight {
    /// Counts one request to `name` until the guard is dropped.
    pub fn guard(&self, name: &str) -> InFlightGuard {
        let counter = self.counter(name);
        counter.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { counter }
    }

    /// Requests to `name` in flight now.
    pub fn get(&self, name: &str) -> usize {
        // A panic while holding this lock cannot leave the map half-updated, so poison is ignored.
        self.counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    fn counter(&self, name: &str) -> Arc<AtomicUsize> {
        if let Some(counter) = self
            .counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Arc::clone(counter);
        }
        let mut counters = self
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(counters.entry(name.to_owned()).or_default())
    }
}

/// One request in flight; dropping it ends the count.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlightGuard {
    counter: Arc<AtomicUsize>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The least loaded target first (ties in name order), then the others by increasing load.
#[derive(Debug, Clone, Default)]
pub struct LeastConnections {
    in_flight: InFlight,
}

impl LeastConnections {
    /// Balances by the counts in `in_flight`.
    pub fn new(in_flight: InFlight) -> LeastConnections {
        LeastConnections { in_flight }
    }
}

impl LoadBalancer for LeastConnections {
    fn candidates(&self, _key: &RoutingKey, snapshot: &BalancerSnapshot) -> Vec<usize> {
        // Read each load once: counters move while we sort, and the sort needs a fixed order.
        let mut loads: Vec<(usize, usize)> = snapshot
            .targets()
            .iter()
            .enumerate()
            .map(|(index, target)| (self.in_flight.get(&target.name), index))
            .collect();
        // Targets are sorted by name, so the index breaks ties in name order.
        loads.sort_unstable();
        loads.into_iter().map(|(_, index)| index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::targets;

    #[test]
    fn guards_count_up_and_down() {
        let in_flight = InFlight::default();
        assert_eq!(in_flight.get("node-1"), 0);
        let first = in_flight.guard("node-1");
        let second = in_flight.clone().guard("node-1");
        assert_eq!(in_flight.get("node-1"), 2);
        drop(first);
        assert_eq!(in_flight.get("node-1"), 1);
        drop(second);
        assert_eq!(in_flight.get("node-1"), 0);
    }

    #[test]
    fn picks_least_loaded_and_orders_fallbacks_by_load() {
        let snapshot = BalancerSnapshot::from_targets(targets(5));
        let in_flight = InFlight::default();
        let balancer = LeastConnections::new(in_flight.clone());
        let load = [3usize, 1, 4, 0, 2]; // node-1..node-5
        let _guards: Vec<InFlightGuard> = load
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |_| i))
            .map(|i| in_flight.guard(&format!("node-{}", i + 1)))
            .collect();
        let key = RoutingKey::Session("ignored".into());
        assert_eq!(balancer.candidates(&key, &snapshot), [3, 1, 4, 0, 2]);
    }

    #[test]
    fn ties_go_in_name_order_and_follow_the_load() {
        let snapshot = BalancerSnapshot::from_targets(targets(3));
        let in_flight = InFlight::default();
        let balancer = LeastConnections::new(in_flight.clone());
        assert_eq!(balancer.candidates(&RoutingKey::None, &snapshot), [0, 1, 2]);
        // Route 30 requests, each held open: the loads must end up exactly even.
        let mut guards = Vec::new();
        for _ in 0..30 {
            let owner = balancer.candidates(&RoutingKey::None, &snapshot)[0];
            guards.push(in_flight.guard(&snapshot.targets()[owner].name));
        }
        let loads: Vec<usize> = (1..=3)
            .map(|i| in_flight.get(&format!("node-{i}")))
            .collect();
        assert_eq!(loads, [10, 10, 10]);
        guards.truncate(29); // the last request went to node-3, ...
        assert_eq!(balancer.candidates(&RoutingKey::None, &snapshot), [2, 0, 1]);
    }
}
