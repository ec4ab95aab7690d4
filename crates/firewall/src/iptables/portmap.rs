//! Port mappings (reef-portmap) in iptables. One rule per mapping in one chain, tagged with
//! its owner, and a handful of fixed rules:
//!
//! ```text
//! *nat
//! -A PREROUTING -m addrtype --dst-type LOCAL -j REEF-HOSTPORTS          (one jump each)
//! -A OUTPUT -m addrtype --dst-type LOCAL -j REEF-HOSTPORTS              (IPv6: ! -d ::1)
//! -A REEF-HOSTPORTS [-d HOSTIP] -p tcp -m comment --comment OWNER -m tcp --dport 8080 -j DNAT --to-destination POD:80
//! -A REEF-POSTROUTING -m conntrack --ctstate DNAT -m set --match-set reef-hp4 src,dst -j MASQUERADE
//! -A REEF-POSTROUTING -s 127.0.0.0/8 ! -o lo -m conntrack --ctstate DNAT -j MASQUERADE
//! *filter   REEF-HP-INPUT (from INPUT): the route_localnet guard (see the nft driver)
//! *mangle   REEF-HP-LOCALNET (from PREROUTING): mark 0x1000 on replies of 127.0.0.1 flows
//! ```
//!
//! Hairpin (a pod reaching itself, or a neighbour behind the same interface, through a
//! mapped port): the reply would skip the host, so the flow is masqueraded when its source
//! lies in the route prefix behind the interface it leaves by. `reef-hp4`/`reef-hp6`
//! (`hash:net,iface`) hold, for every mapped pod, the main-table route to it and its
//! interface (`10.22.0.0/24,reef0` for a bridge, `10.50.1.7/32,reef0a1b2c3d4e5` for a
//! routed pod), read from `/proc/net/route`; `src,dst` matches source address and outgoing
//! interface.
//!
//! Every change is one `iptables-restore --noflush` under Reef's lock: read the chain,
//! check the host ports are free (exact and wildcard-vs-address overlaps), append or
//! delete rules by their exact saved text. A mapping's rule is its record: CHECK, GC and
//! listing parse `iptables-save`.

use super::backend::{comment, Family, Section};
use super::{ipset, Iptables, POSTROUTING};
use crate::conntrack::{self, Flow};
use crate::nfnetlink::NfNetlink;
use crate::rules::{tag_in_network, Owner, PortMapping, Proto};
use crate::{Error, Result};
use ipnetwork::IpNetwork;
use std::net::IpAddr;

const CHAIN: &str = "REEF-HOSTPORTS";
const INPUT: &str = "REEF-HP-INPUT";
const LOCALNET: &str = "REEF-HP-LOCALNET";
/// The mark on replies of the host's own 127.0.0.1 flows (the nft driver's value, which
/// the bridge's tc loopback guard lets through).
const LOCALNET_REPLY_MARK: u32 = crate::nftables::portmap::LOCALNET_REPLY_MARK;

fn hairpin_set(family: Family) -> &'static str {
    match family {
        Family::V4 => "reef-hp4",
        Family::V6 => "reef-hp6",
    }
}

fn families(maps: &[PortMapping]) -> Vec<Family> {
    let mut f: Vec<Family> = maps.iter().map(|m| Family::of(&m.pod_ip)).collect();
    f.sort();
    f.dedup();
    f
}

/// A mapping's rule, as iptables-save prints it (after `-A REEF-HOSTPORTS `), so that the
/// same text deletes it and reading it back compares equal.
fn rule(owner_tag: &str, m: &PortMapping) -> String {
    let dst = match m.host_ip {
        Some(IpAddr::V4(a)) => format!("-d {a}/32 "),
        Some(IpAddr::V6(a)) => format!("-d {a}/128 "),
        None => String::new(),
    };
    let to = match m.pod_ip {
        IpAddr::V6(a) => format!("[{a}]:{}", m.container_port),
        a => format!("{a}:{}", m.container_port),
    };
    let p = m.proto.as_str();
    format!(
        "{dst}-p {p} {} -m {p} --dport {} -j DNAT --to-destination {to}",
        comment(owner_tag),
        m.host_port
    )
}

/// One installed mapping read back: its owner tag, the mapping, and its rule text.
#[derive(Debug, Clone)]
struct Installed {
    tag: String,
    map: PortMapping,
    text: String,
}

