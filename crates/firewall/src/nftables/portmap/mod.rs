//! Port mappings (reef-portmap) in nftables: one table for the whole host,
//! `inet reef-portmap`, created once by an atomic, idempotent `nft -f` transaction. A
//! mapping is one element of one of four maps, so a pod's ADD or DEL is a single netlink
//! batch and the per-packet cost is one hash lookup however many mappings exist:
//!
//! ```text
//! table inet reef-portmap {
//!   map hostip4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map any4    { type inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map hostip6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }
//!   map any6    { type inet_proto . inet_service : ipv6_addr . inet_service; }
//!   chain prerouting  { nat prerouting dstnat:  jump mapped }          # other hosts, pods
//!   chain output      { nat output -100:        ip6 daddr ::1 return; jump mapped }   # the host
//!   chain mapped {
//!     meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hostip4
//!     meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @any4
//!     ... the same for ip6 }
//!   chain forward     { filter forward:  new DNATed flows that leave by the interface they
//!                       came in on (hairpin, pod to pod on one bridge) get mark 0x2000 }
//!   chain postrouting { nat srcnat: masquerade marked DNATed flows, and DNATed flows from
//!                       127.0.0.0/8 leaving by a real interface }
//!   chain input       { filter input: drop packets to 127.0.0.0/8 from other interfaces
//!                       unless they belong to a DNATed flow (route_localnet guard) }
//!   chain localnet    { filter prerouting mangle: replies of DNATed flows from 127.0.0.0/8
//!                       get mark 0x1000, which the loopback guard at a bridge's tc ingress
//!                       lets through (br_netfilter has de-NATed them by then) }
//! }
//! ```
//!
//! Each element carries its owner as its comment (`<network>/<containerID>/<ifname>`, or a
//! hashed form when that would exceed nft's 127-byte comment limit), so DEL removes only
//! its own attachment's elements, CHECK verifies ownership, and GC finds stale ones.

mod ruleset;
mod wire;

pub use ruleset::table_script;
pub(crate) use wire::{Map, Wire};

use super::objects::{udata_comment, Elem, ElemChange, NFPROTO_INET};
use super::run_nft;
use crate::conntrack::{self, Flow};
use crate::nfnetlink::NfNetlink;
use crate::rules::{tag_in_network, Owner, PortMapping, Proto};
use crate::{Error, Result};

/// The one table holding every port mapping of the host.
pub const TABLE: &str = "reef-portmap";

/// The packet mark bit that asks for masquerade (the reference portmap's default, bit 13).
pub const MASQ_MARK: u32 = 0x2000;

/// The packet mark bit on replies of the host's own DNATed 127.0.0.1 flows, which the
/// loopback guard on a bridge (`reef_netlink::tc`) lets through (bit 12).
pub const LOCALNET_REPLY_MARK: u32 = 0x1000;

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

