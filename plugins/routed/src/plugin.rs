//! The verbs.
//!
//! Routed mode has no shared L2 segment: each pod sits alone behind its host veth. The pod
//! holds its addresses as host addresses (/32, /128) and sends everything to a link-local
//! gateway that is the host veth itself (fixed MAC, pinned by a permanent neighbour entry so
//! no ARP/NDP is needed); the host reaches the pod through a /32 (/128) route on the veth.

use crate::config::RoutedConf;
use ipnetwork::IpNetwork;
use reef_attach::{
    block_on, check_err, delete_pod_end, gc_stale_veths, ipam_add, nl_err, open_netns,
    pod_interface_index, refuse_live_duplicate, status_via_ipam,
};
use reef_cni::attachment::{host_veth_alias, host_veth_name};
use reef_cni::{codes, CmdArgs, CniError, CniResult, Command, Interface, IpConfig, Plugin, Route};
use reef_ipam::client::IpamClient;
use reef_netlink::{sysctl, LinkInfo, NetNs, Netlink, PendingNetlink, RouteSpec};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub struct Routed;

/// Every host veth answers as this MAC (Calico's), so a pod's neighbour entry for its gateway
/// is the same everywhere and never goes stale.
pub const HOST_VETH_MAC: [u8; 6] = [0xee; 6];
const HOST_VETH_MAC_STR: &str = "ee:ee:ee:ee:ee:ee";

/// The pod's IPv4 gateway: link-local, never assigned anywhere, reached through the host veth.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pod's IPv6 gateway: the host veth's EUI-64 link-local address for `HOST_VETH_MAC`.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

fn sysctl_err(e: reef_netlink::Error) -> CniError {
    CniError::new(codes::IO, e.to_string())
}

/// The pod's gateway for one family.
pub fn gateway(v6: bool) -> IpAddr {
    if v6 {
        GATEWAY_V6.into()
    } else {
        GATEWAY_V4.into()
    }
}

/// `ip` as a host network: /32 or /128.
fn host_net(ip: IpAddr) -> IpNetwork {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, prefix).expect("full-length prefix is valid")
}

fn default_dst(v6: bool) -> IpNetwork {
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    IpNetwork::new(any, 0).expect("prefix 0 is valid")
}

/// The EUI-64 link-local address of a MAC (what the kernel gives a link with that MAC).
#[cfg(test)]
fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// Routes for the pod: a default route via the family's gateway for every family it has an
/// address in (unless IPAM already gave one), then IPAM's routes. An IPAM route without a
/// gateway, or via IPAM's subnet gateway (an address routed mode never assigns), goes via the
/// family's gateway: every packet leaves through the host veth.
pub fn pod_routes(ipam: &CniResult) -> Vec<Route> {
    let ipam_gw = |v6: bool| {
        ipam.ips
            .iter()
            .find(|ip| ip.address.is_ipv6() == v6)
            .and_then(|ip| ip.gateway)
    };
    let from_ipam: Vec<Route> = ipam
        .routes
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let v6 = r.dst.is_ipv6();
            if r.gw.is_none() || r.gw == ipam_gw(v6) {
                r.gw = Some(gateway(v6));
            }
            r
        })
        .collect();
    let mut routes = Vec::new();
    for v6 in [false, true] {
        let has_family = ipam.ips.iter().any(|ip| ip.address.is_ipv6() == v6);
        let has_default = from_ipam
            .iter()
            .any(|r| r.dst.prefix() == 0 && r.dst.is_ipv6() == v6);
        if has_family && !has_default {
            routes.push(Route::new(default_dst(v6), Some(gateway(v6))));
        }
    }
    for r in from_ipam {
        if !routes.contains(&r) {
            routes.push(r);
        }
    }
    routes
}

fn route_spec(r: &Route, oif: u32) -> RouteSpec {
    RouteSpec {
        oif: Some(oif),
        mtu: r.mtu,
        advmss: r.advmss,
        priority: r.priority,
        table: r.table,
        scope: r.scope,
        ..RouteSpec::new(r.dst, r.gw)
    }
}

/// The host's route to one pod address: `<ip>/32 dev <host veth> scope link`.
fn host_route(ip: IpAddr, veth_index: u32) -> RouteSpec {
    RouteSpec {
        oif: Some(veth_index),
        ..RouteSpec::new(host_net(ip), None)
    }
}

