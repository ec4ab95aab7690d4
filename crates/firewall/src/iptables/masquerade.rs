//! Per-network masquerade (`ipMasq`) in iptables: one ipset of pod addresses per network
//! and family, one chain per network, one dispatch rule per network and family:
//!
//! ```text
//! *nat
//! -A POSTROUTING -j REEF-POSTROUTING                        (one jump, first)
//! -A REEF-POSTROUTING -m set --match-set reef-m4-<hash> src -j REEF-MASQ4-<hash>
//! -A REEF-MASQ4-<hash> -d <subnet> -j RETURN ...  -d 224.0.0.0/4 -j RETURN
//! -A REEF-MASQ4-<hash> -j MASQUERADE
//! ```
//! A pod's ADD/DEL adds or deletes its addresses in the sets (one `ipset restore`); the
//! chains are written once per network (when its set does not exist yet).

use super::backend::{chain_name, comment, Family, Section};
use super::{ipset, Iptables, POSTROUTING};
use crate::rules::Masquerade;
use crate::{Error, Result};
use ipnetwork::IpNetwork;
use std::net::IpAddr;

const SET_PREFIX: &str = "reef-m";

/// The network's set for `family`: `reef-m4-` / `reef-m6-` and a hash of the name (network
/// names may be longer than ipset's 31 bytes).
pub fn set_name(network: &str, family: Family) -> String {
    let digit = if family == Family::V4 { '4' } else { '6' };
    chain_name(&format!("{SET_PREFIX}{digit}-"), &[network])
}

fn chain(network: &str, family: Family) -> String {
    let digit = if family == Family::V4 { '4' } else { '6' };
    chain_name(&format!("REEF-MASQ{digit}-"), &[network])
}

fn multicast(family: Family) -> &'static str {
    match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    }
}

/// ipset lines adding (or deleting) the pod's addresses.
pub(crate) fn member_lines(network: &str, pod_ips: &[IpAddr], add: bool) -> String {
    let verb = if add { "add" } else { "del" };
    pod_ips
        .iter()
        .map(|ip| format!("{verb} {} {ip}\n", set_name(network, Family::of(ip))))
        .collect()
}

/// Creates (or re-states) the network's sets, chains and dispatch rules, for both families.
pub(crate) fn ensure(fw: &mut Iptables, m: &Masquerade) -> Result<()> {
    let mut sets = String::new();
    for family in [Family::V4, Family::V6] {
        sets += &format!(
            "create {} hash:ip family {}\n",
            set_name(&m.network, family),
            family.ipset()
        );
    }
    ipset::restore(&sets, "create the network's masquerade sets")?;
    let _lock = super::lock::Lock::take()?;
    for family in [Family::V4, Family::V6] {
        let existing = fw.chains(family, "nat")?;
        let mut nat = Section::new("nat");
        let c = chain(&m.network, family);
        nat.chain(&c);
        for net in m.subnets.iter().filter(|n| Family::of(&n.ip()) == family) {
            nat.rule(format!("{c} -d {} -j RETURN", network_cidr(net)));
        }
        nat.rule(format!("{c} -d {} -j RETURN", multicast(family)));
        nat.rule(format!("{c} -j MASQUERADE"));
        let dispatch = format!(
            "-m set --match-set {} src {} -j {c}",
            set_name(&m.network, family),
            comment(&format!("reef masquerade {}", m.network))
        );
        super::ensure_base_chain(&existing, &mut nat, "POSTROUTING", POSTROUTING);
        if !existing
            .get(POSTROUTING)
            .is_some_and(|rules| rules.iter().any(|r| r.ends_with(&format!("-j {c}"))))
        {
            nat.rule(format!("{POSTROUTING} {dispatch}"));
        }
        fw.restore(family, &[nat], "install the network's masquerade")?;
    }
    Ok(())
}

fn network_cidr(n: &IpNetwork) -> String {
    match n {
        IpNetwork::V4(n) => format!("{}/{}", n.network(), n.prefix()),
        IpNetwork::V6(n) => format!("{}/{}", n.network(), n.prefix()),
    }
}

pub(crate) fn add(fw: &mut Iptables, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
    super::add_members(fw, &member_lines(&m.network, pod_ips, true), |fw| {
        ensure(fw, m)
    })
}

pub(crate) fn del(network: &str, pod_ips: &[IpAddr]) -> Result<()> {
    super::del_members(&member_lines(network, pod_ips, false))
}

pub(crate) fn check(fw: &mut Iptables, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
    for family in [Family::V4, Family::V6] {
        let ips: Vec<&IpAddr> = pod_ips.iter().filter(|i| Family::of(i) == family).collect();
        if ips.is_empty() {
            continue;
        }
        let set = set_name(&m.network, family);
        let members = ipset::members(&set)?
            .ok_or_else(|| Error::Check(format!("masquerade set {set} is missing")))?;
        for ip in ips {
            if !members.contains(&ip.to_string()) {
                return Err(Error::Check(format!("{ip} is not in masquerade set {set}")));
            }
        }
        let chains = fw.chains(family, "nat")?;
        let c = chain(&m.network, family);
        if !chains
            .get(&c)
            .is_some_and(|r| r.iter().any(|r| r == "-j MASQUERADE"))
        {
            return Err(Error::Check(format!("masquerade chain {c} is missing")));
        }
        if !chains
            .get(POSTROUTING)
            .is_some_and(|r| r.iter().any(|r| r.ends_with(&format!("-j {c}"))))
        {
            return Err(Error::Check(format!("nothing jumps to {c}")));
        }
    }
    Ok(())
}
