use super::*;
use reefctl::cli::{parse_end, parse_flow};
use serde_json::json;

const POLICY_NS: &str = "x";

/// Three nodes (n1 and n2 on 198.18.1.0/24, n3 on 198.18.2.0/24), pods x/a (n1), x/b (n2,
/// app=web), x/c (n3, app=web), y/d (n1), a service x/web 10.96.0.10:80 -> 8080, a node port
/// service x/np 30080 -> 8080 (both selecting app=web), and `extra` records.
fn cluster(mode: &str, extra: &[(String, Value)]) -> ClusterState {
    let mut kvs: Vec<(String, Value)> = vec![
        (
            "/reef/config".into(),
            json!({"pools": [{"cidr": "10.244.0.0/16", "blockPrefix": 24, "natOutgoing": true}],
                   "mode": mode, "vni": 7}),
        ),
        (
            "/reef/blocks/10.244.1.0-24".into(),
            json!({"cidr": "10.244.1.0/24", "node": "n1"}),
        ),
        (
            "/reef/services/x/web".into(),
            json!({"namespace": "x", "name": "web", "type": "ClusterIP", "clusterIp": "10.96.0.10",
                   "selector": {"app": "web"},
                   "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080}]}),
        ),
        (
            "/reef/services/x/np".into(),
            json!({"namespace": "x", "name": "np", "type": "NodePort", "clusterIp": "10.96.0.11",
                   "selector": {"app": "web"},
                   "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
        ),
    ];
    for (i, (node, addr)) in [
        ("n1", "198.18.1.2/24"),
        ("n2", "198.18.1.3/24"),
        ("n3", "198.18.2.2/24"),
    ]
    .iter()
    .enumerate()
    {
        kvs.push((
            format!("/reef/nodes/{node}"),
            json!({"name": node, "address": addr, "vtepMac": format!("02:00:00:00:00:0{}", i + 1),
                   "vtepIp": format!("10.244.{}.0", i + 1)}),
        ));
        kvs.push((
            format!("/reef/agents/{node}"),
            json!({"node": node, "pid": 1, "mode": mode, "started": 0, "updated": 0, "routes": 0}),
        ));
    }
    for (node, ns, name, app, ip) in [
        ("n1", "x", "a", "client", "10.244.1.2"),
        ("n2", "x", "b", "web", "10.244.2.2"),
        ("n3", "x", "c", "web", "10.244.3.2"),
        ("n1", "y", "d", "client", "10.244.1.3"),
    ] {
        kvs.push((
            format!("/reef/workloads/{node}/{ns}-{name}/eth0"),
            json!({"node": node, "network": "net", "containerId": format!("{ns}-{name}"),
                   "ifname": "eth0", "ips": [ip], "namespace": ns, "name": name,
                   "labels": {"pod": name, "app": app}, "hostInterface": format!("cali-{name}")}),
        ));
    }
    kvs.extend(extra.iter().cloned());
    let bytes: Vec<(String, Vec<u8>)> = kvs
        .into_iter()
        .map(|(k, v)| (k, v.to_string().into_bytes()))
        .collect();
    ClusterState::from_kvs(bytes.iter().map(|(k, v)| (k.clone(), v.as_slice())))
}

fn policy(name: &str, spec: Value) -> (String, Value) {
    let mut p = json!({"namespace": POLICY_NS, "name": name, "podSelector": {},
                       "policyTypes": ["Ingress"]});
    if let (Value::Object(p), Value::Object(spec)) = (&mut p, spec) {
        p.extend(spec);
    }
    (format!("/reef/policies/{POLICY_NS}/{name}"), p)
}

fn end(s: &str) -> EndArg {
    parse_end(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn run(state: &ClusterState, src: &str, dst: &str, flow: Option<&str>) -> Trace {
    let flow = flow.map(|f| parse_flow(f).unwrap_or_else(|e| panic!("{f}: {e}")));
    trace(state, &end(src), &end(dst), flow).unwrap_or_else(|e| panic!("{src} {dst}: {e}"))
}

fn hops(t: &Trace) -> String {
    t.paths
        .iter()
        .flat_map(|p| p.hops.iter().map(|h| h.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn arguments() {
    assert_eq!(
        parse_end("x/a"),
        Ok(EndArg::Pod {
            namespace: "x".into(),
            name: "a".into()
        })
    );
    assert_eq!(
        parse_end("a"),
        Ok(EndArg::Pod {
            namespace: "default".into(),
            name: "a".into()
        })
    );
    assert_eq!(
        parse_end("10.0.0.1"),
        Ok(EndArg::Addr("10.0.0.1".parse().expect("ip")))
    );
    assert_eq!(
        parse_end("fd00::1"),
        Ok(EndArg::Addr("fd00::1".parse().expect("ip")))
    );
    for bad in ["", "/a", "x/", "x/a/b"] {
        assert!(parse_end(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_flow("80/tcp"), Ok((L4Protocol::Tcp, 80)));
    assert_eq!(parse_flow("53/UDP"), Ok((L4Protocol::Udp, 53)));
    assert_eq!(parse_flow("5000/sctp"), Ok((L4Protocol::Sctp, 5000)));
    assert_eq!(parse_flow("443"), Ok((L4Protocol::Tcp, 443)));
    for bad in ["0/tcp", "65536/tcp", "80/icmp", "http/tcp", "/tcp", "80/"] {
        assert!(parse_flow(bad).is_err(), "{bad}");
    }
}

#[test]
fn unisolated_pods_and_the_route_by_mode() {
    let s = cluster("routed", &[]);
    let t = run(&s, "x/a", "x/b", Some("80/tcp"));
    assert!(t.allowed);
    assert_eq!(t.paths[0].egress.verdict, "notIsolated");
    assert_eq!(t.paths[0].ingress.verdict, "notIsolated");
    assert!(
        hops(&t).contains("n1 -> n2: routed via n2's underlay address 198.18.1.3"),
        "{}",
        hops(&t)
    );
    assert!(
        hops(&t).contains("n2: to pod x/b (10.244.2.2) through cali-b"),
        "{}",
        hops(&t)
    );

    let s = cluster("vxlan", &[]);
    let t = run(&s, "x/a", "x/b", None);
    assert!(
        hops(&t).contains("VXLAN tunnel (VNI 7): reef.vxlan to n2's VTEP 10.244.2.0 (02:00:00:00:00:02), over the underlay to 198.18.1.3"),
        "{}",
        hops(&t)
    );

    let s = cluster("vxlan-crosssubnet", &[]);
    let same = run(&s, "x/a", "x/b", None);
    assert!(
        hops(&same).contains("routed (same underlay subnet 198.18.1.0/24)"),
        "{}",
        hops(&same)
    );
    let across = run(&s, "x/a", "x/c", None);
    assert!(hops(&across).contains("VXLAN tunnel"), "{}", hops(&across));

    let local = run(&s, "x/a", "y/d", None);
    assert!(
        hops(&local).contains("local delivery on n1"),
        "{}",
        hops(&local)
    );
}

#[test]
fn isolation_names_the_policies_and_the_rule_that_admits() {
    let deny = policy("deny-all", json!({}));
    let s = cluster("routed", std::slice::from_ref(&deny));
    let t = run(&s, "y/d", "x/b", Some("80/tcp"));
    assert!(!t.allowed);
    assert_eq!(
        t.paths[0].ingress.text,
        "dropped: x/b is isolated for ingress by x/deny-all and no rule admits it"
    );
    assert_eq!(t.paths[0].ingress.isolated_by, ["x/deny-all"]);
    assert_eq!(t.paths[0].egress.verdict, "notIsolated");
    assert_eq!(t.summary, "dropped");

    let same = policy(
        "allow-same",
        json!({"ingress": [{"peers": [{"podSelector": {}}]}]}),
    );
    let s = cluster("routed", &[deny.clone(), same]);
    let t = run(&s, "x/a", "x/b", Some("80/tcp"));
    assert!(t.allowed);
    assert_eq!(t.paths[0].ingress.text, "allowed by x/allow-same rule 0");
    assert_eq!(t.paths[0].ingress.policy.as_deref(), Some("x/allow-same"));
    assert_eq!(t.paths[0].ingress.rule, Some(0));
    let t = run(&s, "y/d", "x/b", Some("80/tcp"));
    assert_eq!(
        t.paths[0].ingress.text,
        "dropped: x/b is isolated for ingress by x/allow-same, x/deny-all and no rule admits it"
    );

    // Egress deny-all with one port allowed.
    let egress = policy(
        "egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{}, {"ports": [{"protocol": "UDP", "port": 53}]}]}),
    );
    let egress_one_port = policy(
        "egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}),
    );
    let s = cluster("routed", &[egress_one_port]);
    assert!(run(&s, "x/a", "y/d", Some("53/udp")).allowed);
    let t = run(&s, "x/a", "y/d", Some("53/tcp"));
    assert!(!t.allowed);
    assert_eq!(
        t.paths[0].egress.text,
        "dropped: x/a is isolated for egress by x/egress and no rule admits it"
    );
    assert!(!run(&s, "x/a", "y/d", None).allowed, "ICMP has no port");
    let s = cluster("routed", &[egress]);
    assert_eq!(
        run(&s, "x/a", "y/d", None).paths[0].egress.text,
        "allowed by x/egress rule 0"
    );
}

#[test]
fn a_pod_and_its_own_node_are_never_judged() {
    let deny = policy("deny-both", json!({"policyTypes": ["Ingress", "Egress"]}));
    let s = cluster("routed", &[deny]);
    // Node n2 -> its own pod x/b, and x/b -> n2.
    for (src, dst) in [("198.18.1.3", "x/b"), ("x/b", "198.18.1.3")] {
        let t = run(&s, src, dst, Some("80/tcp"));
        assert!(t.allowed, "{src} -> {dst}: {t:?}");
        let j = if src == "x/b" {
            &t.paths[0].egress
        } else {
            &t.paths[0].ingress
        };
        assert_eq!(j.verdict, "notJudged");
        assert!(
            j.text
                .contains("between a pod and its own node is always allowed"),
            "{}",
            j.text
        );
    }
    // Another node is judged, with its underlay address (routed) as the source.
    let t = run(&s, "198.18.1.2", "x/b", Some("80/tcp"));
    assert!(!t.allowed);
    assert_eq!(t.source.kind, "node");
    let from_n1 = policy(
        "from-n1",
        json!({"ingress": [{"peers": [{"ipBlock": {"cidr": "198.18.1.2/32"}}]}]}),
    );
    let s = cluster("routed", std::slice::from_ref(&from_n1));
    assert!(run(&s, "198.18.1.2", "x/b", Some("80/tcp")).allowed);
    // Through the tunnel, a node sends from its VTEP address.
    let s = cluster("vxlan", &[from_n1]);
    let t = run(&s, "198.18.1.2", "x/b", Some("80/tcp"));
    assert!(!t.allowed);
    assert!(
        t.paths[0].ingress.text.contains("10.244.1.0"),
        "{}",
        t.paths[0].ingress.text
    );
    // A pod to itself.
    let t = run(
        &cluster("routed", &[policy("deny", json!({}))]),
        "x/b",
        "x/b",
        None,
    );
    assert!(t.allowed);
    assert_eq!(t.paths[0].ingress.verdict, "notJudged");
}

#[test]
fn services_are_judged_on_every_endpoint_with_the_target_port() {
    let only_b = policy(
        "only-b",
        json!({"podSelector": {"matchLabels": {"pod": "c"}}}),
    );
    let port_8080 = policy(
        "web-8080",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"ports": [{"protocol": "TCP", "port": 8080}]}]}),
    );
    let s = cluster("routed", &[]);
    let t = run(&s, "x/a", "10.96.0.10", Some("80/tcp"));
    assert!(t.allowed, "{t:?}");
    let tr = t.translation.as_ref().expect("translated");
    assert_eq!(tr.service, "x/web");
    assert_eq!(tr.target_port, 8080);
    assert_eq!(tr.on.as_deref(), Some("n1"));
    let eps: Vec<(String, Option<String>, String)> = tr
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.pod.clone(), e.node.clone()))
        .collect();
    assert_eq!(
        eps,
        [
            (
                "10.244.2.2".to_string(),
                Some("x/b".to_string()),
                "n2".to_string()
            ),
            (
                "10.244.3.2".to_string(),
                Some("x/c".to_string()),
                "n3".to_string()
            ),
        ]
    );
    assert_eq!(t.summary, "allowed (by all 2 endpoints)");
    assert!(
        tr.text.contains("allowed only if every endpoint allows it"),
        "{}",
        tr.text
    );

    // One endpoint isolated: dropped overall, and said per endpoint.
    let s = cluster("routed", &[only_b]);
    let t = run(&s, "x/a", "10.96.0.10", Some("80/tcp"));
    assert!(!t.allowed);
    assert_eq!(t.summary, "dropped (by 1 of 2 endpoints)");
    assert!(t.paths[0].allowed && !t.paths[1].allowed);

    // Policies see the target port, not the service port.
    let s = cluster("routed", &[port_8080]);
    assert!(run(&s, "x/a", "10.96.0.10", Some("80/tcp")).allowed);
    assert!(!run(&s, "x/a", "x/b", Some("80/tcp")).allowed);

    // No such port, ICMP, a service without live endpoints.
    let s = cluster("routed", &[]);
    let t = run(&s, "x/a", "10.96.0.10", Some("81/tcp"));
    assert!(!t.allowed && t.paths.is_empty());
    assert!(t.summary.contains("has no port 81/TCP"), "{}", t.summary);
    let t = run(&s, "x/a", "10.96.0.10", None);
    assert!(!t.allowed);
    assert!(t.summary.contains("ICMP"), "{}", t.summary);
    let mut s = cluster("routed", &[]);
    s.agents.remove("n2");
    s.agents.remove("n3");
    let t = run(&s, "x/a", "10.96.0.10", Some("80/tcp"));
    assert!(!t.allowed);
    assert!(t.summary.contains("no endpoints"), "{}", t.summary);
}

#[test]
fn a_hairpin_is_judged_as_the_pod_to_itself() {
    // x/b through x/web may reach itself: judged at both points with its own address.
    let s = cluster("routed", &[policy("deny-all", json!({}))]);
    let t = run(&s, "x/b", "10.96.0.10", Some("80/tcp"));
    assert!(!t.allowed);
    assert!(t.paths.iter().all(|p| !p.allowed), "{t:?}");
    assert_eq!(t.paths[0].ingress.verdict, "dropped");
    assert!(
        !t.paths[0].ingress.text.contains("judged with the source"),
        "{}",
        t.paths[0].ingress.text
    );
    let same = policy(
        "allow-same",
        json!({"ingress": [{"peers": [{"podSelector": {}}]}]}),
    );
    let s = cluster("routed", &[same]);
    let t = run(&s, "x/b", "10.96.0.10", Some("80/tcp"));
    assert!(t.allowed, "{t:?}");
    assert_eq!(t.paths[0].ingress.text, "allowed by x/allow-same rule 0");
}

#[test]
fn host_processes_to_node_ports() {
    let from_n1 = policy(
        "from-n1",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"peers": [{"ipBlock": {"cidr": "198.18.1.2/32"}}]}]}),
    );
    let s = cluster("routed", &[from_n1]);
    // n1 to n2's node port: x/b (on n2) sees n1's address; x/c (on n3) sees n2's (masquerade).
    let t = run(&s, "198.18.1.2", "198.18.1.3", Some("30080/tcp"));
    let got: Vec<bool> = t.paths.iter().map(|p| p.allowed).collect();
    assert_eq!(got, [true, false], "{t:?}");
    // n2 to its own node port: its own pod is not judged; x/c sees n2's address.
    let t = run(&s, "198.18.1.3", "198.18.1.3", Some("30080/tcp"));
    assert_eq!(t.paths[0].ingress.verdict, "notJudged");
    assert_eq!(t.paths[1].ingress.verdict, "dropped");
}

#[test]
fn node_ports_masquerade_to_the_node_for_remote_endpoints() {
    // x/b admits only 203.0.113.9 (an outside client); x/c the same.
    let client_only = policy(
        "client",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"peers": [{"ipBlock": {"cidr": "203.0.113.9/32"}}]}]}),
    );
    let s = cluster("routed", &[client_only]);
    // Sent to n2's node port: x/b is local (client address kept), x/c is on n3 (the flow
    // arrives from n2's address).
    let t = run(&s, "203.0.113.9", "198.18.1.3", Some("30080/tcp"));
    assert_eq!(t.translation.as_ref().map(|t| t.via), Some("nodePort"));
    assert_eq!(t.destination.service.as_deref(), Some("x/np"));
    let by_pod: Vec<(Option<String>, bool)> = t
        .paths
        .iter()
        .map(|p| (p.endpoint.as_ref().and_then(|e| e.pod.clone()), p.allowed))
        .collect();
    assert_eq!(
        by_pod,
        [(Some("x/b".into()), true), (Some("x/c".into()), false)]
    );
    assert!(
        t.paths[1].ingress.text.contains("198.18.1.3"),
        "{}",
        t.paths[1].ingress.text
    );
    assert!(!t.allowed);
    assert!(
        hops(&t).contains("outside the cluster -> n2"),
        "{}",
        hops(&t)
    );
    // A port that is not a node port is the node itself: nothing to judge.
    let t = run(&s, "203.0.113.9", "198.18.1.3", Some("22/tcp"));
    assert!(t.allowed && t.translation.is_none());
    assert_eq!(t.destination.kind, "node");
}

