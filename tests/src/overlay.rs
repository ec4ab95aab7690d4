//! The VXLAN modes (`vxlan`, `vxlan-crosssubnet`): a host's forwarding state on
//! `reef.vxlan` ([`Overlay`]: fdb, neighbours, protocol-201 routes) and what it should be
//! ([`RoutedCluster::overlay_diff`], [`RoutedCluster::wait_overlay`]).
//!
//! The expected overlay state of a host is derived from what the fixture knows (each host's
//! underlay address and subnet), from etcd's blocks (read with etcdctl) and from the other
//! hosts' kernels (the MAC of their `reef.vxlan`), never from the agents' node records: the
//! tests compare those records with the same facts separately.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::PROTO;
use crate::inspect::{json_of, link_addrs, link_details};
use crate::routed::RoutedCluster;
use crate::Netns;

/// The VXLAN device the agent creates in the vxlan modes.
pub const VXLAN_DEV: &str = "reef.vxlan";

/// A host's VXLAN forwarding state, normalised:
/// - `fdb`: `MAC dst IP STATE` (`bridge fdb show dev reef.vxlan`, entries with a remote);
/// - `neigh`: `IP lladdr MAC STATE` (`ip neigh show dev reef.vxlan`, IPv4);
/// - `routes`: protocol-201 routes, `CIDR via GW dev DEV[ onlink]` or `blackhole CIDR`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub fdb: BTreeSet<String>,
    pub neigh: BTreeSet<String>,
    pub routes: BTreeSet<String>,
}

/// A host's VXLAN tunnel endpoint as its kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub mac: String,
    pub ip: Ipv4Addr,
}

fn cidr_base(cidr: &str) -> Ipv4Addr {
    cidr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 CIDR: {cidr}"))
}

/// `bridge fdb show dev DEV` inside `ns`: the entries with a remote, as `MAC dst IP STATE`.
fn fdb_entries(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = json_of(ns, &format!("bridge -j fdb show dev {dev}"));
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(format!(
                "{} dst {} {}",
                e["mac"].as_str()?,
                e["dst"].as_str()?,
                e["state"].as_str().unwrap_or("")
            ))
        })
        .collect()
}

/// `ip -4 neigh show dev DEV` inside `ns`, as `IP lladdr MAC STATE` (states joined by `,`).
fn neigh_entries(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = json_of(ns, &format!("ip -4 -j neigh show dev {dev}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let state: Vec<&str> = e["state"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!(
                "{} lladdr {} {}",
                e["dst"].as_str().unwrap_or("?"),
                e["lladdr"].as_str().unwrap_or("-"),
                state.join(",")
            )
        })
        .collect()
}

/// Protocol-201 IPv4 routes inside `ns` with their device and flags: `blackhole CIDR`,
/// `CIDR via GW dev DEV`, `CIDR via GW dev DEV onlink`, `CIDR dev DEV` (anything else as JSON).
fn proto_routes_dev(ns: &Netns) -> BTreeSet<String> {
    let v = json_of(ns, &format!("ip -j -4 route show proto {PROTO}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or_default();
            let onlink = r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"));
            let dev = r["dev"].as_str();
            match (r["type"].as_str(), r["gateway"].as_str(), dev) {
                (Some("blackhole"), _, _) => format!("blackhole {dst}"),
                (_, Some(gw), Some(dev)) => format!(
                    "{dst} via {gw} dev {dev}{}",
                    if onlink { " onlink" } else { "" }
                ),
                (_, None, Some(dev)) => format!("{dst} dev {dev}"),
                _ => r.to_string(),
            }
        })
        .collect()
}

/// The routed-mode route to `block` via a host on the same underlay.
pub fn direct_route(block: &str, via: Ipv4Addr, iface: &str) -> String {
    format!("{block} via {via} dev {iface}")
}

/// The overlay route to `block` via a remote VTEP.
pub fn vxlan_route(block: &str, vtep: Ipv4Addr) -> String {
    format!("{block} via {vtep} dev {VXLAN_DEV} onlink")
}

pub fn fdb_entry(mac: &str, underlay: Ipv4Addr) -> String {
    format!("{mac} dst {underlay} permanent")
}

pub fn neigh_entry(vtep: Ipv4Addr, mac: &str) -> String {
    format!("{vtep} lladdr {mac} PERMANENT")
}

impl RoutedCluster {
    /// Host `i`'s fdb, neighbours (on reef.vxlan) and protocol-201 routes.
    pub fn overlay(&self, i: usize) -> Overlay {
        let ns = self.host(i).ns();
        let has_dev = link_details(ns, VXLAN_DEV).is_some();
        Overlay {
            fdb: if has_dev {
                fdb_entries(ns, VXLAN_DEV)
            } else {
                BTreeSet::new()
            },
            neigh: if has_dev {
                neigh_entries(ns, VXLAN_DEV)
            } else {
                BTreeSet::new()
            },
            routes: proto_routes_dev(ns),
        }
    }

    /// Host `i`'s VTEP as its kernel shows it: reef.vxlan's MAC and its /32 address (`None`
    /// until the device exists and has exactly one).
    pub fn vtep(&self, i: usize) -> Option<Vtep> {
        let ns = self.host(i).ns();
        let link = link_details(ns, VXLAN_DEV)?;
        let mac = link["address"].as_str()?.to_owned();
        let addrs = link_addrs(ns, VXLAN_DEV);
        let mut it = addrs.iter();
        let (Some(a), None) = (it.next(), it.next()) else {
            return None;
        };
        let ip = a.strip_suffix("/32")?.parse().ok()?;
        Some(Vtep { mac, ip })
    }

