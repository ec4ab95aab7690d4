//! Network policy: Kubernetes `networking.k8s.io/v1 NetworkPolicy` and the `v1 Namespace`
//! labels its `namespaceSelector`s read.
//!
//! ```text
//! /reef/policies/<namespace>/<name>   NetworkPolicy (the spec as applied, policyTypes defaulted)
//! /reef/namespaces/<name>             Namespace: its labels (kubernetes.io/metadata.name always)
//! ```
//! A namespace without a record has the one label Kubernetes always sets,
//! `kubernetes.io/metadata.name=<name>`, so policies can select namespaces nobody applied.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

pub const POLICIES: &str = "/reef/policies/";
pub const NAMESPACES: &str = "/reef/namespaces/";
/// The label Kubernetes puts on every namespace.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn policy_key(namespace: &str, name: &str) -> String {
    format!("{POLICIES}{namespace}/{name}")
}

pub fn namespace_key(name: &str) -> String {
    format!("{NAMESPACES}{name}")
}

/// A label selector (`matchLabels` and `matchExpressions`, ANDed). An empty selector
/// selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn parse(s: &str) -> Option<Operator> {
        Some(match s {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether labels (looked up through `label`) satisfy every term.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| label(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| {
                let value = label(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                    // Kubernetes: NotIn matches a missing key too.
                    Operator::NotIn => !value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// Matches a label map.
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches(|k| labels.get(k).map(String::as_str))
    }
}

impl fmt::Display for LabelSelector {
    /// kubectl's form: `a=b,c in (d,e),!f`; `<all>` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("<all>");
        }
        let mut terms: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            terms.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&terms.join(","))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Ingress => "Ingress",
            PolicyType::Egress => "Egress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl L4Protocol {
    pub fn parse(s: &str) -> Option<L4Protocol> {
        Some(match s {
            "TCP" => L4Protocol::Tcp,
            "UDP" => L4Protocol::Udp,
            "SCTP" => L4Protocol::Sctp,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "TCP",
            L4Protocol::Udp => "UDP",
            L4Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Protocol::Tcp => 6,
            L4Protocol::Udp => 17,
            L4Protocol::Sctp => 132,
        }
    }

    /// nft's name for it.
    pub fn nft(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
            L4Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `ports[]` entry: a protocol and, optionally, a port or a range `port..=endPort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPort {
    pub protocol: L4Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl PolicyPort {
    /// Whether a flow of `proto` to `port` matches.
    pub fn matches(&self, proto: L4Protocol, port: u16) -> bool {
        self.protocol == proto
            && match (self.port, self.end_port) {
                (None, _) => true,
                (Some(p), None) => p == port,
                (Some(p), Some(e)) => (p..=e).contains(&port),
            }
    }
}

impl fmt::Display for PolicyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.end_port) {
            (None, _) => write!(f, "{}", self.protocol),
            (Some(p), None) => write!(f, "{p}/{}", self.protocol),
            (Some(p), Some(e)) => write!(f, "{p}-{e}/{}", self.protocol),
        }
    }
}

/// An `ipBlock`: a CIDR minus some of its sub-ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpBlock {
    pub cidr: IpNetwork,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNetwork>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One `from[]` / `to[]` entry. With both selectors the peer is the pods the pod selector
/// picks in the namespaces the namespace selector picks (AND); with only a pod selector, pods
/// of the policy's own namespace; with only a namespace selector, every pod of those.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// One `ingress[]` / `egress[]` rule: `peers` is its `from` or `to` (empty: every source or
/// destination), `ports` (empty: every port and protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

impl PolicyRule {
    /// Whether the rule's ports admit a flow (`None`: a flow without ports, such as ICMP,
    /// which only a rule without ports admits).
    pub fn admits_port(&self, flow: Option<(L4Protocol, u16)>) -> bool {
        self.ports.is_empty()
            || flow.is_some_and(|(proto, port)| self.ports.iter().any(|p| p.matches(proto, port)))
    }
}

/// A network policy as stored: `policy_types` always explicit (the manifest's, or the
/// Kubernetes default: Ingress, plus Egress when egress rules are present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    pub policy_types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<PolicyRule>,
}

impl NetworkPolicy {
    pub fn key(&self) -> String {
        policy_key(&self.namespace, &self.name)
    }

    /// `<namespace>/<name>`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn has(&self, t: PolicyType) -> bool {
        self.policy_types.contains(&t)
    }

    pub fn rules(&self, t: PolicyType) -> &[PolicyRule] {
        match t {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }

    /// Whether it selects a pod of `namespace` with these labels.
    pub fn selects<'a>(&self, namespace: &str, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.namespace == namespace && self.pod_selector.matches(label)
    }
}

/// A namespace's labels, as applied (`kubernetes.io/metadata.name` always among them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Namespace {
    /// A namespace nobody applied: only the name label.
    pub fn implicit(name: &str) -> Namespace {
        Namespace {
            name: name.to_string(),
            labels: BTreeMap::from([(NAME_LABEL.to_string(), name.to_string())]),
        }
    }

    /// With the name label set, whatever the manifest said.
    pub fn new(name: &str, mut labels: BTreeMap<String, String>) -> Namespace {
        labels.insert(NAME_LABEL.to_string(), name.to_string());
        Namespace {
            name: name.to_string(),
            labels,
        }
    }

    pub fn key(&self) -> String {
        namespace_key(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_operators_follow_kubernetes() {
        let req = |op, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: "pod".into(),
                operator: op,
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        };
        let a = labels(&[("pod", "a")]);
        let none = labels(&[]);
        assert!(req(Operator::In, &["a", "b"]).matches_map(&a));
        assert!(!req(Operator::In, &["b"]).matches_map(&a));
        assert!(!req(Operator::In, &["a"]).matches_map(&none));
        assert!(req(Operator::NotIn, &["b"]).matches_map(&a));
        assert!(req(Operator::NotIn, &["b"]).matches_map(&none));
        assert!(!req(Operator::NotIn, &["a"]).matches_map(&a));
        assert!(req(Operator::Exists, &[]).matches_map(&a));
        assert!(!req(Operator::Exists, &[]).matches_map(&none));
        assert!(req(Operator::DoesNotExist, &[]).matches_map(&none));
        assert!(LabelSelector::default().matches_map(&none));
        assert_eq!(
            req(Operator::In, &["a", "b"]).to_string(),
            "pod in (a,b)".to_string()
        );
    }

    #[test]
    fn ports_and_blocks() {
        let p = PolicyPort {
            protocol: L4Protocol::Tcp,
            port: Some(80),
            end_port: Some(90),
        };
        assert!(p.matches(L4Protocol::Tcp, 85));
        assert!(!p.matches(L4Protocol::Udp, 85));
        assert!(!p.matches(L4Protocol::Tcp, 91));
        let b = IpBlock {
            cidr: "10.0.0.0/16".parse().unwrap(),
            except: vec!["10.0.1.0/24".parse().unwrap()],
        };
        assert!(b.contains("10.0.2.1".parse().unwrap()));
        assert!(!b.contains("10.0.1.1".parse().unwrap()));
        let icmp_rule = PolicyRule {
            peers: vec![],
            ports: vec![p],
        };
        assert!(!icmp_rule.admits_port(None));
        assert!(PolicyRule::default().admits_port(None));
    }

    #[test]
    fn namespaces_always_carry_their_name() {
        let ns = Namespace::new("x", labels(&[("ns", "x"), (NAME_LABEL, "other")]));
        assert_eq!(ns.labels[NAME_LABEL], "x");
        assert_eq!(Namespace::implicit("y").labels[NAME_LABEL], "y");
    }
}
