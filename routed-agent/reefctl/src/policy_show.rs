//! Text and JSON for `policy ls/show`, `namespace ls/label` and the policy and namespace
//! lines of `apply` / `delete` (kubectl's shapes: one line per object changed, tables with
//! upper-case headers).

use crate::policies::{ClusterState, PodRef};
use crate::services::Change;
use reef_policy::{Peers, Pod};
use reef_schema::policy::{IpBlock, Namespace, NetworkPolicy, Peer, PolicyRule, PolicyType};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub fn policy_applied(p: &NetworkPolicy, change: Change) -> (String, Value) {
    (
        format!(
            "networkpolicy/{} {} ({})\n",
            p.name,
            change.as_str(),
            p.namespace
        ),
        json!({
            "kind": "NetworkPolicy", "namespace": p.namespace, "name": p.name,
            "result": change.as_str(), "policy": p,
        }),
    )
}

pub fn namespace_applied(ns: &Namespace, change: Change) -> (String, Value) {
    (
        format!("namespace/{} {}\n", ns.name, change.as_str()),
        json!({
            "kind": "Namespace", "name": ns.name, "result": change.as_str(),
            "labels": ns.labels,
        }),
    )
}

pub fn policy_deleted(namespace: &str, name: &str) -> (String, Value) {
    (
        format!("networkpolicy/{name} deleted ({namespace}/{name})\n"),
        json!({"kind": "NetworkPolicy", "namespace": namespace, "name": name, "result": "deleted"}),
    )
}

pub fn namespace_deleted(name: &str) -> (String, Value) {
    (
        format!(
            "namespace/{name} deleted (its record only: it keeps its policies and now has just \
             the label {}={name})\n",
            reef_schema::policy::NAME_LABEL
        ),
        json!({"kind": "Namespace", "name": name, "result": "deleted"}),
    )
}

