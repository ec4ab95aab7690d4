//! The per-host guard tables: anti-spoofing for every pod, isolation between bridge
//! networks, and the hold that keeps a new pod of a policy-governed namespace unreachable
//! until reef-agent has programmed its policy. The plugins create them (idempotently, once
//! per host) and add or remove one pod's elements per ADD and DEL; reef-agent creates them
//! too and keeps `policy-namespaces` current.
//!
//! ```text
//! table inet reef-guard {                       # routed pods; bridged IPv4 via br_netfilter
//!   set pod-ifaces { type ifname; }             # host ends of pod veths
//!   set pod-sources { type ifname . ipv4_addr; } set pod-sources6 { ... ipv6_addr; }
//!   set pending { type ifname; }                # pods held until the agent programs them
//!   set policy-namespaces { type ifname; }      # tags of namespaces that have a policy
//!   set bridges, isolated { type ifname; }  set same { type ifname . ifname; }
//!   chain antispoof { prerouting, priority raw:
//!     iifname @pod-ifaces iifname . ip saddr != @pod-sources drop (and IPv6 but link-local) }
//!   chain forward { forward, priority -10:
//!     iifname @pending drop; oifname @pending drop
//!     iifname @isolated oifname @bridges iifname . oifname != @same drop (and reverse) } }
//! table bridge reef-guard {                     # the same on bridge ports: a bridged frame
//!   the pod sets; prerouting: the anti-spoofing rules   # never reaches the inet hooks
//!   forward, input, output: the pending drops }         # with its port as interface
//! ```
//! Pods are told apart by their host interface, which the plugins name before IPAM runs,
//! so a hold can be placed before the pod's workload record exists (see `hold_new_pod`).

use super::objects::{elem_requests, AsElem, ElemChange, ElemRef};
use super::{io, run_nft};
use crate::nfnetlink::{NfNetlink, Request};
use crate::rules::{Masquerade, PodGuard};
use crate::Result;
use std::net::IpAddr;

pub const TABLE: &str = "reef-guard";
pub(crate) const NFPROTO_INET: u8 = 1;
pub(crate) const NFPROTO_BRIDGE: u8 = 7;

/// The 16-byte register image of an interface name (nft's `ifname` type).
pub(crate) fn ifname_key(name: &str) -> [u8; 16] {
    let mut k = [0u8; 16];
    let b = name.as_bytes();
    let n = b.len().min(15);
    k[..n].copy_from_slice(&b[..n]);
    k
}

