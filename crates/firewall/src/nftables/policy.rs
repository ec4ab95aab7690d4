//! reef-agent's network policy table. Per-packet cost does not grow with the number of
//! policies: one verdict-map lookup per direction picks the pod's chain, which jumps only to
//! the policies selecting that pod, whose rules test named peer sets.
//!
//! ```text
//! table inet reef-policy {
//!   map egress  { type ipv4_addr : verdict; }     # local pod address -> jump from-pod.<ip>
//!   map ingress { type ipv4_addr : verdict; }     # local pod address -> jump to-pod.<ip>
//!   set eg.<ns>.<policy>.<rule>, in.<ns>.<policy>.<rule> { type ipv4_addr; flags interval; }
//!   counter allow.<ns>.<policy>, drop-eg.<ip>, drop-in.<ip>
//!   chain egress-hook  { type filter hook forward priority filter; policy accept;
//!     ct state established,related accept; ip saddr vmap @egress }
//!   chain ingress-hook { type filter hook forward priority filter + 1; policy accept;
//!     ct state established,related accept; ip daddr vmap @ingress }
//!   chain from-pod.<ip> { jump pol-eg.<ns>.<policy> ...; counter name drop-eg.<ip> drop }
//!   chain pol-eg.<ns>.<policy> { ip daddr @eg.<ns>.<policy>.0 tcp dport 80 counter name allow.<ns>.<policy> accept ... }
//! }
//! ```
//! Egress and ingress are two base chains on the forward hook: an `accept` ends only its
//! own base chain, so a flow between two pods of this node must pass the sender's egress
//! and the receiver's ingress. Traffic between a pod and its node (input and output hooks)
//! is not judged, as in Kubernetes.
//!
//! Every change is one `nft -f` transaction: the difference from the last one applied, or,
//! on the agent's first sync, the whole table replaced (packets see the old or the new
//! table, never neither).

use super::run_nft;
use crate::rules::{PeerSide, PolicyRuleSpec, PolicyRuleset, PolicyVerdict};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

pub const TABLE: &str = "reef-policy";

/// The driver's picture of the table (None: unknown, replace it whole next time).
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    picture: Option<PolicyRuleset>,
}

/// An nft identifier: what names are made of is already safe (DNS labels, addresses);
/// anything else becomes `_`.
pub fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn rule_text(r: &PolicyRuleSpec) -> String {
    let mut s = String::new();
    if let Some((side, set)) = &r.peers {
        let field = match side {
            PeerSide::Source => "saddr",
            PeerSide::Destination => "daddr",
        };
        let _ = write!(s, "ip {field} @{} ", ident(set));
    }
    if let Some(p) = r.proto {
        let _ = write!(s, "meta l4proto {} ", p.as_str());
        if let Some((a, b)) = r.ports {
            if a == b {
                let _ = write!(s, "th dport {a} ");
            } else {
                let _ = write!(s, "th dport {a}-{b} ");
            }
        }
    }
    if let Some(c) = &r.counter {
        let _ = write!(s, "counter name {} ", ident(c));
    }
    match &r.verdict {
        PolicyVerdict::Accept => s.push_str("accept"),
        PolicyVerdict::Drop => s.push_str("drop"),
        PolicyVerdict::Jump(c) => {
            let _ = write!(s, "jump {}", ident(c));
        }
    }
    s
}

