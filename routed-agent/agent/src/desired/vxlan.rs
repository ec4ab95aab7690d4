//! VXLAN's desired state (flannel's vxlan backend): for every remote node reached through the
//! overlay, an FDB entry (its VTEP MAC → its underlay address), a permanent neighbour (its VTEP
//! address → MAC) and onlink routes via its VTEP address; in `vxlan-crosssubnet`, nodes on our
//! own underlay subnet get routed-mode routes instead.

use super::{compute, routed_next_hop, Desired, Target};
use crate::problem::Problem;
use crate::view::ClusterView;
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// A remote node's tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVtep {
    pub mac: String,
    pub ip: IpAddr,
    pub underlay: IpAddr,
}

/// Where this node stands: its name, underlay subnet, mode and VXLAN device.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    pub me: &'a str,
    pub underlay: IpNetwork,
    pub crosssubnet: bool,
    /// The VXLAN device's index (the onlink routes' device).
    pub dev: u32,
}

/// Everything the overlay wants on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Our own VTEP address, once we own an IPv4 block.
    pub vtep_ip: Option<Ipv4Addr>,
    /// FDB: remote VTEP MAC → its underlay address.
    pub fdb: BTreeMap<String, IpAddr>,
    /// Permanent neighbours: remote VTEP address → MAC.
    pub neigh: BTreeMap<IpAddr, String>,
    pub routes: Desired,
}

/// The overlay's plan for `local` from `view`.
pub fn plan(view: &ClusterView, local: Local<'_>) -> Plan {
    let vteps = remote_vteps(view, local.me);
    let (tunnel, problems) = tunnel_plan(view, &vteps, local.underlay, local.crosssubnet);
    let next_hop = |node: &str, v4: bool| -> Result<Target, Problem> {
        let rec = view.nodes.get(node).ok_or(Problem::NotRegistered)?;
        let addr = rec.address.ok_or(Problem::NoUnderlay)?;
        if local.crosssubnet && local.underlay.contains(addr.ip()) {
            return routed_next_hop(view)(node, v4);
        }
        match tunnel.get(node) {
            Some(v) if v4 == v.ip.is_ipv4() => Ok(Target::Onlink {
                via: v.ip,
                dev: local.dev,
            }),
            Some(_) => Err(Problem::OverlayIpv4Only),
            None => Err(vteps
                .get(node)
                .and_then(|r| r.as_ref().err().cloned())
                .unwrap_or(Problem::NoVtep)),
        }
    };
    let mut routes = compute(view, local.me, &next_hop);
    routes.problems.extend(problems);
    Plan {
        vtep_ip: own_vtep_ip(view, local.me),
        fdb: tunnel
            .values()
            .map(|v| (v.mac.clone(), v.underlay))
            .collect(),
        neigh: tunnel.values().map(|v| (v.ip, v.mac.clone())).collect(),
        routes,
    }
}