/// What stands for a namespace in `policy-namespaces` (an `ifname`-typed set, 15 bytes):
/// the name when it fits, else its first 8 characters, `~` and a 6-digit hash.
pub fn namespace_tag(namespace: &str) -> String {
    if namespace.len() <= 15 {
        return namespace.to_string();
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let head: String = namespace.chars().take(8).collect();
    format!("{head}~{:06x}", h & 0xff_ffff)
}

fn ip_key(iface: &str, ip: IpAddr) -> Vec<u8> {
    let mut k = ifname_key(iface).to_vec();
    match ip {
        IpAddr::V4(v4) => k.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => k.extend_from_slice(&v6.octets()),
    }
    k
}

/// The script creating both tables; every statement idempotent and the fixed chains
/// flushed before their rules, so re-running it keeps every element.
pub fn table_script() -> String {
    let mut s = String::new();
    let pod_sets = [
        ("pod-ifaces", "type ifname;"),
        ("pod-sources", "type ifname . ipv4_addr;"),
        ("pod-sources6", "type ifname . ipv6_addr;"),
        ("pending", "type ifname;"),
    ];
    for family in ["inet", "bridge"] {
        s += &format!("add table {family} {TABLE}\n");
        for (name, spec) in pod_sets {
            s += &format!("add set {family} {TABLE} {name} {{ {spec} }}\n");
        }
    }
    for (name, spec) in [
        ("policy-namespaces", "type ifname;"),
        ("bridges", "type ifname;"),
        ("isolated", "type ifname;"),
        ("same", "type ifname . ifname;"),
    ] {
        s += &format!("add set inet {TABLE} {name} {{ {spec} }}\n");
    }
    let chains: [(&str, &str, &str, &[&str]); 6] = [
        (
            "inet",
            "antispoof",
            "type filter hook prerouting priority raw; policy accept;",
            &[
                "iifname @pod-ifaces meta nfproto ipv4 iifname . ip saddr != @pod-sources counter drop",
                "iifname @pod-ifaces meta nfproto ipv6 ip6 saddr != { ::/128, fe80::/10 } iifname . ip6 saddr != @pod-sources6 counter drop",
            ],
        ),
        (
            "inet",
            "forward",
            "type filter hook forward priority -10; policy accept;",
            &[
                "iifname @pending counter drop",
                "oifname @pending counter drop",
                "iifname @isolated oifname @bridges iifname . oifname != @same counter drop",
                "oifname @isolated iifname @bridges iifname . oifname != @same counter drop",
            ],
        ),
        (
            "bridge",
            "prerouting",
            "type filter hook prerouting priority -300; policy accept;",
            &[
                "iifname @pod-ifaces ether type ip iifname . ip saddr != @pod-sources counter drop",
                "iifname @pod-ifaces ether type ip6 ip6 saddr != { ::/128, fe80::/10 } iifname . ip6 saddr != @pod-sources6 counter drop",
            ],
        ),
        (
            "bridge",
            "forward",
            "type filter hook forward priority -10; policy accept;",
            &["iifname @pending counter drop", "oifname @pending counter drop"],
        ),
        (
            "bridge",
            "input",
            "type filter hook input priority -10; policy accept;",
            &["iifname @pending counter drop"],
        ),
        (
            "bridge",
            "output",
            "type filter hook output priority -10; policy accept;",
            &["oifname @pending counter drop"],
        ),
    ];
    for (family, name, spec, rules) in chains {
        s += &format!("add chain {family} {TABLE} {name} {{ {spec} }}\n");
        s += &format!("flush chain {family} {TABLE} {name}\n");
        for r in rules {
            s += &format!("add rule {family} {TABLE} {name} {r}\n");
        }
    }
    s
}

/// Creates the tables if the inet one is missing (both are created together).
pub(crate) fn ensure(nl: &mut NfNetlink) -> Result<()> {
    if nl
        .table_exists(NFPROTO_INET, TABLE)
        .map_err(io("query nftables"))?
    {
        return Ok(());
    }
    run_nft(&table_script(), "create the guard tables")?;
    Ok(())
}

/// Element changes in the bridge and the inet table and `extra` messages (another table's),
/// as ONE transaction.
fn in_both<E: AsElem>(
    nl: &mut NfNetlink,
    bridge: &[ElemChange<E>],
    inet: &[ElemChange<E>],
    extra: Vec<Request>,
) -> std::io::Result<()> {
    let mut msgs = elem_requests(NFPROTO_BRIDGE, TABLE, bridge);
    msgs.extend(elem_requests(NFPROTO_INET, TABLE, inet));
    msgs.extend(extra);
    nl.transaction(msgs)
}

/// A key-only element.
struct Key(Vec<u8>);

impl AsElem for Key {
    fn elem(&self) -> ElemRef<'_> {
        ElemRef {
            key: &self.0,
            ..ElemRef::default()
        }
    }
}

/// Holds `iface` (dropping everything it sends or receives) when `namespace` has a policy,
/// as far as this host's agent knows; whether it did. Without guard tables (no agent or
/// plugin has run here) nothing is held.
pub(crate) fn hold(nl: &mut NfNetlink, iface: &str, namespace: &str) -> Result<bool> {
    let tag = ifname_key(&namespace_tag(namespace)).to_vec();
    let found = nl
        .get_elements(NFPROTO_INET, TABLE, "policy-namespaces", &[tag])
        .map_err(io("look up the namespace's policies"))?;
    if !found.first().is_some_and(Option::is_some) {
        return Ok(false);
    }
    let key = [Key(ifname_key(iface).to_vec())];
    let add = [ElemChange::Add {
        set: "pending",
        elems: &key[..],
        exclusive: false,
    }];
    in_both(nl, &add, &add, Vec::new()).map_err(io("hold the new pod"))?;
    Ok(true)
}

