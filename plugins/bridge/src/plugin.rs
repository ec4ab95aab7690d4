//! The verbs.

use crate::config::{host_veth_name, BridgeConf};
use ipnetwork::IpNetwork;
use reef_cni::delegate::Ipam;
use reef_cni::{codes, CmdArgs, CniError, CniResult, Command, Interface, Plugin, Route};
use reef_firewall::{nftables::Nftables, Firewall, Masquerade};
use reef_netlink::{sysctl, NetNs, Netlink, RouteSpec};
use std::future::Future;
use std::net::IpAddr;

pub struct Bridge;

fn nl_err(e: reef_netlink::Error) -> CniError {
    CniError::new(codes::NETLINK, e.to_string())
}

fn fw_err(e: reef_firewall::Error) -> CniError {
    CniError::new(codes::FIREWALL, e.to_string())
}

fn check_err(msg: impl Into<String>) -> CniError {
    CniError::new(codes::CHECK_FAILED, msg)
}

/// Plugins are short-lived: one single-threaded runtime per invocation.
fn block_on<F: Future>(f: F) -> Result<F::Output, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::io("failed to start runtime", &e))?;
    Ok(rt.block_on(f))
}

fn open_netns(args: &CmdArgs) -> Result<NetNs, CniError> {
    let path = args.netns.as_deref().unwrap_or_default();
    NetNs::open(path).map_err(|e| {
        CniError::new(codes::IO, format!("failed to open netns \"{path}\""))
            .with_details(e.to_string())
    })
}

fn subnet_of(a: &IpNetwork) -> IpNetwork {
    IpNetwork::new(a.network(), a.prefix()).unwrap_or(*a)
}

fn is_default(dst: &IpNetwork) -> bool {
    dst.prefix() == 0
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
            let v4 = ip.address.is_ipv4();
            let has_default = routes
                .iter()
                .any(|r| is_default(&r.dst) && r.dst.is_ipv4() == v4);
            if let (Some(gw), false) = (ip.gateway, has_default) {
                let any: IpNetwork = if v4 {
                    "0.0.0.0/0".parse().unwrap_or_else(|_| ip.address)
                } else {
                    "::/0".parse().unwrap_or_else(|_| ip.address)
                };
                routes.push(Route::new(any, Some(gw)));
            }
        }
    }
    routes
}

fn route_spec(r: &Route, oif: u32) -> RouteSpec {
    RouteSpec {
        dst: r.dst,
        gw: r.gw,
        oif: Some(oif),
        mtu: r.mtu,
        advmss: r.advmss,
        priority: r.priority,
        table: r.table,
        scope: r.scope,
    }
}

/// What ADD has done so far, undone in reverse if a later step fails.
#[derive(Default)]
struct Undo {
    ipam: bool,
    veth: Option<String>,
    masq: Option<(String, Vec<IpAddr>)>,
}

impl Undo {
    fn run(self, args: &CmdArgs) {
        if let Some((net, ips)) = &self.masq {
            let _ = Nftables::new().del_masquerade(net, ips);
        }
        if let Some(veth) = &self.veth {
            let _ = block_on(async {
                if let Ok(nl) = Netlink::current() {
                    let _ = nl.delete_link(veth).await;
                }
            });
        }
        if self.ipam {
            if let Ok(ipam) = Ipam::from_args(args) {
                let _ = ipam.run(Command::Del);
            }
        }
    }
}

impl Bridge {
    async fn add_links(
        &self,
        args: &CmdArgs,
        conf: &BridgeConf,
        ipam: &CniResult,
        pod_ns: &NetNs,
        undo: &mut Undo,
    ) -> Result<CniResult, CniError> {
        let host = Netlink::current().map_err(nl_err)?;
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
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        host.create_veth(&host_name, &args.ifname, pod_ns, conf.mtu, Some(br.index))
            .await
            .map_err(|e| {
                if e.is_exists() {
                    CniError::new(
                        codes::NETLINK,
                        format!(
                            "interface {} already exists in the pod or {host_name} on the host",
                            args.ifname
                        ),
                    )
                } else {
                    nl_err(e)
                }
            })?;
        undo.veth = Some(host_name.clone());
        let host_link = host
            .link_by_name(&host_name)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| CniError::new(codes::NETLINK, format!("{host_name} vanished")))?;
        if conf.hairpin_mode {
            host.set_hairpin(host_link.index, true)
                .await
                .map_err(nl_err)?;
        }

