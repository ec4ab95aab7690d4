//! The verbs.

use crate::config::BridgeConf;
use ipnetwork::IpNetwork;
use reef_attach::{
    block_on, check_err, delete_pod_end, gc_stale_veths, ipam_add, nl_err, open_netns,
    pod_interface_index, refuse_live_duplicate, status_via_ipam,
};
use reef_cni::attachment::{host_veth_alias, host_veth_name};
use reef_cni::{codes, CmdArgs, CniError, CniResult, Command, Interface, Plugin, Route};
use reef_firewall::Masquerade;
use reef_ipam::client::IpamClient;
use reef_netlink::{sysctl, NetNs, Netlink, PendingNetlink, RouteSpec};
use std::net::IpAddr;

pub struct Bridge;

fn fw_err(e: reef_firewall::Error) -> CniError {
    CniError::new(codes::FIREWALL, e.to_string())
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
                let unspecified: IpAddr = if v4 {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                let any = IpNetwork::new(unspecified, 0).expect("prefix 0 is valid");
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
        ..RouteSpec::new(r.dst, r.gw)
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
    async fn run(self, host: &Netlink, args: &CmdArgs) {
        if let Some((net, ips)) = &self.masq {
            if let Ok(mut fw) = reef_firewall::driver_from_env() {
                let _ = fw.del_masquerade(net, ips);
            }
        }
        if let Some(veth) = &self.veth {
            let _ = host.delete_link(veth).await;
        }
        if self.ipam {
            if let Ok(ipam) = IpamClient::for_args(args) {
                let _ = ipam.run(Command::Del);
            }
        }
    }
}

impl Bridge {
    async fn add_links(
        args: &CmdArgs,
        conf: &BridgeConf,
        ipam: &CniResult,
        pod_ns: &NetNs,
        pod_socket: PendingNetlink,
        host: &Netlink,
        undo: &mut Undo,
    ) -> Result<CniResult, CniError> {
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
        let alias = host_veth_alias(&args.conf.name, &args.container_id, &args.ifname);
        host.create_veth(
            &host_name,
            &args.ifname,
            pod_ns,
            conf.mtu,
            Some(br.index),
            Some(&alias),
        )
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

        let pod = pod_socket.connect().map_err(nl_err)?;
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

    async fn add_async(
        &self,
        args: &CmdArgs,
        conf: &BridgeConf,
        pod_ns: &NetNs,
        pod_socket: PendingNetlink,
    ) -> Result<CniResult, CniError> {
        let host = Netlink::current().map_err(nl_err)?;
        refuse_live_duplicate(&host, args).await?;
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        let ipam_result = ipam_add(args, &host_name)?;
        let mut undo = Undo {
            ipam: true,
            ..Undo::default()
        };
        let mut res = Self::add_links(
            args,
            conf,
            &ipam_result,
            pod_ns,
            pod_socket,
            &host,
            &mut undo,
        )
        .await;
        if let (Ok(result), true) = (&res, conf.ip_masq) {
            let nets: Vec<IpNetwork> = result.ips.iter().map(|i| i.address).collect();
            let ips: Vec<IpAddr> = nets.iter().map(|n| n.ip()).collect();
            undo.masq = Some((args.conf.name.clone(), ips.clone()));
            let fw = reef_firewall::driver_from_env();
            if let Err(e) =
                fw.and_then(|mut fw| fw.add_masquerade(&Self::masquerade(args, &nets), &ips))
            {
                res = Err(fw_err(e));
            }
        }
        if res.is_err() {
            undo.run(&host, args).await;
        }
        res
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
        // Entering the pod's namespace costs a thread and a setns: overlap it with IPAM.
        let pod_socket = Netlink::open_in_background(&pod_ns).map_err(nl_err)?;
        block_on(self.add_async(args, &conf, &pod_ns, pod_socket))?
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::from_netconf(&args.conf)?;
        let mut errors: Vec<CniError> = Vec::new();
        // Dropped at the end of DEL, after the veth deletion: see `Firewall`.
        let mut fw = reef_firewall::driver_from_env().map_err(fw_err)?;
        let res = block_on(async {
            let host = Netlink::current().map_err(nl_err)?;
            let host_name = host_veth_name(&args.container_id, &args.ifname);
            let veth_present = host
                .link_by_name(&host_name)
                .await
                .map_err(nl_err)?
                .is_some();
            let pod_ns = args.netns.as_deref().and_then(|p| NetNs::open(p).ok());
            // Masquerade elements to remove: only addresses this attachment still owns, or a
            // retried DEL with a stale prevResult would unmasquerade the address's next owner.
            // Read the pod's own addresses before the veth (and they) go, for exec'd IPAM.
            let mut live_ips: Vec<IpAddr> = Vec::new();
            if conf.ip_masq && veth_present {
                live_ips = match &args.conf.prev_result {
                    Some(r) => r.ips.iter().map(|i| i.address.ip()).collect(),
                    None => match &pod_ns {
                        Some(ns) => pod_addresses(ns, &args.ifname).await,
                        None => Vec::new(),
                    },
                };
            }
            // IPAM first, like the reference plugin: the address is released even if link
            // teardown fails, and in-process IPAM tells exactly what this attachment held.
            let released = IpamClient::for_args(args).and_then(|i| i.release());
            let masq_ips = match released {
                Ok(Some(ips)) => ips,
                Ok(None) => live_ips,
                Err(e) => {
                    errors.push(e);
                    live_ips
                }
            };
            // Masquerade before the veth, so the kernel's RCU wait after this commit overlaps
            // the one inside the veth deletion instead of following it.
            if conf.ip_masq && !masq_ips.is_empty() {
                if let Err(e) = fw.del_masquerade(&args.conf.name, &masq_ips) {
                    errors.push(fw_err(e));
                }
            }
            // Returns once the pair has left both namespaces; the kernel's ~20 ms of
            // reclamation after that is sat out by a detached child (reef_netlink::detached),
            // which also inherits the nf_tables socket and so its close-time wait.
            if veth_present && host.delete_link_fast(&host_name).await.map_err(nl_err)? {
                return Ok(());
            }
            // The host end is gone; if the pod end survived (a foreign host name), remove it.
            delete_pod_end(args).await
        });
        if let Err(e) = res.and_then(|r| r) {
            errors.push(e);
        }
        drop(fw);
        CniError::all(errors)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::from_netconf(&args.conf)?;
        let prev = args.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::invalid_config("CHECK needs prevResult (the result of ADD)")
        })?;
        IpamClient::for_args(args)?.run(Command::Check)?;
        let pod_ns = open_netns(args)?;
        let pod_if_index = pod_interface_index(prev, &args.ifname)?;
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
            reef_firewall::driver_from_env()
                .and_then(|mut fw| fw.check_masquerade(&Self::masquerade(args, &nets), &ips))
                .map_err(|e| check_err(e.to_string()))?;
        }
        Ok(())
    }

    /// GC: everything this network holds for attachments the runtime no longer lists: IPAM
    /// records, masquerade entries of the released addresses, and host veths (found by alias).
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::from_netconf(&args.conf)?;
        // Refuse a malformed attachment list before touching anything.
        args.conf.valid_attachments()?;
        let mut errors: Vec<CniError> = Vec::new();
        let released = IpamClient::for_args(args).and_then(|i| i.gc());
        let released = released.unwrap_or_else(|e| {
            errors.push(e);
            None
        });
        let mut fw = reef_firewall::driver_from_env().map_err(fw_err)?;
        if let (true, Some(ips)) = (conf.ip_masq, &released) {
            if let Err(e) = fw.del_masquerade(&args.conf.name, ips) {
                errors.push(fw_err(e));
            }
        }
        let stale = gc_stale_veths(args);
        match stale {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("reef-bridge: GC removed stale host veths {removed:?}");
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        CniError::all(errors)
    }

    /// STATUS: anything that would make ADD fail is "not available" (50).
    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        BridgeConf::from_netconf(&args.conf)?;
        status_via_ipam(args)
    }
}