fn elements(ranges: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Script {
    s: String,
    t: String,
}

impl Script {
    fn new() -> Script {
        Script {
            s: String::new(),
            t: format!("inet {TABLE}"),
        }
    }

    fn line(&mut self, l: std::fmt::Arguments) {
        let _ = self.s.write_fmt(l);
        self.s.push('\n');
    }

    fn add_set(&mut self, name: &str, ranges: &[(Ipv4Addr, Ipv4Addr)]) {
        let t = self.t.clone();
        self.line(format_args!(
            "add set {t} {} {{ type ipv4_addr; flags interval; }}",
            ident(name)
        ));
        self.fill_set(name, ranges);
    }

    fn fill_set(&mut self, name: &str, ranges: &[(Ipv4Addr, Ipv4Addr)]) {
        if !ranges.is_empty() {
            let t = self.t.clone();
            self.line(format_args!(
                "add element {t} {} {{ {} }}",
                ident(name),
                elements(ranges)
            ));
        }
    }

    fn rules(&mut self, chain: &str, rules: &[PolicyRuleSpec]) {
        let t = self.t.clone();
        for r in rules {
            self.line(format_args!(
                "add rule {t} {} {}",
                ident(chain),
                rule_text(r)
            ));
        }
    }

    fn map_add(&mut self, map: &str, ip: Ipv4Addr, chain: &str) {
        let t = self.t.clone();
        self.line(format_args!(
            "add element {t} {map} {{ {ip} : jump {} }}",
            ident(chain)
        ));
    }

    fn map_del(&mut self, map: &str, ip: Ipv4Addr) {
        let t = self.t.clone();
        self.line(format_args!("delete element {t} {map} {{ {ip} }}"));
    }
}

/// The script that replaces the table with `r` in one transaction.
pub fn full_script(r: &PolicyRuleset) -> String {
    let mut sc = Script::new();
    let t = sc.t.clone();
    sc.line(format_args!("add table {t}"));
    sc.line(format_args!("delete table {t}"));
    sc.line(format_args!("add table {t}"));
    for map in ["egress", "ingress"] {
        sc.line(format_args!(
            "add map {t} {map} {{ type ipv4_addr : verdict; }}"
        ));
    }
    for (name, ranges) in &r.sets {
        sc.add_set(name, ranges);
    }
    for c in &r.counters {
        sc.line(format_args!("add counter {t} {}", ident(c)));
    }
    for name in r.chains.keys() {
        sc.line(format_args!("add chain {t} {}", ident(name)));
    }
    for (name, rules) in &r.chains {
        sc.rules(name, rules);
    }
    for (hook, prio, field, map) in [
        ("egress-hook", "filter", "saddr", "egress"),
        ("ingress-hook", "filter + 1", "daddr", "ingress"),
    ] {
        sc.line(format_args!(
            "add chain {t} {hook} {{ type filter hook forward priority {prio}; policy accept; }}"
        ));
        sc.line(format_args!(
            "add rule {t} {hook} ct state established,related accept"
        ));
        sc.line(format_args!("add rule {t} {hook} ip {field} vmap @{map}"));
    }
    for (ip, chain) in &r.egress {
        sc.map_add("egress", *ip, chain);
    }
    for (ip, chain) in &r.ingress {
        sc.map_add("ingress", *ip, chain);
    }
    sc.s
}

/// The script that turns `old` into `new` (None when they are equal).
pub fn diff_script(old: &PolicyRuleset, new: &PolicyRuleset) -> Option<String> {
    if old == new {
        return None;
    }
    let mut sc = Script::new();
    let t = sc.t.clone();
    for (name, ranges) in &new.sets {
        match old.sets.get(name) {
            None => sc.add_set(name, ranges),
            Some(o) if o != ranges => {
                sc.line(format_args!("flush set {t} {}", ident(name)));
                sc.fill_set(name, ranges);
            }
            Some(_) => {}
        }
    }
    for c in new.counters.difference(&old.counters) {
        sc.line(format_args!("add counter {t} {}", ident(c)));
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            sc.line(format_args!("add chain {t} {}", ident(name)));
        }
    }
    // Dispatch entries that go or change first, so the chains they name can be replaced.
    for (map, o, n) in [
        ("egress", &old.egress, &new.egress),
        ("ingress", &old.ingress, &new.ingress),
    ] {
        for (ip, chain) in o {
            if n.get(ip) != Some(chain) {
                sc.map_del(map, *ip);
            }
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            None => sc.rules(name, rules),
            Some(o) if o != rules => {
                sc.line(format_args!("flush chain {t} {}", ident(name)));
                sc.rules(name, rules);
            }
            Some(_) => {}
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            sc.line(format_args!("flush chain {t} {}", ident(name)));
        }
    }
    for (map, o, n) in [
        ("egress", &old.egress, &new.egress),
        ("ingress", &old.ingress, &new.ingress),
    ] {
        for (ip, chain) in n {
            if o.get(ip) != Some(chain) {
                sc.map_add(map, *ip, chain);
            }
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            sc.line(format_args!("delete chain {t} {}", ident(name)));
        }
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            sc.line(format_args!("delete set {t} {}", ident(name)));
        }
    }
    for c in old.counters.difference(&new.counters) {
        sc.line(format_args!("delete counter {t} {}", ident(c)));
    }
    Some(sc.s)
}

