//! Desired state: pure functions of the cluster view and the node the agent runs on, one per
//! concern (routes here, [`vxlan`] for the overlay's FDB, neighbours and onlink routes,
//! [`nat`] for natOutgoing). Nothing here touches the kernel, so all of it is unit-tested.
//!
//! Routes, routed mode (Calico without BGP, flannel host-gw): every other node's blocks via that
//! node's underlay address; a /32 (/128) for each address another node borrowed; a blackhole
//! for each of our own blocks, so a packet for an unused address of our block is dropped here
//! instead of following the default route back out. Our own pods' /32s are the CNI plugin's.

pub mod endpoints;
pub mod nat;
pub mod policy;
pub mod services;
pub mod trust;
pub mod vxlan;

use crate::problem::Problem;
use crate::view::ClusterView;
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Blackhole,
    /// Next hop on a shared segment.
    Via(IpAddr),
    /// Next hop through a device that has no covering route for it (VXLAN's VTEP addresses).
    Onlink {
        via: IpAddr,
        dev: u32,
    },
}

/// One wanted route and the node it serves (for problem reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub target: Target,
    pub node: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<IpNetwork, Wanted>,
    /// Nodes that cannot be routed to, and why.
    pub problems: BTreeMap<String, Problem>,
}

pub(crate) fn host_net(ip: IpAddr) -> IpNetwork {
    let p = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, p).unwrap_or_else(|_| IpNetwork::from(ip))
}

/// How to reach one remote node's addresses; None (with a reason) if it can't be reached.
pub type NextHop<'a> = dyn Fn(&str, bool) -> Result<Target, Problem> + 'a;

/// The routes for `me`, with `next_hop(node, v4)` choosing how to reach a remote node.
pub fn compute(view: &ClusterView, me: &str, next_hop: &NextHop<'_>) -> Desired {
    let mut d = Desired::default();
    let add_remote =
        |d: &mut Desired, dst: IpNetwork, node: &str| match next_hop(node, dst.is_ipv4()) {
            Ok(target) => {
                d.routes.insert(
                    dst,
                    Wanted {
                        target,
                        node: node.to_string(),
                    },
                );
            }
            Err(why) => {
                d.problems.insert(node.to_string(), why);
            }
        };
    // Only records that pass the trust checks become routes; the rest are reported.
    let trusted = trust::trusted(view);
    d.problems.extend(trusted.problems);
    for block in trusted.blocks {
        if block.node == me {
            d.routes.insert(
                block.cidr,
                Wanted {
                    target: Target::Blackhole,
                    node: me.to_string(),
                },
            );
        } else {
            add_remote(&mut d, block.cidr, &block.node);
        }
    }
    for (ip, rec) in trusted.borrowed {
        if rec.node != me {
            add_remote(&mut d, host_net(ip), &rec.node);
        }
    }
    d
}

/// Routed mode's next hop: the remote node's underlay address, same family as the route.
pub fn routed_next_hop(view: &ClusterView) -> impl Fn(&str, bool) -> Result<Target, Problem> + '_ {
    move |node, v4| {
        let rec = view.nodes.get(node).ok_or(Problem::NotRegistered)?;
        let addr = rec.address.ok_or(Problem::NoUnderlay)?;
        if addr.is_ipv4() != v4 {
            return Err(Problem::FamilyMismatch(addr));
        }
        Ok(Target::Via(addr.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClusterView {
        ClusterView::from_kvs([
            (
                "/reef/config",
                &br#"{"pools":[{"cidr":"10.0.0.0/24","blockPrefix":26}],"mode":"routed"}"#[..],
            ),
            (
                "/reef/nodes/a",
                &br#"{"name":"a","address":"198.18.1.2/24"}"#[..],
            ),
            (
                "/reef/nodes/b",
                &br#"{"name":"b","address":"198.18.1.3/24"}"#[..],
            ),
            ("/reef/nodes/c", &br#"{"name":"c"}"#[..]),
            (
                "/reef/blocks/10.0.0.0-26",
                &br#"{"cidr":"10.0.0.0/26","node":"a"}"#[..],
            ),
            (
                "/reef/blocks/10.0.0.64-26",
                &br#"{"cidr":"10.0.0.64/26","node":"b"}"#[..],
            ),
            (
                "/reef/blocks/10.0.0.128-26",
                &br#"{"cidr":"10.0.0.128/26","node":"c"}"#[..],
            ),
            (
                "/reef/borrowed/10.0.0.70",
                &br#"{"node":"a","block":"10.0.0.64/26"}"#[..],
            ),
            (
                "/reef/borrowed/10.0.0.5",
                &br#"{"node":"b","block":"10.0.0.0/26"}"#[..],
            ),
        ])
    }

    #[test]
    fn routed_routes_for_a() {
        let v = view();
        let d = compute(&v, "a", &routed_next_hop(&v));
        let got: Vec<String> = d
            .routes
            .iter()
            .map(|(k, w)| format!("{k} {:?}", w.target))
            .collect();
        assert_eq!(
            got,
            vec![
                "10.0.0.0/26 Blackhole",
                "10.0.0.5/32 Via(198.18.1.3)",
                "10.0.0.64/26 Via(198.18.1.3)",
            ]
        );
        assert!(d.problems["c"].to_string().contains("no underlay address"));
    }

    #[test]
    fn own_borrowed_addresses_are_left_to_the_plugin() {
        let v = view();
        let d = compute(&v, "b", &routed_next_hop(&v));
        assert_eq!(
            d.routes[&"10.0.0.70/32".parse().unwrap()].target,
            Target::Via("198.18.1.2".parse().unwrap())
        );
        assert!(!d.routes.contains_key(&"10.0.0.5/32".parse().unwrap()));
        assert_eq!(
            d.routes[&"10.0.0.64/26".parse().unwrap()].target,
            Target::Blackhole
        );
    }
}
