//! The pod end of an attachment: configuring it on ADD, verifying it on CHECK.

use crate::{check_err, nl_err, Add, Check, End, HostSide};
use ipnetwork::IpNetwork;
use reef_cni::{codes, CniError, Interface, IpConfig, Route};
use reef_netlink::{LinkInfo, Netlink, RouteSpec};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The default route's destination for one family.
pub fn default_dst(v6: bool) -> IpNetwork {
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    IpNetwork::new(any, 0).expect("prefix 0 is valid")
}

/// A CNI route as installed on the link `oif`.
pub fn route_spec(r: &Route, oif: u32) -> RouteSpec {
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

/// ADD in the pod: `ips` on the interface, link up, the host side's extras, `routes`.
pub(crate) async fn configure<H: HostSide>(
    host_side: &H,
    add: &Add<'_>,
    pod: &Netlink,
    ips: &[IpConfig],
    routes: &[Route],
) -> Result<LinkInfo, CniError> {
    let ifname = &add.args.ifname;
    let link = pod
        .link_by_name(ifname)
        .await
        .map_err(nl_err)?
        .ok_or_else(|| CniError::new(codes::NETLINK, format!("{ifname} missing in pod netns")))?;
    for ip in ips {
        pod.add_address(link.index, ip.address)
            .await
            .map_err(nl_err)?;
    }
    pod.set_up(link.index).await.map_err(nl_err)?;
    let end = End {
        netlink: pod,
        link: &link,
    };
    host_side.configure_pod(add, end).await?;
    for r in routes {
        pod.add_route(&route_spec(r, link.index))
            .await
            .map_err(nl_err)?;
    }
    Ok(link)
}

/// CHECK in the pod: the interface and its MAC, its addresses, the host side's extras, and
/// the routes.
pub(crate) async fn check<H: HostSide>(
    host_side: &H,
    check: &Check<'_>,
    pod: &Netlink,
    want_if: &Interface,
) -> Result<(), CniError> {
    let ifname = &check.args.ifname;
    let link = pod
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
    for ip in check.ips {
        if !addrs.iter().any(|a| a.address == ip.address) {
            return Err(check_err(format!(
                "address {} is missing on {ifname}",
                ip.address
            )));
        }
    }
    let end = End {
        netlink: pod,
        link: &link,
    };
    host_side.check_pod(check, end).await?;
    for v6 in [false, true] {
        let wanted: Vec<&Route> = check
            .prev
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_destinations() {
        assert_eq!(default_dst(false).to_string(), "0.0.0.0/0");
        assert_eq!(default_dst(true).to_string(), "::/0");
    }

    #[test]
    fn route_spec_carries_the_route_options() {
        let mut r = Route::new(
            "10.0.0.0/8".parse().unwrap(),
            Some("10.1.0.1".parse().unwrap()),
        );
        r.mtu = Some(1400);
        r.priority = Some(7);
        let s = route_spec(&r, 3);
        assert_eq!((s.dst, s.gw, s.oif), (r.dst, r.gw, Some(3)));
        assert_eq!((s.mtu, s.priority), (Some(1400), Some(7)));
    }
}
