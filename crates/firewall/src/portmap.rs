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
//! }
//! ```
//!
//! Each element carries its owner as its comment (`<network>/<containerID>/<ifname>`, or a
//! hashed form when that would exceed nft's 127-byte comment limit), so DEL removes only
//! its own attachment's elements, CHECK verifies ownership, and GC finds stale ones.

use crate::conntrack::{self, Flow};
use crate::nfnetlink::{comment_udata, udata_comment, Elem, ElemChange, NfNetlink, NFPROTO_INET};
use crate::nftables::{run_nft, Nftables};
use crate::{Error, Result};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The one table holding every port mapping of the host.
pub const TABLE: &str = "reef-portmap";

/// The packet mark bit that asks for masquerade (the reference portmap's default, bit 13).
pub const MASQ_MARK: u32 = 0x2000;

/// nft's comment limit (bytes, without the NUL).
const COMMENT_MAX: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DNAT: `host_ip:host_port/proto` (every local address without `host_ip`) to
/// `pod_ip:container_port`. `host_ip` and `pod_ip` are of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: Proto,
    pub pod_ip: IpAddr,
    pub container_port: u16,
}

impl PortMapping {
    /// `0.0.0.0` and `::` mean "every address of the family", like no address.
    pub fn normalized(mut self) -> PortMapping {
        if self.host_ip.is_some_and(|a| a.is_unspecified()) {
            self.host_ip = None;
        }
        self
    }

    fn map(&self) -> Map {
        match (self.pod_ip.is_ipv6(), self.host_ip.is_some()) {
            (false, true) => Map::HostIp4,
            (false, false) => Map::Any4,
            (true, true) => Map::HostIp6,
            (true, false) => Map::Any6,
        }
    }

