//! The bridge host side: the host end of every pair on one Linux bridge, optionally the
//! gateway on the bridge, masquerade of the pod's addresses, hairpin. The verbs are
//! `reef_attach::VethPlugin`'s.

use crate::config::BridgeConf;
use ipnetwork::IpNetwork;
use reef_attach::{
    check_err, default_dst, existing_host_veth, nl_err, Add, Check, HostSide, HostVeth, Released,
};
use reef_cni::{codes, CmdArgs, CniError, CniResult, Interface, NetConf, Route};
use reef_firewall::{nftables::Nftables, Firewall, Masquerade};
use reef_netlink::{sysctl, LinkInfo, NetNs, Netlink};
use std::net::IpAddr;

pub struct Bridge {
    conf: BridgeConf,
}

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
    fn masquerade(args: &CmdArgs, ips: &[IpNetwork]) -> Masquerade {
        Masquerade {
            network: args.conf.name.clone(),
            subnets: ips.iter().map(subnet_of).collect(),
        }
    }
}

/// Addresses on `ifname` inside `ns`; empty when anything is missing (DEL must not fail on it).
async fn pod_addresses(ns: &NetNs, ifname: &str) -> Vec<IpAddr> {
    let Ok(pod) = Netlink::open_in(ns, || Ok(())) else {
        return Vec::new();
    };
    match pod.link_by_name(ifname).await {
        Ok(Some(l)) => pod
            .addresses(l.index)
            .await
            .map(|a| {
                a.iter()
                    .map(|a| a.address.ip())
                    .filter(|ip| !is_link_local(ip))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl HostSide for Bridge {
    const PLUGIN: &'static str = "reef-bridge";

    /// The nf_tables socket: see `Firewall`.
    type Teardown = Nftables;

    fn from_netconf(conf: &NetConf) -> Result<Bridge, CniError> {
        BridgeConf::from_netconf(conf).map(|conf| Bridge { conf })
    }

    async fn prepare_host(&self, host: &Netlink, ipam: &CniResult) -> Result<HostVeth, CniError> {
        let conf = &self.conf;
        let br = host
            .ensure_bridge(&conf.bridge, conf.mtu)
            .await
            .map_err(nl_err)?;
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
            mtu: conf.mtu,
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

    /// Masquerade of the pod's addresses, removed again if adding them fails.
    async fn finish_add(&self, add: &Add<'_>, _pod_link: &LinkInfo) -> Result<(), CniError> {
        if !self.conf.ip_masq {
            return Ok(());
        }
        let args = add.args;
        let nets: Vec<IpNetwork> = add.ipam.ips.iter().map(|i| i.address).collect();
        let ips: Vec<IpAddr> = nets.iter().map(|n| n.ip()).collect();
        if let Err(e) = Nftables::new().add_masquerade(&Self::masquerade(args, &nets), &ips) {
            let _ = Nftables::new().del_masquerade(&args.conf.name, &ips);
            return Err(fw_err(e));
        }
        Ok(())
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
            Nftables::new()
                .check_masquerade(&Self::masquerade(args, &nets), &ips)
                .map_err(|e| check_err(e.to_string()))?;
        }
        Ok(())
    }

    /// Masquerade elements to remove: only addresses this attachment still owns, or a
    /// retried DEL with a stale prevResult would unmasquerade the address's next owner. With
    /// an exec'd IPAM: prevResult's, else the pod's own (read before the veth, and they, go).
    /// Before the veth, so the kernel's RCU wait after this commit overlaps the one inside the
    /// veth deletion instead of following it.
    async fn del_host(&self, del: &mut Released<'_>, veth_present: bool) -> Nftables {
        let mut fw = Nftables::new();
        if !self.conf.ip_masq {
            return fw;
        }
        let args = del.args;
        let masq_ips = match del.ips.take() {
            Some(ips) => ips,
            None if !veth_present => Vec::new(),
            None => match &args.conf.prev_result {
                Some(r) => r.ips.iter().map(|i| i.address.ip()).collect(),
                // Never the plugin's own namespace: its addresses are the host's.
                None => match reef_attach::pod_netns_for_del(args) {
                    Some(ns) => pod_addresses(&ns, &args.ifname).await,
                    None => Vec::new(),
                },
            },
        };
        if !masq_ips.is_empty() {
            if let Err(e) = fw.del_masquerade(&args.conf.name, &masq_ips) {
                del.errors.push(fw_err(e));
            }
        }
        fw
    }

    /// Masquerade entries of the addresses IPAM released.
    fn gc_host(&self, gc: &mut Released<'_>) -> Nftables {
        let mut fw = Nftables::new();
        if let (true, Some(ips)) = (self.conf.ip_masq, &gc.ips) {
            if let Err(e) = fw.del_masquerade(&gc.args.conf.name, ips) {
                gc.errors.push(fw_err(e));
            }
        }
        fw
    }
}
