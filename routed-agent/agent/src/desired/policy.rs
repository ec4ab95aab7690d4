//! Network policy for this node's pods, as nftables objects ([`PolicyRuleset`]): the
//! semantics are reef-policy's (the same functions `reefctl trace` explains with), this is
//! only their layout.
//!
//! Only policies that select a pod of this node are rendered, so a node's table (and the
//! work of every change) grows with the policies of its own pods, not the cluster's. Each
//! rendered policy has one chain per direction and one peer set per rule; each isolated
//! local pod has a chain per isolated direction that jumps to its policies' chains and then
//! drops, and an entry in that direction's dispatch map.

use crate::view::ClusterView;
use reef_firewall::{
    PeerMatch, PeerSet, PeerSide, PolicyRuleSpec, PolicyRuleset, PolicyVerdict, Proto,
};
use reef_policy::Policies;
use reef_schema::policy::{L4Protocol, NetworkPolicy, PolicyType};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The desired policy state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub ruleset: PolicyRuleset,
    /// Host interfaces of this node's pods (held pods among them are released once the
    /// ruleset is in place).
    pub local_ifaces: BTreeSet<String>,
    /// Per policy id: its allow counter and the drop counters of the pods it isolates here.
    pub counters: BTreeMap<String, (String, Vec<String>)>,
}

fn dir_tag(dir: PolicyType) -> &'static str {
    match dir {
        PolicyType::Ingress => "in",
        PolicyType::Egress => "eg",
    }
}

pub fn policy_chain(p: &NetworkPolicy, dir: PolicyType) -> String {
    fit(format!("pol-{}.{}.{}", dir_tag(dir), p.namespace, p.name))
}

/// The longest name used as is: nf_tables names hold 255 bytes, and a namespace (63) and a
/// policy name (253) together can exceed that.
const NAME_MAX: usize = 200;