#[test]
fn addresses_resolve_to_what_holds_them() {
    let s = cluster("routed", &[]);
    let t = run(&s, "10.244.1.2", "203.0.113.9", Some("443/tcp"));
    assert_eq!(t.source.pod.as_deref(), Some("x/a"));
    assert_eq!(t.destination.kind, "outside");
    assert!(t.allowed);
    assert!(
        hops(&t).contains("masqueraded to n1's address (natOutgoing"),
        "{}",
        hops(&t)
    );
    let t = run(&s, "203.0.113.9", "x/b", Some("80/tcp"));
    assert_eq!(t.source.kind, "outside");
    assert!(
        hops(&t).contains("only if the network routes 10.244.2.2 to n2"),
        "{}",
        hops(&t)
    );
    // An address of n1's block that no pod holds.
    let t = run(&s, "x/b", "10.244.1.99", None);
    assert!(!t.allowed);
    assert_eq!(t.destination.kind, "unused");
    assert!(
        t.paths[0]
            .unreachable
            .as_deref()
            .is_some_and(|u| u.contains("blackhole")),
        "{t:?}"
    );

    // Usage errors.
    let e = |src: &str, dst: &str| trace(&s, &end(src), &end(dst), None).err();
    assert_eq!(e("x/zz", "x/a"), Some(usage("unknown pod x/zz")));
    assert!(
        matches!(e("203.0.113.1", "203.0.113.2"), Some(TraceError::Usage(m)) if m.contains("neither"))
    );
    assert!(
        matches!(e("10.96.0.10", "x/a"), Some(TraceError::Usage(m)) if m.contains("not a source"))
    );
    assert!(
        matches!(e("10.244.1.99", "x/a"), Some(TraceError::Usage(m)) if m.contains("no pod holds"))
    );
    assert!(matches!(e("x/a", "fd00::1"), Some(TraceError::Usage(m)) if m.contains("no IPv6")));
}