/// Host sysctls that make the veth a router port. Per-veth keys exist as soon as the link
/// does; `sysctl::set` only writes what differs.
fn host_sysctls(veth: &str, v6: bool) -> Result<(), CniError> {
    sysctl::set(&format!("net/ipv4/conf/{veth}/proxy_arp"), "1").map_err(sysctl_err)?;
    sysctl::set(&format!("net/ipv4/neigh/{veth}/proxy_delay"), "0").map_err(sysctl_err)?;
    sysctl::set("net/ipv4/ip_forward", "1").map_err(sysctl_err)?;
    if v6 {
        sysctl::set("net/ipv6/conf/all/forwarding", "1").map_err(sysctl_err)?;
    }
    Ok(())
}

/// What ADD has done so far, undone in reverse if a later step fails.
#[derive(Default)]
struct Undo {
    ipam: bool,
    veth: Option<String>,
}

impl Undo {
    async fn run(self, host: &Netlink, args: &CmdArgs) {
        // The host routes and neighbours go with the veth; the pod end goes with its peer.
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

impl Routed {
    async fn add_links(
        args: &CmdArgs,
        conf: &RoutedConf,
        ipam: &CniResult,
        pod_ns: &NetNs,
        pod_socket: PendingNetlink,
        host: &Netlink,
        undo: &mut Undo,
    ) -> Result<CniResult, CniError> {
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        let alias = host_veth_alias(&args.conf.name, &args.container_id, &args.ifname);
        // Without an explicit `mtu`, pods follow the cluster's mode: on a node whose agent runs
        // a VXLAN mode, the overlay device's MTU (underlay − 50), so nothing fragments.
        let mtu = match conf.mtu {
            Some(m) => Some(m),
            None => host
                .link_by_name(reef_vxlan::DEVICE)
                .await
                .map_err(nl_err)?
                .and_then(|l| l.mtu),
        };
        host.create_veth_with_mac(
            &host_name,
            &args.ifname,
            pod_ns,
            mtu,
            None,
            Some(&alias),
            Some(&HOST_VETH_MAC),
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
        let has_v6 = ipam.ips.iter().any(|ip| ip.address.is_ipv6());
        host_sysctls(&host_name, has_v6)?;

        // Pod side: host addresses, link up, the gateway pinned, routes via it.
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
            pod.add_address(pod_link.index, host_net(ip.address.ip()))
                .await
                .map_err(nl_err)?;
        }
        pod.set_up(pod_link.index).await.map_err(nl_err)?;
        for v6 in [false, true] {
            if !ipam.ips.iter().any(|ip| ip.address.is_ipv6() == v6) {
                continue;
            }
            let gw = gateway(v6);
            if !v6 {
                // 169.254.1.1/32 dev <ifname> scope link: makes the IPv4 gateway on-link.
                pod.add_route(&host_route(gw, pod_link.index))
                    .await
                    .map_err(nl_err)?;
            }
            // Proxy ARP answers for 169.254.1.1 only where the host has a route to it, and
            // NDP would need the host's link-local to be past DAD: pin the gateway instead.
            pod.set_permanent_neighbour(pod_link.index, gw, &HOST_VETH_MAC)
                .await
                .map_err(nl_err)?;
        }
        let routes = pod_routes(ipam);
        for r in &routes {
            pod.add_route(&route_spec(r, pod_link.index))
                .await
                .map_err(nl_err)?;
        }

        // Host side: a route to each pod address; for IPv6 also its neighbour entry, so the
        // host never depends on NDP towards the pod.
        let pod_mac = match &pod_link.mac {
            Some(m) => Some(reef_netlink::parse_mac(m).map_err(nl_err)?),
            None => None,
        };
        for ip in &ipam.ips {
            let addr = ip.address.ip();
            // Replace: IPAM guarantees the address is ours, so a route left by a dead
            // attachment is stale.
            host.replace_route(&host_route(addr, host_link.index))
                .await
                .map_err(nl_err)?;
            if let (true, Some(mac)) = (addr.is_ipv6(), &pod_mac) {
                host.set_permanent_neighbour(host_link.index, addr, mac)
                    .await
                    .map_err(nl_err)?;
            }
        }

        let mut result = ipam.clone();
        result.interfaces = vec![
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
        result.ips = ipam
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: host_net(ip.address.ip()),
                gateway: Some(gateway(ip.address.is_ipv6())),
                interface: Some(1),
            })
            .collect();
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
        conf: &RoutedConf,
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
        let res = Self::add_links(
            args,
            conf,
            &ipam_result,
            pod_ns,
            pod_socket,
            &host,
            &mut undo,
        )
        .await;
        if res.is_err() {
            undo.run(&host, args).await;
        }
        res
    }
}

/// CHECK of the host side: the veth (MAC, proxy ARP) and the route to each pod address.
async fn check_host(host: &Netlink, host_name: &str, ips: &[&IpConfig]) -> Result<(), CniError> {
    let veth = host
        .link_by_name(host_name)
        .await
        .map_err(nl_err)?
        .ok_or_else(|| check_err(format!("host veth {host_name} is missing")))?;
    match veth.mac.as_deref() {
        Some(m) if m.eq_ignore_ascii_case(HOST_VETH_MAC_STR) => {}
        other => {
            return Err(check_err(format!(
                "host veth {host_name} has MAC {}, expected {HOST_VETH_MAC_STR}",
                other.unwrap_or("(none)")
            )))
        }
    }
    let key = format!("net/ipv4/conf/{host_name}/proxy_arp");
    let proxy_arp = sysctl::get(&key).map_err(sysctl_err)?;
    if proxy_arp != "1" {
        return Err(check_err(format!(
            "proxy_arp is {proxy_arp} on host veth {host_name}, expected 1"
        )));
    }
    for v6 in [false, true] {
        let wanted: Vec<IpAddr> = ips
            .iter()
            .map(|i| i.address.ip())
            .filter(|ip| ip.is_ipv6() == v6)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let have = host.routes(v6, false).await.map_err(nl_err)?;
        for ip in wanted {
            let dst = host_net(ip);
            if !have
                .iter()
                .any(|r| r.dst == dst && r.oif == Some(veth.index) && r.gw.is_none())
            {
                return Err(check_err(format!(
                    "host route {dst} dev {host_name} is missing"
                )));
            }
        }
    }
    Ok(())
}

/// CHECK of the pod side: interface and MAC, addresses, gateway neighbour, routes.
async fn check_pod(
    pod: &Netlink,
    ifname: &str,
    want_if: &Interface,
    ips: &[&IpConfig],
    routes: &[Route],
) -> Result<(), CniError> {
    let link: LinkInfo = pod
        .link_by_name(ifname)
        .await
        .map_err(nl_err)?
        .ok_or_else(|| check_err(format!("{ifname} is missing in the pod")))?;
    if let (Some(want), Some(have)) = (&want_if.mac, &link.mac) {
        if !want.eq_ignore_ascii_case(have) {
            return Err(check_err(format!(
                "{ifname} has MAC {have}, expected {want}"
            )));
        }
    }
    let addrs = pod.addresses(link.index).await.map_err(nl_err)?;
    for ip in ips {
        if !addrs.iter().any(|a| a.address == ip.address) {
            return Err(check_err(format!(
                "address {} is missing on {ifname}",
                ip.address
            )));
        }
    }
    let neighbours = pod.neighbours(link.index).await.map_err(nl_err)?;
    for v6 in [false, true] {
        if !ips.iter().any(|i| i.address.is_ipv6() == v6) {
            continue;
        }
        let gw = gateway(v6);
        let pinned = neighbours.iter().any(|n| {
            n.ip == gw
                && n.permanent
                && n.mac
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(HOST_VETH_MAC_STR))
        });
        if !pinned {
            return Err(check_err(format!(
                "permanent neighbour {gw} -> {HOST_VETH_MAC_STR} is missing on {ifname}"
            )));
        }
    }
    for v6 in [false, true] {
        let wanted: Vec<&Route> = routes.iter().filter(|r| r.dst.is_ipv6() == v6).collect();
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
}

impl Plugin for Routed {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = RoutedConf::from_netconf(&args.conf)?;
        let pod_ns = open_netns(args)?;
        // Entering the pod's namespace costs a thread and a setns: overlap it with IPAM.
        let pod_socket = Netlink::open_in_background(&pod_ns).map_err(nl_err)?;
        block_on(self.add_async(args, &conf, &pod_ns, pod_socket))?
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        RoutedConf::from_netconf(&args.conf)?;
        let mut errors: Vec<CniError> = Vec::new();
        let res = block_on(async {
            let host = Netlink::current().map_err(nl_err)?;
            let host_name = host_veth_name(&args.container_id, &args.ifname);
            // IPAM first, like the reference plugins: the address is released even if link
            // teardown fails.
            if let Err(e) = IpamClient::for_args(args).and_then(|i| i.release()) {
                errors.push(e);
            }
            // The host routes and neighbours of the attachment go with the veth. Returns once
            // the pair has left both namespaces (the kernel's reclamation continues in a
            // detached child, see reef_netlink::detached).
            let veth_present = host
                .link_by_name(&host_name)
                .await
                .map_err(nl_err)?
                .is_some();
            if veth_present && host.delete_link_fast(&host_name).await.map_err(nl_err)? {
                return Ok(());
            }
            // The host end is gone; if the pod end survived (a foreign host name), remove it.
            delete_pod_end(args).await
        });
        if let Err(e) = res.and_then(|r| r) {
            errors.push(e);
        }
        CniError::all(errors)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        RoutedConf::from_netconf(&args.conf)?;
        let prev = args.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::invalid_config("CHECK needs prevResult (the result of ADD)")
        })?;
        IpamClient::for_args(args)?.run(Command::Check)?;
        let pod_ns = open_netns(args)?;
        let pod_if_index = pod_interface_index(prev, &args.ifname)?;
        let want_if = &prev.interfaces[pod_if_index];
        let ips: Vec<&IpConfig> = prev
            .ips
            .iter()
            .filter(|i| i.interface.is_none_or(|x| x == pod_if_index))
            .collect();
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        block_on(async {
            let host = Netlink::current().map_err(nl_err)?;
            check_host(&host, &host_name, &ips).await?;
            let pod = Netlink::open_in(&pod_ns, || Ok(())).map_err(nl_err)?;
            check_pod(&pod, &args.ifname, want_if, &ips, &prev.routes).await
        })?
    }

    /// GC: IPAM records and host veths (found by alias) of attachments the runtime no longer
    /// lists. A veth takes its host routes with it.
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        RoutedConf::from_netconf(&args.conf)?;
        // Refuse a malformed attachment list before touching anything.
        args.conf.valid_attachments()?;
        let mut errors: Vec<CniError> = Vec::new();
        if let Err(e) = IpamClient::for_args(args).and_then(|i| i.gc()) {
            errors.push(e);
        }
        let stale = gc_stale_veths(args);
        match stale {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("reef-routed: GC removed stale host veths {removed:?}");
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        CniError::all(errors)
    }

    /// STATUS: anything that would make ADD fail is "not available" (50).
    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        RoutedConf::from_netconf(&args.conf)?;
        status_via_ipam(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ipam_result(addrs: &[(&str, Option<&str>)], routes: Vec<Route>) -> CniResult {
        CniResult {
            ips: addrs
                .iter()
                .map(|(a, gw)| IpConfig {
                    address: net(a),
                    gateway: gw.map(ip),
                    interface: None,
                })
                .collect(),
            routes,
            ..CniResult::default()
        }
    }

    #[test]
    fn v6_gateway_is_the_eui64_link_local_of_the_host_mac() {
        assert_eq!(eui64_link_local(HOST_VETH_MAC), GATEWAY_V6);
        assert_eq!(GATEWAY_V6.to_string(), "fe80::ecee:eeff:feee:eeee");
        assert_eq!(
            reef_netlink::parse_mac(HOST_VETH_MAC_STR).unwrap(),
            HOST_VETH_MAC.to_vec()
        );
    }

    #[test]
    fn default_routes_per_family_via_the_routed_gateway() {
        let r = ipam_result(
            &[("10.77.0.5/24", Some("10.77.0.1")), ("fd77::5/64", None)],
            vec![],
        );
        assert_eq!(
            pod_routes(&r),
            vec![
                Route::new(net("0.0.0.0/0"), Some(ip("169.254.1.1"))),
                Route::new(net("::/0"), Some(ip("fe80::ecee:eeff:feee:eeee"))),
            ]
        );
        let r = ipam_result(&[("fd77::5/64", None)], vec![]);
        assert_eq!(
            pod_routes(&r),
            vec![Route::new(net("::/0"), Some(GATEWAY_V6.into()))]
        );
    }

    #[test]
    fn ipam_routes_go_via_the_routed_gateway_unless_explicitly_elsewhere() {
        let r = ipam_result(
            &[("10.77.0.5/24", Some("10.77.0.1"))],
            vec![
                Route::new(net("0.0.0.0/0"), None),
                Route::new(net("192.168.0.0/16"), Some(ip("10.77.0.1"))),
                Route::new(net("172.16.0.0/12"), Some(ip("169.254.1.1"))),
            ],
        );
        assert_eq!(
            pod_routes(&r),
            vec![
                Route::new(net("0.0.0.0/0"), Some(ip("169.254.1.1"))),
                Route::new(net("192.168.0.0/16"), Some(ip("169.254.1.1"))),
                Route::new(net("172.16.0.0/12"), Some(ip("169.254.1.1"))),
            ]
        );
    }

    #[test]
    fn host_nets_are_full_length() {
        assert_eq!(host_net(ip("10.0.0.1")), net("10.0.0.1/32"));
        assert_eq!(host_net(ip("fd00::1")), net("fd00::1/128"));
    }
}
