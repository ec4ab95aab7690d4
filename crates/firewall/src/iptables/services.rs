//! Services (reef-agent) in iptables, in the shape of kube-proxy's iptables mode, with the
//! semantics of the nftables driver (`nftables::services`). IPv4 only, like it: a service
//! port with an IPv6 VIP is counted but programs nothing.
//!
//! ```text
//! *nat
//! -A PREROUTING -j REEF-SERVICES                             (one jump each, first)
//! -A OUTPUT -j REEF-SERVICES
//! -A REEF-SERVICES -d VIP/32 -p tcp -m tcp --dport 80 -j REEF-SVC-<hash>  (ports with endpoints)
//! -A REEF-SERVICES -m addrtype --dst-type LOCAL -j REEF-NODEPORTS          (always last)
//! -A REEF-NODEPORTS -p tcp -m tcp --dport 30080 -j REEF-EXT-<hash>
//! -A REEF-SVC-<hash> -p tcp -m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination EP1
//! -A REEF-SVC-<hash> -p tcp -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination EP2
//! -A REEF-SVC-<hash> -p tcp -j DNAT --to-destination EP3
//!     ClientIP affinity: a `recent --rcheck` jump per endpoint first, then the spread over
//!     REEF-SEP-<hash> chains (one per endpoint: `recent --set`, DNAT)
//! -A REEF-EXT-<hash> -m set ! --match-set reef-svc-vips dst -j MARK --set-xmark 0x4000/0x4000
//!     (Cluster policy only), then the spread over all endpoints (Local: the local ones)
//! -A REEF-POSTROUTING -m mark --mark 0x4000/0x4000 -j REEF-SVCMASQ     (clear bit, masquerade)
//! -A REEF-POSTROUTING -m conntrack --ctstate DNAT -m set --match-set reef-svc-hairpin src,dst,dst -j MASQUERADE
//! -A REEF-POSTROUTING -m set --match-set reef-svc-vips src -m conntrack --ctstate DNAT -j MASQUERADE
//! *filter
//! -A INPUT/FORWARD/OUTPUT -m conntrack --ctstate NEW -j REEF-SVC-FILTER
//! -A REEF-SVC-FILTER  still addressed to a VIP: reject (TCP reset, else ICMP port
//!                     unreachable); an un-DNATed local node port (reef-svc-np-<proto>): same
//! ```
//!
//! Endpoint chains exist only for affinity services: iptables-nft-restore `--noflush`
//! slows down quadratically with the number of chains (10,000 services × 3 chains: 25 s,
//! × 1 chain: 3.5 s), so the common case DNATs from the service's chain itself.
//!
//! Sets (`ipset`, independent of the backend): `reef-svc-vips` (every VIP), `reef-svc-np-tcp`
//! / `-udp` / `-sctp` (node ports; bitmap:port has no protocol, hence one per protocol),
//! `reef-svc-hairpin` (`ep,proto:port,ep` for local endpoints: a pod reaching itself).
//!
//! Affinity uses xt_recent, whose lists hold `ip_list_tot` (module parameter, default 100)
//! clients per endpoint; older clients are forgotten first (kube-proxy has the same bound).
//! An endpoint's list goes with its chain, so clients pinned to an endpoint that left are
//! released by the update that removes it.
//!
//! A full sync reads the kernel (iptables-save, ipset save) and writes the difference in one
//! `iptables-restore --noflush`; an update writes only the changed ports' chains and dispatch
//! rules (`-D`/`-I` lines, the text iptables-save prints), from the picture in memory.

use super::backend::{chain_name, run, Family, Section};
use super::{ipset, Iptables, POSTROUTING};
use crate::conntrack::{self, Flow};
use crate::nfnetlink::NfNetlink;
use crate::rules::{LbEndpoint, Proto, ServiceLb};
use crate::{Result, ServiceKey, ServicesApplied};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

const SERVICES: &str = "REEF-SERVICES";
const NODEPORTS: &str = "REEF-NODEPORTS";
const MASQ: &str = "REEF-SVCMASQ";
const FILTER: &str = "REEF-SVC-FILTER";
/// Per-service chains: prefix and 13 hash digits (`chain_name`).
const SVC: &str = "REEF-SVC-";
const SEP: &str = "REEF-SEP-";
const EXT: &str = "REEF-EXT-";
const HASHED: [&str; 3] = [SVC, SEP, EXT];

