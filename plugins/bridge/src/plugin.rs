//! The bridge host side: the host end of every pair on one Linux bridge, optionally the
//! gateway on the bridge, masquerade of the pod's addresses, hairpin. The verbs are
//! `reef_attach::VethPlugin`'s.

use crate::config::BridgeConf;
use ipnetwork::IpNetwork;
use reef_attach::{
    check_err, default_dst, existing_host_veth, nl_err, Add, Check, HostSide, HostVeth, Released,
};
use reef_cni::{codes, CmdArgs, CniError, CniResult, Interface, NetConf, Route};
use reef_firewall::choice;
use reef_firewall::{BridgeIsolation, FirewallDriver, Masquerade};
use reef_netlink::{sysctl, LinkInfo, Netlink};
use std::net::IpAddr;

pub struct Bridge {
    conf: BridgeConf,
}

const BRIDGE_NF: &str = "net/bridge/bridge-nf-call-iptables";

fn fw_err(e: reef_firewall::Error) -> CniError {
    CniError::new(codes::FIREWALL, e.to_string())
}

fn subnet_of(a: &IpNetwork) -> IpNetwork {
    IpNetwork::new(a.network(), a.prefix()).unwrap_or(*a)
}

/// Routes to install in the pod: IPAM's routes (gateway defaulting to the address's gateway),
/// plus a default route via the gateway in gateway mode when IPAM gave none for that family.
fn pod_routes(conf: &BridgeConf, ipam: &CniResult) -> Vec<Route> {
    let mut routes: Vec<Route> = ipam
        .routes
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r.gw.is_none() {
                r.gw = ipam
                    .ips
                    .iter()
                    .find(|ip| ip.address.is_ipv4() == r.dst.is_ipv4())
                    .and_then(|ip| ip.gateway);
            }
            r
        })
        .collect();
    if conf.gateway_mode() {
        for ip in &ipam.ips {
            let v6 = ip.address.is_ipv6();
            let has_default = routes
                .iter()
                .any(|r| r.dst.prefix() == 0 && r.dst.is_ipv6() == v6);
            if let (Some(gw), false) = (ip.gateway, has_default) {
                routes.push(Route::new(default_dst(v6), Some(gw)));
            }
        }
    }
    routes
}

impl Bridge {
    fn masquerade_of(args: &CmdArgs, ips: &[IpNetwork]) -> Masquerade {
        Masquerade {
            network: args.conf.name.clone(),
            subnets: ips.iter().map(subnet_of).collect(),
        }
    }
}

/// One subnet on two bridges splits it: the host routes it to whichever bridge got its
/// address first, so the other bridge's pods are unreachable. Refused (7) when another bridge
/// already carries an address overlapping a subnet IPAM gave this attachment.
async fn refuse_subnet_on_other_bridge(
    host: &Netlink,
    bridge: &str,
    ipam: &CniResult,
) -> Result<(), CniError> {
    let bridges: Vec<LinkInfo> = host
        .links()
        .await
        .map_err(nl_err)?
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("bridge") && l.name != bridge)
        .collect();
    if bridges.is_empty() {
        return Ok(());
    }
    let addrs = host.all_addresses().await.map_err(nl_err)?;
    for ip in &ipam.ips {
        let ours = subnet_of(&ip.address);
        for a in &addrs {
            let theirs = subnet_of(&a.address);
            let overlaps = ours.is_ipv4() == theirs.is_ipv4()
                && (ours.contains(theirs.network()) || theirs.contains(ours.network()));
            if !overlaps {
                continue;
            }
            if let Some(other) = bridges.iter().find(|b| b.index == a.index) {
                return Err(CniError::invalid_config(format!(
                    "subnet {ours} is already on bridge {} (address {}); one subnet cannot \
                     span two bridges (this network uses {})",
                    other.name, a.address, bridge
                )));
            }
        }
    }
    Ok(())
}

impl HostSide for Bridge {
    const PLUGIN: &'static str = "reef-bridge";

    /// The firewall driver of DEL and GC, dropped after the veth is gone: see `Firewall`.
    type Teardown = Option<Box<dyn FirewallDriver>>;

    fn from_netconf(conf: &NetConf) -> Result<Bridge, CniError> {
        BridgeConf::from_netconf(conf).map(|conf| Bridge { conf })
    }

