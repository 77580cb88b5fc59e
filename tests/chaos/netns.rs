//! Linux network namespaces for partition tests.
//!
//! Layout (all names carry the run-unique prefix `mtc<pid>`):
//! - `<prefix>sw`: a "switch" namespace holding the bridge `br0`;
//! - `<prefix>n<i>`: one namespace per node, `eth0` = 10.77.<subnet>.<i>/24, a veth into the bridge;
//! - `<prefix>h`: a veth from the root namespace into the bridge, 10.77.<subnet>.100/24, so the test
//!   process reaches every node whatever the partition.
//!
//! A partition is a set of blackhole routes inside the node namespaces (both directions), so only
//! node-to-node traffic is cut. Everything is deleted on drop, also when the test panics, and
//! leftovers of earlier runs (whose process is gone) are deleted before a new layout is built.

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs `ip` with `args`; the error says what failed and why.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip").args(args).output().map_err(|err| {
        format!(
            "cannot run `ip {}`: {err} (install iproute2)",
            args.join(" ")
        )
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `ip` and panics with the reason when it fails.
fn ip_ok(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|err| panic!("network namespace setup: {err}"))
}

/// The pid encoded in a name `mtc<pid><suffix>`, when it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("mtc")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let suffix = &rest[digits.len()..];
    let ours = suffix == "sw"
        || suffix == "h"
        || suffix
            .strip_prefix('n')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if !ours {
        return None;
    }
    digits.parse().ok()
}

/// Deletes namespaces and root-namespace links left by runs whose process is gone.
fn delete_leftovers() {
    let me = std::process::id();
    let gone = |pid: u32| pid == me || !std::path::Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if owner_pid(name).is_some_and(gone) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "12: mtc123h@if11: <BROADCAST,...> ..."
            let Some(name) = line.split(':').nth(1) else {
                continue;
            };
            let name = name.trim().split('@').next().unwrap_or_default();
            if owner_pid(name).is_some_and(gone) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A bridged set of node namespaces; removed on drop.
pub struct Net {
    prefix: String,
    subnet: u8,
    nodes: usize,
    namespaces: Vec<String>,
    host_link: Option<String>,
}

impl Net {
    /// Builds the layout for `nodes` nodes (1..=99). Panics with a clear message when network
    /// namespaces cannot be created (not root, no CAP_SYS_ADMIN, no iproute2): this test never skips.
    pub fn create(nodes: usize) -> Net {
        assert!((1..100).contains(&nodes), "1..=99 nodes");
        delete_leftovers();
        let prefix = format!("mtc{}", std::process::id());
        let subnet = Self::free_subnet();
        let mut net = Net {
            prefix,
            subnet,
            nodes,
            namespaces: Vec::new(),
            host_link: None,
        };
        let switch = net.switch();
        if let Err(err) = ip(&["netns", "add", &switch]) {
            panic!(
                "the partition scenario needs Linux network namespaces and could not create one: \
                 {err}. Run the tests as root (CAP_SYS_ADMIN and CAP_NET_ADMIN) with iproute2 \
                 installed (.ci/run installs it)."
            );
        }
        net.namespaces.push(switch.clone());
        ip_ok(&["-n", &switch, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", &switch, "link", "set", "br0", "up"]);
        for index in 1..=nodes {
            let ns = net.node_ns(index);
            ip_ok(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("n{index}");
            // Both ends are created directly in their namespaces: no name in the root namespace.
            ip_ok(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip_ok(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            ip_ok(&["-n", &switch, "link", "set", &port, "up"]);
            let addr = format!("{}/24", net.node_ip(index));
            ip_ok(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        let host = format!("{}h", net.prefix);
        ip_ok(&[
            "link", "add", &host, "type", "veth", "peer", "name", "host", "netns", &switch,
        ]);
        net.host_link = Some(host.clone());
        ip_ok(&["-n", &switch, "link", "set", "host", "master", "br0"]);
        ip_ok(&["-n", &switch, "link", "set", "host", "up"]);
        let addr = format!("{}/24", net.host_ip());
        ip_ok(&["addr", "add", &addr, "dev", &host]);
        ip_ok(&["link", "set", &host, "up"]);
        net
    }

    /// A third octet no address of the root namespace uses yet.
    fn free_subnet() -> u8 {
        let start = (std::process::id() % 250) as u8;
        for step in 0..250u8 {
            let subnet = (start.wrapping_add(step) % 250) + 1;
            let used = ip(&[
                "-4",
                "-o",
                "addr",
                "show",
                "to",
                &format!("10.77.{subnet}.0/24"),
            ])
            .unwrap_or_default();
            let routed = ip(&[
                "-4",
                "route",
                "show",
                "to",
                "match",
                &format!("10.77.{subnet}.1"),
            ])
            .unwrap_or_default();
            if used.trim().is_empty() && !routed.contains(&format!("10.77.{subnet}.")) {
                return subnet;
            }
        }
        panic!("no free 10.77.x.0/24 subnet for the partition scenario");
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// The namespace of node `index` (1-based).
    pub fn node_ns(&self, index: usize) -> String {
        format!("{}n{index}", self.prefix)
    }

    /// The address of node `index` (1-based).
    pub fn node_ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, index as u8)
    }

    /// The test process's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 100)
    }

    /// Name prefix of everything this layout created.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn routes(&self, side_a: &[usize], side_b: &[usize], verb: &str) {
        for &a in side_a {
            for &b in side_b {
                assert!(a != b && a <= self.nodes && b <= self.nodes);
                for (from, to) in [(a, b), (b, a)] {
                    let target = format!("{}/32", self.node_ip(to));
                    ip_ok(&[
                        "-n",
                        &self.node_ns(from),
                        "route",
                        verb,
                        "blackhole",
                        &target,
                    ]);
                }
            }
        }
    }

    /// Cuts every node of `side_a` off from every node of `side_b`, both directions.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        self.routes(side_a, side_b, "add");
    }

    /// Removes the cut made by [`Net::partition`] with the same sides.
    pub fn heal(&self, side_a: &[usize], side_b: &[usize]) {
        self.routes(side_a, side_b, "del");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(host) = self.host_link.take() {
            let _ = ip(&["link", "del", &host]);
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(err) = ip(&["netns", "del", &ns]) {
                eprintln!("cleanup: {err}");
            }
        }
    }
}