/// Parses a saved REEF-HOSTPORTS rule (`None` for anything else).
fn parse(text: &str) -> Option<Installed> {
    let mut host_ip = None;
    let mut proto = None;
    let mut port = None;
    let mut to = None;
    let mut tag = None;
    let mut words = text.split(' ');
    while let Some(w) = words.next() {
        match w {
            "-d" => {
                let net: IpNetwork = words.next()?.parse().ok()?;
                host_ip = Some(net.ip());
            }
            "-p" => proto = Proto::parse(words.next()?),
            "--dport" => port = words.next()?.parse::<u16>().ok(),
            "--to-destination" => to = Some(words.next()?.to_string()),
            "--comment" => {
                // Quoted by iptables-save when it holds spaces; owner tags hold none.
                tag = Some(words.next()?.trim_matches('"').to_string());
            }
            _ => {}
        }
    }
    let to = to?;
    let (ip, cport) = to.rsplit_once(':')?;
    let pod_ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(Installed {
        tag: tag?,
        map: PortMapping {
            host_ip,
            host_port: port?,
            proto: proto?,
            pod_ip,
            container_port: cport.parse().ok()?,
        },
        text: text.to_string(),
    })
}

fn installed(fw: &mut Iptables, family: Family) -> Result<Vec<Installed>> {
    Ok(fw
        .chains(family, "nat")?
        .remove(CHAIN)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| parse(r))
        .collect())
}

fn conflict(m: &PortMapping, holder: &str) -> Error {
    Error::Conflict(format!(
        "host port {} {} is already mapped (attachment {holder} holds {})",
        m.host_port,
        m.proto,
        m.host_side()
    ))
}

/// The first of `want` that another owner's mapping overlaps (same port and protocol, and
/// the same address, or either of them for every address).
fn taken<'a>(tag: &str, want: &[PortMapping], have: &'a [Installed]) -> Option<&'a Installed> {
    have.iter().find(|h| {
        want.iter().any(|m| {
            let same_port = m.host_port == h.map.host_port && m.proto == h.map.proto;
            let overlap =
                m.host_ip.is_none() || h.map.host_ip.is_none() || m.host_ip == h.map.host_ip;
            let ours = h.tag == tag && h.map == *m;
            same_port && overlap && !ours
        })
    })
}

/// The fixed rules of `family` (once per host: when REEF-HOSTPORTS does not exist).
fn base(
    existing: &std::collections::BTreeMap<String, Vec<String>>,
    family: Family,
) -> Vec<Section> {
    let mut nat = Section::new("nat");
    let mut filter = Section::new("filter");
    let mut mangle = Section::new("mangle");
    if existing.contains_key(CHAIN) {
        return vec![];
    }
    let local = "-m addrtype --dst-type LOCAL";
    super::ensure_base_chain_matching(existing, &mut nat, "PREROUTING", local, CHAIN);
    let out_match = match family {
        Family::V4 => local.to_string(),
        // ::1 cannot be DNATed to another host: the kernel never routes a ::1 source out.
        Family::V6 => format!("! -d ::1/128 {local}"),
    };
    super::ensure_base_chain_matching(existing, &mut nat, "OUTPUT", &out_match, CHAIN);
    super::ensure_base_chain(existing, &mut nat, "POSTROUTING", POSTROUTING);
    nat.rule(format!(
        "{POSTROUTING} -m conntrack --ctstate DNAT -m set --match-set {} src,dst {} -j MASQUERADE",
        hairpin_set(family),
        comment("reef hostport hairpin")
    ));
    if family == Family::V4 {
        // 127.0.0.1:hostPort from the host itself: the pod cannot answer a loopback source.
        nat.rule(format!(
            "{POSTROUTING} -s 127.0.0.0/8 ! -o lo -m conntrack --ctstate DNAT {} -j MASQUERADE",
            comment("reef hostport localhost")
        ));
        // route_localnet=1 must not open the host's loopback services to its pods.
        super::ensure_base_chain(existing, &mut filter, "INPUT", INPUT);
        filter.rule(format!(
            "{INPUT} ! -i lo -d 127.0.0.0/8 -m conntrack --ctstate INVALID -j DROP"
        ));
        filter.rule(format!(
            "{INPUT} ! -i lo -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT -j DROP"
        ));
        super::ensure_base_chain(existing, &mut mangle, "PREROUTING", LOCALNET);
        mangle.rule(format!(
            "{LOCALNET} -m conntrack --ctstate DNAT --ctorigsrc 127.0.0.0/8 --ctdir REPLY -j MARK --or-mark 0x{LOCALNET_REPLY_MARK:x}"
        ));
    }
    vec![nat, filter, mangle]
}

