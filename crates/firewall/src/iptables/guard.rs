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
//! ebtables-nft *filter (bridged frames): INPUT -j REEF-BIN, FORWARD -j REEF-BFWD,
//!   OUTPUT -j REEF-BOUT; per bridge pod -i PORT -j REEF-BP-<hash> (its sources RETURN,
//!   other IPv4/IPv6 DROP); per held pod -i/-o PORT -j DROP
//! ```
//!
//! Bridged frames: ebtables-nft, not br_netfilter. A port cannot be matched through a set:
//! xt_set never looks up with the physdev flag (iptables has no option to ask for it), so
//! `physdev:` elements of `hash:net,iface` never match (tried here, kernel 6.18), and
//! br_netfilter would need one `-m physdev` rule per pod in each of iptables and ip6tables
//! (two restores per ADD). It also cannot see a bridged frame the host sends or routes to a
//! port (OUTPUT and routed FORWARD only know the bridge), which a hold must drop, and it
//! is a host-wide setting. ebtables-nft hooks the bridge itself, as the nftables driver's
//! `bridge` table does: one restore covers both families, whatever br_netfilter says. The
//! price: a bridge pod's ADD is one `ipset restore` and one `ebtables-nft-restore`, and the
//! bridge part needs nf_tables (there is no ebtables-legacy); a routed pod's ADD is the one
//! `ipset restore`.

use super::backend::{chain_name, comment, run, Family, Section};
use super::{ipset, Iptables};
use crate::nftables::guard::namespace_tag;
use crate::rules::{BridgeIsolation, Masquerade, PodGuard};
use crate::Result;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

/// filter FORWARD's one jump target: the guard, then the policy.
pub(crate) const FORWARD: &str = "REEF-FORWARD";
pub(crate) const GUARD: &str = "REEF-GUARD";
pub(crate) const ISOLATE: &str = "REEF-ISOLATE";
/// The policy's top chain (policy.rs owns its rules; the guard only creates it).
pub(crate) const POLICY: &str = "REEF-POLICY";
const ANTISPOOF: &str = "REEF-ANTISPOOF";
const NAMESPACES: &str = "reef-gns";

/// The bridge-layer chains: (built-in chain, Reef's chain).
const EB_BASE: [(&str, &str); 3] = [
    ("INPUT", "REEF-BIN"),
    ("FORWARD", "REEF-BFWD"),
    ("OUTPUT", "REEF-BOUT"),
];

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

fn pod_chain(iface: &str) -> String {
    chain_name("REEF-BP-", &[iface])
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
/// `ebtables-nft-restore`).
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
        eb_add(
            &bridge_pod_script(&g.iface, &g.ips),
            "add the pod's bridge guard",
        )?;
    }
    Ok(())
}

/// The bridge-layer anti-spoofing of one port: its chain (declaring it empties it, so a
/// repeated ADD leaves one copy) and the jumps to it for frames entering from the port.
fn bridge_pod_script(iface: &str, ips: &[IpAddr]) -> String {
    let c = pod_chain(iface);
    let mut s = format!("*filter\n:{c} RETURN\n");
    for ip in ips.iter().filter(|i| i.is_ipv4()) {
        s += &format!("-A {c} -p IPv4 --ip-src {ip} -j RETURN\n");
    }
    s += &format!("-A {c} -p IPv4 -j DROP\n");
    for allowed in ["::/128", "fe80::/10"] {
        s += &format!("-A {c} -p IPv6 --ip6-src {allowed} -j RETURN\n");
    }
    for ip in ips.iter().filter(|i| i.is_ipv6()) {
        s += &format!("-A {c} -p IPv6 --ip6-src {ip} -j RETURN\n");
    }
    s += &format!("-A {c} -p IPv6 -j DROP\n");
    for chain in ["REEF-BIN", "REEF-BFWD"] {
        s += &format!("-A {chain} -i {iface} -j {c}\n");
    }
    s + "COMMIT\n"
}

fn eb_restore(script: &str, context: &str) -> Result<()> {
    run(
        Command::new("ebtables-nft-restore").arg("--noflush"),
        Some(script),
        "ebtables-nft-restore",
        context,
    )
    .map(|_| ())
}