/// Releases held pods (their policy is in place): one transaction per family, missing
/// elements ignored.
pub(crate) fn release(nl: &mut NfNetlink, ifaces: &[String]) -> Result<()> {
    if ifaces.is_empty() {
        return Ok(());
    }
    let keys: Vec<Key> = ifaces.iter().map(|i| Key(ifname_key(i).to_vec())).collect();
    let destroy = [ElemChange::Destroy {
        set: "pending",
        elems: &keys[..],
    }];
    in_both(nl, &destroy, &destroy, Vec::new()).map_err(io("release held pods"))
}

fn pod_changes<'a>(
    ifaces: &'a [Key],
    v4: &'a [Key],
    v6: &'a [Key],
    add: bool,
) -> Vec<ElemChange<'a, Key>> {
    let mut out = Vec::new();
    for (set, elems) in [
        ("pod-ifaces", ifaces),
        ("pod-sources", v4),
        ("pod-sources6", v6),
    ] {
        if elems.is_empty() {
            continue;
        }
        out.push(if add {
            ElemChange::Add {
                set,
                elems,
                exclusive: false,
            }
        } else {
            ElemChange::Destroy { set, elems }
        });
    }
    out
}

/// The (interface . address) keys of a pod's IPv4 and IPv6 addresses.
fn source_keys(iface: &str, ips: &[IpAddr]) -> (Vec<Key>, Vec<Key>) {
    let (v4, v6): (Vec<&IpAddr>, Vec<&IpAddr>) = ips.iter().partition(|i| i.is_ipv4());
    let keys = |ips: Vec<&IpAddr>| ips.into_iter().map(|ip| Key(ip_key(iface, *ip))).collect();
    (keys(v4), keys(v6))
}

/// Makes `policy-namespaces` hold exactly the tags of `namespaces` (what new pods' holds
/// look up), in one transaction.
pub(crate) fn set_namespaces(
    nl: &mut NfNetlink,
    namespaces: &std::collections::BTreeSet<String>,
) -> Result<()> {
    let want: std::collections::BTreeSet<Vec<u8>> = namespaces
        .iter()
        .map(|n| ifname_key(&namespace_tag(n)).to_vec())
        .collect();
    let have: std::collections::BTreeSet<Vec<u8>> = nl
        .dump_elements(NFPROTO_INET, TABLE, "policy-namespaces")
        .map_err(io("read policy-namespaces"))?
        .into_iter()
        .map(|e| e.key)
        .collect();
    let add: Vec<Key> = want.difference(&have).cloned().map(Key).collect();
    let del: Vec<Key> = have.difference(&want).cloned().map(Key).collect();
    let mut changes = Vec::new();
    if !add.is_empty() {
        changes.push(ElemChange::Add {
            set: "policy-namespaces",
            elems: &add,
            exclusive: false,
        });
    }
    if !del.is_empty() {
        changes.push(ElemChange::Destroy {
            set: "policy-namespaces",
            elems: &del,
        });
    }
    if changes.is_empty() {
        return Ok(());
    }
    nl.change_elements(NFPROTO_INET, TABLE, &changes)
        .map_err(io("update policy-namespaces"))
}

