use super::*;
use reef_schema::policy::{LabelSelector, PolicyPort};

struct TestPod {
    ns: String,
    labels: BTreeMap<String, String>,
    ips: Vec<IpAddr>,
}

impl Pod for TestPod {
    fn namespace(&self) -> &str {
        &self.ns
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
    fn ips(&self) -> &[IpAddr] {
        &self.ips
    }
}

fn pod(ns: &str, name: &str, ip: &str) -> TestPod {
    TestPod {
        ns: ns.into(),
        labels: BTreeMap::from([("pod".to_string(), name.to_string())]),
        ips: vec![ip.parse().unwrap()],
    }
}

fn sel(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: vec![],
    }
}

fn policy(ns: &str, name: &str, select: LabelSelector, ingress: Vec<PolicyRule>) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: select,
        policy_types: vec![PolicyType::Ingress],
        ingress,
        egress: vec![],
    }
}

fn namespaces() -> BTreeMap<String, Namespace> {
    ["x", "y"]
        .iter()
        .map(|n| {
            let labels = BTreeMap::from([("ns".to_string(), n.to_string())]);
            (n.to_string(), Namespace::new(n, labels))
        })
        .collect()
}

fn r(q: &TestPod) -> Remote<'_, TestPod> {
    Remote {
        ip: q.ips[0],
        pod: Some(q),
    }
}

const TCP80: Option<(L4Protocol, u16)> = Some((L4Protocol::Tcp, 80));

#[test]
fn isolation_and_the_union_of_policies() {
    let ns = namespaces();
    let xa = pod("x", "a", "10.0.0.1");
    let xb = pod("x", "b", "10.0.0.2");
    let ya = pod("y", "a", "10.0.1.1");
    let deny = policy("x", "deny", LabelSelector::default(), vec![]);
    let from_b = policy(
        "x",
        "from-b",
        sel(&[("pod", "a")]),
        vec![PolicyRule {
            peers: vec![Peer {
                pod_selector: Some(sel(&[("pod", "b")])),
                namespace_selector: None,
                ip_block: None,
            }],
            ports: vec![],
        }],
    );
    let p = Policies::new([&deny, &from_b], &ns);
    // y/a is untouched; x/b is isolated by deny alone; x/a is allowed from x/b only.
    assert_eq!(
        p.verdict(&ya, PolicyType::Ingress, &r(&xa), TCP80),
        Verdict::NotIsolated
    );
    assert_eq!(
        p.verdict(&xb, PolicyType::Ingress, &r(&xa), TCP80),
        Verdict::Denied {
            isolated_by: vec!["x/deny".into()]
        }
    );
    assert_eq!(
        p.verdict(&xa, PolicyType::Ingress, &r(&xb), TCP80),
        Verdict::Allowed {
            policy: "x/from-b".into(),
            rule: 0
        }
    );
    // A pod selector alone means the policy's namespace: y/b is not x/b.
    let yb = pod("y", "b", "10.0.1.2");
    assert!(!p.verdict(&xa, PolicyType::Ingress, &r(&yb), TCP80).allows());
    // Egress is not isolated by ingress-only policies.
    assert_eq!(
        p.verdict(&xa, PolicyType::Egress, &r(&ya), TCP80),
        Verdict::NotIsolated
    );
}

#[test]
fn both_selectors_in_one_peer_are_an_and_in_two_peers_an_or() {
    let ns = namespaces();
    let xa = pod("x", "a", "10.0.0.1");
    let yb = pod("y", "b", "10.0.1.2");
    let ya = pod("y", "a", "10.0.1.1");
    let both = Peer {
        pod_selector: Some(sel(&[("pod", "b")])),
        namespace_selector: Some(sel(&[("ns", "y")])),
        ip_block: None,
    };
    let and = policy(
        "x",
        "and",
        LabelSelector::default(),
        vec![PolicyRule {
            peers: vec![both.clone()],
            ports: vec![],
        }],
    );
    let or = policy(
        "x",
        "or",
        LabelSelector::default(),
        vec![PolicyRule {
            peers: vec![
                Peer {
                    namespace_selector: None,
                    ..both.clone()
                },
                Peer {
                    pod_selector: None,
                    ..both
                },
            ],
            ports: vec![],
        }],
    );
    let p = Policies::new([&and], &ns);
    assert!(p.verdict(&xa, PolicyType::Ingress, &r(&yb), TCP80).allows());
    assert!(!p.verdict(&xa, PolicyType::Ingress, &r(&ya), TCP80).allows());
    let p = Policies::new([&or], &ns);
    assert!(p.verdict(&xa, PolicyType::Ingress, &r(&ya), TCP80).allows());
}