/// The packet mark bit that asks REEF-POSTROUTING to masquerade a service flow (Cluster
/// node ports). The portmap driver uses 0x2000 (MASQ_MARK) and 0x1000 (LOCALNET_REPLY_MARK);
/// this is kube-proxy's masquerade bit, which never runs beside Reef's services.
pub const MASQ_MARK: u32 = 0x4000;

const VIPS: &str = "reef-svc-vips";
const HAIRPIN: &str = "reef-svc-hairpin";
const PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

/// Dispatch changes past this many lines rewrite the whole chain instead (one `-D` costs
/// a search of the chain; a rewrite of 10,000 rules costs 0.3 s legacy, 0.8 s nft).
const DELTA_MAX: usize = 256;

fn np_set(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "reef-svc-np-tcp",
        Proto::Udp => "reef-svc-np-udp",
        Proto::Sctp => "reef-svc-np-sctp",
    }
}

/// Every set and its `create` options.
fn set_specs() -> [(&'static str, &'static str); 5] {
    [
        (VIPS, "hash:ip family inet maxelem 262144"),
        (HAIRPIN, "hash:ip,port,ip family inet maxelem 262144"),
        (np_set(Proto::Tcp), "bitmap:port range 0-65535"),
        (np_set(Proto::Udp), "bitmap:port range 0-65535"),
        (np_set(Proto::Sctp), "bitmap:port range 0-65535"),
    ]
}

fn mark() -> String {
    format!("0x{MASQ_MARK:x}/0x{MASQ_MARK:x}")
}

const NODEPORTS_JUMP: &str = "-m addrtype --dst-type LOCAL -j REEF-NODEPORTS";

fn masq_rules() -> Vec<String> {
    // Cleared first: the bit must not leak into routing or another table's rules.
    vec![
        format!("-j MARK --set-xmark 0x0/0x{MASQ_MARK:x}"),
        "-j MASQUERADE".into(),
    ]
}

fn postrouting_rules() -> [String; 3] {
    [
        format!("-m mark --mark {} -j {MASQ}", mark()),
        // A pod that reached itself through a service: its reply would skip the host.
        format!(
            "-m conntrack --ctstate DNAT -m set --match-set {HAIRPIN} src,dst,dst -j MASQUERADE"
        ),
        // A host process's connection to a VIP: the service CIDR is a local route, so its
        // source is the VIP itself, which a remote endpoint would answer to its own node.
        format!("-m set --match-set {VIPS} src -m conntrack --ctstate DNAT -j MASQUERADE"),
    ]
}

fn filter_rules() -> Vec<String> {
    let mut v = vec![
        format!("-p tcp -m set --match-set {VIPS} dst -j REJECT --reject-with tcp-reset"),
        format!("-m set --match-set {VIPS} dst -j REJECT --reject-with icmp-port-unreachable"),
    ];
    for p in PROTOS {
        let with = if p == Proto::Tcp {
            "tcp-reset"
        } else {
            "icmp-port-unreachable"
        };
        v.push(format!(
            "-p {p} -m addrtype --dst-type LOCAL -m conntrack ! --ctstate DNAT -m set --match-set {} dst -j REJECT --reject-with {with}",
            np_set(p)
        ));
    }
    v
}