    /// The VTEP address the contract gives host `i`: the network address of its lowest block
    /// (from etcd), if it owns one.
    pub fn expected_vtep_ip(&self, from: usize, i: usize) -> Option<Ipv4Addr> {
        self.blocks_of(from, &self.node(i))
            .iter()
            .map(|c| cidr_base(c))
            .min_by_key(|a| u32::from(*a))
    }

    /// What host `i` should hold, over the node set `nodes` (the nodes that still exist),
    /// for `mode` `vxlan` or `vxlan-crosssubnet`: for each other node with a VTEP (MAC from
    /// its kernel, address = its lowest block's first address), the fdb entry and the
    /// neighbour, and a route per block; in `vxlan-crosssubnet`, nodes on host `i`'s subnet
    /// get `via <underlay> dev <iface>` instead (and no fdb/neigh entry is required).
    /// Own blackholes are not part of it (see [`RoutedCluster::overlay_diff`]).
    fn expected_overlay(&self, i: usize, nodes: &[usize], mode: &str) -> Overlay {
        let blocks = self.blocks(i);
        let mut want = Overlay::default();
        for &n in nodes.iter().filter(|&&n| n != i) {
            let name = self.node(n);
            let theirs: Vec<&String> = blocks
                .iter()
                .filter(|(_, o)| **o == name)
                .map(|(c, _)| c)
                .collect();
            if mode == "vxlan-crosssubnet" && self.same_subnet(i, n) {
                for b in theirs {
                    want.routes
                        .insert(direct_route(b, self.host(n).addr(), self.host(i).iface()));
                }
                continue;
            }
            let Some(vip) = theirs
                .iter()
                .map(|c| cidr_base(c))
                .min_by_key(|a| u32::from(*a))
            else {
                continue;
            };
            let Some(mac) = link_details(self.host(n).ns(), VXLAN_DEV)
                .and_then(|l| l["address"].as_str().map(str::to_owned))
            else {
                continue;
            };
            want.fdb.insert(fdb_entry(&mac, self.host(n).addr()));
            want.neigh.insert(neigh_entry(vip, &mac));
            for b in theirs {
                want.routes.insert(vxlan_route(b, vip));
            }
        }
        want
    }

    /// Differences between host `i`'s overlay and what it should be; empty if it matches.
    /// Blackholes are accepted for host `i`'s own blocks only; in `vxlan-crosssubnet`, extra
    /// fdb/neigh entries are accepted if they are the correct entries of a same-subnet node.
    pub fn overlay_diff(&self, i: usize, nodes: &[usize], mode: &str) -> Vec<String> {
        let want = self.expected_overlay(i, nodes, mode);
        let have = self.overlay(i);
        let own: BTreeSet<String> = self
            .blocks_of(i, &self.node(i))
            .into_iter()
            .map(|b| format!("blackhole {b}"))
            .collect();
        // Correct entries for same-subnet nodes (tolerated in vxlan-crosssubnet).
        let mut optional = Overlay::default();
        if mode == "vxlan-crosssubnet" {
            for &n in nodes.iter().filter(|&&n| n != i && self.same_subnet(i, n)) {
                if let (Some(v), Some(vip)) = (
                    link_details(self.host(n).ns(), VXLAN_DEV),
                    self.expected_vtep_ip(i, n),
                ) {
                    let mac = v["address"].as_str().unwrap_or_default().to_owned();
                    optional.fdb.insert(fdb_entry(&mac, self.host(n).addr()));
                    optional.neigh.insert(neigh_entry(vip, &mac));
                }
            }
        }
        let mut diff = Vec::new();
        let mut cmp =
            |what: &str, w: &BTreeSet<String>, h: &BTreeSet<String>, ok: &BTreeSet<String>| {
                let missing: Vec<&String> = w.difference(h).collect();
                let extra: Vec<&String> = h.difference(w).filter(|e| !ok.contains(*e)).collect();
                if !missing.is_empty() {
                    diff.push(format!("{what} missing: {missing:?}"));
                }
                if !extra.is_empty() {
                    diff.push(format!("{what} extra: {extra:?}"));
                }
            };
        cmp("fdb", &want.fdb, &have.fdb, &optional.fdb);
        cmp("neigh", &want.neigh, &have.neigh, &optional.neigh);
        cmp("routes", &want.routes, &have.routes, &own);
        diff
    }

    /// Waits until every host in `hosts` matches [`RoutedCluster::overlay_diff`] over `nodes`;
    /// panics after `timeout` with the differences and the agents' logs.
    pub fn wait_overlay(&self, hosts: &[usize], nodes: &[usize], mode: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for &h in hosts {
            loop {
                let diff = self.overlay_diff(h, nodes, mode);
                if diff.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{}: overlay ({mode}) did not converge within {timeout:?}:\n  {}\n\
                         have: {:#?}\nwant: {:#?}\n{}",
                        self.node(h),
                        diff.join("\n  "),
                        self.overlay(h),
                        self.expected_overlay(h, nodes, mode),
                        self.agent_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until `reef.vxlan` exists on each of `hosts`; panics after `timeout`.
    pub fn wait_vxlan_dev(&self, hosts: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for &h in hosts {
            while link_details(self.host(h).ns(), VXLAN_DEV).is_none() {
                if Instant::now() >= deadline {
                    panic!(
                        "{}: no {VXLAN_DEV} device {timeout:?} after start\n{}",
                        self.node(h),
                        self.agent_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
