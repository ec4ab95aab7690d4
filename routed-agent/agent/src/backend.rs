//! One interface per data-plane mode (flannel's backend idea): given the cluster view, make the
//! kernel match it. `routed` is plain routes; `vxlan` and `vxlan-crosssubnet` add a VXLAN
//! device, FDB and neighbour entries, and route through it where they must.

use crate::desired::{self, Desired, Target};
use crate::kernel::{Report, RouteProgrammer};
use crate::view::ClusterView;
use ipnetwork::IpNetwork;
use reef_netlink::{parse_mac, Netlink};
use reef_schema::Mode;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

pub trait Backend {
    fn mode(&self) -> Mode;

    /// Makes the kernel match `view`: `full` re-reads the kernel's state first (start,
    /// re-list, periodic resync); otherwise only the difference from the last call is applied.
    fn sync(
        &mut self,
        view: &ClusterView,
        full: bool,
    ) -> impl Future<Output = reef_netlink::Result<Report>>;
}

/// The node's own underlay attachment.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub address: IpNetwork,
    pub index: u32,
    pub mtu: u32,
}

/// Routed mode: remote blocks via the remote node's underlay address.
pub struct Routed {
    me: String,
    nl: Netlink,
    routes: RouteProgrammer,
}

impl Routed {
    pub fn new(me: &str, nl: Netlink) -> Routed {
        Routed {
            me: me.to_string(),
            routes: RouteProgrammer::new(nl.clone()),
            nl,
        }
    }
}

impl Backend for Routed {
    fn mode(&self) -> Mode {
        Mode::Routed
    }

    async fn sync(&mut self, view: &ClusterView, full: bool) -> reef_netlink::Result<Report> {
        if full {
            // Left over from a VXLAN mode before a forced mode switch.
            if reef_vxlan::delete_device(&self.nl).await? {
                crate::info!(
                    "removed VXLAN device after mode switch",
                    dev = reef_vxlan::DEVICE
                );
            }
        }
        let d = desired::compute(view, &self.me, &desired::routed_next_hop(view));
        if full {
            self.routes.full_sync(&d).await
        } else {
            Ok(self.routes.apply(&d).await)
        }
    }
}

/// A remote node's tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteVtep {
    mac: String,
    ip: IpAddr,
    underlay: IpAddr,
}

/// `vxlan` (every remote node through the overlay) and `vxlan-crosssubnet` (only nodes in
/// another underlay subnet; same-subnet nodes get routed-mode routes at full speed).
pub struct Vxlan {
    me: String,
    nl: Netlink,
    underlay: Underlay,
    crosssubnet: bool,
    routes: RouteProgrammer,
    device: Option<reef_vxlan::Device>,
    vni: u32,
    vtep_ip: Option<Ipv4Addr>,
    /// What we programmed: FDB MAC → underlay address, neighbour VTEP IP → MAC.
    fdb: BTreeMap<String, IpAddr>,
    neigh: BTreeMap<IpAddr, String>,
}

impl Vxlan {
    pub fn new(me: &str, nl: Netlink, underlay: Underlay, crosssubnet: bool) -> Vxlan {
        Vxlan {
            me: me.to_string(),
            routes: RouteProgrammer::new(nl.clone()),
            nl,
            underlay,
            crosssubnet,
            device: None,
            vni: 0,
            vtep_ip: None,
            fdb: BTreeMap::new(),
            neigh: BTreeMap::new(),
        }
    }

    /// The VTEP address: the network address of the node's lowest IPv4 block (an address IPAM
    /// never hands out), so it is unique and inside the pool.
    fn own_vtep_ip(&self, view: &ClusterView) -> Option<Ipv4Addr> {
        view.blocks
            .values()
            .filter(|b| b.node == self.me)
            .filter_map(|b| match b.cidr.network() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .min()
    }

    async fn ensure_device(&mut self, view: &ClusterView) -> reef_netlink::Result<u32> {
        let IpAddr::V4(local) = self.underlay.address.ip() else {
            return Err(reef_netlink::Error::Invalid(
                "VXLAN needs an IPv4 underlay address".into(),
            ));
        };
        let vni = view.config.as_ref().map(|c| c.vni).unwrap_or(1);
        let spec = reef_vxlan::DeviceSpec {
            vni,
            local,
            underlay_index: self.underlay.index,
            mtu: self.underlay.mtu.saturating_sub(reef_vxlan::OVERHEAD),
        };
        let dev = reef_vxlan::ensure_device(&self.nl, &spec).await?;
        if self.device.as_ref().map(|d| d.index) != Some(dev.index) {
            crate::info!(
                "VXLAN device ready",
                dev = reef_vxlan::DEVICE,
                vni = vni,
                mtu = dev.mtu.unwrap_or_default(),
                mac = dev.mac
            );
            // A new device starts empty.
            self.fdb.clear();
            self.neigh.clear();
            self.vtep_ip = None;
        }
        self.vni = vni;
        let index = dev.index;
        self.device = Some(dev);
        Ok(index)
    }
}

impl Backend for Vxlan {
    fn mode(&self) -> Mode {
        if self.crosssubnet {
            Mode::VxlanCrosssubnet
        } else {
            Mode::Vxlan
        }
    }

