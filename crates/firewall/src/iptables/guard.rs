//! Pod guards in iptables: anti-spoofing for every pod, isolation between bridge networks,
//! and the hold of a new pod of a policy-governed namespace (the nftables driver's `guard`,
//! same semantics). What grows with pods is ipset members (`hash:net,iface`, where an
//! element `0.0.0.0/0,IFACE` means "anything on this interface"):
//!
//! ```text
//! sets (4 and 6): reef-gif  pod host interfaces      reef-gsrc  (pod address, interface)
//!                 reef-gpend held interfaces         reef-gbr   bridges
//!  reef-gns: tags of namespaces with a policy   reef-gi-/reef-gn-<bridge>: its isolation
//! *raw     PREROUTING -j REEF-ANTISPOOF:
//!   -m set --match-set reef-gif4 src,src -m set ! --match-set reef-gsrc4 src,src -j DROP
//!   (IPv6: ::/128 and fe80::/10 RETURN first)
//! *filter  FORWARD -j REEF-FORWARD: -j REEF-GUARD, -j REEF-POLICY (guard before policy)
//!   REEF-GUARD: pending src,src / dst,dst DROP; -j REEF-ISOLATE
//!   REEF-ISOLATE, per isolated bridge B (bridges are few):
//!     -i B ! -o B -m set --match-set reef-gbr4 dst,dst -j DROP (and the reverse)
//! nftables `bridge reef-guard` (bridged frames): the nftables driver's bridge table,
//!   its pod-ifaces / pod-sources / pending elements, over netlink
//! ```
//!
//! Bridged frames never reach iptables, and br_netfilter does not help: xt_set never looks
//! up with the physdev flag (iptables has no option to ask for it), so `physdev:` elements
//! of `hash:net,iface` never match (tried here, kernel 6.18); `-m physdev` would need one
//! rule per pod in iptables and ip6tables, cannot see frames the host sends or routes to a
//! port (which a hold must drop) and needs a host-wide setting. So bridge ports are guarded
//! at the bridge hooks, in the nftables driver's `bridge reef-guard` table: element changes
//! in one netlink batch, no process. A first version used ebtables-nft chains per port
//! (the same kernel subsystem, nf_tables: there is no ebtables-legacy here); each
//! `ebtables-nft-restore` committed and then waited out an RCU grace period on exit, which
//! cost 5-15 ms of every bridge pod's ADD and DEL. A routed pod's ADD is one `ipset
//! restore`; a bridge pod's adds one netlink batch.

use super::backend::{chain_name, comment, Family, Section};
use super::{ipset, Iptables};
use crate::nftables::guard::namespace_tag;
use crate::rules::{BridgeIsolation, Masquerade, PodGuard};
use crate::Result;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// filter FORWARD's one jump target: the guard, then the policy.
pub(crate) const FORWARD: &str = "REEF-FORWARD";
pub(crate) const GUARD: &str = "REEF-GUARD";
pub(crate) const ISOLATE: &str = "REEF-ISOLATE";
/// The policy's top chain (policy.rs owns its rules; the guard only creates it).
pub(crate) const POLICY: &str = "REEF-POLICY";
const ANTISPOOF: &str = "REEF-ANTISPOOF";
const NAMESPACES: &str = "reef-gns";

fn set(base: &str, family: Family) -> String {
    match family {
        Family::V4 => format!("reef-{base}4"),
        Family::V6 => format!("reef-{base}6"),
    }
}

/// "Anything on `iface`" as a `hash:net,iface` element.
fn any_on(family: Family, iface: &str) -> String {
    format!("{},{iface}", family.any())
}

