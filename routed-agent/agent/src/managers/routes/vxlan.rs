//! `vxlan` (every remote node through the overlay) and `vxlan-crosssubnet` (only nodes in
//! another underlay subnet; same-subnet nodes get routed-mode routes at full speed). The plan
//! comes from [`desired::vxlan`]; this is its kernel programmer: the device, our VTEP address,
//! FDB and neighbour entries, then the routes.

use super::kernel::RouteProgrammer;
use crate::desired::{self, vxlan::Local};
use crate::managers::diff::diff;
use crate::managers::Outcome;
use crate::underlay::Underlay;
use crate::view::ClusterView;
use ipnetwork::IpNetwork;
use reef_netlink::{parse_mac, Netlink};
use reef_schema::Mode;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

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

    pub fn mode(&self) -> Mode {
        if self.crosssubnet {
            Mode::VxlanCrosssubnet
        } else {
            Mode::Vxlan
        }
    }

    async fn ensure_device(&mut self, vni: u32) -> reef_netlink::Result<()> {
        let IpAddr::V4(local) = self.underlay.address.ip() else {
            return Err(reef_netlink::Error::Invalid(
                "VXLAN needs an IPv4 underlay address".into(),
            ));
        };
        let spec = reef_vxlan::DeviceSpec {
            vni,
            local,
            underlay_index: self.underlay.index,
            mtu: self.underlay.mtu.saturating_sub(reef_vxlan::OVERHEAD),
        };
        let dev = reef_vxlan::ensure_device(&self.nl, &spec).await?;
        if self.device.as_ref().map(|d| d.index) != Some(dev.index) {
            tracing::info!(dev = %reef_vxlan::DEVICE, vni, mtu = %dev.mtu.unwrap_or_default(), mac = %dev.mac, "VXLAN device ready");
            // A new device starts empty.
            self.fdb.clear();
            self.neigh.clear();
            self.vtep_ip = None;
        }
        self.vni = vni;
        self.device = Some(dev);
        Ok(())
    }

    /// Learns what the kernel holds (after a restart) so stale entries get removed.
    async fn learn(&mut self, dev: u32) -> reef_netlink::Result<()> {
        self.fdb = reef_vxlan::fdb_entries(&self.nl, dev)
            .await?
            .into_iter()
            .filter(|(mac, _)| !mac.starts_with("00:00:00:00:00:00"))
            .collect();
        self.neigh = self
            .nl
            .neighbours(dev)
            .await?
            .into_iter()
            .filter(|n| n.permanent)
            .filter_map(|n| Some((n.ip, n.mac?)))
            .collect();
        Ok(())
    }

    pub async fn sync(&mut self, view: &ClusterView, full: bool) -> reef_netlink::Result<Outcome> {
        let vni = view.config.as_ref().map(|c| c.vni).unwrap_or(1);
        if full || self.device.is_none() || vni != self.vni {
            self.ensure_device(vni).await?;
        }
        let Some(dev) = self.device.clone() else {
            return Ok(Outcome::default());
        };
        if full {
            self.learn(dev.index).await?;
        }
        let plan = desired::vxlan::plan(
            view,
            Local {
                me: &self.me,
                underlay: self.underlay.address,
                crosssubnet: self.crosssubnet,
                dev: dev.index,
            },
        );
        if plan.vtep_ip != self.vtep_ip {
            if let Some(ip) = plan.vtep_ip {
                let net = IpNetwork::new(IpAddr::V4(ip), 32)
                    .map_err(|e| reef_netlink::Error::Invalid(e.to_string()))?;
                self.nl.add_address(dev.index, net).await?;
            }
            self.vtep_ip = plan.vtep_ip;
        }
        let fdb = diff(&self.fdb, &plan.fdb);
        let neigh = diff(&self.neigh, &plan.neigh);
        // FDB and neighbours first, so a new route never points at an unresolved VTEP.
        for (mac, dst) in fdb.set {
            let bytes = parse_mac(&mac)?;
            if let Some(old) = self.fdb.get(&mac).copied() {
                let _ = reef_vxlan::delete_fdb(&self.nl, dev.index, &bytes, old).await;
            }
            reef_vxlan::set_fdb(&self.nl, dev.index, &bytes, dst).await?;
            tracing::info!(mac = %mac, dst = %dst, "fdb programmed");
            self.fdb.insert(mac, dst);
        }
        for (ip, mac) in neigh.set {
            self.nl
                .set_permanent_neighbour(dev.index, ip, &parse_mac(&mac)?)
                .await?;
            tracing::info!(ip = %ip, mac = %mac, "neighbour programmed");
            self.neigh.insert(ip, mac);
        }
        let mut outcome = if full {
            self.routes.full_sync(&plan.routes).await?
        } else {
            self.routes.apply(&plan.routes).await
        };
        // Stale FDB and neighbours last, once no route points at them.
        for (mac, dst) in fdb.stale {
            reef_vxlan::delete_fdb(&self.nl, dev.index, &parse_mac(&mac)?, dst).await?;
            self.fdb.remove(&mac);
            tracing::info!(mac = %mac, dst = %dst, "fdb removed");
        }
        for (ip, _) in neigh.stale {
            self.nl.delete_neighbour(dev.index, ip).await?;
            self.neigh.remove(&ip);
            tracing::info!(ip = %ip, "neighbour removed");
        }
        outcome.fdb_entries = self.fdb.len();
        outcome.neighbours = self.neigh.len();
        outcome.vtep = self.vtep_ip.map(|ip| (dev.mac.clone(), IpAddr::V4(ip)));
        Ok(outcome)
    }
}
