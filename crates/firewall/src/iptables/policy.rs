//! Network policy in iptables (the nftables driver's `policy`, same ruleset): peer sets are
//! `hash:net` ipsets (`reef-ps-<hash>`, ranges as `a-b`), every ruleset chain is a chain
//! `REEF-PC-<hash>` in both families' filter tables (rules on one family's peer set only in
//! that family's), and dispatch is by the local pod's address:
//!
//! ```text
//! REEF-FORWARD -j REEF-POLICY       (after REEF-GUARD, see guard.rs)
//! REEF-POLICY:  ctstate RELATED,ESTABLISHED RETURN; -j REEF-P-EG; clear MARK_ACCEPT;
//!               -j REEF-P-IN; clear MARK_ACCEPT
//! REEF-P-EG:    -s <pod> -g REEF-PC-<from-pod chain>     (one rule per local pod address)
//! REEF-P-IN:    -d <pod> -g REEF-PC-<to-pod chain>
//! REEF-PC-..:   <match> -j REEF-PC-<policy>; -m mark --mark MARK_ACCEPT -j RETURN
//!               <match> -m comment --comment "reef-counter NAME" -j REEF-P-ACCEPT; (same RETURN)
//! REEF-P-ACCEPT: -j MARK --set-xmark MARK_ACCEPT; -j RETURN
//! ```
//! nft's `accept` ends one base chain only, and a flow between two local pods must pass the
//! sender's egress and the receiver's ingress; in iptables both directions share FORWARD
//! and an ACCEPT would skip the ingress half and the host's later rules. So an accept is a
//! mark that unwinds the nested chains with RETURNs; REEF-POLICY clears it and returns to
//! FORWARD. A drop is a DROP. Counters are the packet counts of the rules commented
//! `reef-counter NAME`, summed over both families.
//!
//! Dispatch is linear in the node's pod addresses (iptables has no verdict maps; one rule
//! per local pod, as kube-router does). Each sync is one `ipset restore` of the new and
//! changed sets (changed ones swapped in atomically), one `iptables-restore --noflush` per
//! family (atomic per table), then one `ipset restore` destroying the sets that left.

use super::backend::{chain_name, comment, Family, Section};
use super::guard::POLICY;
use super::{ipset, Iptables};
use crate::rules::{PeerSet, PeerSide, PolicyRuleSpec, PolicyRuleset, PolicyVerdict};
use crate::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

const EGRESS: &str = "REEF-P-EG";
const INGRESS: &str = "REEF-P-IN";
const ACCEPT: &str = "REEF-P-ACCEPT";
const CHAIN_PREFIX: &str = "REEF-PC-";
const SET_PREFIX: &str = "reef-ps-";
const COUNTER_TAG: &str = "reef-counter ";
/// The skb mark bit of "accepted so far" (kube-proxy uses 0x4000 and 0x8000, Calico the
/// upper 16 bits); cleared before the packet leaves REEF-POLICY.
const MARK_ACCEPT: &str = "0x80000/0x80000";

/// The driver's picture of the policy (None: unknown, replace it whole next time).
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    picture: Option<PolicyRuleset>,
}

fn chain(name: &str) -> String {
    chain_name(CHAIN_PREFIX, &[name])
}

fn set_name(name: &str) -> String {
    chain_name(SET_PREFIX, &[name])
}

fn set_family(s: &PeerSet) -> Family {
    match s {
        PeerSet::V4(_) => Family::V4,
        PeerSet::V6(_) => Family::V6,
    }
}

fn members(s: &PeerSet) -> BTreeSet<String> {
    fn each<A: std::fmt::Display + PartialEq>(r: &[(A, A)]) -> BTreeSet<String> {
        r.iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect()
    }
    match s {
        PeerSet::V4(r) => each(r),
        PeerSet::V6(r) => each(r),
    }
}

fn set_script(name: &str, s: &PeerSet) -> String {
    let opts = format!("hash:net family {}", set_family(s).ipset());
    ipset::replace_script(&set_name(name), &opts, &members(s))
}