#[test]
fn json_has_the_verdict_the_hops_and_both_points() {
    let s = cluster("routed", &[policy("deny-all", json!({}))]);
    let t = run(&s, "x/a", "x/b", Some("80/tcp"));
    let (text, value) = render(&t);
    assert_eq!(value["allowed"], false);
    assert_eq!(value["egress"]["verdict"], "notIsolated");
    assert_eq!(value["ingress"]["verdict"], "dropped");
    assert_eq!(value["ingress"]["isolatedBy"], json!(["x/deny-all"]));
    assert_eq!(value["flow"], json!({"protocol": "TCP", "port": 80}));
    assert!(
        value["hops"].as_array().is_some_and(|h| !h.is_empty()),
        "{value}"
    );
    for needle in [
        "trace 10.244.1.2 -> 10.244.2.2 80/TCP",
        "source:       pod x/a on node n1 (10.244.1.2)",
        "egress at x/a: not isolated",
        "ingress at x/b: dropped: x/b is isolated for ingress by x/deny-all",
        "result: dropped",
    ] {
        assert!(text.contains(needle), "{needle}\n{text}");
    }
    let t = run(&s, "x/a", "10.96.0.10", Some("80/tcp"));
    let (text, value) = render(&t);
    assert_eq!(value["paths"].as_array().map(Vec::len), Some(2));
    assert!(value.get("hops").is_none());
    assert!(
        text.contains("endpoint 10.244.2.2:8080 (x/b on n2):"),
        "{text}"
    );
}