/// Reef's bridge-layer rules (`-A REEF-B... ...`) and chains, from `ebtables-nft-save`.
fn eb_state() -> Result<(BTreeSet<String>, Vec<String>)> {
    let out = run(
        &mut Command::new("ebtables-nft-save"),
        None,
        "ebtables-nft-save",
        "read the bridge guard",
    )?;
    let mut table = "";
    let (mut chains, mut rules) = (BTreeSet::new(), Vec::new());
    for line in out.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = if t.trim() == "filter" { "filter" } else { "" };
        } else if table == "filter" {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                chains.insert(name.to_string());
            } else if line.starts_with("-A ") && line.contains("REEF-B") {
                rules.push(line.to_string());
            }
        }
    }
    Ok((chains, rules))
}

/// Applies `script`; when that fails (the base chains are missing), creates them and
/// tries once more.
fn eb_add(script: &str, context: &str) -> Result<()> {
    if eb_restore(script, context).is_ok() {
        return Ok(());
    }
    let _lock = super::lock::Lock::take()?;
    let (chains, rules) = eb_state()?;
    let mut base = String::from("*filter\n");
    for (builtin, chain) in EB_BASE {
        if !chains.contains(chain) {
            base += &format!(":{chain} RETURN\n");
        }
        if !rules
            .iter()
            .any(|r| *r == format!("-A {builtin} -j {chain}"))
        {
            base += &format!("-I {builtin} 1 -j {chain}\n");
        }
    }
    eb_restore(&(base + "COMMIT\n"), "create the bridge guard chains")?;
    eb_restore(script, context)
}

/// Deletes the bridge-layer rules naming `ifaces` (all, or only the holds' DROPs) and, for
/// all, their pods' chains. Nothing when ebtables-nft cannot be read: then nothing was
/// ever added through it.
fn eb_forget(ifaces: &[String], holds_only: bool) -> Result<()> {
    let Ok((chains, rules)) = eb_state() else {
        return Ok(());
    };
    let mut s = String::from("*filter\n");
    let mut any = false;
    for iface in ifaces {
        let c = pod_chain(iface);
        let gone = !holds_only && chains.contains(&c);
        if gone {
            s += &format!(":{c} RETURN\n");
        }
        for r in &rules {
            let names = names_iface(r, iface);
            if names && (!holds_only || r.ends_with("-j DROP")) {
                s += &format!("-D {}\n", &r[3..]);
                any = true;
            }
        }
        if gone {
            s += &format!("-X {c}\n");
            any = true;
        }
    }
    if !any {
        return Ok(());
    }
    eb_restore(&(s + "COMMIT\n"), "remove the pods' bridge guard")
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
    let mut eb = String::from("*filter\n");
    eb += &format!("-A REEF-BIN -i {iface} -j DROP\n");
    eb += &format!("-A REEF-BFWD -i {iface} -j DROP\n");
    eb += &format!("-A REEF-BFWD -o {iface} -j DROP\n");
    eb += &format!("-A REEF-BOUT -o {iface} -j DROP\n");
    eb_add(&(eb + "COMMIT\n"), "hold the new pod")?;
    Ok(true)
}

/// Releases held pods (their policy is in place); missing holds are fine.
pub(crate) fn release(_fw: &mut Iptables, ifaces: &[String]) -> Result<()> {
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
    eb_forget(ifaces, true)
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
    eb_forget(&[iface.to_string()], false)
}

/// Removes every member and bridge-layer rule of `ifaces`, read back from the kernel (GC,
/// and a DEL that no longer knows the pod's addresses).
pub(crate) fn forget_ifaces(_fw: &mut Iptables, ifaces: &[String]) -> Result<()> {
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
    eb_forget(ifaces, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ipset_and_ebtables() {
        let b = BridgeIsolation {
            name: "reef-bridge-x".into(),
            isolated: true,
        };
        assert!(marker(&b, true).len() < ipset::NAME_MAX);
        assert_ne!(marker(&b, true), marker(&b, false));
        assert!(pod_chain("reef0123456789a").len() <= 31);
    }

    #[test]
    fn bridge_pods_allow_only_their_sources() {
        let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let s = bridge_pod_script("reefa", &ips);
        let c = pod_chain("reefa");
        assert!(s.contains(&format!("-A {c} -p IPv4 --ip-src 10.0.0.5 -j RETURN\n")));
        assert!(s.contains(&format!("-A {c} -p IPv6 --ip6-src fd00::5 -j RETURN\n")));
        assert!(s.contains(&format!("-A REEF-BFWD -i reefa -j {c}\n")));
        assert!(s.find("IPv4 -j DROP") > s.find("--ip-src 10.0.0.5"));
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