/// The rule's lines for `family` (none when its peer set is the other family's).
fn rule_lines(c: &str, r: &PolicyRuleSpec, family: Family) -> Vec<String> {
    let mut m = String::new();
    if let Some(p) = &r.peers {
        if p.v6 != (family == Family::V6) {
            return Vec::new();
        }
        let dir = match p.side {
            PeerSide::Source => "src",
            PeerSide::Destination => "dst",
        };
        m += &format!(" -m set --match-set {} {dir}", set_name(&p.set));
    }
    if let Some(p) = r.proto {
        m += &format!(" -p {p} -m {p}");
        match r.ports {
            Some((a, b)) if a == b => m += &format!(" --dport {a}"),
            Some((a, b)) => m += &format!(" --dport {a}:{b}"),
            None => {}
        }
    }
    if let Some(name) = &r.counter {
        m += &format!(" {}", comment(&format!("{COUNTER_TAG}{name}")));
    }
    let unwind = format!("{c} -m mark --mark {MARK_ACCEPT} -j RETURN");
    match &r.verdict {
        PolicyVerdict::Drop => vec![format!("{c}{m} -j DROP")],
        PolicyVerdict::Accept => vec![format!("{c}{m} -j {ACCEPT}"), unwind],
        PolicyVerdict::Jump(to) => vec![format!("{c}{m} -j {}", chain(to)), unwind],
    }
}

fn write_chain(sec: &mut Section, name: &str, rules: &[PolicyRuleSpec], family: Family) {
    let c = chain(name);
    sec.chain(&c);
    for r in rules {
        for l in rule_lines(&c, r, family) {
            sec.rule(l);
        }
    }
}

fn write_dispatch(sec: &mut Section, r: &PolicyRuleset, family: Family) {
    for (top, map, flag) in [(EGRESS, &r.egress, "-s"), (INGRESS, &r.ingress, "-d")] {
        sec.chain(top);
        for (ip, to) in map.iter().filter(|(ip, _)| Family::of(ip) == family) {
            sec.rule(format!("{top} {flag} {} -g {}", host(ip), chain(to)));
        }
    }
}

fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// The fixed chains: the top chain and the accept chain.
fn write_fixed(sec: &mut Section) {
    sec.chain(POLICY);
    let clear = format!("{POLICY} -j MARK --set-xmark 0x0/{}", mark_mask());
    sec.rule(format!(
        "{POLICY} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    ));
    sec.rule(format!("{POLICY} -j {EGRESS}"));
    sec.rule(clear.clone());
    sec.rule(format!("{POLICY} -j {INGRESS}"));
    sec.rule(clear);
    sec.chain(ACCEPT);
    sec.rule(format!("{ACCEPT} -j MARK --set-xmark {MARK_ACCEPT}"));
    sec.rule(format!("{ACCEPT} -j RETURN"));
}

fn mark_mask() -> &'static str {
    MARK_ACCEPT.split_once('/').map_or(MARK_ACCEPT, |(_, m)| m)
}

impl PolicyState {
    /// Makes the policy `desired`: the difference from the last applied picture, or all of
    /// it when there is none or `full` asks for it. Whether anything was sent.
    pub(crate) fn sync(
        &mut self,
        fw: &mut Iptables,
        desired: &PolicyRuleset,
        full: bool,
    ) -> Result<bool> {
        let old = match (self.picture.take(), full) {
            (Some(old), false) if old == *desired => {
                self.picture = Some(old);
                return Ok(false);
            }
            (Some(old), false) => Some(old),
            _ => None,
        };
        // On failure the picture stays unknown: the next sync replaces everything.
        if old.is_none() {
            super::guard::ensure(fw)?;
        }
        let mut sets = String::new();
        for (name, s) in &desired.sets {
            if old.as_ref().and_then(|o| o.sets.get(name)) != Some(s) {
                sets += &set_script(name, s);
            }
        }
        ipset::restore(&sets, "install the policy peer sets")?;
        let _lock = super::lock::Lock::take()?;
        for family in [Family::V4, Family::V6] {
            if !super::has_tables(fw, family)? {
                continue;
            }
            let mut sec = Section::new("filter");
            match &old {
                None => {
                    let existing = fw.chains(family, "filter")?;
                    write_fixed(&mut sec);
                    write_dispatch(&mut sec, desired, family);
                    let wanted: BTreeSet<String> =
                        desired.chains.keys().map(|n| chain(n)).collect();
                    for (name, rules) in &desired.chains {
                        write_chain(&mut sec, name, rules, family);
                    }
                    for stale in existing.keys() {
                        if stale.starts_with(CHAIN_PREFIX) && !wanted.contains(stale) {
                            sec.delete_chain(stale);
                        }
                    }
                }
                Some(o) => {
                    if o.egress != desired.egress || o.ingress != desired.ingress {
                        write_dispatch(&mut sec, desired, family);
                    }
                    for (name, rules) in &desired.chains {
                        if o.chains.get(name) != Some(rules) {
                            write_chain(&mut sec, name, rules, family);
                        }
                    }
                    for name in o.chains.keys() {
                        if !desired.chains.contains_key(name) {
                            sec.delete_chain(&chain(name));
                        }
                    }
                }
            }
            fw.restore(family, &[sec], "program network policy")?;
        }
        let stale: Vec<String> = match &old {
            None => ipset::names()?
                .into_iter()
                .filter(|n| n.starts_with(SET_PREFIX))
                .filter(|n| !desired.sets.keys().any(|k| set_name(k) == *n))
                .collect(),
            Some(o) => o
                .sets
                .keys()
                .filter(|k| !desired.sets.contains_key(*k))
                .map(|k| set_name(k))
                .collect(),
        };
        ipset::restore(&ipset::destroy_script(&stale), "destroy old peer sets")?;
        self.picture = Some(desired.clone());
        Ok(true)
    }

    /// Empties REEF-POLICY (the guard's chain jumps to it), deletes every other policy
    /// chain and set (idempotent).
    pub(crate) fn remove(&mut self, fw: &mut Iptables) -> Result<()> {
        self.picture = None;
        let _lock = super::lock::Lock::take()?;
        for family in [Family::V4, Family::V6] {
            if !super::has_tables(fw, family)? {
                continue;
            }
            let existing = fw.chains(family, "filter")?;
            let mut sec = Section::new("filter");
            if existing.contains_key(POLICY) {
                sec.chain(POLICY);
            }
            for c in existing.keys() {
                if c.starts_with(CHAIN_PREFIX) || [EGRESS, INGRESS, ACCEPT].contains(&c.as_str()) {
                    sec.delete_chain(c);
                }
            }
            fw.restore(family, &[sec], "remove network policy")?;
        }
        let sets: Vec<String> = ipset::names()?
            .into_iter()
            .filter(|n| n.starts_with(SET_PREFIX))
            .collect();
        ipset::restore(&ipset::destroy_script(&sets), "destroy the peer sets")
    }
}

/// Every named counter: name -> packets, summed over the rules carrying it in both
/// families (the picture's counters that no rule carries read 0).
pub(crate) fn counters(fw: &mut Iptables) -> Result<BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, u64> = fw
        .policy
        .picture
        .iter()
        .flat_map(|p| p.counters.iter().map(|c| (c.clone(), 0)))
        .collect();
    for family in [Family::V4, Family::V6] {
        if !super::has_tables(fw, family)? {
            continue;
        }
        let listing = fw
            .backend()?
            .iptables(family, &["-t", "filter", "-v", "-S"])?;
        for (name, packets) in listing.lines().filter_map(counted) {
            *out.entry(name).or_default() += packets;
        }
    }
    Ok(out)
}