/// What one service port programs: its own chains, its dispatch rules, its set members.
#[derive(Debug, Default, PartialEq, Eq)]
struct Rendered {
    chains: Vec<(String, Vec<String>)>,
    dispatch: Option<String>,
    nodeport: Option<String>,
    members: Vec<(&'static str, String)>,
}

/// `lb` as programmed: IPv4 endpoints only, one per address and port, in address order (so
/// the rendering, hence the kernel's text, does not depend on the order they came in).
fn normalized(lb: &ServiceLb) -> ServiceLb {
    let mut eps: Vec<LbEndpoint> = Vec::with_capacity(lb.endpoints.len());
    for e in &lb.endpoints {
        if e.ip.is_ipv4() && !eps.iter().any(|x| x.ip == e.ip && x.port == e.port) {
            eps.push(*e);
        }
    }
    eps.sort_by_key(|e| (e.ip, e.port));
    ServiceLb {
        endpoints: eps,
        ..lb.clone()
    }
}

/// `-m statistic` for rule `i` of `n` (none on the last): each rule takes 1/(n-i) of what
/// reaches it, so every endpoint gets 1/n. The text is what iptables-save prints: the
/// kernel keeps the probability as a fraction of 2^31.
fn statistic(i: usize, n: usize) -> String {
    if i + 1 >= n {
        return String::new();
    }
    let scaled = (2147483648.0 / (n - i) as f64).round();
    format!(
        "-m statistic --mode random --probability {:.11} ",
        scaled / 2147483648.0
    )
}

fn dnat(proto: Proto, ip: Ipv4Addr, port: u16) -> String {
    format!("-p {proto} -j DNAT --to-destination {ip}:{port}")
}

fn render(lb: &ServiceLb) -> Rendered {
    let mut r = Rendered::default();
    let IpAddr::V4(vip) = lb.vip else {
        return r;
    };
    let p = lb.proto;
    let (vs, ps) = (vip.to_string(), lb.port.to_string());
    let parts = [vs.as_str(), p.as_str(), ps.as_str()];
    let eps: Vec<(Ipv4Addr, u16, bool)> = lb
        .endpoints
        .iter()
        .filter_map(|e| match e.ip {
            IpAddr::V4(a) => Some((a, e.port, e.local)),
            IpAddr::V6(_) => None,
        })
        .collect();
    r.members.push((VIPS, vs.clone()));
    if !eps.is_empty() {
        let svc = chain_name(SVC, &parts);
        let n = eps.len();
        let mut rules = Vec::with_capacity(n * 2);
        match lb.affinity_timeout {
            Some(t) => {
                let t = t.max(1);
                let seps: Vec<String> = eps
                    .iter()
                    .map(|(ip, port, _)| {
                        chain_name(
                            SEP,
                            &[&vs, p.as_str(), &ps, &ip.to_string(), &port.to_string()],
                        )
                    })
                    .collect();
                // A client seen within T seconds goes back to its endpoint.
                for s in &seps {
                    rules.push(format!(
                        "-m recent --rcheck --seconds {t} --reap --name {s} --mask 255.255.255.255 --rsource -j {s}"
                    ));
                }
                for (i, s) in seps.iter().enumerate() {
                    rules.push(format!("{}-j {s}", statistic(i, n)));
                }
                for (s, (ip, port, _)) in seps.iter().zip(&eps) {
                    r.chains.push((
                        s.clone(),
                        vec![
                            format!("-m recent --set --name {s} --mask 255.255.255.255 --rsource"),
                            dnat(p, *ip, *port),
                        ],
                    ));
                }
            }
            None => {
                for (i, (ip, port, _)) in eps.iter().enumerate() {
                    rules.push(format!(
                        "-p {p} {}-j DNAT --to-destination {ip}:{port}",
                        statistic(i, n)
                    ));
                }
            }
        }
        r.chains.push((svc.clone(), rules));
        r.dispatch = Some(format!(
            "-d {vip}/32 -p {p} -m {p} --dport {} -j {svc}",
            lb.port
        ));
        // Only a pod of this host can reach itself through this host's rules.
        for (ip, port, _) in eps.iter().filter(|e| e.2) {
            r.members.push((HAIRPIN, format!("{ip},{p}:{port},{ip}")));
        }
    }
    if let Some(np) = lb.node_port {
        r.members.push((np_set(p), np.to_string()));
        let np_eps: Vec<&(Ipv4Addr, u16, bool)> =
            eps.iter().filter(|e| e.2 || !lb.node_port_local).collect();
        if !np_eps.is_empty() {
            let ext = chain_name(EXT, &parts);
            let mut rules = Vec::with_capacity(np_eps.len() + 1);
            if !lb.node_port_local {
                // Cluster policy: the endpoint may be on another node, whose reply must come
                // back here. Not for a VIP (a local address) that happens to use the port.
                rules.push(format!(
                    "-m set ! --match-set {VIPS} dst -j MARK --set-xmark {}",
                    mark()
                ));
            }
            for (i, (ip, port, _)) in np_eps.iter().enumerate() {
                rules.push(format!(
                    "-p {p} {}-j DNAT --to-destination {ip}:{port}",
                    statistic(i, np_eps.len())
                ));
            }
            r.chains.push((ext.clone(), rules));
            r.nodeport = Some(format!("-p {p} -m {p} --dport {np} -j {ext}"));
        }
    }
    r
}

fn is_hashed(chain: &str) -> bool {
    HASHED
        .iter()
        .any(|p| chain.len() == p.len() + 13 && chain.starts_with(p))
}

fn declare(s: &mut Section, chain: &str) {
    if !s.declares(chain) {
        s.chain(chain);
    }
}

/// The members of Reef's services sets (absent sets are absent keys), in one `ipset save`.
fn read_sets() -> Result<HashMap<String, HashSet<String>>> {
    let names: HashSet<&str> = set_specs().iter().map(|(n, _)| *n).collect();
    let out = run(
        Command::new("ipset").arg("save"),
        None,
        "ipset",
        "read the services sets",
    )?;
    let mut sets: HashMap<String, HashSet<String>> = HashMap::new();
    for line in out.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("create"), Some(n), _) if names.contains(n) => {
                sets.entry(n.to_string()).or_default();
            }
            (Some("add"), Some(n), Some(m)) if names.contains(n) => {
                sets.entry(n.to_string()).or_default().insert(m.to_string());
            }
            _ => {}
        }
    }
    Ok(sets)
}