/// A pod's anti-spoofing elements and its bridge's isolation elements, in both tables, and
/// with `masquerade` its network's masquerade elements: ONE transaction, because a second
/// commit right after a first waits for the first's destroy work (an RCU grace period, about
/// 8 ms of every ADD here).
pub(crate) fn add_pod(
    nl: &mut NfNetlink,
    g: &PodGuard,
    masquerade: Option<(&Masquerade, &[IpAddr])>,
) -> Result<()> {
    ensure(nl)?;
    let mut extra = Vec::new();
    if let Some((m, ips)) = masquerade {
        super::masquerade::ensure_table(nl, m)?;
        extra = super::masquerade::element_requests(m, ips);
    }
    let ifaces = [Key(ifname_key(&g.iface).to_vec())];
    let (v4, v6) = source_keys(&g.iface, &g.ips);
    let changes = pod_changes(&ifaces, &v4, &v6, true);
    let mut inet = pod_changes(&ifaces, &v4, &v6, true);
    let bridge_keys;
    let pair;
    let isolated;
    if let Some(b) = &g.bridge {
        bridge_keys = [Key(ifname_key(&b.name).to_vec())];
        let mut k = ifname_key(&b.name).to_vec();
        k.extend_from_slice(&ifname_key(&b.name));
        pair = [Key(k)];
        inet.push(ElemChange::Add {
            set: "bridges",
            elems: &bridge_keys,
            exclusive: false,
        });
        inet.push(ElemChange::Add {
            set: "same",
            elems: &pair,
            exclusive: false,
        });
        isolated = [Key(ifname_key(&b.name).to_vec())];
        inet.push(if b.isolated {
            ElemChange::Add {
                set: "isolated",
                elems: &isolated,
                exclusive: false,
            }
        } else {
            ElemChange::Destroy {
                set: "isolated",
                elems: &isolated,
            }
        });
    }
    in_both(nl, &changes, &inet, extra).map_err(io("add the pod's guard and masquerade elements"))
}

/// Removes every element of `ifaces` (their interfaces, holds and addresses, whichever
/// they are), read back from the kernel: for GC and for a DEL that no longer knows the
/// pod's addresses.
pub(crate) fn forget_ifaces(nl: &mut NfNetlink, ifaces: &[String]) -> Result<()> {
    if ifaces.is_empty()
        || !nl
            .table_exists(NFPROTO_INET, TABLE)
            .map_err(io("query nftables"))?
    {
        return Ok(());
    }
    forget_in(nl, &[NFPROTO_INET, NFPROTO_BRIDGE], ifaces)
}

/// Deletes, in one transaction, every pod-set element of `ifaces` in the `families` tables.
fn forget_in(nl: &mut NfNetlink, families: &[u8], ifaces: &[String]) -> Result<()> {
    let names: Vec<[u8; 16]> = ifaces.iter().map(|i| ifname_key(i)).collect();
    let mut msgs = Vec::new();
    for &family in families {
        for set in ["pod-ifaces", "pending", "pod-sources", "pod-sources6"] {
            let stale: Vec<Key> = nl
                .dump_elements(family, TABLE, set)
                .map_err(io("read the guard elements"))?
                .into_iter()
                .filter(|e| e.key.len() >= 16 && names.iter().any(|n| e.key[..16] == n[..]))
                .map(|e| Key(e.key))
                .collect();
            if !stale.is_empty() {
                msgs.extend(elem_requests(
                    family,
                    TABLE,
                    &[ElemChange::Destroy { set, elems: &stale }],
                ));
            }
        }
    }
    nl.transaction(msgs)
        .map_err(io("remove stale guard elements"))
}

/// Removes a pod's elements, and its hold (idempotent; nothing to do without the tables).
/// Without its addresses, whatever the kernel holds for its interface. With `masquerade`
/// (a network name), the addresses leave that network's masquerade sets in the same
/// transaction: a second commit right after a first waits for the first's destroy work.
pub(crate) fn del_pod(
    nl: &mut NfNetlink,
    iface: &str,
    ips: &[IpAddr],
    masquerade: Option<&str>,
) -> Result<()> {
    let masq = match masquerade {
        Some(network) if !ips.is_empty() => super::masquerade::element_destroys(nl, network, ips)?,
        _ => Vec::new(),
    };
    if ips.is_empty() {
        return forget_ifaces(nl, &[iface.to_string()]);
    }
    if !nl
        .table_exists(NFPROTO_INET, TABLE)
        .map_err(io("query nftables"))?
    {
        return nl
            .transaction(masq)
            .map_err(io("remove the pod's masquerade elements"));
    }
    let ifaces = [Key(ifname_key(iface).to_vec())];
    let (v4, v6) = source_keys(iface, ips);
    let mut changes = pod_changes(&ifaces, &v4, &v6, false);
    changes.push(ElemChange::Destroy {
        set: "pending",
        elems: &ifaces,
    });
    in_both(nl, &changes, &changes, masq)
        .map_err(io("remove the pod's guard and masquerade elements"))
}