/// The bridge's isolation marker: exists only in its current state, so an ADD that finds
/// it missing (a new bridge, or its isolation changed) re-states the bridge's rules.
fn marker(b: &BridgeIsolation, isolated: bool) -> String {
    let prefix = if isolated { "reef-gi-" } else { "reef-gn-" };
    chain_name(prefix, &[&b.name])
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
const POD_SETS: [&str; 3] = ["gif", "gsrc", "gpend"];

/// Creates every guard set and the iptables chains and jumps (idempotent; the fixed chains
/// are rewritten, the isolation and policy chains kept).
pub(crate) fn ensure(fw: &mut Iptables) -> Result<()> {
    let mut sets = format!("create {NAMESPACES} hash:net,iface family inet\n");
    for family in FAMILIES {
        for base in POD_SETS.iter().chain(&["gbr"]) {
            sets += &format!(
                "create {} hash:net,iface family {}\n",
                set(base, family),
                family.ipset()
            );
        }
    }
    ipset::restore(&sets, "create the guard sets")?;
    let _lock = super::lock::Lock::take()?;
    for family in FAMILIES {
        if !super::has_tables(fw, family)? {
            continue;
        }
        let raw_existing = fw.chains(family, "raw")?;
        let mut raw = Section::new("raw");
        raw.chain(ANTISPOOF);
        if family == Family::V6 {
            raw.rule(format!("{ANTISPOOF} -s ::/128 -j RETURN"));
            raw.rule(format!("{ANTISPOOF} -s fe80::/10 -j RETURN"));
        }
        raw.rule(format!(
            "{ANTISPOOF} -m set --match-set {} src,src -m set ! --match-set {} src,src {} -j DROP",
            set("gif", family),
            set("gsrc", family),
            comment("reef anti-spoofing")
        ));
        super::ensure_base_chain(&raw_existing, &mut raw, "PREROUTING", ANTISPOOF);

        let existing = fw.chains(family, "filter")?;
        let mut filter = Section::new("filter");
        for keep in [ISOLATE, POLICY] {
            if !existing.contains_key(keep) {
                filter.chain(keep);
            }
        }
        filter.chain(GUARD);
        let pend = set("gpend", family);
        let held = comment("reef held pod");
        filter.rule(format!(
            "{GUARD} -m set --match-set {pend} src,src {held} -j DROP"
        ));
        filter.rule(format!(
            "{GUARD} -m set --match-set {pend} dst,dst {held} -j DROP"
        ));
        filter.rule(format!("{GUARD} -j {ISOLATE}"));
        filter.chain(FORWARD);
        filter.rule(format!("{FORWARD} -j {GUARD}"));
        filter.rule(format!("{FORWARD} -j {POLICY}"));
        super::ensure_base_chain(&existing, &mut filter, "FORWARD", FORWARD);
        fw.restore(family, &[raw, filter], "install the pod guard rules")?;
    }
    Ok(())
}

/// Whether `rule` (as iptables-save or ebtables-save prints it) names interface `iface`.
fn names_iface(rule: &str, iface: &str) -> bool {
    let t: Vec<&str> = rule.split_whitespace().collect();
    t.windows(2)
        .any(|w| matches!(w[0], "-i" | "-o") && w[1] == iface)
}

/// Re-states bridge `b`'s isolation rules and marker (under the lock; after `ensure`).
fn ensure_bridge(fw: &mut Iptables, b: &BridgeIsolation) -> Result<()> {
    let _lock = super::lock::Lock::take()?;
    for family in FAMILIES {
        if !super::has_tables(fw, family)? {
            continue;
        }
        let existing = fw.chains(family, "filter")?;
        let mut filter = Section::new("filter");
        filter.chain(ISOLATE);
        for r in existing.get(ISOLATE).into_iter().flatten() {
            if !names_iface(r, &b.name) {
                filter.rule(format!("{ISOLATE} {r}"));
            }
        }
        if b.isolated {
            let (br, bridges) = (&b.name, set("gbr", family));
            let c = comment(&format!("reef isolated bridge {br}"));
            filter.rule(format!(
                "{ISOLATE} -i {br} ! -o {br} -m set --match-set {bridges} dst,dst {c} -j DROP"
            ));
            filter.rule(format!(
                "{ISOLATE} -o {br} ! -i {br} -m set --match-set {bridges} src,src {c} -j DROP"
            ));
        }
        fw.restore(family, &[filter], "install the bridge isolation rules")?;
    }
    let (now, old) = (marker(b, b.isolated), marker(b, !b.isolated));
    let mut script = ipset::destroy_script(&[old]);
    script += &format!(
        "create {now} hash:net,iface family inet\nadd {now} {}\n",
        any_on(Family::V4, &b.name)
    );
    ipset::restore(&script, "record the bridge's isolation")
}

/// The pod's set members (interface and sources, both families; the bridge and its marker).
fn member_lines(g: &PodGuard) -> String {
    let mut s = String::new();
    for family in FAMILIES {
        s += &format!("add {} {}\n", set("gif", family), any_on(family, &g.iface));
    }
    for ip in &g.ips {
        s += &format!("add {} {ip},{}\n", set("gsrc", Family::of(ip)), g.iface);
    }
    if let Some(b) = &g.bridge {
        for family in FAMILIES {
            s += &format!("add {} {}\n", set("gbr", family), any_on(family, &b.name));
        }
        s += &format!(
            "add {} {}\n",
            marker(b, b.isolated),
            any_on(Family::V4, &b.name)
        );
    }
    s
}

/// A pod's guard (and with `masquerade` its network's masquerade members): one `ipset
/// restore` when the rules exist; a bridge pod adds its bridge-layer chain (one
/// netlink batch in the bridge table).
pub(crate) fn add_pod(
    fw: &mut Iptables,
    g: &PodGuard,
    masquerade: Option<(&Masquerade, &[IpAddr])>,
) -> Result<()> {
    let mut lines = member_lines(g);
    if let Some((m, ips)) = masquerade {
        lines += &super::masquerade::member_lines(&m.network, ips, true);
    }
    super::add_members(fw, &lines, |fw| {
        ensure(fw)?;
        if let Some(b) = &g.bridge {
            ensure_bridge(fw, b)?;
        }
        match masquerade {
            Some((m, _)) => super::masquerade::ensure(fw, m),
            None => Ok(()),
        }
    })?;
    if g.bridge.is_some() {
        crate::nftables::guard::bridge_add(fw.bridge_socket()?, &g.iface, &g.ips)?;
    }
    Ok(())
}

/// Holds `iface` when `namespace` has a policy (as this host's agent last said); whether
/// it did. Nothing is held without the namespaces' set (no agent has run here).
pub(crate) fn hold(fw: &mut Iptables, iface: &str, namespace: &str) -> Result<bool> {
    let tag = any_on(Family::V4, &namespace_tag(namespace));
    if !ipset::members(NAMESPACES)?.is_some_and(|m| m.contains(&tag)) {
        return Ok(false);
    }
    let lines: String = FAMILIES
        .iter()
        .map(|f| format!("add {} {}\n", set("gpend", *f), any_on(*f, iface)))
        .collect();
    super::add_members(fw, &lines, ensure)?;
    // The pod's port is not known to be a bridge's yet: hold it at the bridge layer too.
    crate::nftables::guard::bridge_hold(fw.bridge_socket()?, iface)?;
    Ok(true)
}

/// Releases held pods (their policy is in place); missing holds are fine.
pub(crate) fn release(fw: &mut Iptables, ifaces: &[String]) -> Result<()> {
    if ifaces.is_empty() {
        return Ok(());
    }
    let mut lines = String::new();
    for iface in ifaces {
        for family in FAMILIES {
            lines += &format!("del {} {}\n", set("gpend", family), any_on(family, iface));
        }
    }
    super::del_members(&lines)?;
    crate::nftables::guard::bridge_release(fw.bridge_socket()?, ifaces)
}

/// Makes the namespaces' set hold exactly the tags of `namespaces` (one atomic swap).
pub(crate) fn set_namespaces(_fw: &mut Iptables, namespaces: &BTreeSet<String>) -> Result<()> {
    let members: BTreeSet<String> = namespaces
        .iter()
        .map(|n| any_on(Family::V4, &namespace_tag(n)))
        .collect();
    ipset::restore(
        &ipset::replace_script(NAMESPACES, "hash:net,iface family inet", &members),
        "update the policy namespaces",
    )
}

/// Removes a pod's members, its hold and its bridge-layer rules (idempotent); without
/// `ips`, whatever the sets hold for `iface`. With `masquerade`, the addresses leave that
/// network's masquerade set in the same `ipset restore`.
pub(crate) fn del_pod(
    fw: &mut Iptables,
    iface: &str,
    ips: &[IpAddr],
    masquerade: Option<&str>,
) -> Result<()> {
    if ips.is_empty() {
        return forget_ifaces(fw, &[iface.to_string()]);
    }
    let mut lines = String::new();
    for family in FAMILIES {
        for base in ["gif", "gpend"] {
            lines += &format!("del {} {}\n", set(base, family), any_on(family, iface));
        }
    }
    for ip in ips {
        lines += &format!("del {} {ip},{iface}\n", set("gsrc", Family::of(ip)));
    }
    if let Some(network) = masquerade {
        lines += &super::masquerade::member_lines(network, ips, false);
    }
    super::del_members(&lines)?;
    crate::nftables::guard::bridge_del(fw.bridge_socket()?, iface, ips)
}

/// Removes every member and bridge-layer rule of `ifaces`, read back from the kernel (GC,
/// and a DEL that no longer knows the pod's addresses).
pub(crate) fn forget_ifaces(fw: &mut Iptables, ifaces: &[String]) -> Result<()> {
    if ifaces.is_empty() {
        return Ok(());
    }
    let names: BTreeSet<String> = ipset::names()?.into_iter().collect();
    let mut lines = String::new();
    for family in FAMILIES {
        for base in POD_SETS {
            let s = set(base, family);
            if !names.contains(&s) {
                continue;
            }
            for m in ipset::members(&s)?.into_iter().flatten() {
                let iface = m.rsplit_once(',').map(|(_, i)| i).unwrap_or_default();
                if ifaces.iter().any(|i| i == iface) {
                    lines += &format!("del {s} {m}\n");
                }
            }
        }
    }
    super::del_members(&lines)?;
    crate::nftables::guard::bridge_forget(fw.bridge_socket()?, ifaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ipset() {
        let b = BridgeIsolation {
            name: "reef-bridge-x".into(),
            isolated: true,
        };
        assert!(marker(&b, true).len() < ipset::NAME_MAX);
        assert_ne!(marker(&b, true), marker(&b, false));
    }

    #[test]
    fn members_name_the_interface() {
        let g = PodGuard {
            iface: "reefa".into(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            bridge: None,
        };
        assert_eq!(
            member_lines(&g),
            "add reef-gif4 0.0.0.0/0,reefa\nadd reef-gif6 ::/0,reefa\nadd reef-gsrc4 10.0.0.5,reefa\n"
        );
        assert!(names_iface("-i br0 ! -o br0 -m set", "br0"));
        assert!(!names_iface("-i br01 -j DROP", "br0"));
    }
}