/// Whether the shared parts (jumps from built-in chains, REEF-POSTROUTING's rules) need a
/// write: then the sync holds Reef's lock (see `lock`).
fn base_missing(
    nat: &BTreeMap<String, Vec<String>>,
    filter: &BTreeMap<String, Vec<String>>,
) -> bool {
    let jumps = |m: &BTreeMap<String, Vec<String>>, b: &str, c: &str| {
        let j = format!("-j {c}");
        m.get(b).is_some_and(|r| r.iter().any(|r| r.ends_with(&j)))
    };
    !(jumps(nat, "PREROUTING", SERVICES)
        && jumps(nat, "OUTPUT", SERVICES)
        && jumps(nat, "POSTROUTING", POSTROUTING)
        && postrouting_rules()
            .iter()
            .all(|r| nat.get(POSTROUTING).is_some_and(|v| v.contains(r)))
        && ["INPUT", "FORWARD", "OUTPUT"]
            .iter()
            .all(|b| jumps(filter, b, FILTER)))
}

/// Makes the dispatch chain `chain` hold exactly `want` (in any order) followed by `tail`,
/// given the kernel's `have`: `-D` and `-I`/`-A` lines when the change is small, else a
/// rewrite. Returns the number of changes.
fn sync_dispatch(
    have: Option<&Vec<String>>,
    sec: &mut Section,
    chain: &str,
    want: &HashSet<&str>,
    tail: Option<&str>,
) -> usize {
    let rewrite = |sec: &mut Section| {
        declare(sec, chain);
        let mut sorted: Vec<&&str> = want.iter().collect();
        sorted.sort();
        for r in sorted {
            sec.rule(format!("{chain} {r}"));
        }
        if let Some(t) = tail {
            sec.rule(format!("{chain} {t}"));
        }
        1
    };
    let Some(have) = have else {
        return rewrite(sec);
    };
    let body: &[String] = match tail {
        Some(t) => match have.split_last() {
            Some((last, body)) if last == t => body,
            _ => return rewrite(sec),
        },
        None => have,
    };
    let present: HashSet<&str> = body.iter().map(String::as_str).collect();
    if present.len() != body.len() || tail.is_some_and(|t| present.contains(t)) {
        return rewrite(sec);
    }
    let dels: Vec<&str> = present
        .iter()
        .filter(|r| !want.contains(*r))
        .copied()
        .collect();
    let adds: Vec<&str> = want
        .iter()
        .filter(|r| !present.contains(*r))
        .copied()
        .collect();
    let n = dels.len() + adds.len();
    if n > DELTA_MAX {
        return rewrite(sec);
    }
    for d in dels {
        sec.line(format!("-D {chain} {d}"));
    }
    for a in adds {
        sec.line(insert_line(chain, a, tail.is_some()));
    }
    n
}