    async fn prepare_host(&self, host: &Netlink, ipam: &CniResult) -> Result<HostVeth, CniError> {
        let conf = &self.conf;
        let mtu = reef_vxlan::pod_mtu(host, conf.mtu).await.map_err(nl_err)?;
        let br = host
            .ensure_bridge(&conf.bridge, mtu)
            .await
            .map_err(nl_err)?;
        // Before the gateway address: a refused ADD leaves the other bridge's subnet alone.
        refuse_subnet_on_other_bridge(host, &br.name, ipam).await?;
        // Network policy judges bridged IPv4 traffic (two pods on this bridge) in the inet
        // forward hook, which bridged frames reach only through br_netfilter (Kubernetes
        // requires the same setting of every node).
        if sysctl::get(BRIDGE_NF).is_ok_and(|v| v.trim() != "1") {
            sysctl::set(BRIDGE_NF, "1").map_err(nl_err)?;
        }
        if conf.gateway_mode() {
            for ip in &ipam.ips {
                if let Some(gw) = ip.gateway {
                    let gw_net = IpNetwork::new(gw, ip.address.prefix())
                        .map_err(|e| CniError::invalid_config(format!("gateway {gw}: {e}")))?;
                    host.add_address(br.index, gw_net).await.map_err(nl_err)?;
                    let key = if gw.is_ipv4() {
                        "net/ipv4/ip_forward"
                    } else {
                        "net/ipv6/conf/all/forwarding"
                    };
                    sysctl::set(key, "1").map_err(nl_err)?;
                }
            }
        }
        Ok(HostVeth {
            mtu,
            controller: Some(br.index),
            mac: None,
            interfaces: vec![Interface {
                name: br.name,
                mac: br.mac,
                mtu: br.mtu,
                sandbox: None,
            }],
        })
    }

    async fn host_veth_created(&self, add: &Add<'_>) -> Result<(), CniError> {
        if self.conf.hairpin_mode {
            let veth = add.veth.index;
            add.host.set_hairpin(veth, true).await.map_err(nl_err)?;
        }
        Ok(())
    }

    fn pod_routes(&self, ipam: &CniResult) -> Vec<Route> {
        pod_routes(&self.conf, ipam)
    }

    fn isolation(&self) -> Option<BridgeIsolation> {
        Some(BridgeIsolation {
            name: self.conf.bridge.clone(),
            isolated: self.conf.isolation,
        })
    }

    /// Nothing left: the masquerade elements go with the pod's guard (`masquerade`).
    async fn finish_add(&self, _add: &Add<'_>, _pod_link: &LinkInfo) -> Result<(), CniError> {
        Ok(())
    }

    fn masquerade(&self, args: &CmdArgs, ipam: &CniResult) -> Option<Masquerade> {
        let nets: Vec<IpNetwork> = ipam.ips.iter().map(|i| i.address).collect();
        self.conf.ip_masq.then(|| Self::masquerade_of(args, &nets))
    }

    /// The bridge exists and the host veth is attached to it.
    async fn check_host(&self, check: &Check<'_>, host: &Netlink) -> Result<(), CniError> {
        let (bridge, veth_name) = (&self.conf.bridge, check.veth_name);
        let br = host
            .link_by_name(bridge)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| check_err(format!("bridge {bridge} is missing")))?;
        let veth = existing_host_veth(host, veth_name).await?;
        if veth.controller != Some(br.index) {
            return Err(check_err(format!(
                "{veth_name} is not attached to {bridge}"
            )));
        }
        Ok(())
    }

    fn check_rest(&self, check: &Check<'_>) -> Result<(), CniError> {
        if self.conf.ip_masq {
            let args = check.args;
            let nets: Vec<IpNetwork> = check.prev.ips.iter().map(|i| i.address).collect();
            let ips: Vec<IpAddr> = nets.iter().map(|n| n.ip()).collect();
            let kind = reef_attach::firewall_kind(args)?;
            let att = reef_attach::attachment::<Self>(args);
            choice::for_del(&att, kind)
                .check_masquerade(&Self::masquerade_of(args, &nets), &ips)
                .map_err(|e| check_err(e.to_string()))?;
        }
        Ok(())
    }

    /// DEL's masquerade elements leave with the pod's guard (`masquerade_network`).
    fn masquerade_network(&self, args: &CmdArgs) -> Option<String> {
        self.conf.ip_masq.then(|| args.conf.name.clone())
    }

    /// Masquerade entries of the addresses IPAM released.
    fn gc_host(&self, gc: &mut Released<'_>) -> Self::Teardown {
        let (true, Some(ips)) = (self.conf.ip_masq, &gc.ips) else {
            return None;
        };
        let kind = match reef_attach::firewall_kind(gc.args) {
            Ok(k) => k,
            Err(e) => {
                gc.errors.push(e);
                return None;
            }
        };
        // With every driver: the host may have switched since their ADD.
        let network = gc.args.conf.name.clone();
        if let Err(e) = choice::with_every_driver(kind, |fw| fw.del_masquerade(&network, ips)) {
            gc.errors.push(fw_err(e));
        }
        None
    }
}