/// The bridge table alone, for the iptables driver: bridged frames never reach iptables
/// (see `iptables::guard`), so bridge ports are guarded here, in Reef's own `bridge
/// reef-guard` table, one netlink batch per change. Adds a pod's interface and sources.
pub(crate) fn bridge_add(nl: &mut NfNetlink, iface: &str, ips: &[IpAddr]) -> Result<()> {
    ensure(nl)?;
    let ifaces = [Key(ifname_key(iface).to_vec())];
    let (v4, v6) = source_keys(iface, ips);
    let changes = pod_changes(&ifaces, &v4, &v6, true);
    in_both(nl, &changes, &[], Vec::new()).map_err(io("add the pod's bridge guard"))
}

/// Holds `iface` at the bridge layer (iptables driver).
pub(crate) fn bridge_hold(nl: &mut NfNetlink, iface: &str) -> Result<()> {
    ensure(nl)?;
    let key = [Key(ifname_key(iface).to_vec())];
    let add = [ElemChange::Add {
        set: "pending",
        elems: &key[..],
        exclusive: false,
    }];
    in_both(nl, &add, &[], Vec::new()).map_err(io("hold the new pod at the bridge"))
}

/// Releases held pods at the bridge layer (iptables driver); missing ones are fine.
pub(crate) fn bridge_release(nl: &mut NfNetlink, ifaces: &[String]) -> Result<()> {
    if ifaces.is_empty() || !bridge_table_exists(nl)? {
        return Ok(());
    }
    let keys: Vec<Key> = ifaces.iter().map(|i| Key(ifname_key(i).to_vec())).collect();
    let destroy = [ElemChange::Destroy {
        set: "pending",
        elems: &keys[..],
    }];
    in_both(nl, &destroy, &[], Vec::new()).map_err(io("release held pods at the bridge"))
}

/// Removes a pod's bridge-layer elements and hold (iptables driver; idempotent). Without
/// `ips`, whatever the table holds for `iface`.
pub(crate) fn bridge_del(nl: &mut NfNetlink, iface: &str, ips: &[IpAddr]) -> Result<()> {
    if !bridge_table_exists(nl)? {
        return Ok(());
    }
    if ips.is_empty() {
        return bridge_forget(nl, &[iface.to_string()]);
    }
    let ifaces = [Key(ifname_key(iface).to_vec())];
    let (v4, v6) = source_keys(iface, ips);
    let mut changes = pod_changes(&ifaces, &v4, &v6, false);
    changes.push(ElemChange::Destroy {
        set: "pending",
        elems: &ifaces,
    });
    in_both(nl, &changes, &[], Vec::new()).map_err(io("remove the pod's bridge guard"))
}

/// Removes every bridge-layer element of `ifaces`, read back (iptables driver's GC).
pub(crate) fn bridge_forget(nl: &mut NfNetlink, ifaces: &[String]) -> Result<()> {
    if ifaces.is_empty() || !bridge_table_exists(nl)? {
        return Ok(());
    }
    forget_in(nl, &[NFPROTO_BRIDGE], ifaces)
}

fn bridge_table_exists(nl: &mut NfNetlink) -> Result<bool> {
    nl.table_exists(NFPROTO_BRIDGE, TABLE)
        .map_err(io("query nftables"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_tags_fit_an_ifname() {
        assert_eq!(namespace_tag("x"), "x");
        assert_eq!(namespace_tag("fifteen-chars-x"), "fifteen-chars-x");
        let long = namespace_tag("a-namespace-name-that-is-long");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("a-namesp~"));
        assert_ne!(long, namespace_tag("a-namespace-name-that-is-lonG"));
    }

    #[test]
    fn keys_are_register_images() {
        let k = ip_key("rf1234", "10.0.0.1".parse().unwrap());
        assert_eq!(k.len(), 20);
        assert_eq!(&k[..6], b"rf1234");
        assert_eq!(&k[16..], &[10, 0, 0, 1]);
    }
}