impl PolicyState {
    /// Makes the table `desired`: the difference from the last applied picture, or the whole
    /// table when there is none or `full` asks for it. Whether anything was sent.
    pub(crate) fn sync(&mut self, desired: &PolicyRuleset, full: bool) -> Result<bool> {
        let script = match (&self.picture, full) {
            (Some(old), false) => match diff_script(old, desired) {
                Some(s) => s,
                None => return Ok(false),
            },
            _ => full_script(desired),
        };
        // On failure the kernel kept the last table; replace it whole next time.
        self.picture = None;
        run_nft(&script, "program network policy")?;
        self.picture = Some(desired.clone());
        Ok(true)
    }

    pub(crate) fn forget(&mut self) {
        self.picture = None;
    }
}

/// Every named counter of the table: name -> packets (empty without the table).
pub fn counters() -> Result<BTreeMap<String, u64>> {
    let out = match run_nft_args(&["-j", "list", "counters", "table", "inet", TABLE]) {
        Ok(o) => o,
        Err(Error::Nft { .. }) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Nft {
        context: "read policy counters".into(),
        stderr: e.to_string(),
    })?;
    let mut m = BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        if let (Some(name), Some(p)) = (c["name"].as_str(), c["packets"].as_u64()) {
            m.insert(name.to_string(), p);
        }
    }
    Ok(m)
}

fn run_nft_args(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .map_err(super::io("run nft"))?;
    if !out.status.success() {
        return Err(Error::Nft {
            context: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the table (idempotent).
pub fn remove() -> Result<()> {
    run_nft(
        &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        "remove the policy table",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Proto;

    fn ruleset(port: u16) -> PolicyRuleset {
        let mut r = PolicyRuleset::default();
        r.sets.insert(
            "in.x.p.0".into(),
            vec![("10.0.0.1".parse().unwrap(), "10.0.0.3".parse().unwrap())],
        );
        r.counters.insert("allow.x.p".into());
        r.chains.insert(
            "pol-in.x.p".into(),
            vec![PolicyRuleSpec {
                peers: Some((PeerSide::Source, "in.x.p.0".into())),
                proto: Some(Proto::Tcp),
                ports: Some((port, port)),
                counter: Some("allow.x.p".into()),
                verdict: PolicyVerdict::Accept,
            }],
        );
        r.chains.insert(
            "to-pod.10.0.0.9".into(),
            vec![
                PolicyRuleSpec {
                    peers: None,
                    proto: None,
                    ports: None,
                    counter: None,
                    verdict: PolicyVerdict::Jump("pol-in.x.p".into()),
                },
                PolicyRuleSpec {
                    peers: None,
                    proto: None,
                    ports: None,
                    counter: None,
                    verdict: PolicyVerdict::Drop,
                },
            ],
        );
        r.ingress
            .insert("10.0.0.9".parse().unwrap(), "to-pod.10.0.0.9".into());
        r
    }

    #[test]
    fn rules_render_as_nft_reads_them() {
        let r = ruleset(80);
        let s = full_script(&r);
        assert!(s.contains(
            "add rule inet reef-policy pol-in.x.p ip saddr @in.x.p.0 meta l4proto tcp th dport 80 counter name allow.x.p accept"
        ));
        assert!(
            s.contains("add element inet reef-policy ingress { 10.0.0.9 : jump to-pod.10.0.0.9 }")
        );
        assert!(s.contains("add element inet reef-policy in.x.p.0 { 10.0.0.1-10.0.0.3 }"));
    }

    #[test]
    fn a_diff_touches_only_what_changed() {
        let old = ruleset(80);
        assert_eq!(diff_script(&old, &old), None);
        let new = ruleset(81);
        let s = diff_script(&old, &new).unwrap();
        assert_eq!(
            s.lines().collect::<Vec<_>>(),
            vec![
                "flush chain inet reef-policy pol-in.x.p",
                "add rule inet reef-policy pol-in.x.p ip saddr @in.x.p.0 meta l4proto tcp th dport 81 counter name allow.x.p accept",
            ]
        );
        let gone = diff_script(&old, &PolicyRuleset::default()).unwrap();
        let del_elem = gone.find("delete element").unwrap();
        let del_chain = gone.find("delete chain").unwrap();
        let del_set = gone.find("delete set").unwrap();
        assert!(del_elem < del_chain && del_chain < del_set);
    }
}