/// A `-S -v` line's counter name and packets (`... --comment "reef-counter N" ... -c P B`).
fn counted(line: &str) -> Option<(String, u64)> {
    let start = line.find(COUNTER_TAG)? + COUNTER_TAG.len();
    let name = line[start..].split('"').next()?.trim().to_string();
    let (_, tail) = line.rsplit_once(" -c ")?;
    let packets = tail.split_whitespace().next()?.parse().ok()?;
    Some((name, packets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{PeerMatch, Proto};

    #[test]
    fn rules_render_with_marks_and_counters() {
        let r = PolicyRuleSpec {
            peers: Some(PeerMatch {
                side: PeerSide::Source,
                set: "in.x.p.0".into(),
                v6: false,
            }),
            proto: Some(Proto::Tcp),
            ports: Some((80, 90)),
            counter: Some("allow.x.p".into()),
            verdict: PolicyVerdict::Accept,
        };
        let l = rule_lines("C", &r, Family::V4);
        assert_eq!(
            l[0],
            format!(
                "C -m set --match-set {} src -p tcp -m tcp --dport 80:90 -m comment --comment \"reef-counter allow.x.p\" -j REEF-P-ACCEPT",
                set_name("in.x.p.0")
            )
        );
        assert_eq!(l[1], "C -m mark --mark 0x80000/0x80000 -j RETURN");
        assert!(rule_lines("C", &r, Family::V6).is_empty());
    }

    #[test]
    fn counters_parse_from_verbose_listings() {
        let l = "-A REEF-PC-X -m comment --comment \"reef-counter allow.x.p\" -j REEF-P-ACCEPT -c 7 420";
        assert_eq!(counted(l), Some(("allow.x.p".into(), 7)));
        assert_eq!(counted("-A X -j DROP -c 1 2"), None);
        let v6: PeerSet = PeerSet::V6(vec![(
            "fd00::1".parse().unwrap(),
            "fd00::9".parse().unwrap(),
        )]);
        assert!(set_script("s", &v6).contains("fd00::1-fd00::9"));
        assert!(set_script("s", &v6).contains("family inet6"));
    }
}
