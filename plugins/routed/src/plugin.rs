//! The routed host side (the verbs are `reef_attach::VethPlugin`'s).
//!
//! Routed mode has no shared L2 segment: each pod sits alone behind its host veth. The pod
//! holds its addresses as host addresses (/32, /128) and sends everything to a link-local
//! gateway that is the host veth itself (fixed MAC, pinned by a permanent neighbour entry so
//! no ARP/NDP is needed); the host reaches the pod through a /32 (/128) route on the veth.

use crate::config::RoutedConf;
use ipnetwork::IpNetwork;
use reef_attach::{
    check_err, default_dst, existing_host_veth, nl_err, Add, Check, End, HostSide, HostVeth,
};
use reef_cni::{codes, CniError, CniResult, IpConfig, NetConf, Route};
use reef_netlink::{sysctl, LinkInfo, Netlink, RouteSpec};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub struct Routed {
    conf: RoutedConf,
}

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

impl HostSide for Routed {
    const PLUGIN: &'static str = "reef-routed";

    type Teardown = ();

    fn from_netconf(conf: &NetConf) -> Result<Routed, CniError> {
        RoutedConf::from_netconf(conf).map(|conf| Routed { conf })
    }

    async fn prepare_host(&self, host: &Netlink, _ipam: &CniResult) -> Result<HostVeth, CniError> {
        let mtu = reef_vxlan::pod_mtu(host, self.conf.mtu)
            .await
            .map_err(nl_err)?;
        Ok(HostVeth {
            mtu,
            mac: Some(HOST_VETH_MAC),
            ..HostVeth::default()
        })
    }

    async fn host_veth_created(&self, add: &Add<'_>) -> Result<(), CniError> {
        let has_v6 = add.ipam.ips.iter().any(|ip| ip.address.is_ipv6());
        host_sysctls(&add.veth.name, has_v6)
    }

    /// Host addresses, each with its family's gateway.
    fn pod_ips(&self, ipam: &CniResult) -> Vec<IpConfig> {
        ipam.ips
            .iter()
            .map(|ip| IpConfig {
                address: host_net(ip.address.ip()),
                gateway: Some(gateway(ip.address.is_ipv6())),
                interface: None,
            })
            .collect()
    }

    /// The gateway of each family the pod has an address in, pinned.
    async fn configure_pod(&self, add: &Add<'_>, pod: End<'_>) -> Result<(), CniError> {
        let End { netlink: pod, link } = pod;
        for v6 in [false, true] {
            if !add.ipam.ips.iter().any(|ip| ip.address.is_ipv6() == v6) {
                continue;
            }
            let gw = gateway(v6);
            if !v6 {
                // 169.254.1.1/32 dev <ifname> scope link: makes the IPv4 gateway on-link.
                pod.add_route(&host_route(gw, link.index))
                    .await
                    .map_err(nl_err)?;
            }
            // Proxy ARP answers for 169.254.1.1 only where the host has a route to it, and
            // NDP would need the host's link-local to be past DAD: pin the gateway instead.
            pod.set_permanent_neighbour(link.index, gw, &HOST_VETH_MAC)
                .await
                .map_err(nl_err)?;
        }
        Ok(())
    }

    fn pod_routes(&self, ipam: &CniResult) -> Vec<Route> {
        pod_routes(ipam)
    }

    /// A host route to each pod address; for IPv6 also its neighbour entry, so the host never
    /// depends on NDP towards the pod. They go with the veth if ADD is undone.
    async fn finish_add(&self, add: &Add<'_>, pod_link: &LinkInfo) -> Result<(), CniError> {
        let (host, veth) = (add.host, add.veth);
        let pod_mac = match &pod_link.mac {
            Some(m) => Some(reef_netlink::parse_mac(m).map_err(nl_err)?),
            None => None,
        };
        for ip in &add.ipam.ips {
            let addr = ip.address.ip();
            // Replace: IPAM guarantees the address is ours, so a route left by a dead
            // attachment is stale.
            host.replace_route(&host_route(addr, veth.index))
                .await
                .map_err(nl_err)?;
            if let (true, Some(mac)) = (addr.is_ipv6(), &pod_mac) {
                host.set_permanent_neighbour(veth.index, addr, mac)
                    .await
                    .map_err(nl_err)?;
            }
        }
        Ok(())
    }

    /// The veth (MAC, proxy ARP) and the route to each pod address.
    async fn check_host(&self, check: &Check<'_>, host: &Netlink) -> Result<(), CniError> {
        let veth_name = check.veth_name;
        let veth = existing_host_veth(host, veth_name).await?;
        match veth.mac.as_deref() {
            Some(m) if m.eq_ignore_ascii_case(HOST_VETH_MAC_STR) => {}
            other => {
                return Err(check_err(format!(
                    "host veth {veth_name} has MAC {}, expected {HOST_VETH_MAC_STR}",
                    other.unwrap_or("(none)")
                )))
            }
        }
        let key = format!("net/ipv4/conf/{veth_name}/proxy_arp");
        let proxy_arp = sysctl::get(&key).map_err(sysctl_err)?;
        if proxy_arp != "1" {
            return Err(check_err(format!(
                "proxy_arp is {proxy_arp} on host veth {veth_name}, expected 1"
            )));
        }
        for v6 in [false, true] {
            let wanted: Vec<IpAddr> = check
                .ips
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
                        "host route {dst} dev {veth_name} is missing"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The gateway's permanent neighbour entry, per family.
    async fn check_pod(&self, check: &Check<'_>, pod: End<'_>) -> Result<(), CniError> {
        let End { netlink: pod, link } = pod;
        let neighbours = pod.neighbours(link.index).await.map_err(nl_err)?;
        for v6 in [false, true] {
            if !check.ips.iter().any(|i| i.address.is_ipv6() == v6) {
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
                    "permanent neighbour {gw} -> {HOST_VETH_MAC_STR} is missing on {}",
                    link.name
                )));
            }
        }
        Ok(())
    }
    // DEL and GC: nothing but the veth, which takes the host routes and neighbours with it.
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