#[test]
fn ip_blocks_ports_and_ranges() {
    let ns = namespaces();
    let xa = pod("x", "a", "10.0.0.1");
    let ya = pod("y", "a", "10.0.1.1");
    let yb = pod("y", "b", "10.0.1.2");
    let block = policy(
        "x",
        "block",
        LabelSelector::default(),
        vec![PolicyRule {
            peers: vec![Peer {
                pod_selector: None,
                namespace_selector: None,
                ip_block: Some(IpBlock {
                    cidr: "10.0.1.0/24".parse().unwrap(),
                    except: vec!["10.0.1.2/32".parse().unwrap()],
                }),
            }],
            ports: vec![PolicyPort {
                protocol: L4Protocol::Tcp,
                port: Some(80),
                end_port: Some(81),
            }],
        }],
    );
    let p = Policies::new([&block], &ns);
    assert!(p.verdict(&xa, PolicyType::Ingress, &r(&ya), TCP80).allows());
    assert!(p
        .verdict(
            &xa,
            PolicyType::Ingress,
            &r(&ya),
            Some((L4Protocol::Tcp, 81))
        )
        .allows());
    assert!(!p
        .verdict(
            &xa,
            PolicyType::Ingress,
            &r(&ya),
            Some((L4Protocol::Udp, 80))
        )
        .allows());
    assert!(!p.verdict(&xa, PolicyType::Ingress, &r(&yb), TCP80).allows());
    let peers = p.rule_peers(&block, &block.ingress[0], [&xa, &ya, &yb]);
    assert_eq!(
        peers.ranges_v4(),
        vec![
            ("10.0.1.0".parse().unwrap(), "10.0.1.1".parse().unwrap()),
            ("10.0.1.3".parse().unwrap(), "10.0.1.255".parse().unwrap()),
        ]
    );
}

#[test]
fn peer_ranges_merge_pods_into_blocks() {
    let peers = Peers {
        any: false,
        addrs: ["10.0.0.5", "10.0.0.6", "10.0.2.0", "10.0.1.255"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        blocks: vec![IpBlock {
            cidr: "10.0.1.0/24".parse().unwrap(),
            except: vec![],
        }],
    };
    let got: Vec<String> = peers
        .ranges_v4()
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect();
    assert_eq!(
        got,
        vec![
            "10.0.0.5-10.0.0.5",
            "10.0.0.6-10.0.0.6",
            "10.0.1.0-10.0.1.255",
            "10.0.2.0-10.0.2.0"
        ]
    );
    let all = Peers {
        any: true,
        ..Peers::default()
    };
    assert_eq!(all.ranges_v4().len(), 1);
    let zero = Peers {
        blocks: vec![IpBlock {
            cidr: "0.0.0.0/0".parse().unwrap(),
            except: vec!["10.0.0.0/8".parse().unwrap()],
        }],
        ..Peers::default()
    };
    let got: Vec<String> = zero
        .ranges_v4()
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect();
    assert_eq!(
        got,
        vec!["0.0.0.0-9.255.255.255", "11.0.0.0-255.255.255.255"]
    );
}

#[test]
fn ipv6_ranges_are_their_own() {
    let peers = Peers {
        any: false,
        addrs: ["fd00::5", "10.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        blocks: vec![IpBlock {
            cidr: "fd00:1::/64".parse().unwrap(),
            except: vec!["fd00:1::/65".parse().unwrap()],
        }],
    };
    let got: Vec<String> = peers
        .ranges_v6()
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect();
    assert_eq!(
        got,
        vec![
            "fd00::5-fd00::5",
            "fd00:1:0:0:8000::-fd00:1::ffff:ffff:ffff:ffff"
        ]
    );
    assert_eq!(peers.ranges_v4().len(), 1);
}
