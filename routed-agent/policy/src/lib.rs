//! Kubernetes NetworkPolicy semantics, once, for everything that needs them: reef-agent
//! renders them into the data plane, `reefctl trace` and `reefctl policy show` explain them.
//! Both read the same functions, so what trace says is what the rules do.
//!
//! - A pod selected by any policy of a direction (`policyTypes`) is isolated in that
//!   direction; pods no policy selects are untouched.
//! - What an isolated pod may do is the union of the rules of every policy selecting it.
//! - A rule admits a remote end if one of its peers does (an empty list admits everyone) and
//!   one of its ports does (an empty list admits every port and protocol).
//! - A peer with a pod selector and a namespace selector is their AND; a pod selector alone
//!   means the policy's namespace; an `ipBlock` matches any address, pods' included (as
//!   Calico does and the upstream e2e tests expect).
//!
//! Replies of allowed connections and traffic between a pod and its own node are not
//! judged (the data plane accepts established flows first and filters only forwarded
//! traffic).

use ipnetwork::IpNetwork;
use reef_schema::policy::{
    IpBlock, L4Protocol, Namespace, NetworkPolicy, Peer, PolicyRule, PolicyType, NAME_LABEL,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What policy needs of a pod.
pub trait Pod {
    fn namespace(&self) -> &str;
    fn label(&self, key: &str) -> Option<&str>;
    fn ips(&self) -> &[IpAddr];
}

/// The far end of a flow, as seen from the pod being judged: its address, and the pod that
/// holds it, if any.
#[derive(Debug, Clone, Copy)]
pub struct Remote<'a, P> {
    pub ip: IpAddr,
    pub pod: Option<&'a P>,
}

/// The verdict of one direction at one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "camelCase")]
pub enum Verdict {
    /// No policy of this direction selects the pod.
    NotIsolated,
    /// The first rule (in policy order, then rule order) that admits the flow.
    #[serde(rename_all = "camelCase")]
    Allowed { policy: String, rule: usize },
    /// Isolated by these policies, none of whose rules admits the flow.
    #[serde(rename_all = "camelCase")]
    Denied { isolated_by: Vec<String> },
}

impl Verdict {
    pub fn allows(&self) -> bool {
        !matches!(self, Verdict::Denied { .. })
    }
}

/// The cluster's policies and namespaces, indexed for judging.
pub struct Policies<'a> {
    /// Sorted by `<namespace>/<name>`.
    policies: Vec<&'a NetworkPolicy>,
    namespaces: &'a BTreeMap<String, Namespace>,
}

impl<'a> Policies<'a> {
    pub fn new(
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        namespaces: &'a BTreeMap<String, Namespace>,
    ) -> Policies<'a> {
        let mut policies: Vec<&NetworkPolicy> = policies.into_iter().collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Policies {
            policies,
            namespaces,
        }
    }

    pub fn all(&self) -> &[&'a NetworkPolicy] {
        &self.policies
    }

    /// A namespace's label; a namespace nobody applied has only its name label.
    pub fn namespace_label<'s>(&'s self, namespace: &'s str, key: &str) -> Option<&'s str> {
        match self.namespaces.get(namespace) {
            Some(ns) => ns.labels.get(key).map(String::as_str),
            None => (key == NAME_LABEL).then_some(namespace),
        }
    }

    /// The policies of direction `dir` that select `pod`, in order.
    pub fn selecting<P: Pod>(&self, pod: &P, dir: PolicyType) -> Vec<&'a NetworkPolicy> {
        self.policies
            .iter()
            .copied()
            .filter(|p| p.has(dir) && p.selects(pod.namespace(), |k| pod.label(k)))
            .collect()
    }

    /// Whether the selector part of `peer` (of `policy`) picks `pod`; an `ipBlock` peer
    /// picks no pod by selector.
    pub fn peer_selects<P: Pod>(&self, policy: &NetworkPolicy, peer: &Peer, pod: &P) -> bool {
        if peer.ip_block.is_some() {
            return false;
        }
        let namespace_ok = match &peer.namespace_selector {
            Some(sel) => sel.matches(|k| self.namespace_label(pod.namespace(), k)),
            None => pod.namespace() == policy.namespace,
        };
        let pod_ok = match &peer.pod_selector {
            Some(sel) => sel.matches(|k| pod.label(k)),
            None => true,
        };
        namespace_ok && pod_ok
    }

    /// Whether `peer` admits the remote end.
    pub fn peer_admits<P: Pod>(
        &self,
        policy: &NetworkPolicy,
        peer: &Peer,
        remote: &Remote<'_, P>,
    ) -> bool {
        match &peer.ip_block {
            Some(block) => block.contains(remote.ip),
            None => remote
                .pod
                .is_some_and(|pod| self.peer_selects(policy, peer, pod)),
        }
    }

    pub fn rule_admits<P: Pod>(
        &self,
        policy: &NetworkPolicy,
        rule: &PolicyRule,
        remote: &Remote<'_, P>,
        flow: Option<(L4Protocol, u16)>,
    ) -> bool {
        rule.admits_port(flow)
            && (rule.peers.is_empty()
                || rule
                    .peers
                    .iter()
                    .any(|peer| self.peer_admits(policy, peer, remote)))
    }

    /// The verdict at `local` for traffic in direction `dir` (Ingress: from `remote`;
    /// Egress: to `remote`) of `flow` (protocol and destination port; `None` for ICMP).
    pub fn verdict<P: Pod>(
        &self,
        local: &P,
        dir: PolicyType,
        remote: &Remote<'_, P>,
        flow: Option<(L4Protocol, u16)>,
    ) -> Verdict {
        let selecting = self.selecting(local, dir);
        if selecting.is_empty() {
            return Verdict::NotIsolated;
        }
        for p in &selecting {
            for (i, rule) in p.rules(dir).iter().enumerate() {
                if self.rule_admits(p, rule, remote, flow) {
                    return Verdict::Allowed {
                        policy: p.id(),
                        rule: i,
                    };
                }
            }
        }
        Verdict::Denied {
            isolated_by: selecting.iter().map(|p| p.id()).collect(),
        }
    }

    /// Everything one rule admits, resolved against `pods` now: what the data plane's peer
    /// set for it holds.
    pub fn rule_peers<'p, P: Pod + 'p>(
        &self,
        policy: &NetworkPolicy,
        rule: &PolicyRule,
        pods: impl IntoIterator<Item = &'p P>,
    ) -> Peers {
        if rule.peers.is_empty() {
            return Peers {
                any: true,
                ..Peers::default()
            };
        }
        let mut out = Peers::default();
        for peer in &rule.peers {
            if let Some(b) = &peer.ip_block {
                out.blocks.push(b.clone());
            }
        }
        let selector_peers: Vec<&Peer> =
            rule.peers.iter().filter(|p| p.ip_block.is_none()).collect();
        if !selector_peers.is_empty() {
            for pod in pods {
                if selector_peers
                    .iter()
                    .any(|peer| self.peer_selects(policy, peer, pod))
                {
                    out.addrs.extend(pod.ips().iter().copied());
                }
            }
        }
        out
    }
}