        let pod = Netlink::open_in(pod_ns, || Ok(())).map_err(nl_err)?;
        let pod_link = pod
            .link_by_name(&args.ifname)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| {
                CniError::new(
                    codes::NETLINK,
                    format!("{} missing in pod netns", args.ifname),
                )
            })?;
        for ip in &ipam.ips {
            pod.add_address(pod_link.index, ip.address)
                .await
                .map_err(nl_err)?;
        }
        pod.set_up(pod_link.index).await.map_err(nl_err)?;
        let routes = pod_routes(conf, ipam);
        for r in &routes {
            pod.add_route(&route_spec(r, pod_link.index))
                .await
                .map_err(nl_err)?;
        }

        let mut result = ipam.clone();
        result.interfaces = vec![
            Interface {
                name: br.name.clone(),
                mac: br.mac.clone(),
                mtu: br.mtu,
                sandbox: None,
            },
            Interface {
                name: host_name,
                mac: host_link.mac.clone(),
                mtu: host_link.mtu,
                sandbox: None,
            },
            Interface {
                name: args.ifname.clone(),
                mac: pod_link.mac.clone(),
                mtu: pod_link.mtu,
                sandbox: args.netns.clone(),
            },
        ];
        for ip in &mut result.ips {
            ip.interface = Some(2);
        }
        result.routes = routes;
        if result.dns.is_empty() {
            if let Some(dns) = &args.conf.dns {
                result.dns = dns.clone();
            }
        }
        Ok(result)
    }

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

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = BridgeConf::from_netconf(&args.conf)?;
        let pod_ns = open_netns(args)?;
        let ipam = Ipam::from_args(args)?;
        let ipam_result = ipam.add()?;
        if ipam_result.ips.is_empty() {
            let _ = ipam.run(Command::Del);
            return Err(CniError::new(codes::DELEGATE, "IPAM returned no addresses"));
        }
        let mut undo = Undo {
            ipam: true,
            ..Undo::default()
        };
        let res = block_on(self.add_links(args, &conf, &ipam_result, &pod_ns, &mut undo))
            .and_then(|r| r)
            .and_then(|result| {
                if conf.ip_masq {
                    let nets: Vec<IpNetwork> = result.ips.iter().map(|i| i.address).collect();
                    let ips: Vec<IpAddr> = nets.iter().map(|n| n.ip()).collect();
                    undo.masq = Some((args.conf.name.clone(), ips.clone()));
                    Nftables::new()
                        .add_masquerade(&Self::masquerade(args, &nets), &ips)
                        .map_err(fw_err)?;
                }
                Ok(result)
            });
        match res {
            Ok(r) => Ok(r),
            Err(e) => {
                undo.run(args);
                Err(e)
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::from_netconf(&args.conf)?;
        let mut errors: Vec<String> = Vec::new();
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        // Dropped at the end of DEL, after the veth deletion: see `Firewall`.
        let mut fw = Nftables::new();
        // Pod addresses for the masquerade set: from prevResult (what libcni caches and sends).
        let prev_ips: Vec<IpAddr> = args
            .conf
            .prev_result
            .as_ref()
            .map(|r| r.ips.iter().map(|i| i.address.ip()).collect())
            .unwrap_or_default();
        let removed = block_on(async {
            let host = Netlink::current().map_err(nl_err)?;
            let pod_ns = args.netns.as_deref().and_then(|p| NetNs::open(p).ok());
            let mut pod_ips = prev_ips;
            // Without prevResult, read the pod's addresses before the veth (and they) go.
            if conf.ip_masq && pod_ips.is_empty() {
                if let Some(ns) = &pod_ns {
                    pod_ips = pod_addresses(ns, &args.ifname).await;
                }
            }
            // Masquerade first, so the kernel's RCU wait after this commit overlaps the one
            // inside the veth deletion instead of following it.
            if conf.ip_masq && !pod_ips.is_empty() {
                if let Err(e) = fw.del_masquerade(&args.conf.name, &pod_ips) {
                    errors.push(e.to_string());
                }
            }
            if host.delete_link(&host_name).await.map_err(nl_err)? {
                return Ok::<bool, CniError>(true);
            }
            // The host end is gone; if the pod end survived (a foreign host name), remove it.
            let Some(ns) = pod_ns else {
                return Ok(false);
            };
            let pod = Netlink::open_in(&ns, || Ok(())).map_err(nl_err)?;
            match pod.link_by_name(&args.ifname).await.map_err(nl_err)? {
                Some(l) if l.kind.as_deref() == Some("veth") => {
                    pod.delete_link(&args.ifname).await.map_err(nl_err)
                }
                _ => Ok(false),
            }
        });
        if let Err(e) = removed.and_then(|r| r) {
            errors.push(e.msg);
        }
        // Release the address even if link teardown failed: never leak on the IPAM side.
        let ipam_res = Ipam::from_args(args).and_then(|i| i.run(Command::Del));
        let res = match ipam_res {
            Err(e) if errors.is_empty() => Err(e),
            Err(e) => {
                errors.push(e.to_string());
                Err(CniError::new(codes::NETLINK, errors.join("; ")))
            }
            Ok(()) if errors.is_empty() => Ok(()),
            Ok(()) => Err(CniError::new(codes::NETLINK, errors.join("; "))),
        };
        drop(fw);
        res
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::from_netconf(&args.conf)?;
        let prev = args.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::invalid_config("CHECK needs prevResult (the result of ADD)")
        })?;
        Ipam::from_args(args)?.run(Command::Check)?;
        let pod_ns = open_netns(args)?;
        let pod_if_index = prev
            .interfaces
            .iter()
            .position(|i| i.name == args.ifname && i.sandbox.is_some())
            .ok_or_else(|| {
                check_err(format!(
                    "prevResult has no interface {} in a sandbox",
                    args.ifname
                ))
            })?;
        let want_if = &prev.interfaces[pod_if_index];
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        block_on(async {
            let host = Netlink::current().map_err(nl_err)?;
            let br = host
                .link_by_name(&conf.bridge)
                .await
                .map_err(nl_err)?
                .ok_or_else(|| check_err(format!("bridge {} is missing", conf.bridge)))?;
            let veth = host
                .link_by_name(&host_name)
                .await
                .map_err(nl_err)?
                .ok_or_else(|| check_err(format!("host veth {host_name} is missing")))?;
            if veth.controller != Some(br.index) {
                return Err(check_err(format!(
                    "{host_name} is not attached to {}",
                    conf.bridge
                )));
            }
            let pod = Netlink::open_in(&pod_ns, || Ok(())).map_err(nl_err)?;
            let link = pod
                .link_by_name(&args.ifname)
                .await
                .map_err(nl_err)?
                .ok_or_else(|| check_err(format!("{} is missing in the pod", args.ifname)))?;
            if let (Some(want), Some(have)) = (&want_if.mac, &link.mac) {
                if !want.eq_ignore_ascii_case(have) {
                    return Err(check_err(format!(
                        "{} has MAC {have}, expected {want}",
                        args.ifname
                    )));
                }
            }
            let addrs = pod.addresses(link.index).await.map_err(nl_err)?;
            for ip in prev
                .ips
                .iter()
                .filter(|i| i.interface.is_none_or(|x| x == pod_if_index))
            {
                if !addrs.iter().any(|a| a.address == ip.address) {
                    return Err(check_err(format!(
                        "address {} is missing on {}",
                        ip.address, args.ifname
                    )));
                }
            }
            for v6 in [false, true] {
                let wanted: Vec<&Route> = prev
                    .routes
                    .iter()
                    .filter(|r| r.dst.is_ipv6() == v6)
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                let have = pod.routes(v6, true).await.map_err(nl_err)?;
                for r in wanted {
                    let found = have
                        .iter()
                        .any(|h| h.dst == r.dst && (r.gw.is_none() || h.gw == r.gw));
                    if !found {
                        let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                        return Err(check_err(format!(
                            "route {}{via} is missing in the pod",
                            r.dst
                        )));
                    }
                }
            }
            Ok(())
        })??;
        if conf.ip_masq {
            let nets: Vec<IpNetwork> = prev.ips.iter().map(|i| i.address).collect();
            let ips: Vec<IpAddr> = nets.iter().map(|n| n.ip()).collect();
            Nftables::new()
                .check_masquerade(&Self::masquerade(args, &nets), &ips)
                .map_err(|e| check_err(e.to_string()))?;
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        BridgeConf::from_netconf(&args.conf)?;
        Ipam::from_args(args)?.run(Command::Gc)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        BridgeConf::from_netconf(&args.conf)?;
        Ipam::from_args(args)?.run(Command::Status)
    }
}