/// Before the tail (`-I 1`: the order of service rules does not matter) or at the end.
fn insert_line(chain: &str, rule: &str, has_tail: bool) -> String {
    if has_tail {
        format!("-I {chain} 1 {rule}")
    } else {
        format!("-A {chain} {rule}")
    }
}

/// The programmed picture, kept for updates (the agent's driver lives as long as it does).
#[derive(Default)]
pub(crate) struct ServicesState {
    /// Per service port, normalized (see [`normalized`]); re-rendered to undo it.
    programmed: HashMap<ServiceKey, ServiceLb>,
    /// Set members and how many service ports need each.
    members: HashMap<(&'static str, String), u32>,
    /// The kernel was read and took everything since: updates may write differences only.
    in_sync: bool,
}

impl ServicesState {
    /// Makes the kernel exactly `all` (reading it first): changes nothing when it matches.
    pub(crate) fn sync(&mut self, fw: &mut Iptables, all: &[ServiceLb]) -> Result<ServicesApplied> {
        let before = std::mem::take(&mut self.programmed);
        self.in_sync = false;
        self.members.clear();
        for lb in all {
            self.programmed.insert(lb.key(), normalized(lb));
        }
        let mut nat = fw.chains(Family::V4, "nat")?;
        let mut filter = fw.chains(Family::V4, "filter")?;
        // Re-read under the lock when a shared chain is to be written (first sync only).
        let _lock = if base_missing(&nat, &filter) {
            let l = super::lock::Lock::take()?;
            nat = fw.chains(Family::V4, "nat")?;
            filter = fw.chains(Family::V4, "filter")?;
            Some(l)
        } else {
            None
        };
        let sets = read_sets()?;

        let mut n = Section::new("nat");
        let mut f = Section::new("filter");
        let mut changes = 0;
        for b in ["PREROUTING", "OUTPUT"] {
            super::ensure_base_chain(&nat, &mut n, b, SERVICES);
        }
        super::ensure_base_chain(&nat, &mut n, "POSTROUTING", POSTROUTING);
        for b in ["INPUT", "FORWARD", "OUTPUT"] {
            super::ensure_base_chain_matching(
                &filter,
                &mut f,
                b,
                "-m conntrack --ctstate NEW",
                FILTER,
            );
        }
        if !n.is_empty() || !f.is_empty() {
            changes += 1;
        }
        if nat.get(MASQ) != Some(&masq_rules()) {
            declare(&mut n, MASQ);
            for r in masq_rules() {
                n.rule(format!("{MASQ} {r}"));
            }
            changes += 1;
        }
        for r in postrouting_rules() {
            if !nat.get(POSTROUTING).is_some_and(|v| v.contains(&r)) {
                n.rule(format!("{POSTROUTING} {r}"));
                changes += 1;
            }
        }
        if filter.get(FILTER) != Some(&filter_rules()) {
            declare(&mut f, FILTER);
            for r in filter_rules() {
                f.rule(format!("{FILTER} {r}"));
            }
            changes += 1;
        }

        let rendered: Vec<Rendered> = self.programmed.values().map(render).collect();
        let mut chains: HashSet<&str> = HashSet::new();
        let mut dispatch: HashSet<&str> = HashSet::new();
        let mut nodeports: HashSet<&str> = HashSet::new();
        let mut write: Vec<(&str, &Vec<String>)> = Vec::new();
        for r in &rendered {
            for (name, rules) in &r.chains {
                chains.insert(name);
                if nat.get(name) != Some(rules) {
                    write.push((name, rules));
                }
            }
            dispatch.extend(r.dispatch.as_deref());
            nodeports.extend(r.nodeport.as_deref());
            for (set, m) in &r.members {
                *self.members.entry((*set, m.clone())).or_default() += 1;
            }
        }
        // In name order: iptables-nft keeps its chain list sorted, and 10,000 chains
        // declared in random order load 3 times slower (12.9 s against 4.5 s).
        write.sort_unstable_by_key(|(name, _)| *name);
        changes += write.len();
        for (name, rules) in write {
            declare(&mut n, name);
            for rule in rules {
                n.rule(format!("{name} {rule}"));
            }
        }
        changes += sync_dispatch(
            nat.get(SERVICES),
            &mut n,
            SERVICES,
            &dispatch,
            Some(NODEPORTS_JUMP),
        );
        changes += sync_dispatch(nat.get(NODEPORTS), &mut n, NODEPORTS, &nodeports, None);
        for name in nat
            .keys()
            .filter(|c| is_hashed(c) && !chains.contains(c.as_str()))
        {
            n.delete_chain(name);
            changes += 1;
        }

        // Sets: created and filled before the rules that use them, emptied after.
        let mut pre = String::new();
        let mut post = String::new();
        for (name, opts) in set_specs() {
            let have = sets.get(name);
            if have.is_none() {
                pre += &format!("create {name} {opts}\n");
                changes += 1;
            }
            for ((set, m), _) in self.members.iter().filter(|((s, _), _)| *s == name) {
                if !have.is_some_and(|h| h.contains(m)) {
                    pre += &format!("add {set} {m}\n");
                    changes += 1;
                }
            }
            for m in have.into_iter().flatten() {
                if !self.members.contains_key(&(name, m.clone())) {
                    post += &format!("del {name} {m}\n");
                    changes += 1;
                }
            }
        }
        ipset::restore(&pre, "fill the services sets")?;
        fw.restore(Family::V4, &[n, f], "program the services")?;
        ipset::restore(&post, "empty the services sets")?;
        self.in_sync = true;

        let gone: Vec<(ServiceKey, LbEndpoint)> = before
            .iter()
            .flat_map(|(k, old)| crate::rules::removed_endpoints(*k, old, self.programmed.get(k)))
            .collect();
        forget_endpoints(&gone);
        Ok(ServicesApplied {
            changes,
            services: self.programmed.len(),
        })
    }