pub fn labeled(ns: &Namespace, changed: bool) -> (String, Value) {
    (
        format!(
            "namespace/{} {}\n",
            ns.name,
            if changed { "labeled" } else { "not labeled" }
        ),
        json!({"name": ns.name, "labels": ns.labels, "changed": changed}),
    )
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn types_text(p: &NetworkPolicy) -> String {
    p.policy_types
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn namespace_list(state: &ClusterState) -> (String, Value) {
    let mut text = format!(
        "{:<24} {:<8} {:>5} {:>8}  {}\n",
        "NAME", "RECORD", "PODS", "POLICIES", "LABELS"
    );
    let mut rows = Vec::new();
    let pods = state.pods();
    for name in state.namespace_names() {
        let ns = state.namespace(&name);
        let applied = state.namespaces.contains_key(&name);
        let pod_count = pods.iter().filter(|p| p.namespace() == name).count();
        let policy_count = state
            .policies
            .iter()
            .filter(|p| p.namespace == name)
            .count();
        text.push_str(&format!(
            "{name:<24} {:<8} {pod_count:>5} {policy_count:>8}  {}\n",
            if applied { "applied" } else { "implicit" },
            labels_text(&ns.labels)
        ));
        rows.push(json!({
            "name": name, "applied": applied, "labels": ns.labels,
            "pods": pod_count, "policies": policy_count,
        }));
    }
    (text, Value::Array(rows))
}

/// `namespace`: `None` for every namespace.
pub fn policy_list(state: &ClusterState, namespace: Option<&str>) -> (String, Value) {
    let mut text = format!(
        "{:<16} {:<28} {:<32} {}\n",
        "NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES"
    );
    let mut rows = Vec::new();
    for p in state
        .policies
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
    {
        let selector = p.pod_selector.to_string();
        text.push_str(&format!(
            "{:<16} {:<28} {:<32} {}\n",
            p.namespace,
            p.name,
            selector,
            types_text(p)
        ));
        rows.push(json!({
            "namespace": p.namespace, "name": p.name, "podSelector": selector,
            "policyTypes": p.policy_types, "policy": p,
        }));
    }
    (text, Value::Array(rows))
}

fn block_text(b: &IpBlock) -> String {
    if b.except.is_empty() {
        b.cidr.to_string()
    } else {
        let except: Vec<String> = b.except.iter().map(ToString::to_string).collect();
        format!("{} except {}", b.cidr, except.join(", "))
    }
}

/// One peer in words: which pods of which namespaces, or which addresses.
pub fn peer_text(policy: &NetworkPolicy, peer: &Peer) -> String {
    if let Some(b) = &peer.ip_block {
        return format!("addresses {}", block_text(b));
    }
    match (&peer.pod_selector, &peer.namespace_selector) {
        (Some(pods), Some(ns)) => format!("pods {pods} in namespaces {ns}"),
        (Some(pods), None) => format!("pods {pods} in namespace {}", policy.namespace),
        (None, Some(ns)) => format!("every pod in namespaces {ns}"),
        (None, None) => "nobody".into(),
    }
}

/// What a rule's peers hold now, in words, with the pod owning each address.
fn resolved_text(peers: &Peers, owners: &BTreeMap<IpAddr, String>) -> String {
    if peers.any {
        return "every address".into();
    }
    let mut parts: Vec<String> = peers
        .addrs
        .iter()
        .map(|ip| match owners.get(ip) {
            Some(pod) => format!("{ip} ({pod})"),
            None => ip.to_string(),
        })
        .collect();
    parts.extend(peers.blocks.iter().map(block_text));
    if parts.is_empty() {
        "nobody (no pod matches now)".into()
    } else {
        parts.join(", ")
    }
}

fn resolved_json(peers: &Peers, owners: &BTreeMap<IpAddr, String>) -> Value {
    json!({
        "any": peers.any,
        "addresses": peers.addrs.iter().map(|ip| json!({"ip": ip, "pod": owners.get(ip)})).collect::<Vec<_>>(),
        "blocks": peers.blocks,
    })
}

fn rule_section(
    state: &ClusterState,
    pods: &[PodRef<'_>],
    owners: &BTreeMap<IpAddr, String>,
    p: &NetworkPolicy,
    dir: PolicyType,
    text: &mut String,
) -> Value {
    let (peers_word, where_word) = match dir {
        PolicyType::Ingress => ("from", "in"),
        PolicyType::Egress => ("to", "out"),
    };
    if !p.has(dir) {
        text.push_str(&format!(
            "{}: not affected (policyTypes has no {})\n",
            dir.as_str(),
            dir.as_str()
        ));
        return json!({"affected": false, "rules": []});
    }
    let rules = p.rules(dir);
    if rules.is_empty() {
        text.push_str(&format!(
            "{}: no rules: nothing gets {where_word} (the selected pods are isolated)\n",
            dir.as_str()
        ));
        return json!({"affected": true, "rules": []});
    }
    text.push_str(&format!(
        "{}: the selected pods are isolated; these rules let traffic {where_word}\n",
        dir.as_str()
    ));
    let policies = state.policies();
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let resolved = policies.rule_peers(p, rule, pods);
        text.push_str(&format!("  rule {i}\n"));
        let peers: Vec<String> = rule.peers.iter().map(|peer| peer_text(p, peer)).collect();
        if peers.is_empty() {
            text.push_str(&format!(
                "    {peers_word}: anyone (no {peers_word} list)\n"
            ));
        } else {
            text.push_str(&format!("    {peers_word}:\n"));
            for peer in &peers {
                text.push_str(&format!("      - {peer}\n"));
            }
        }
        text.push_str(&format!(
            "    peers now: {}\n",
            resolved_text(&resolved, owners)
        ));
        text.push_str(&format!("    ports: {}\n", ports_text(rule)));
        out.push(json!({
            "rule": i,
            "peers": peers,
            "resolved": resolved_json(&resolved, owners),
            "ports": rule.ports,
        }));
    }
    json!({"affected": true, "rules": out})
}

pub fn ports_text(rule: &PolicyRule) -> String {
    if rule.ports.is_empty() {
        "every port and protocol".into()
    } else {
        rule.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn policy_show(state: &ClusterState, p: &NetworkPolicy) -> (String, Value) {
    let pods = state.pods();
    let owners: BTreeMap<IpAddr, String> = pods
        .iter()
        .flat_map(|pod| pod.ips().iter().map(move |ip| (*ip, pod.id())))
        .collect();
    let mut text = format!(
        "Name:          {}\nNamespace:     {}\nPod selector:  {}\nPolicy types:  {}\n",
        p.name,
        p.namespace,
        p.pod_selector,
        types_text(p)
    );
    let selected: Vec<&PodRef<'_>> = pods
        .iter()
        .filter(|pod| p.selects(pod.namespace(), |k| pod.label(k)))
        .collect();
    text.push_str(&format!("Selected pods: {}\n", selected.len()));
    if !selected.is_empty() {
        text.push_str(&format!("  {:<32} {:<16} {}\n", "POD", "NODE", "ADDRESSES"));
    }
    let mut selected_json = Vec::new();
    for pod in &selected {
        let ips: Vec<String> = pod.ips().iter().map(ToString::to_string).collect();
        text.push_str(&format!(
            "  {:<32} {:<16} {}\n",
            pod.id(),
            pod.0.node,
            ips.join(",")
        ));
        selected_json.push(json!({"pod": pod.id(), "node": pod.0.node, "ips": ips}));
    }
    let ingress = rule_section(state, &pods, &owners, p, PolicyType::Ingress, &mut text);
    let egress = rule_section(state, &pods, &owners, p, PolicyType::Egress, &mut text);
    let (total, by_node) = state.counters(&p.id());
    text.push_str(&format!(
        "Packets:       {} allowed, {} dropped (summed over {} live agents reporting it)\n",
        total.allowed,
        total.dropped,
        by_node.len()
    ));
    let value = json!({
        "policy": p,
        "selectedPods": selected_json,
        "ingress": ingress,
        "egress": egress,
        "counters": {"allowed": total.allowed, "dropped": total.dropped, "byNode": by_node},
    });
    (text, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        let kvs: Vec<(String, Vec<u8>)> = vec![
            (
                "/reef/policies/x/web".into(),
                br#"{"namespace":"x","name":"web","podSelector":{"matchLabels":{"pod":"a"}},
                     "policyTypes":["Ingress"],
                     "ingress":[{"peers":[{"podSelector":{"matchLabels":{"pod":"b"}}},
                                          {"ipBlock":{"cidr":"192.0.2.0/24","except":["192.0.2.128/25"]}}],
                                 "ports":[{"protocol":"TCP","port":80}]},
                                {}]}"#
                    .to_vec(),
            ),
            (
                "/reef/agents/n1".into(),
                br#"{"node":"n1","pid":1,"mode":"routed","started":0,"updated":0,"routes":0,
                     "policyCounters":{"x/web":{"allowed":5,"dropped":2}}}"#
                    .to_vec(),
            ),
        ]
        .into_iter()
        .chain(
            [("n1", "a", "x", "10.0.0.2"), ("n2", "b", "x", "10.0.1.2"), ("n2", "b", "y", "10.0.1.3")]
                .iter()
                .map(|(node, pod, ns, ip)| {
                    (
                        format!("/reef/workloads/{node}/{ns}-{pod}/eth0"),
                        serde_json::to_vec(&json!({"node": node, "network": "n",
                            "containerId": format!("{ns}-{pod}"), "ifname": "eth0", "ips": [ip],
                            "namespace": ns, "name": pod, "labels": {"pod": pod}}))
                        .unwrap_or_default(),
                    )
                }),
        )
        .collect();
        ClusterState::from_kvs(kvs.iter().map(|(k, v)| (k.clone(), v.as_slice())))
    }

    #[test]
    fn show_resolves_pods_peers_and_counters() {
        let s = state();
        let (text, value) = policy_show(&s, &s.policies[0]);
        assert_eq!(value["selectedPods"][0]["pod"], "x/a", "{value}");
        assert_eq!(value["selectedPods"][0]["node"], "n1");
        assert_eq!(value["selectedPods"].as_array().map(Vec::len), Some(1));
        let rule0 = &value["ingress"]["rules"][0];
        assert_eq!(
            rule0["resolved"]["addresses"][0]["ip"], "10.0.1.2",
            "{value}"
        );
        assert_eq!(rule0["resolved"]["addresses"][0]["pod"], "x/b");
        assert_eq!(
            rule0["resolved"]["addresses"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(value["ingress"]["rules"][1]["resolved"]["any"], true);
        assert_eq!(value["egress"]["affected"], false);
        assert_eq!(value["counters"]["allowed"], 5);
        assert_eq!(value["counters"]["dropped"], 2);
        for needle in [
            "pods pod=b in namespace x",
            "addresses 192.0.2.0/24 except 192.0.2.128/25",
            "peers now: 10.0.1.2 (x/b), 192.0.2.0/24 except 192.0.2.128/25",
            "ports: 80/TCP",
            "from: anyone",
            "Egress: not affected",
            "5 allowed, 2 dropped",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        let (list, _) = policy_list(&s, Some("x"));
        assert!(
            list.contains("x                web                          pod=a"),
            "{list}"
        );
        assert_eq!(policy_list(&s, Some("y")).1, json!([]));
        let (ns, rows) = namespace_list(&s);
        assert!(ns.contains("implicit"), "{ns}");
        assert_eq!(rows[0]["name"], "x");
        assert_eq!(rows[0]["pods"], 2);
        assert_eq!(rows[0]["policies"], 1);
    }
}