    async fn sync(&mut self, view: &ClusterView, full: bool) -> reef_netlink::Result<Report> {
        let vni = view.config.as_ref().map(|c| c.vni).unwrap_or(1);
        if full || self.device.is_none() || vni != self.vni {
            self.ensure_device(view).await?;
        }
        let Some(dev) = self.device.clone() else {
            return Ok(Report::default());
        };
        if full {
            // Learn what the kernel holds (after a restart) so stale entries get removed.
            self.fdb = reef_vxlan::fdb_entries(&self.nl, dev.index)
                .await?
                .into_iter()
                .filter(|(mac, _)| !mac.starts_with("00:00:00:00:00:00"))
                .collect();
            self.neigh = self
                .nl
                .neighbours(dev.index)
                .await?
                .into_iter()
                .filter(|n| n.permanent)
                .filter_map(|n| Some((n.ip, n.mac?)))
                .collect();
        }
        // Our own VTEP address, once we own a block.
        let vtep_ip = self.own_vtep_ip(view);
        if vtep_ip != self.vtep_ip {
            if let Some(ip) = vtep_ip {
                let net = IpNetwork::new(IpAddr::V4(ip), 32)
                    .map_err(|e| reef_netlink::Error::Invalid(e.to_string()))?;
                self.nl.add_address(dev.index, net).await?;
            }
            self.vtep_ip = vtep_ip;
        }
        // Which remote nodes go through the tunnel.
        let vteps = remote_vteps(view, &self.me);
        let (tunnel, problems) = tunnel_plan(view, &vteps, self.underlay.address, self.crosssubnet);
        let want_fdb: BTreeMap<String, IpAddr> = tunnel
            .values()
            .map(|v| (v.mac.clone(), v.underlay))
            .collect();
        let want_neigh: BTreeMap<IpAddr, String> =
            tunnel.values().map(|v| (v.ip, v.mac.clone())).collect();
        // FDB and neighbours first, so a new route never points at an unresolved VTEP.
        for (mac, dst) in &want_fdb {
            if self.fdb.get(mac) == Some(dst) {
                continue;
            }
            let bytes = parse_mac(mac)?;
            if let Some(old) = self.fdb.get(mac).copied() {
                let _ = reef_vxlan::delete_fdb(&self.nl, dev.index, &bytes, old).await;
            }
            reef_vxlan::set_fdb(&self.nl, dev.index, &bytes, *dst).await?;
            self.fdb.insert(mac.clone(), *dst);
            crate::info!("fdb programmed", mac = mac, dst = dst);
        }
        for (ip, mac) in &want_neigh {
            if self.neigh.get(ip) == Some(mac) {
                continue;
            }
            self.nl
                .set_permanent_neighbour(dev.index, *ip, &parse_mac(mac)?)
                .await?;
            self.neigh.insert(*ip, mac.clone());
            crate::info!("neighbour programmed", ip = ip, mac = mac);
        }
        // Routes.
        let me = self.me.clone();
        let crosssubnet = self.crosssubnet;
        let underlay = self.underlay.address;
        let next_hop = |node: &str, v4: bool| -> Result<Target, String> {
            let rec = view
                .nodes
                .get(node)
                .ok_or_else(|| "node is not registered".to_string())?;
            let addr = rec
                .address
                .ok_or_else(|| "node has no underlay address yet".to_string())?;
            if crosssubnet && underlay.contains(addr.ip()) {
                return desired::routed_next_hop(view)(node, v4);
            }
            match tunnel.get(node) {
                Some(v) if v4 == v.ip.is_ipv4() => Ok(Target::Onlink {
                    via: v.ip,
                    dev: dev.index,
                }),
                Some(_) => Err("the overlay carries IPv4 only".into()),
                None => Err(vteps
                    .get(node)
                    .and_then(|r| r.as_ref().err().cloned())
                    .unwrap_or_else(|| "no VTEP".into())),
            }
        };
        let mut d: Desired = desired::compute(view, &me, &next_hop);
        d.problems.extend(problems);
        let mut report = if full {
            self.routes.full_sync(&d).await?
        } else {
            self.routes.apply(&d).await
        };
        // Stale FDB and neighbours last, once no route points at them.
        let stale_fdb: Vec<(String, IpAddr)> = self
            .fdb
            .iter()
            .filter(|(m, d)| want_fdb.get(*m) != Some(d))
            .map(|(m, d)| (m.clone(), *d))
            .collect();
        for (mac, dst) in stale_fdb {
            reef_vxlan::delete_fdb(&self.nl, dev.index, &parse_mac(&mac)?, dst).await?;
            self.fdb.remove(&mac);
            crate::info!("fdb removed", mac = mac, dst = dst);
        }
        let stale_neigh: BTreeSet<IpAddr> = self
            .neigh
            .keys()
            .filter(|ip| !want_neigh.contains_key(ip))
            .copied()
            .collect();
        for ip in stale_neigh {
            self.nl.delete_neighbour(dev.index, ip).await?;
            self.neigh.remove(&ip);
            crate::info!("neighbour removed", ip = ip);
        }
        report.vtep = self.vtep_ip.map(|ip| (dev.mac.clone(), IpAddr::V4(ip)));
        Ok(report)
    }
}

/// Every remote node's VTEP, or why it has none.
fn remote_vteps(view: &ClusterView, me: &str) -> BTreeMap<String, Result<RemoteVtep, String>> {
    view.nodes
        .iter()
        .filter(|(n, _)| n.as_str() != me)
        .map(|(n, rec)| {
            let r = match (rec.address, &rec.vtep_mac, rec.vtep_ip) {
                (None, _, _) => {
                    Err("node has no underlay address yet (its reef-agent never ran)".into())
                }
                (Some(a), Some(mac), Some(ip)) => Ok(RemoteVtep {
                    mac: mac.to_ascii_lowercase(),
                    ip,
                    underlay: a.ip(),
                }),
                (Some(_), _, _) => Err(
                    "node has no VTEP yet (no block yet, or its agent is not in a VXLAN mode)"
                        .into(),
                ),
            };
            (n.clone(), r)
        })
        .collect()
}

/// The remote nodes reached through the tunnel (all of them in `vxlan`; in crosssubnet only
/// those outside our underlay subnet), and the problems of nodes that need it but can't use it.
fn tunnel_plan(
    view: &ClusterView,
    vteps: &BTreeMap<String, Result<RemoteVtep, String>>,
    underlay: IpNetwork,
    crosssubnet: bool,
) -> (BTreeMap<String, RemoteVtep>, BTreeMap<String, String>) {
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

/// The backend of the cluster's current mode.
pub enum AnyBackend {
    Routed(Routed),
    Vxlan(Vxlan),
}

impl AnyBackend {
    pub fn for_mode(mode: Mode, me: &str, nl: Netlink, underlay: Underlay) -> AnyBackend {
        match mode {
            Mode::Routed => AnyBackend::Routed(Routed::new(me, nl)),
            Mode::Vxlan => AnyBackend::Vxlan(Vxlan::new(me, nl, underlay, false)),
            Mode::VxlanCrosssubnet => AnyBackend::Vxlan(Vxlan::new(me, nl, underlay, true)),
        }
    }
}

impl Backend for AnyBackend {
    fn mode(&self) -> Mode {
        match self {
            AnyBackend::Routed(b) => b.mode(),
            AnyBackend::Vxlan(b) => b.mode(),
        }
    }

    async fn sync(&mut self, view: &ClusterView, full: bool) -> reef_netlink::Result<Report> {
        match self {
            AnyBackend::Routed(b) => b.sync(view, full).await,
            AnyBackend::Vxlan(b) => b.sync(view, full).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClusterView {
        ClusterView::from_kvs([
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
        ])
    }

    #[test]
    fn vxlan_tunnels_to_every_node_with_a_vtep() {
        let v = view();
        let vteps = remote_vteps(&v, "a");
        let (t, p) = tunnel_plan(&v, &vteps, "198.18.1.1/24".parse().unwrap(), false);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["b", "c"]);
        assert!(p["d"].contains("no VTEP"));
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
}