/// The main-table route (longest prefix) to `ip` and its interface, from /proc.
fn route_to(ip: IpAddr) -> Option<(IpNetwork, String)> {
    let mut best: Option<(IpNetwork, String)> = None;
    let mut consider = |net: IpNetwork, dev: &str| {
        if net.contains(ip) && best.as_ref().is_none_or(|(b, _)| net.prefix() > b.prefix()) {
            best = Some((net, dev.to_string()));
        }
    };
    match ip {
        IpAddr::V4(_) => {
            let text = std::fs::read_to_string("/proc/net/route").ok()?;
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 {
                    continue;
                }
                let (Ok(dst), Ok(mask)) =
                    (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
                else {
                    continue;
                };
                // /proc prints the raw network-order word as a native integer.
                let addr = std::net::Ipv4Addr::from(dst.to_ne_bytes());
                let prefix = mask.count_ones() as u8;
                if let Ok(net) = ipnetwork::Ipv4Network::new(addr, prefix) {
                    consider(IpNetwork::V4(net), f[0]);
                }
            }
        }
        IpAddr::V6(_) => {
            let text = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 10 {
                    continue;
                }
                let (Ok(raw), Ok(prefix)) =
                    (u128::from_str_radix(f[0], 16), u8::from_str_radix(f[1], 16))
                else {
                    continue;
                };
                if let Ok(net) = ipnetwork::Ipv6Network::new(raw.into(), prefix) {
                    consider(IpNetwork::V6(net), f[9]);
                }
            }
        }
    }
    // The default route's interface is no hairpin: a pod is never behind it.
    best.filter(|(n, dev)| n.prefix() > 0 && dev != "lo")
}

fn hairpin_element(ip: IpAddr) -> Option<String> {
    let (net, dev) = route_to(ip)?;
    Some(format!("{}/{},{dev}", net.network(), net.prefix()))
}

pub(crate) fn add(fw: &mut Iptables, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
    let maps: Vec<PortMapping> = maps.iter().map(|m| m.normalized()).collect();
    if maps.is_empty() {
        return Ok(());
    }
    let tag = owner.tag();
    let mut sets = String::new();
    for family in families(&maps) {
        sets += &format!(
            "create {} hash:net,iface family {}\n",
            hairpin_set(family),
            family.ipset()
        );
    }
    for m in &maps {
        if let Some(e) = hairpin_element(m.pod_ip) {
            sets += &format!("add {} {e}\n", hairpin_set(Family::of(&m.pod_ip)));
        }
    }
    ipset::restore(&sets, "record the mapped pods' hairpin routes")?;
    let _lock = super::lock::Lock::take()?;
    for family in families(&maps) {
        let existing = fw.chains(family, "nat")?;
        let have: Vec<Installed> = existing
            .get(CHAIN)
            .into_iter()
            .flatten()
            .filter_map(|r| parse(r))
            .collect();
        let want: Vec<PortMapping> = maps
            .iter()
            .filter(|m| Family::of(&m.pod_ip) == family)
            .copied()
            .collect();
        if let Some(h) = taken(&tag, &want, &have) {
            return Err(conflict(&h.map, &h.tag));
        }
        let mut sections = if existing.contains_key(CHAIN) {
            vec![]
        } else {
            // First mapping here: the fixed rules, in nat, filter and mangle.
            let mut all = existing.clone();
            if family == Family::V4 {
                all.extend(fw.chains(family, "filter")?);
                all.extend(fw.chains(family, "mangle")?);
            }
            base(&all, family)
        };
        if sections.is_empty() {
            sections.push(Section::new("nat"));
        }
        for m in &want {
            if have.iter().any(|h| h.tag == tag && h.map == *m) {
                continue; // a retried ADD
            }
            sections[0].rule(format!("{CHAIN} {}", rule(&tag, m)));
        }
        fw.restore(family, &sections, "install port mappings")?;
    }
    Ok(())
}

pub(crate) fn del(
    fw: &mut Iptables,
    owner: &Owner,
    known: Option<&[PortMapping]>,
) -> Result<Vec<PortMapping>> {
    let tag = owner.tag();
    let known: Option<Vec<PortMapping>> = known.map(|k| k.iter().map(|m| m.normalized()).collect());
    remove_where(fw, |i| {
        i.tag == tag && known.as_ref().is_none_or(|k| k.contains(&i.map))
    })
}