/// Groups elements by map, in `Map::ALL` order.
fn by_map(maps: &[PortMapping], owner: &Owner) -> Vec<(Map, Vec<Elem>)> {
    Map::ALL
        .iter()
        .map(|m| {
            (
                *m,
                maps.iter()
                    .filter(|p| p.map() == *m)
                    .map(|p| p.elem(owner))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// An element's owner tag.
fn elem_tag(e: &Elem) -> Option<String> {
    e.udata.as_deref().and_then(udata_comment)
}

/// See `Nftables::taken`.
type Taken = (Vec<usize>, Option<(PortMapping, String)>);

fn nft_on_path() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
        .unwrap_or(false)
}

/// The nftables port-mapping operations, on one nfnetlink socket.
pub(crate) struct Ops;

impl Ops {
    /// The installed element of each mapping's key (`None` where absent).
    fn lookup(nl: &mut NfNetlink, maps: &[PortMapping]) -> Result<Vec<Option<Elem>>> {
        let mut out: Vec<Option<Elem>> = vec![None; maps.len()];
        for m in Map::ALL {
            let idx: Vec<usize> = (0..maps.len()).filter(|i| maps[*i].map() == m).collect();
            if idx.is_empty() {
                continue;
            }
            let keys: Vec<Vec<u8>> = idx.iter().map(|i| maps[*i].key()).collect();
            let found = nl
                .get_elements(NFPROTO_INET, TABLE, m.name(), &keys)
                .map_err(io("look up port mappings"))?;
            for (i, e) in idx.into_iter().zip(found) {
                out[i] = e;
            }
        }
        Ok(out)
    }

    /// Which of `maps` are not installed (indices), and the first one that another owner
    /// (or another target) holds, with that owner's tag.
    fn taken(nl: &mut NfNetlink, owner: &Owner, maps: &[PortMapping]) -> Result<Taken> {
        let tag = owner.tag();
        let found = Self::lookup(nl, maps)?;
        let mut missing = Vec::new();
        for (i, (m, e)) in maps.iter().zip(found).enumerate() {
            match e {
                None => missing.push(i),
                Some(e) => {
                    let t = elem_tag(&e).unwrap_or_default();
                    if t != tag || e.data.as_deref() != Some(&m.data()[..]) {
                        return Ok((missing, Some((*m, t))));
                    }
                }
            }
        }
        Ok((missing, None))
    }

    /// A mapping for every address (`*:port`) and one for a single address (`ip:port`) of
    /// the same family and port overlap. Exact keys are checked atomically by the kernel;
    /// this checks the overlap after the commit: of two racing ADDs at least the later
    /// sees the other, so two overlapping mappings never both succeed.
    fn overlap(
        nl: &mut NfNetlink,
        owner: &Owner,
        maps: &[PortMapping],
    ) -> Result<Option<(PortMapping, String)>> {
        let tag = owner.tag();
        // Specific ones: is the wildcard key held by someone else?
        let wild: Vec<PortMapping> = maps
            .iter()
            .filter(|m| m.host_ip.is_some())
            .map(|m| PortMapping {
                host_ip: None,
                ..*m
            })
            .collect();
        for (m, e) in wild.iter().zip(Self::lookup(nl, &wild)?) {
            if let Some(e) = e {
                let t = elem_tag(&e).unwrap_or_default();
                if t != tag {
                    return Ok(Some((*m, t)));
                }
            }
        }
        // Wildcard ones: does someone else hold a specific address on that port?
        for (any, specific) in [(Map::Any4, Map::HostIp4), (Map::Any6, Map::HostIp6)] {
            let ours: Vec<&PortMapping> = maps.iter().filter(|m| m.map() == any).collect();
            if ours.is_empty() {
                continue;
            }
            let elems = nl
                .dump_elements(NFPROTO_INET, TABLE, specific.name())
                .map_err(io("list port mappings"))?;
            for e in elems {
                let Some(other) = PortMapping::decode(specific, &e) else {
                    continue;
                };
                let t = elem_tag(&e).unwrap_or_default();
                if t != tag
                    && ours
                        .iter()
                        .any(|m| m.proto == other.proto && m.host_port == other.host_port)
                {
                    return Ok(Some((other, t)));
                }
            }
        }
        Ok(None)
    }

    fn conflict(m: &PortMapping, holder: &str) -> Error {
        let who = if holder.is_empty() {
            "an element without owner".to_string()
        } else {
            format!("attachment {holder}")
        };
        Error::Conflict(format!(
            "host port {} {} is already mapped ({} holds {})",
            m.host_port,
            m.proto,
            who,
            m.host_side()
        ))
    }

    fn delete_elems(nl: &mut NfNetlink, victims: &[(Map, Elem)]) -> Result<()> {
        let groups: Vec<(Map, Vec<Elem>)> = Map::ALL
            .iter()
            .map(|m| {
                (
                    *m,
                    victims
                        .iter()
                        .filter(|(vm, _)| vm == m)
                        .map(|(_, e)| Elem {
                            key: e.key.clone(),
                            ..Elem::default()
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let changes: Vec<ElemChange> = groups
            .iter()
            .map(|(m, elems)| ElemChange::Del {
                set: m.name(),
                elems,
            })
            .collect();
        nl.change_elements(NFPROTO_INET, TABLE, &changes)
            .map_err(io("remove port mappings"))
    }

    fn flush_udp(nl: &mut NfNetlink, removed: &[PortMapping]) -> Result<()> {
        let flows = udp_flows(removed, &[]);
        if flows.is_empty() {
            return Ok(());
        }
        conntrack::flush_flows(nl, &flows).map_err(io("flush UDP conntrack entries"))?;
        Ok(())
    }
}

/// The conntrack flows to delete for removed and added UDP mappings.
pub(crate) fn udp_flows(removed: &[PortMapping], added: &[PortMapping]) -> Vec<Flow> {
    let udp = |m: &&PortMapping| m.proto == Proto::Udp;
    let mut flows: Vec<Flow> = removed
        .iter()
        .filter(udp)
        .map(|m| Flow::Dnat {
            proto: m.proto.number(),
            host_port: m.host_port,
            pod_ip: m.pod_ip,
            container_port: m.container_port,
        })
        .collect();
    flows.extend(added.iter().filter(udp).map(|m| Flow::Untranslated {
        proto: m.proto.number(),
        host_port: m.host_port,
        host_ip: m.host_ip,
        v6: m.pod_ip.is_ipv6(),
    }));
    flows
}

impl Ops {
    pub(crate) fn add_port_mappings(
        nl: &mut NfNetlink,
        owner: &Owner,
        maps: &[PortMapping],
    ) -> Result<()> {
        let maps: Vec<PortMapping> = maps.iter().map(|m| m.normalized()).collect();
        if maps.is_empty() {
            return Ok(());
        }
        let mut pending: Vec<PortMapping> = maps.clone();
        let mut created_table = false;
        // Normally one pass. Another pass only after creating the table, or when a retried
        // ADD finds some of its own elements already there.
        for _ in 0..4 {
            let groups = by_map(&pending, owner);
            let changes: Vec<ElemChange> = groups
                .iter()
                .map(|(m, elems)| ElemChange::Add {
                    set: m.name(),
                    elems,
                    exclusive: true,
                })
                .collect();
            match nl.change_elements(NFPROTO_INET, TABLE, &changes) {
                Ok(()) => {
                    pending.clear();
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !created_table => {
                    run_nft(&table_script(), &format!("create table inet {TABLE}"))?;
                    created_table = true;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let (missing, taken) = Self::taken(nl, owner, &pending)?;
                    if let Some((m, holder)) = taken {
                        return Err(Self::conflict(&m, &holder));
                    }
                    pending = missing.into_iter().map(|i| pending[i]).collect();
                    if pending.is_empty() {
                        break;
                    }
                }
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("add port mappings to inet {TABLE}"),
                        source: e,
                    })
                }
            }
        }
        if !pending.is_empty() {
            return Err(Error::Check(format!(
                "port mappings kept changing under this ADD: {}",
                pending[0]
            )));
        }
        if let Some((m, holder)) = Self::overlap(nl, owner, &maps)? {
            // Undo this call: every element of ours that it installed.
            let victims: Vec<(Map, Elem)> = maps.iter().map(|m| (m.map(), m.elem(owner))).collect();
            let _ = Self::delete_elems(nl, &victims);
            return Err(Self::conflict(&m, &holder));
        }
        Ok(())
    }

    pub(crate) fn del_port_mappings(
        nl: &mut NfNetlink,
        owner: &Owner,
        known: Option<&[PortMapping]>,
    ) -> Result<Vec<PortMapping>> {
        let tag = owner.tag();
        let mut victims: Vec<(Map, Elem)> = Vec::new();
        match known {
            Some(maps) => {
                let maps: Vec<PortMapping> = maps.iter().map(|m| m.normalized()).collect();
                for (m, e) in maps.iter().zip(Self::lookup(nl, &maps)?) {
                    let Some(e) = e else { continue };
                    // Ours, and still pointing at this pod: a retried DEL never removes the
                    // port's next holder, nor this container's later attachment elsewhere.
                    if elem_tag(&e).as_deref() == Some(&tag)
                        && e.data.as_deref() == Some(&m.data()[..])
                    {
                        victims.push((m.map(), e));
                    }
                }
            }
            None => {
                for m in Map::ALL {
                    let elems = nl
                        .dump_elements(NFPROTO_INET, TABLE, m.name())
                        .map_err(io("list port mappings"))?;
                    victims.extend(
                        elems
                            .into_iter()
                            .filter(|e| elem_tag(e).as_deref() == Some(&tag))
                            .map(|e| (m, e)),
                    );
                }
            }
        }
        victims.dedup_by(|a, b| a.0 == b.0 && a.1.key == b.1.key);
        if victims.is_empty() {
            return Ok(Vec::new());
        }
        match Self::delete_elems(nl, &victims) {
            Ok(()) => {}
            // Someone removed one meanwhile (a concurrent DEL): remove the rest one by one.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                for v in &victims {
                    match Self::delete_elems(nl, std::slice::from_ref(v)) {
                        Ok(()) => {}
                        Err(Error::Io { source, .. })
                            if source.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        let removed: Vec<PortMapping> = victims
            .iter()
            .filter_map(|(m, e)| PortMapping::decode(*m, e))
            .collect();
        Ok(removed)
    }

    pub(crate) fn flush_conntrack(nl: &mut NfNetlink, removed: &[PortMapping]) -> Result<()> {
        Self::flush_udp(nl, removed)
    }

    pub(crate) fn check_port_mappings(
        nl: &mut NfNetlink,
        owner: &Owner,
        maps: &[PortMapping],
    ) -> Result<()> {
        let maps: Vec<PortMapping> = maps.iter().map(|m| m.normalized()).collect();
        let tag = owner.tag();
        for (m, e) in maps.iter().zip(Self::lookup(nl, &maps)?) {
            let Some(e) = e else {
                return Err(Error::Check(format!(
                    "port mapping {m} is missing from inet {TABLE}"
                )));
            };
            if e.data.as_deref() != Some(&m.data()[..]) {
                let have = PortMapping::decode(m.map(), &e)
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "something else".into());
                return Err(Error::Check(format!(
                    "port mapping {m} is installed as {have}"
                )));
            }
            let t = elem_tag(&e).unwrap_or_default();
            if t != tag {
                return Err(Error::Check(format!(
                    "port mapping {m} belongs to {t:?}, not {tag:?}"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn gc_port_mappings(
        nl: &mut NfNetlink,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<PortMapping>> {
        let keep = Owner::tags_of(network, valid);
        let mut victims: Vec<(Map, Elem)> = Vec::new();
        for m in Map::ALL {
            let elems = nl
                .dump_elements(NFPROTO_INET, TABLE, m.name())
                .map_err(io("list port mappings"))?;
            for e in elems {
                let Some(tag) = elem_tag(&e) else { continue };
                if tag_in_network(&tag, network) && !keep.contains(&tag) {
                    victims.push((m, e));
                }
            }
        }
        if victims.is_empty() {
            return Ok(Vec::new());
        }
        Self::delete_elems(nl, &victims)?;
        let removed: Vec<PortMapping> = victims
            .iter()
            .filter_map(|(m, e)| PortMapping::decode(*m, e))
            .collect();
        Self::flush_udp(nl, &removed)?;
        Ok(removed)
    }

    pub(crate) fn port_mappings(nl: &mut NfNetlink) -> Result<Vec<PortMapping>> {
        let mut out = Vec::new();
        for m in Map::ALL {
            let elems = match nl.dump_elements(NFPROTO_INET, TABLE, m.name()) {
                Ok(e) => e,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(io("list port mappings")(e)),
            };
            out.extend(elems.iter().filter_map(|e| PortMapping::decode(m, e)));
        }
        Ok(out)
    }

    pub(crate) fn port_mapping_status(nl: &mut NfNetlink) -> Result<()> {
        let exists = nl
            .table_exists(NFPROTO_INET, TABLE)
            .map_err(io("query nftables"))?;
        if !exists && !nft_on_path() {
            return Err(Error::Check(format!(
                "table inet {TABLE} does not exist and the nft command (nftables) is not on PATH to create it"
            )));
        }
        Ok(())
    }
}
