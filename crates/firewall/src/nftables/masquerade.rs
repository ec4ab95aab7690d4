//! Per-network masquerade (`ipMasq`). One table per network, `inet` family, holding two sets of pod addresses
//! and one postrouting chain:
//!
//! ```text
//! table inet reef-masq-<net> {
//!   set pods4 { type ipv4_addr; }   set pods6 { type ipv6_addr; }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @pods4 ip daddr != { <subnets>, 224.0.0.0/4 } masquerade
//!     ip6 saddr @pods6 ip6 daddr != { <subnets>, ff00::/8 } masquerade } }
//! ```
//! The table is created once by `nft -f` (one atomic, idempotent transaction); after that
//! a pod's ADD/DEL is one netlink batch adding or removing its address, and CHECK reads
//! the chain and the sets back over netlink.

use super::io;
use super::objects::{elem_requests, expression_names, ip_elems, ElemChange, NFPROTO_INET};
use super::run_nft;
use crate::nfnetlink::NfNetlink;
use crate::nfnetlink::Request;
use crate::rules::Masquerade;
use crate::{Error, Result};
use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// Table name for a network. CNI network names are `[a-zA-Z0-9_.-]+`, all valid in nft
/// identifiers, so the mapping is one-to-one.
pub fn table_name(network: &str) -> String {
    format!("reef-masq-{network}")
}

fn set_for(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "pods4"
    } else {
        "pods6"
    }
}

/// The nft script that creates the network's table in one transaction.
pub fn table_script(m: &Masquerade) -> String {
    let table = table_name(&m.network);
    let nets = |v4: bool, extra: &str| -> String {
        let mut v: Vec<String> = m
            .subnets
            .iter()
            .filter(|n| n.is_ipv4() == v4)
            .map(|n| match n {
                // nft wants the network address, not a host address with a prefix.
                IpNetwork::V4(n) => format!("{}/{}", n.network(), n.prefix()),
                IpNetwork::V6(n) => format!("{}/{}", n.network(), n.prefix()),
            })
            .collect();
        v.push(extra.to_string());
        v.join(", ")
    };
    format!(
        "add table inet {table}\n\
         add set inet {table} pods4 {{ type ipv4_addr; }}\n\
         add set inet {table} pods6 {{ type ipv6_addr; }}\n\
         add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {table} postrouting\n\
         add rule inet {table} postrouting ip saddr @pods4 ip daddr != {{ {} }} masquerade\n\
         add rule inet {table} postrouting ip6 saddr @pods6 ip6 daddr != {{ {} }} masquerade\n",
        nets(true, "224.0.0.0/4"),
        nets(false, "ff00::/8"),
    )
}

pub(crate) fn ensure_table(nl: &mut NfNetlink, m: &Masquerade) -> Result<()> {
    let table = table_name(&m.network);
    if nl
        .table_exists(NFPROTO_INET, &table)
        .map_err(io("query nftables"))?
    {
        return Ok(());
    }
    // Every statement is idempotent (`add` of an existing table/set/chain is a no-op and
    // the chain is flushed before its rules are added) and the script is one
    // transaction, so concurrent ADDs racing here need no lock and keep set elements.
    run_nft(&table_script(m), &format!("create table {table}"))?;
    Ok(())
}

/// The element messages adding `pod_ips` to the network's sets (for a larger transaction).
pub(crate) fn element_requests(m: &Masquerade, pod_ips: &[IpAddr]) -> Vec<Request> {
    let table = table_name(&m.network);
    let mut msgs = Vec::new();
    for v4 in [true, false] {
        let elems = ip_elems(pod_ips.iter().filter(|i| i.is_ipv4() == v4));
        if elems.is_empty() {
            continue;
        }
        let set = if v4 { "pods4" } else { "pods6" };
        msgs.extend(elem_requests(
            NFPROTO_INET,
            &table,
            &[ElemChange::Add {
                set,
                elems: &elems,
                exclusive: false,
            }],
        ));
    }
    msgs
}