/// `name`, or when too long its head and a hash of the whole (still unique in practice).
fn fit(name: String) -> String {
    if name.len() <= NAME_MAX {
        return name;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut head = NAME_MAX - 17;
    while !name.is_char_boundary(head) {
        head -= 1;
    }
    format!("{}~{h:016x}", &name[..head])
}

/// An address as a name part (IPv6's colons are not allowed in nft names).
fn addr_name(ip: IpAddr) -> String {
    ip.to_string().replace(':', "_")
}

pub fn pod_chain(ip: IpAddr, dir: PolicyType) -> String {
    match dir {
        PolicyType::Ingress => format!("to-pod.{}", addr_name(ip)),
        PolicyType::Egress => format!("from-pod.{}", addr_name(ip)),
    }
}

fn allow_counter(p: &NetworkPolicy) -> String {
    fit(format!("allow.{}.{}", p.namespace, p.name))
}

fn drop_counter(ip: IpAddr, dir: PolicyType) -> String {
    format!("drop-{}.{}", dir_tag(dir), addr_name(ip))
}

fn proto(p: L4Protocol) -> Proto {
    match p {
        L4Protocol::Tcp => Proto::Tcp,
        L4Protocol::Udp => Proto::Udp,
        L4Protocol::Sctp => Proto::Sctp,
    }
}

/// The desired policy state of node `me`.
pub fn compute(view: &ClusterView, me: &str) -> Desired {
    let mut d = Desired::default();
    let local: Vec<_> = view.workloads.values().filter(|w| *w.node == *me).collect();
    d.local_ifaces = local
        .iter()
        .filter_map(|w| w.iface.as_deref().map(str::to_string))
        .collect();
    if view.policies.is_empty() {
        return d;
    }
    let pols = Policies::new(view.policies.values(), &view.namespaces);
    d.ruleset.namespaces = view
        .policies
        .values()
        .map(|p| p.namespace.clone())
        .collect();
    let mut rendered: BTreeSet<(String, PolicyType)> = BTreeSet::new();
    for w in &local {
        for dir in [PolicyType::Ingress, PolicyType::Egress] {
            let selecting = pols.selecting(*w, dir);
            if selecting.is_empty() {
                continue;
            }
            for ip in w.ips.iter() {
                let chain = pod_chain(*ip, dir);
                let drop = drop_counter(*ip, dir);
                let mut rules: Vec<PolicyRuleSpec> = selecting
                    .iter()
                    .map(|p| PolicyRuleSpec {
                        peers: None,
                        proto: None,
                        ports: None,
                        counter: None,
                        verdict: PolicyVerdict::Jump(policy_chain(p, dir)),
                    })
                    .collect();
                rules.push(PolicyRuleSpec {
                    peers: None,
                    proto: None,
                    ports: None,
                    counter: Some(drop.clone()),
                    verdict: PolicyVerdict::Drop,
                });
                d.ruleset.chains.insert(chain.clone(), rules);
                d.ruleset.counters.insert(drop.clone());
                match dir {
                    PolicyType::Ingress => d.ruleset.ingress.insert(*ip, chain),
                    PolicyType::Egress => d.ruleset.egress.insert(*ip, chain),
                };
                for p in &selecting {
                    d.counters
                        .entry(p.id())
                        .or_insert_with(|| (allow_counter(p), Vec::new()))
                        .1
                        .push(drop.clone());
                }
            }
            for p in selecting {
                rendered.insert((p.id(), dir));
            }
        }
    }
    for (id, dir) in rendered {
        let Some(p) = view.policies.get(&id) else {
            continue;
        };
        render_policy(&pols, view, p, dir, &mut d.ruleset);
    }
    d
}

/// One policy's chain for `dir` and its rules' peer sets.
fn render_policy(
    pols: &Policies,
    view: &ClusterView,
    p: &NetworkPolicy,
    dir: PolicyType,
    out: &mut PolicyRuleset,
) {
    let side = match dir {
        PolicyType::Ingress => PeerSide::Source,
        PolicyType::Egress => PeerSide::Destination,
    };
    let counter = allow_counter(p);
    out.counters.insert(counter.clone());
    let mut rules = Vec::new();
    for (i, rule) in p.rules(dir).iter().enumerate() {
        let peers = pols.rule_peers(p, rule, view.workloads.values());
        // The rule's peers per family: none (every address), or a set of each family it
        // has addresses of (always IPv4, so a pod joining it changes elements only).
        let mut matches: Vec<Option<PeerMatch>> = Vec::new();
        if peers.any {
            matches.push(None);
        } else {
            let name = fit(format!("{}.{}.{}.{i}", dir_tag(dir), p.namespace, p.name));
            out.sets
                .insert(name.clone(), PeerSet::V4(peers.ranges_v4()));
            matches.push(Some(PeerMatch {
                side,
                set: name.clone(),
                v6: false,
            }));
            let v6 = peers.ranges_v6();
            if !v6.is_empty() {
                let name6 = format!("{name}.6");
                out.sets.insert(name6.clone(), PeerSet::V6(v6));
                matches.push(Some(PeerMatch {
                    side,
                    set: name6,
                    v6: true,
                }));
            }
        }
        for m in matches {
            let spec = |proto: Option<Proto>, ports: Option<(u16, u16)>| PolicyRuleSpec {
                peers: m.clone(),
                proto,
                ports,
                counter: Some(counter.clone()),
                verdict: PolicyVerdict::Accept,
            };
            if rule.ports.is_empty() {
                rules.push(spec(None, None));
            }
            for port in &rule.ports {
                let range = port.port.map(|a| (a, port.end_port.unwrap_or(a)));
                rules.push(spec(Some(proto(port.protocol)), range));
            }
        }
    }
    out.chains.insert(policy_chain(p, dir), rules);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(policies: &[&str]) -> ClusterView {
        let mut kvs: Vec<(String, Vec<u8>)> = vec![
            (
                "/reef/workloads/a/c1/eth0".into(),
                br#"{"node":"a","network":"n","containerId":"c1","ifname":"eth0","ips":["10.0.0.1"],"namespace":"x","labels":{"pod":"a"},"hostInterface":"rf1"}"#.to_vec(),
            ),
            (
                "/reef/workloads/b/c2/eth0".into(),
                br#"{"node":"b","network":"n","containerId":"c2","ifname":"eth0","ips":["10.0.1.1"],"namespace":"x","labels":{"pod":"b"},"hostInterface":"rf2"}"#.to_vec(),
            ),
        ];
        for (i, p) in policies.iter().enumerate() {
            kvs.push((format!("/reef/policies/x/p{i}"), p.as_bytes().to_vec()));
        }
        ClusterView::from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }

    const ALLOW_B: &str = r#"{"namespace":"x","name":"p0","podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Ingress"],"ingress":[{"peers":[{"podSelector":{"matchLabels":{"pod":"b"}}}],"ports":[{"protocol":"TCP","port":80,"endPort":81}]}]}"#;
    const SELECT_B: &str = r#"{"namespace":"x","name":"p1","podSelector":{"matchLabels":{"pod":"b"}},"policyTypes":["Ingress","Egress"]}"#;

    #[test]
    fn only_policies_of_local_pods_are_rendered() {
        let v = view(&[ALLOW_B, SELECT_B]);
        let d = compute(&v, "a");
        let r = &d.ruleset;
        assert_eq!(
            r.chains.keys().collect::<Vec<_>>(),
            vec!["pol-in.x.p0", "to-pod.10.0.0.1"]
        );
        assert_eq!(
            r.sets["in.x.p0.0"],
            PeerSet::V4(vec![(
                "10.0.1.1".parse().unwrap(),
                "10.0.1.1".parse().unwrap()
            )])
        );
        let rule = &r.chains["pol-in.x.p0"][0];
        assert_eq!(rule.ports, Some((80, 81)));
        assert_eq!(rule.proto, Some(Proto::Tcp));
        assert_eq!(r.ingress.len(), 1);
        assert!(r.egress.is_empty());
        assert_eq!(d.local_ifaces, BTreeSet::from(["rf1".to_string()]));
        assert!(r.namespaces.contains("x"));
        // Node b: its pod is isolated both ways by p1, which has no rules: drop only.
        let d = compute(&v, "b");
        assert_eq!(d.ruleset.chains["from-pod.10.0.1.1"].len(), 2);
        assert!(d.ruleset.chains["pol-eg.x.p1"].is_empty());
        assert_eq!(d.counters["x/p1"].1.len(), 2);
    }

    #[test]
    fn long_names_fit_nf_tables() {
        let long = format!("pol-in.{}.{}", "n".repeat(63), "p".repeat(253));
        let a = fit(long.clone());
        assert_eq!(a.len(), NAME_MAX);
        assert_ne!(a, fit(format!("{long}x")));
        assert_eq!(fit("pol-in.x.p".into()), "pol-in.x.p");
    }

    #[test]
    fn without_policies_nothing_is_rendered() {
        let d = compute(&view(&[]), "a");
        assert_eq!(d.ruleset, PolicyRuleset::default());
        assert_eq!(d.local_ifaces.len(), 1);
    }
}