    /// The host side, as a person writes it: `198.18.0.1:8080/tcp`, `*:8080/udp`, `[fd00::1]:80/tcp`.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(IpAddr::V6(a)) => format!("[{a}]:{}/{}", self.host_port, self.proto),
            Some(a) => format!("{a}:{}/{}", self.host_port, self.proto),
            None if self.pod_ip.is_ipv6() => format!("[::]:{}/{}", self.host_port, self.proto),
            None => format!("*:{}/{}", self.host_port, self.proto),
        }
    }

    fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        match self.host_ip {
            Some(IpAddr::V4(a)) => k.extend_from_slice(&a.octets()),
            Some(IpAddr::V6(a)) => k.extend_from_slice(&a.octets()),
            None => {}
        }
        // Concatenated fields each take whole 4-byte registers: inet_proto (1 byte) and
        // inet_service (2 bytes, network order) are zero-padded.
        k.extend_from_slice(&[self.proto.number(), 0, 0, 0]);
        k.extend_from_slice(&self.host_port.to_be_bytes());
        k.extend_from_slice(&[0, 0]);
        k
    }

    fn data(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(20);
        match self.pod_ip {
            IpAddr::V4(a) => d.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => d.extend_from_slice(&a.octets()),
        }
        d.extend_from_slice(&self.container_port.to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d
    }

    fn elem(&self, owner: &Owner) -> Elem {
        Elem {
            key: self.key(),
            data: Some(self.data()),
            udata: Some(comment_udata(&owner.tag())),
        }
    }

    /// Decodes an element of `map`; `None` for malformed ones.
    fn decode(map: Map, e: &Elem) -> Option<PortMapping> {
        let (host_ip, rest): (Option<IpAddr>, &[u8]) = match map {
            Map::HostIp4 => {
                let o: [u8; 4] = e.key.get(..4)?.try_into().ok()?;
                (Some(Ipv4Addr::from(o).into()), e.key.get(4..)?)
            }
            Map::HostIp6 => {
                let o: [u8; 16] = e.key.get(..16)?.try_into().ok()?;
                (Some(Ipv6Addr::from(o).into()), e.key.get(16..)?)
            }
            Map::Any4 | Map::Any6 => (None, &e.key[..]),
        };
        if rest.len() != 8 {
            return None;
        }
        let proto = Proto::from_number(rest[0])?;
        let host_port = u16::from_be_bytes([rest[4], rest[5]]);
        let d = e.data.as_deref()?;
        let alen = if map.v6() { 16 } else { 4 };
        if d.len() != alen + 4 {
            return None;
        }
        let pod_ip: IpAddr = if map.v6() {
            let o: [u8; 16] = d[..16].try_into().ok()?;
            Ipv6Addr::from(o).into()
        } else {
            let o: [u8; 4] = d[..4].try_into().ok()?;
            Ipv4Addr::from(o).into()
        };
        let container_port = u16::from_be_bytes([d[alen], d[alen + 1]]);
        Some(PortMapping {
            host_ip,
            host_port,
            proto,
            pod_ip,
            container_port,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pod = match self.pod_ip {
            IpAddr::V6(a) => format!("[{a}]:{}", self.container_port),
            a => format!("{a}:{}", self.container_port),
        };
        write!(f, "{} -> {pod}", self.host_side())
    }
}

/// The attachment a mapping belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// FNV-1a, 64 bits: a stable hash for over-long owner tags (no dependency, no std hasher
/// whose output may change between Rust releases).
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A separator no identifier byte can take, so ("ab","c") != ("a","bc").
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl Owner {
    /// The element comment: `<network>/<containerID>/<ifname>` (none of the three may hold a
    /// `/`), or `#<hash of network>/<hash of containerID and ifname>` when that is too long.
    pub fn tag(&self) -> String {
        let plain = format!("{}/{}/{}", self.network, self.container_id, self.ifname);
        if plain.len() <= COMMENT_MAX {
            return plain;
        }
        format!(
            "#{:016x}/{:016x}",
            fnv64(&[&self.network]),
            fnv64(&[&self.container_id, &self.ifname])
        )
    }
}

/// Whether an element comment names an owner in `network`.
fn tag_in_network(tag: &str, network: &str) -> bool {
    if let Some(hashed) = tag.strip_prefix('#') {
        return hashed
            .split('/')
            .next()
            .is_some_and(|h| h == format!("{:016x}", fnv64(&[network])));
    }
    let mut parts = tag.split('/');
    parts.next() == Some(network) && parts.count() == 2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    HostIp4,
    Any4,
    HostIp6,
    Any6,
}

impl Map {
    const ALL: [Map; 4] = [Map::HostIp4, Map::Any4, Map::HostIp6, Map::Any6];

    fn name(self) -> &'static str {
        match self {
            Map::HostIp4 => "hostip4",
            Map::Any4 => "any4",
            Map::HostIp6 => "hostip6",
            Map::Any6 => "any6",
        }
    }

    fn v6(self) -> bool {
        matches!(self, Map::HostIp6 | Map::Any6)
    }
}

/// The nft script that creates the table in one transaction. Every statement is idempotent
/// (`add` of an existing object is a no-op, chains are flushed before their rules are
/// added), so concurrent first ADDs need no lock and existing map elements survive.
pub fn table_script() -> String {
    let t = format!("inet {TABLE}");
    let mark = format!("0x{MASQ_MARK:08x}");
    let mut s = format!("add table {t}\n");
    for (name, key, data) in [
        (
            "hostip4",
            "ipv4_addr . inet_proto . inet_service",
            "ipv4_addr . inet_service",
        ),
        (
            "any4",
            "inet_proto . inet_service",
            "ipv4_addr . inet_service",
        ),
        (
            "hostip6",
            "ipv6_addr . inet_proto . inet_service",
            "ipv6_addr . inet_service",
        ),
        (
            "any6",
            "inet_proto . inet_service",
            "ipv6_addr . inet_service",
        ),
    ] {
        s += &format!("add map {t} {name} {{ type {key} : {data}; }}\n");
    }
    let chains = [
        (
            "prerouting",
            "{ type nat hook prerouting priority dstnat; policy accept; }",
        ),
        // nft 1.0.6 accepts the name dstnat only on prerouting; -100 is its value.
        (
            "output",
            "{ type nat hook output priority -100; policy accept; }",
        ),
        ("mapped", ""),
        (
            "forward",
            "{ type filter hook forward priority filter; policy accept; }",
        ),
        (
            "postrouting",
            "{ type nat hook postrouting priority srcnat; policy accept; }",
        ),
        (
            "input",
            "{ type filter hook input priority filter; policy accept; }",
        ),
    ];
    for (name, spec) in chains {
        s += &format!("add chain {t} {name} {spec}\n");
    }
    for (name, _) in chains {
        s += &format!("flush chain {t} {name}\n");
    }
    let rules = [
        ("prerouting", "jump mapped".to_string()),
        // ::1 cannot be DNATed to another host: the kernel never routes a ::1 source out.
        ("output", "ip6 daddr ::1 return".to_string()),
        ("output", "jump mapped".to_string()),
        (
            "mapped",
            "meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hostip4".into(),
        ),
        (
            "mapped",
            "meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @any4"
                .into(),
        ),
        (
            "mapped",
            "meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6".into(),
        ),
        (
            "mapped",
            "meta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @any6"
                .into(),
        ),
        // A DNATed flow that goes back out of the interface it came in on (a pod reaching
        // itself or a neighbour on its bridge through a mapped port): the reply would skip
        // the host and its conntrack, so it must be masqueraded. Flows from other hosts
        // keep their source address.
        (
            "forward",
            format!("ct state new ct status dnat fib daddr . iif oif exists meta mark set meta mark | {mark}"),
        ),
        (
            "postrouting",
            format!("ct status dnat meta mark & {mark} == {mark} meta mark set meta mark & 0x{:08x} masquerade", !MASQ_MARK),
        ),
        // 127.0.0.1:hostPort from the host itself: the pod cannot answer a loopback source.
        (
            "postrouting",
            "ip saddr 127.0.0.0/8 ct status dnat oif != lo masquerade".into(),
        ),
        // route_localnet=1 (set for the above) must not open the host's loopback services
        // to its pods: only DNATed flows may carry a 127.0.0.0/8 destination off `lo`.
        (
            "input",
            "iif != lo ip daddr 127.0.0.0/8 ct state invalid drop".into(),
        ),
        (
            "input",
            "iif != lo ip daddr 127.0.0.0/8 ct status ! dnat drop".into(),
        ),
    ];
    for (chain, rule) in rules {
        s += &format!("add rule {t} {chain} {rule}\n");
    }
    s
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

/// Port mappings, behind a trait like `Firewall` so another driver can sit beside nftables.
pub trait PortMapper {
    /// Installs `maps` for `owner`, atomically: all of them or none. A mapping whose host
    /// side another attachment already maps fails the whole call with `Error::Conflict`
    /// and changes nothing. Repeating the call for the same owner and mappings succeeds.
    fn add_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()>;
    /// Removes `owner`'s mappings; returns what was removed (for `flush_conntrack`). With
    /// `known`, only those, and only where the element still holds exactly that target;
    /// without, every element tagged with `owner`. Idempotent.
    fn del_port_mappings(
        &mut self,
        owner: &Owner,
        known: Option<&[PortMapping]>,
    ) -> Result<Vec<PortMapping>>;
    /// Verifies every mapping is installed with this target and owner.
    fn check_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()>;
    /// Deletes the conntrack entries of removed UDP mappings, which would otherwise keep
    /// steering an ongoing flow to the old pod. (A dump walks the kernel's whole conntrack
    /// hash table: ~10-30 ms here, whatever the number of entries.)
    fn flush_conntrack(&mut self, removed: &[PortMapping]) -> Result<()>;
    /// Removes `network`'s mappings whose owner is not among `valid` (containerID, ifname),
    /// and flushes the conntrack entries of the UDP ones.
    fn gc_port_mappings(
        &mut self,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<PortMapping>>;
    /// Whether port mappings can be installed here.
    fn port_mapping_status(&mut self) -> Result<()>;
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

impl Nftables {
    /// Closes the kernel connection in a detached child (see `close_in_background`) that
    /// first deletes the conntrack entries that would defeat UDP mappings: those DNATed
    /// through `removed` ones (an ongoing flow would keep reaching the old pod) and the
    /// untranslated ones to `added` ones (a flow that began before the mapping would keep
    /// bypassing it). That is a walk of the whole conntrack table, 10-30 ms here, so ADD and
    /// DEL return without waiting for it; it completes a few milliseconds later.
    pub fn close_flushing_conntrack(self, removed: &[PortMapping], added: &[PortMapping]) {
        let flows = udp_flows(removed, added);
        self.finish_in_background(move |nl| {
            if !flows.is_empty() {
                let _ = conntrack::flush_flows(nl, &flows);
            }
        })
    }

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
fn udp_flows(removed: &[PortMapping], added: &[PortMapping]) -> Vec<Flow> {
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

impl PortMapper for Nftables {
    fn add_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        let maps: Vec<PortMapping> = maps.iter().map(|m| m.normalized()).collect();
        if maps.is_empty() {
            return Ok(());
        }
        let nl = self.socket()?;
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

    fn del_port_mappings(
        &mut self,
        owner: &Owner,
        known: Option<&[PortMapping]>,
    ) -> Result<Vec<PortMapping>> {
        let nl = self.socket()?;
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

    fn flush_conntrack(&mut self, removed: &[PortMapping]) -> Result<()> {
        let nl = self.socket()?;
        Self::flush_udp(nl, removed)
    }

    fn check_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        let maps: Vec<PortMapping> = maps.iter().map(|m| m.normalized()).collect();
        let nl = self.socket()?;
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

    fn gc_port_mappings(
        &mut self,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<PortMapping>> {
        let nl = self.socket()?;
        let keep: Vec<String> = valid
            .iter()
            .map(|(cid, ifname)| {
                Owner {
                    network: network.to_string(),
                    container_id: cid.clone(),
                    ifname: ifname.clone(),
                }
                .tag()
            })
            .collect();
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

    fn port_mapping_status(&mut self) -> Result<()> {
        let nl = self.socket()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host_ip: Option<&str>, port: u16, proto: Proto, pod: &str, cport: u16) -> PortMapping {
        PortMapping {
            host_ip: host_ip.map(|h| h.parse().unwrap()),
            host_port: port,
            proto,
            pod_ip: pod.parse().unwrap(),
            container_port: cport,
        }
    }

    #[test]
    fn register_layout_matches_nft() {
        // `nft --debug=netlink` for `198.18.0.1 . tcp . 8080 : 10.1.0.2 . 80` prints the
        // words 010012c6 00000006 0000901f : 0200010a 00005000 (little-endian u32s).
        let m = pm(Some("198.18.0.1"), 8080, Proto::Tcp, "10.1.0.2", 80);
        assert_eq!(m.key(), vec![198, 18, 0, 1, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(m.data(), vec![10, 1, 0, 2, 0, 80, 0, 0]);
        let any6 = pm(None, 8080, Proto::Udp, "fd00::2", 80);
        assert_eq!(any6.key(), vec![17, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(any6.data().len(), 20);
        assert_eq!(any6.map(), Map::Any6);
    }

    #[test]
    fn decode_inverts_encode() {
        let owner = Owner {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        for m in [
            pm(Some("198.18.0.1"), 8080, Proto::Tcp, "10.1.0.2", 80),
            pm(None, 53, Proto::Udp, "10.1.0.2", 5353),
            pm(Some("fd00::1"), 443, Proto::Sctp, "fd00::2", 8443),
            pm(None, 1, Proto::Tcp, "fd00::9", 65535),
        ] {
            assert_eq!(PortMapping::decode(m.map(), &m.elem(&owner)), Some(m));
        }
    }

    #[test]
    fn unspecified_host_ip_means_every_address() {
        let m = pm(Some("0.0.0.0"), 80, Proto::Tcp, "10.0.0.2", 80).normalized();
        assert_eq!(m.host_ip, None);
        assert_eq!(m.map(), Map::Any4);
        let m = pm(Some("::"), 80, Proto::Tcp, "fd00::2", 80).normalized();
        assert_eq!(m.map(), Map::Any6);
    }

    #[test]
    fn owner_tags_fit_and_name_their_network() {
        let o = Owner {
            network: "net1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(o.tag(), "net1/abc/eth0");
        assert!(tag_in_network(&o.tag(), "net1"));
        assert!(!tag_in_network(&o.tag(), "net"));
        let long = Owner {
            container_id: "x".repeat(200),
            ..o.clone()
        };
        let t = long.tag();
        assert!(t.len() <= COMMENT_MAX && t.starts_with('#'), "{t}");
        assert!(tag_in_network(&t, "net1"));
        assert!(!tag_in_network(&t, "net2"));
        assert_ne!(
            t,
            Owner {
                container_id: "y".repeat(200),
                ..o
            }
            .tag()
        );
    }

    #[test]
    fn script_is_one_idempotent_transaction() {
        let s = table_script();
        assert!(s.starts_with("add table inet reef-portmap\n"));
        for chain in [
            "prerouting",
            "output",
            "mapped",
            "forward",
            "postrouting",
            "input",
        ] {
            let flush = s
                .find(&format!("flush chain inet reef-portmap {chain}\n"))
                .unwrap();
            let first_rule = s
                .find(&format!("add rule inet reef-portmap {chain} "))
                .unwrap();
            assert!(flush < first_rule, "{chain}");
        }
        assert!(!s.contains("delete"));
    }
}