    /// Applies the changed service ports only (`None`: gone): their chains, dispatch rules
    /// and set members, in one restore. A full sync when the picture may be stale.
    pub(crate) fn update(
        &mut self,
        fw: &mut Iptables,
        changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied> {
        if !self.in_sync {
            let mut target = self.programmed.clone();
            for (k, lb) in changed {
                match lb {
                    Some(lb) => target.insert(*k, lb.clone()),
                    None => target.remove(k),
                };
            }
            let all: Vec<ServiceLb> = target.into_values().collect();
            return self.sync(fw, &all);
        }
        // The last word per port (a port listed twice would write its chains twice).
        let last: BTreeMap<ServiceKey, Option<&ServiceLb>> =
            changed.iter().map(|(k, lb)| (*k, lb.as_ref())).collect();
        let mut n = Section::new("nat");
        let mut changes = 0;
        let mut gone = Vec::new();
        // Each touched member and whether it was present before this update.
        let mut touched: HashMap<(&'static str, String), bool> = HashMap::new();
        for (k, new) in last {
            let new = new.map(normalized);
            let old = self.programmed.get(&k);
            if old == new.as_ref() {
                continue;
            }
            if let Some(old) = old {
                gone.extend(crate::rules::removed_endpoints(k, old, new.as_ref()));
            }
            let ro = old.map(render).unwrap_or_default();
            let rn = new.as_ref().map(render).unwrap_or_default();
            for (name, rules) in &rn.chains {
                if !ro.chains.iter().any(|(c, r)| c == name && r == rules) {
                    declare(&mut n, name);
                    for rule in rules {
                        n.rule(format!("{name} {rule}"));
                    }
                    changes += 1;
                }
            }
            for (name, _) in &ro.chains {
                if !rn.chains.iter().any(|(c, _)| c == name) {
                    n.delete_chain(name);
                    changes += 1;
                }
            }
            for (chain, o, w, tail) in [
                (SERVICES, &ro.dispatch, &rn.dispatch, true),
                (NODEPORTS, &ro.nodeport, &rn.nodeport, false),
            ] {
                if o == w {
                    continue;
                }
                if let Some(o) = o {
                    n.line(format!("-D {chain} {o}"));
                    changes += 1;
                }
                if let Some(w) = w {
                    n.line(insert_line(chain, w, tail));
                    changes += 1;
                }
            }
            // Counted up before down, so a member both renderings hold never drops to 0.
            for m in rn.members {
                let c = self.members.entry(m.clone()).or_default();
                touched.entry(m).or_insert(*c > 0);
                *c += 1;
            }
            for m in ro.members {
                if let Some(c) = self.members.get_mut(&m) {
                    touched.entry(m.clone()).or_insert(*c > 0);
                    *c -= 1;
                    if *c == 0 {
                        self.members.remove(&m);
                    }
                }
            }
            match new {
                Some(lb) => self.programmed.insert(k, lb),
                None => self.programmed.remove(&k),
            };
        }
        let mut pre = String::new();
        let mut post = String::new();
        for ((set, m), was) in &touched {
            match (*was, self.members.contains_key(&(*set, m.clone()))) {
                (false, true) => pre += &format!("add {set} {m}\n"),
                (true, false) => post += &format!("del {set} {m}\n"),
                _ => continue,
            }
            changes += 1;
        }
        // Any failure: the kernel is not what the picture says; the next call re-reads it.
        self.in_sync = false;
        ipset::restore(&pre, "fill the services sets")?;
        fw.restore(Family::V4, &[n], "update the services")?;
        ipset::restore(&post, "empty the services sets")?;
        self.in_sync = true;
        forget_endpoints(&gone);
        Ok(ServicesApplied {
            changes,
            services: self.programmed.len(),
        })
    }

    /// Removes every services chain, jump, rule and set (idempotent).
    pub(crate) fn remove(&mut self, fw: &mut Iptables) -> Result<()> {
        *self = ServicesState::default();
        let _lock = super::lock::Lock::take()?;
        let nat = fw.chains(Family::V4, "nat")?;
        let filter = fw.chains(Family::V4, "filter")?;
        let mut n = Section::new("nat");
        let mut f = Section::new("filter");
        let unjump = |m: &BTreeMap<String, Vec<String>>, s: &mut Section, b: &str, c: &str| {
            let j = format!("-j {c}");
            for r in m.get(b).into_iter().flatten().filter(|r| r.ends_with(&j)) {
                s.line(format!("-D {b} {r}"));
            }
        };
        unjump(&nat, &mut n, "PREROUTING", SERVICES);
        unjump(&nat, &mut n, "OUTPUT", SERVICES);
        for r in postrouting_rules() {
            if nat.get(POSTROUTING).is_some_and(|v| v.contains(&r)) {
                n.line(format!("-D {POSTROUTING} {r}"));
            }
        }
        for c in nat.keys() {
            if is_hashed(c) || [SERVICES, NODEPORTS, MASQ].contains(&c.as_str()) {
                n.delete_chain(c);
            }
        }
        for b in ["INPUT", "FORWARD", "OUTPUT"] {
            unjump(&filter, &mut f, b, FILTER);
        }
        if filter.contains_key(FILTER) {
            f.delete_chain(FILTER);
        }
        fw.restore(Family::V4, &[n, f], "remove the services")?;
        let names: Vec<String> = set_specs().iter().map(|(s, _)| s.to_string()).collect();
        ipset::restore(&ipset::destroy_script(&names), "destroy the services sets")
    }
}

/// After endpoints left: their UDP conntrack entries (a flow would keep reaching the old
/// pod for as long as it sends). Conntrack is netlink whatever the iptables backend. Best
/// effort: the rules are already right for new connections. (Affinity entries go with the
/// endpoint's chain.)
fn forget_endpoints(gone: &[(ServiceKey, LbEndpoint)]) {
    let mut flows: Vec<Flow> = Vec::new();
    for (_, e) in gone
        .iter()
        .filter(|((_, proto, _), _)| *proto == Proto::Udp)
    {
        let f = Flow::ToEndpoint {
            proto: Proto::Udp.number(),
            ip: e.ip,
            port: e.port,
        };
        if !flows.contains(&f) {
            flows.push(f);
        }
    }
    if flows.is_empty() {
        return;
    }
    if let Ok(mut nl) = NfNetlink::open() {
        let _ = conntrack::flush_flows(&mut nl, &flows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(eps: &[(&str, bool)], np: Option<u16>) -> ServiceLb {
        ServiceLb {
            vip: "10.96.0.10".parse().expect("vip"),
            proto: Proto::Tcp,
            port: 80,
            node_port: np,
            endpoints: eps
                .iter()
                .map(|(ip, local)| LbEndpoint {
                    ip: ip.parse().expect("ip"),
                    port: 8080,
                    local: *local,
                })
                .collect(),
            affinity_timeout: None,
            node_port_local: false,
        }
    }

    #[test]
    fn probabilities_read_back_as_iptables_save_prints_them() {
        assert_eq!(
            statistic(0, 3),
            "-m statistic --mode random --probability 0.33333333349 "
        );
        assert_eq!(
            statistic(1, 3),
            "-m statistic --mode random --probability 0.50000000000 "
        );
        assert_eq!(statistic(2, 3), "");
    }

    #[test]
    fn a_service_port_renders_its_chains_rules_and_members() {
        let r = render(&normalized(&lb(
            &[("10.2.0.2", false), ("10.1.0.2", true)],
            Some(30080),
        )));
        assert_eq!(r.chains.len(), 2, "{r:?}");
        let svc = &r.chains[0].1;
        // Address order, whatever the input order.
        assert!(
            svc[0].ends_with("--to-destination 10.1.0.2:8080"),
            "{svc:?}"
        );
        assert!(
            svc[1] == "-p tcp -j DNAT --to-destination 10.2.0.2:8080",
            "{svc:?}"
        );
        assert!(r
            .members
            .contains(&(HAIRPIN, "10.1.0.2,tcp:8080,10.1.0.2".into())));
        assert!(r.members.contains(&(np_set(Proto::Tcp), "30080".into())));
        assert!(r.chains[1].1[0].contains("MARK"));
        // Local policy: local endpoints only, no mark; none local: no chain at all.
        let mut local = lb(&[("10.1.0.2", true), ("10.2.0.2", false)], Some(30080));
        local.node_port_local = true;
        let r = render(&normalized(&local));
        assert_eq!(
            r.chains[1].1,
            vec!["-p tcp -j DNAT --to-destination 10.1.0.2:8080"]
        );
        let mut remote = lb(&[("10.2.0.2", false)], Some(30080));
        remote.node_port_local = true;
        let r = render(&normalized(&remote));
        assert!(r.nodeport.is_none() && r.chains.len() == 1);
        // No endpoints: only the members that make it refuse.
        let r = render(&lb(&[], Some(30080)));
        assert!(r.chains.is_empty() && r.dispatch.is_none());
        assert_eq!(r.members.len(), 2);
        // IPv6: nothing.
        let mut v6 = lb(&[("10.1.0.2", true)], None);
        v6.vip = "fd00::10".parse().expect("vip");
        assert_eq!(render(&v6), Rendered::default());
    }

    #[test]
    fn dispatch_changes_are_lines_when_small_and_a_rewrite_otherwise() {
        let have = vec!["a".to_string(), "b".to_string(), NODEPORTS_JUMP.to_string()];
        let want: HashSet<&str> = ["b", "c"].into_iter().collect();
        let mut s = Section::new("nat");
        assert_eq!(
            sync_dispatch(Some(&have), &mut s, SERVICES, &want, Some(NODEPORTS_JUMP)),
            2
        );
        let text = super::super::backend::payload(&[s]);
        assert!(
            text.contains("-D REEF-SERVICES a\n") && text.contains("-I REEF-SERVICES 1 c\n"),
            "{text}"
        );
        // The tail is not last: rewritten.
        let bad = vec![NODEPORTS_JUMP.to_string(), "b".to_string()];
        let mut s = Section::new("nat");
        assert_eq!(
            sync_dispatch(Some(&bad), &mut s, SERVICES, &want, Some(NODEPORTS_JUMP)),
            1
        );
        assert!(s.declares(SERVICES));
        let mut s = Section::new("nat");
        let same = vec!["b".to_string(), "c".to_string(), NODEPORTS_JUMP.to_string()];
        assert_eq!(
            sync_dispatch(Some(&same), &mut s, SERVICES, &want, Some(NODEPORTS_JUMP)),
            0
        );
        assert!(s.is_empty());
    }
}