/// The element messages removing `pod_ips` from `network`'s sets where present (none
/// without the table), for a larger transaction.
pub(crate) fn element_destroys(
    nl: &mut NfNetlink,
    network: &str,
    pod_ips: &[IpAddr],
) -> Result<Vec<Request>> {
    let table = table_name(network);
    if !nl
        .table_exists(NFPROTO_INET, &table)
        .map_err(io("query nftables"))?
    {
        return Ok(Vec::new());
    }
    let mut msgs = Vec::new();
    for v4 in [true, false] {
        let elems = ip_elems(pod_ips.iter().filter(|i| i.is_ipv4() == v4));
        if !elems.is_empty() {
            msgs.extend(elem_requests(
                NFPROTO_INET,
                &table,
                &[ElemChange::Destroy {
                    set: if v4 { "pods4" } else { "pods6" },
                    elems: &elems,
                }],
            ));
        }
    }
    Ok(msgs)
}

pub(crate) fn add(nl: &mut NfNetlink, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
    ensure_table(nl, m)?;
    let table = table_name(&m.network);
    for v4 in [true, false] {
        let ips: Vec<IpAddr> = pod_ips
            .iter()
            .copied()
            .filter(|i| i.is_ipv4() == v4)
            .collect();
        if let Some(first) = ips.first() {
            nl.set_elements(NFPROTO_INET, &table, set_for(first), &ips, true)
                .map_err(io(&format!("add pod address to {table}")))?;
        }
    }
    Ok(())
}

pub(crate) fn del(nl: &mut NfNetlink, network: &str, pod_ips: &[IpAddr]) -> Result<()> {
    let table = table_name(network);
    if !nl
        .table_exists(NFPROTO_INET, &table)
        .map_err(io("query nftables"))?
    {
        return Ok(());
    }
    // One element per batch: a missing element (ENOENT) must not abort the others.
    for ip in pod_ips {
        nl.set_elements(NFPROTO_INET, &table, set_for(ip), &[*ip], false)
            .map_err(io(&format!("remove pod address {ip} from {table}")))?;
    }
    Ok(())
}

/// Verifies the network's table holds a masquerade rule in `postrouting` and the pod's
/// addresses in its sets, read over netlink.
pub(crate) fn check(nl: &mut NfNetlink, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
    let table = table_name(&m.network);
    if !nl
        .table_exists(NFPROTO_INET, &table)
        .map_err(io("query nftables"))?
    {
        return Err(Error::Check(format!("masquerade table {table} is missing")));
    }
    let rules = nl
        .dump_rules(NFPROTO_INET, &table, "postrouting")
        .map_err(io(&format!("list rules of {table}")))?;
    if !rules
        .iter()
        .any(|r| expression_names(r).iter().any(|n| n == "masq"))
    {
        return Err(Error::Check(format!(
            "masquerade rule missing from {table}"
        )));
    }
    for ip in pod_ips {
        let key = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let found = nl
            .get_elements(NFPROTO_INET, &table, set_for(ip), &[key])
            .map_err(io(&format!("look up pod address {ip} in {table}")))?;
        if !matches!(found.first(), Some(Some(_))) {
            return Err(Error::Check(format!(
                "pod address {ip} is not masqueraded in {table}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_excludes_own_subnets_and_multicast() {
        let m = Masquerade {
            network: "my.net".into(),
            subnets: vec![
                "10.1.0.5/24".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
        };
        let s = table_script(&m);
        assert!(s.contains("add table inet reef-masq-my.net"));
        assert!(s.contains("flush chain inet reef-masq-my.net postrouting"));
        assert!(s.contains("ip daddr != { 10.1.0.0/24, 224.0.0.0/4 } masquerade"));
        assert!(s.contains("ip6 daddr != { fd00::/64, ff00::/8 } masquerade"));
    }
}