/// The VTEP address: the network address of the node's lowest IPv4 block (an address IPAM
/// never hands out), so it is unique and inside the pool.
pub fn own_vtep_ip(view: &ClusterView, me: &str) -> Option<Ipv4Addr> {
    super::trust::trusted(view)
        .blocks
        .into_iter()
        .filter(|b| b.node == me)
        .filter_map(|b| match b.cidr.network() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .min()
}

/// Every remote node's VTEP, or why it has none.
pub fn remote_vteps(view: &ClusterView, me: &str) -> BTreeMap<String, Result<RemoteVtep, Problem>> {
    view.nodes
        .iter()
        .filter(|(n, _)| n.as_str() != me)
        .map(|(n, rec)| {
            let r = match (rec.address, &rec.vtep_mac, rec.vtep_ip) {
                (None, _, _) => Err(Problem::NoUnderlay),
                (Some(a), Some(mac), Some(ip)) => Ok(RemoteVtep {
                    mac: mac.to_ascii_lowercase(),
                    ip,
                    underlay: a.ip(),
                }),
                (Some(_), _, _) => Err(Problem::NoVtep),
            };
            (n.clone(), r)
        })
        .collect()
}

/// The remote nodes reached through the tunnel (all of them in `vxlan`; in crosssubnet only
/// those outside our underlay subnet), and the problems of nodes that need it but can't use it.
pub fn tunnel_plan(
    view: &ClusterView,
    vteps: &BTreeMap<String, Result<RemoteVtep, Problem>>,
    underlay: IpNetwork,
    crosssubnet: bool,
) -> (BTreeMap<String, RemoteVtep>, BTreeMap<String, Problem>) {
    let direct = |node: &str| {
        crosssubnet
            && view
                .nodes
                .get(node)
                .and_then(|n| n.address)
                .is_some_and(|a| underlay.contains(a.ip()))
    };
    let mut tunnel = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for (node, r) in vteps {
        if direct(node) {
            continue;
        }
        match r {
            Ok(v) => {
                tunnel.insert(node.clone(), v.clone());
            }
            Err(why) => {
                problems.insert(node.clone(), why.clone());
            }
        }
    }
    (tunnel, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClusterView {
        ClusterView::from_kvs([
            (
                "/reef/config",
                &br#"{"pools":[{"cidr":"10.0.0.0/24","blockPrefix":26}],"mode":"vxlan"}"#[..],
            ),
            (
                "/reef/nodes/a",
                &br#"{"name":"a","address":"198.18.1.1/24","vtepMac":"AA:00:00:00:00:01","vtepIp":"10.0.0.0"}"#[..],
            ),
            (
                "/reef/nodes/b",
                &br#"{"name":"b","address":"198.18.1.2/24","vtepMac":"aa:00:00:00:00:02","vtepIp":"10.0.0.64"}"#[..],
            ),
            (
                "/reef/nodes/c",
                &br#"{"name":"c","address":"198.18.2.1/24","vtepMac":"aa:00:00:00:00:03","vtepIp":"10.0.0.128"}"#[..],
            ),
            ("/reef/nodes/d", &br#"{"name":"d","address":"198.18.2.2/24"}"#[..]),
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
                "/reef/blocks/10.0.0.192-26",
                &br#"{"cidr":"10.0.0.192/26","node":"d"}"#[..],
            ),
        ])
    }

    fn local(me: &'static str, underlay: &str, crosssubnet: bool) -> Local<'static> {
        Local {
            me,
            underlay: underlay.parse().unwrap(),
            crosssubnet,
            dev: 7,
        }
    }

    fn routes(p: &Plan) -> Vec<String> {
        p.routes
            .routes
            .iter()
            .map(|(k, w)| format!("{k} {:?}", w.target))
            .collect()
    }

    #[test]
    fn vxlan_tunnels_to_every_node_with_a_vtep() {
        let v = view();
        let vteps = remote_vteps(&v, "a");
        let (t, p) = tunnel_plan(&v, &vteps, "198.18.1.1/24".parse().unwrap(), false);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["b", "c"]);
        assert!(p["d"].to_string().contains("no VTEP"));
        assert_eq!(t["b"].underlay.to_string(), "198.18.1.2");
    }

    #[test]
    fn crosssubnet_tunnels_only_across_subnets() {
        let v = view();
        let vteps = remote_vteps(&v, "a");
        let (t, p) = tunnel_plan(&v, &vteps, "198.18.1.1/24".parse().unwrap(), true);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["c"]);
        assert!(p.contains_key("d"));
        // From the other subnet, d is direct and b goes through the tunnel.
        let vteps = remote_vteps(&v, "c");
        let (t, p) = tunnel_plan(&v, &vteps, "198.18.2.1/24".parse().unwrap(), true);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(t["a"].mac, "aa:00:00:00:00:01");
    }

    #[test]
    fn vxlan_plan_programs_fdb_neighbours_and_onlink_routes() {
        let p = plan(&view(), local("a", "198.18.1.1/24", false));
        assert_eq!(p.vtep_ip, Some("10.0.0.0".parse().unwrap()));
        assert_eq!(p.fdb["aa:00:00:00:00:02"].to_string(), "198.18.1.2");
        assert_eq!(
            p.neigh[&"10.0.0.128".parse::<IpAddr>().unwrap()],
            "aa:00:00:00:00:03"
        );
        assert_eq!(p.fdb.len(), 2);
        assert_eq!(
            routes(&p),
            vec![
                "10.0.0.0/26 Blackhole",
                "10.0.0.64/26 Onlink { via: 10.0.0.64, dev: 7 }",
                "10.0.0.128/26 Onlink { via: 10.0.0.128, dev: 7 }",
            ]
        );
        assert_eq!(p.routes.problems["d"], Problem::NoVtep);
    }

    #[test]
    fn crosssubnet_plan_routes_same_subnet_nodes_directly() {
        let p = plan(&view(), local("c", "198.18.2.1/24", true));
        assert_eq!(
            routes(&p),
            vec![
                "10.0.0.0/26 Onlink { via: 10.0.0.0, dev: 7 }",
                "10.0.0.64/26 Onlink { via: 10.0.0.64, dev: 7 }",
                "10.0.0.128/26 Blackhole",
                "10.0.0.192/26 Via(198.18.2.2)",
            ]
        );
        assert!(!p.fdb.contains_key("aa:00:00:00:00:03"));
        assert!(p.routes.problems.is_empty(), "{:?}", p.routes.problems);
    }
}