/// Deletes every installed mapping `doomed` selects, and the hairpin elements no remaining
/// mapping needs; what was removed.
fn remove_where(
    fw: &mut Iptables,
    doomed: impl Fn(&Installed) -> bool,
) -> Result<Vec<PortMapping>> {
    let _lock = super::lock::Lock::take()?;
    let mut removed = Vec::new();
    for family in [Family::V4, Family::V6] {
        if family == Family::V6 && !super::has_tables(fw, family)? {
            continue;
        }
        let have = installed(fw, family)?;
        let (gone, kept): (Vec<&Installed>, Vec<&Installed>) = have.iter().partition(|i| doomed(i));
        if gone.is_empty() {
            continue;
        }
        let mut nat = Section::new("nat");
        for g in &gone {
            nat.line(format!("-D {CHAIN} {}", g.text));
        }
        fw.restore(family, &[nat], "remove port mappings")?;
        // Hairpin elements: drop those whose prefix no kept mapping's pod lies in.
        if let Some(members) = ipset::members(hairpin_set(family))? {
            let mut script = String::new();
            for e in members {
                let Some((net, _)) = e.split_once(',') else {
                    continue;
                };
                let Ok(net) = net.parse::<IpNetwork>() else {
                    continue;
                };
                if !kept.iter().any(|k| net.contains(k.map.pod_ip)) {
                    script += &format!("del {} {e}\n", hairpin_set(family));
                }
            }
            ipset::restore(&script, "forget hairpin routes")?;
        }
        removed.extend(gone.iter().map(|g| g.map));
    }
    Ok(removed)
}

pub(crate) fn check(fw: &mut Iptables, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
    let tag = owner.tag();
    for family in families(maps) {
        let have = installed(fw, family)?;
        for m in maps
            .iter()
            .map(|m| m.normalized())
            .filter(|m| Family::of(&m.pod_ip) == family)
        {
            match have.iter().find(|h| {
                h.map.host_port == m.host_port
                    && h.map.proto == m.proto
                    && h.map.host_ip == m.host_ip
            }) {
                None => {
                    return Err(Error::Check(format!(
                        "port mapping {m} is missing from {CHAIN}"
                    )))
                }
                Some(h) if h.map != m => {
                    return Err(Error::Check(format!(
                        "port mapping {m} is installed as {}",
                        h.map
                    )))
                }
                Some(h) if h.tag != tag => {
                    return Err(Error::Check(format!(
                        "port mapping {m} belongs to {:?}, not {tag:?}",
                        h.tag
                    )))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

pub(crate) fn flush_conntrack(removed: &[PortMapping]) -> Result<()> {
    flush(removed, &[])
}

fn flush(removed: &[PortMapping], added: &[PortMapping]) -> Result<()> {
    let flows: Vec<Flow> = crate::nftables::portmap::udp_flows(removed, added);
    if flows.is_empty() {
        return Ok(());
    }
    // conntrack is netlink, whatever the iptables backend.
    let mut nl = NfNetlink::open().map_err(crate::nftables::io("open nfnetlink socket"))?;
    conntrack::flush_flows(&mut nl, &flows)
        .map_err(crate::nftables::io("flush UDP conntrack entries"))?;
    Ok(())
}

pub(crate) fn gc(
    fw: &mut Iptables,
    network: &str,
    valid: &[(String, String)],
) -> Result<Vec<PortMapping>> {
    let keep = Owner::tags_of(network, valid);
    let removed = remove_where(fw, |i| {
        tag_in_network(&i.tag, network) && !keep.contains(&i.tag)
    })?;
    flush(&removed, &[])?;
    Ok(removed)
}

pub(crate) fn status(fw: &mut Iptables) -> Result<()> {
    fw.backend().map(|_| ())
}

pub(crate) fn list(fw: &mut Iptables) -> Result<Vec<PortMapping>> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        out.extend(installed(fw, family)?.into_iter().map(|i| i.map));
    }
    Ok(out)
}

/// Flushes now: a finished process leaves nothing to linger for, and the flush is cheap
/// beside the iptables-restore that came before it.
pub(crate) fn flush_in_background(removed: &[PortMapping], added: &[PortMapping]) {
    let _ = flush(removed, added);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_back_into_their_mapping() {
        let m = PortMapping {
            host_ip: Some("198.18.0.1".parse().unwrap()),
            host_port: 8080,
            proto: Proto::Tcp,
            pod_ip: "10.22.0.5".parse().unwrap(),
            container_port: 80,
        };
        let i = parse(&rule("net/abc/eth0", &m)).unwrap();
        assert_eq!((i.tag.as_str(), i.map), ("net/abc/eth0", m));
        let v6 = PortMapping {
            host_ip: None,
            pod_ip: "fd00::5".parse().unwrap(),
            proto: Proto::Udp,
            ..m
        };
        assert_eq!(parse(&rule("t", &v6)).unwrap().map, v6);
    }
}