/// The remote addresses one rule admits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    /// Every address (an empty `from`/`to`).
    pub any: bool,
    /// Pods picked by selectors.
    pub addrs: BTreeSet<IpAddr>,
    pub blocks: Vec<IpBlock>,
}

impl Peers {
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.any || self.addrs.contains(&ip) || self.blocks.iter().any(|b| b.contains(ip))
    }

    /// The IPv4 addresses admitted, as disjoint inclusive ranges in ascending order (what an
    /// nftables interval set holds): blocks minus their exceptions, and the pods outside
    /// them.
    pub fn ranges_v4(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        self.ranges(false)
            .into_iter()
            .map(|(a, b)| (Ipv4Addr::from(a as u32), Ipv4Addr::from(b as u32)))
            .collect()
    }

    /// The same for IPv6.
    pub fn ranges_v6(&self) -> Vec<(Ipv6Addr, Ipv6Addr)> {
        self.ranges(true)
            .into_iter()
            .map(|(a, b)| (Ipv6Addr::from(a), Ipv6Addr::from(b)))
            .collect()
    }

    /// One family's ranges as integers (IPv4 in the low 32 bits).
    fn ranges(&self, v6: bool) -> Vec<(u128, u128)> {
        let bits: u32 = if v6 { 128 } else { 32 };
        let max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        if self.any {
            return vec![(0, max)];
        }
        let of = |n: &IpNetwork| -> Option<(u128, u128)> {
            let (ip, prefix) = match (n, v6) {
                (IpNetwork::V4(n), false) => (u128::from(u32::from(n.network())), n.prefix()),
                (IpNetwork::V6(n), true) => (u128::from(n.network()), n.prefix()),
                _ => return None,
            };
            let host = bits - u32::from(prefix);
            let size = if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            Some((ip, ip | size))
        };
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for b in &self.blocks {
            let Some(whole) = of(&b.cidr) else { continue };
            let mut parts = vec![whole];
            for e in b.except.iter().filter_map(of) {
                parts = parts.into_iter().flat_map(|p| subtract(p, e)).collect();
            }
            ranges.extend(parts);
        }
        for ip in &self.addrs {
            match (ip, v6) {
                (IpAddr::V4(a), false) => {
                    let n = u128::from(u32::from(*a));
                    ranges.push((n, n));
                }
                (IpAddr::V6(a), true) => {
                    let n = u128::from(*a);
                    ranges.push((n, n));
                }
                _ => {}
            }
        }
        merge(ranges)
    }
}

fn subtract((a, b): (u128, u128), (lo, hi): (u128, u128)) -> Vec<(u128, u128)> {
    if hi < a || lo > b {
        return vec![(a, b)];
    }
    let mut out = Vec::new();
    if lo > a {
        out.push((a, lo - 1));
    }
    if hi < b {
        out.push((hi + 1, b));
    }
    out
}

fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            // Overlaps only: adjacent pods stay separate elements, so a pod's address is an
            // element of its own (what a notification or `nft get element` shows).
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
