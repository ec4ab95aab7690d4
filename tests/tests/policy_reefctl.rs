//! Network policies and namespaces through `reefctl apply -f` / `delete -f` / `policy
//! ls|show|rm` / `namespace ls|label`, and `reefctl trace`, against a real etcd: manifests in,
//! records out, refusals that name the field and write nothing, and trace verdicts and exit
//! statuses on a cluster state written straight to etcd (no agents needed). Each test builds
//! its own simulated cluster (hosts and etcd in network namespaces).

use reef_tests::cluster::*;
use reef_tests::expect::parse_stdout;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Everything under /reef/ as key -> value.
fn store(env: &Env) -> BTreeMap<String, String> {
    env.dump().raw
}

fn record(env: &Env, key: &str) -> Value {
    let raw = store(env);
    let text = raw
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in etcd: {:?}", raw.keys().collect::<Vec<_>>()));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{key}: {e}: {text}"))
}

fn keys_under(env: &Env, prefix: &str) -> Vec<String> {
    store(env)
        .into_keys()
        .filter(|k| k.starts_with(prefix))
        .collect()
}

fn write(env: &Env, name: &str, text: &str) -> String {
    let path = env.scratch.path().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn init(env: &Env, mode: &str) {
    env.reefctl_init(&[
        "--pool",
        "10.244.0.0/16",
        "--block-size",
        "24",
        "--mode",
        mode,
        "--service-cidr",
        "10.96.0.0/24",
    ]);
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels: {ns: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: allow-same, namespace: x}
  spec:
    podSelector: {}
    ingress:
    - from:
      - podSelector: {}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: from-y, namespace: x}
  spec:
    podSelector:
      matchLabels: {pod: a}
    ingress:
    - from:
      - namespaceSelector:
          matchLabels: {ns: y}
      ports:
      - {port: 80}
      - {protocol: UDP, port: 5000, endPort: 5100}
    egress:
    - to:
      - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.9.0/24]}
"#;

fn results(v: &Value) -> Vec<(String, String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("kind"), s("name"), s("result"))
        })
        .collect()
}

fn workload(node: &str, ns: &str, name: &str, ip: &str) -> (String, String) {
    (
        format!("/reef/workloads/{node}/{ns}-{name}/eth0"),
        json!({"node": node, "network": "net", "containerId": format!("{ns}-{name}"),
               "ifname": "eth0", "ips": [ip], "namespace": ns, "name": name,
               "labels": {"pod": name}, "hostInterface": format!("cali{ns}{name}")})
        .to_string(),
    )
}

/// Nodes n1 and n2 (agents alive, reporting policy counters), pods x/a, x/b on n1, y/a on n2,
/// z/c on n2.
fn write_cluster_state(env: &Env) {
    for (node, addr, vtep) in [
        ("n1", "198.18.1.2/24", "10.244.1.0"),
        ("n2", "198.18.1.3/24", "10.244.2.0"),
    ] {
        env.etcdctl(&[
            "put",
            &format!("/reef/nodes/{node}"),
            &json!({"name": node, "address": addr, "vtepMac": "02:00:00:00:00:01", "vtepIp": vtep})
                .to_string(),
        ]);
        env.etcdctl(&[
            "put",
            &format!("/reef/agents/{node}"),
            &json!({"node": node, "pid": 1, "mode": "routed", "started": 0, "updated": 0,
                    "routes": 0, "policyCounters": {"x/from-y": {"allowed": 10, "dropped": 3}}})
            .to_string(),
        ]);
    }
    for (node, ns, name, ip) in [
        ("n1", "x", "a", "10.244.1.2"),
        ("n1", "x", "b", "10.244.1.3"),
        ("n2", "y", "a", "10.244.2.2"),
        ("n2", "z", "c", "10.244.2.3"),
    ] {
        let (k, v) = workload(node, ns, name, ip);
        env.etcdctl(&["put", &k, &v]);
    }
}

#[test]
fn policies_and_namespaces_apply_list_show_and_delete() {
    let env = Env::new(1);
    init(&env, "routed");
    let file = write(&env, "policy.yaml", MANIFEST);
    let applied = env.reefctl_json(0, &["apply", "-f", &file]);
    let created =
        |kind: &str, name: &str| (kind.to_string(), name.to_string(), "created".to_string());
    assert_eq!(
        results(&applied),
        [
            created("Namespace", "x"),
            created("Namespace", "y"),
            created("NetworkPolicy", "deny-all"),
            created("NetworkPolicy", "allow-same"),
            created("NetworkPolicy", "from-y"),
        ]
    );
    // The records as the agent reads them: policyTypes defaulted, from/to as peers.
    assert_eq!(
        record(&env, "/reef/namespaces/x"),
        json!({"name": "x", "labels": {"kubernetes.io/metadata.name": "x", "ns": "x"}})
    );
    assert_eq!(
        record(&env, "/reef/policies/x/deny-all"),
        json!({"namespace": "x", "name": "deny-all", "podSelector": {}, "policyTypes": ["Ingress"]})
    );
    let from_y = record(&env, "/reef/policies/x/from-y");
    assert_eq!(from_y["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        from_y["ingress"][0]["peers"][0]["namespaceSelector"],
        json!({"matchLabels": {"ns": "y"}})
    );
    assert_eq!(
        from_y["ingress"][0]["ports"],
        json!([{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 5000, "endPort": 5100}])
    );
    assert_eq!(
        from_y["egress"][0]["peers"][0]["ipBlock"],
        json!({"cidr": "10.244.0.0/16", "except": ["10.244.9.0/24"]})
    );

    // The same file again changes nothing; a Namespace apply replaces its labels.
    let again = env.reefctl_json(0, &["apply", "-f", &file]);
    assert!(
        results(&again).iter().all(|(_, _, r)| r == "unchanged"),
        "{again}"
    );
    let out = env.reefctl_stdin(
        0,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: blue}}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "namespace/x configured\n");
    assert_eq!(
        record(&env, "/reef/namespaces/x")["labels"],
        json!({"kubernetes.io/metadata.name": "x", "team": "blue"})
    );

    // ls: the default namespace (none there), one namespace, every namespace.
    let text = env.reefctl_ok(0, &["policy", "ls"]);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("NAMESPACE")
            && text.contains("NAME")
            && text.contains("POD-SELECTOR")
            && text.contains("POLICY-TYPES"),
        "{text}"
    );
    let text = env.reefctl_ok(0, &["policy", "ls", "-n", "x"]);
    let from_y_line = text
        .lines()
        .find(|l| l.contains("from-y"))
        .unwrap_or_default();
    assert!(
        from_y_line.starts_with('x')
            && from_y_line.contains("pod=a")
            && from_y_line.contains("Ingress,Egress"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("deny-all") && l.contains("<all>")),
        "{text}"
    );
    let all = env.reefctl_json(0, &["policy", "ls", "-A"]);
    let names: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["allow-same", "deny-all", "from-y"]);
    let out = env.reefctl(0, &["policy", "ls", "-n", "x", "-A"]);
    assert_eq!(out.status.code(), Some(2), "-n and -A conflict");

    // show: the selected pods now, the peers resolved now, the counters of every agent.
    write_cluster_state(&env);
    let show = env.reefctl_json(0, &["policy", "show", "from-y", "-n", "x"]);
    assert_eq!(
        show["selectedPods"],
        json!([{"pod": "x/a", "node": "n1", "ips": ["10.244.1.2"]}])
    );
    let resolved = &show["ingress"]["rules"][0]["resolved"];
    assert_eq!(
        resolved["addresses"],
        json!([{"ip": "10.244.2.2", "pod": "y/a"}]),
        "{show}"
    );
    assert_eq!(
        show["egress"]["rules"][0]["resolved"]["blocks"][0]["cidr"],
        "10.244.0.0/16"
    );
    assert_eq!(show["counters"]["allowed"], 20);
    assert_eq!(show["counters"]["dropped"], 6);
    let text = env.reefctl_ok(0, &["policy", "show", "from-y", "-n", "x"]);
    for needle in [
        "every pod in namespaces ns=y",
        "peers now: 10.244.2.2 (y/a)",
        "ports: 80/TCP, 5000-5100/UDP",
        "20 allowed, 6 dropped",
        "x/a",
    ] {
        assert!(text.contains(needle), "{needle}\n{text}");
    }
    let out = env.reefctl(0, &["policy", "show", "nope", "-n", "x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("networkpolicy x/nope not found"),
        "{}",
        stderr(&out)
    );

    // Deleting a namespace deletes its record only: its policies stay.
    let out = env.reefctl_stdin(
        0,
        &["delete", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("namespace/x deleted (its record only"),
        "{}",
        stdout(&out)
    );
    assert!(keys_under(&env, "/reef/namespaces/x").is_empty());
    assert_eq!(keys_under(&env, "/reef/policies/x/").len(), 3);

    // policy rm, then delete -f of the whole file: what is left goes, the missing ones are
    // named on stderr.
    let out = env.reefctl_ok(0, &["policy", "rm", "deny-all", "-n", "x"]);
    assert_eq!(out, "networkpolicy/deny-all deleted (x/deny-all)\n");
    let out = env.reefctl(0, &["policy", "rm", "deny-all", "-n", "x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("networkpolicy x/deny-all not found"),
        "{}",
        stderr(&out)
    );
    let out = env.reefctl(0, &["--output", "json", "delete", "-f", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deleted = parse_stdout(&stdout(&out), "delete");
    assert_eq!(
        results(&deleted),
        [
            (
                "Namespace".to_string(),
                "y".to_string(),
                "deleted".to_string()
            ),
            (
                "NetworkPolicy".to_string(),
                "allow-same".to_string(),
                "deleted".to_string()
            ),
            (
                "NetworkPolicy".to_string(),
                "from-y".to_string(),
                "deleted".to_string()
            ),
        ]
    );
    assert!(
        stderr(&out).contains("namespace x has no record"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("networkpolicy x/deny-all not found"),
        "{}",
        stderr(&out)
    );
    assert!(keys_under(&env, "/reef/policies/").is_empty());
    assert!(keys_under(&env, "/reef/namespaces/").is_empty());
    // Nothing left to delete: a failure.
    let out = env.reefctl(0, &["delete", "-f", &file]);
    assert!(!out.status.success());
}

/// Each refusal names the document and the field, and nothing at all is written (the
/// valid documents of the same file included).
#[test]
fn unsupported_or_invalid_policies_change_nothing() {
    let env = Env::new(1);
    init(&env, "routed");
    env.reefctl_stdin(
        0,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n",
    );
    let before = store(&env);
    let valid = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: fine, namespace: x}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n---\n";
    let policy = |spec: &str| {
        format!("{valid}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: x}}\nspec: {spec}\n")
    };
    let cases: Vec<(String, &str)> = vec![
        (
            policy("{ingress: [{ports: [{port: http}]}]}"),
            "(NetworkPolicy bad): spec.ingress[0].ports[0].port: named ports are not supported (pods carry no container ports here)",
        ),
        (policy("{podSelector: {matchExpressions: [{key: a, operator: Gt, values: ['1']}]}}"), "spec.podSelector.matchExpressions[0].operator"),
        (policy("{podSelector: {matchExpressions: [{key: a, operator: In}]}}"), "spec.podSelector.matchExpressions[0].values"),
        (policy("{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}"), "spec.podSelector.matchExpressions[0].values"),
        (policy("{egress: [{ports: [{endPort: 90}]}]}"), "spec.egress[0].ports[0].endPort"),
        (policy("{egress: [{ports: [{port: 90, endPort: 80}]}]}"), "spec.egress[0].ports[0].endPort"),
        (policy("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}"), "spec.ingress[0].from[0].ipBlock.except[0]"),
        (policy("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.300/16}}]}]}"), "spec.ingress[0].from[0].ipBlock.cidr"),
        (policy("{ingress: [{ports: [{protocol: ICMP}]}]}"), "spec.ingress[0].ports[0].protocol"),
        (policy("{policyTypes: [Ingress, Sideways]}"), "spec.policyTypes[1]"),
        (policy("{podSelector: {}, ingres: []}"), "spec.ingres"),
        (
            format!("{valid}apiVersion: v1\nkind: Namespace\nmetadata: {{name: z, labels: {{kubernetes.io/metadata.name: q}}}}\n"),
            "(Namespace z): metadata.labels[kubernetes.io/metadata.name]",
        ),
    ];
    for (text, needle) in &cases {
        let file = write(&env, "bad.yaml", text);
        let out = env.reefctl(0, &["apply", "-f", &file]);
        assert!(!out.status.success(), "{needle}: accepted");
        assert!(
            stderr(&out).contains(needle),
            "the message does not name {needle}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("document 3"), "{}", stderr(&out));
        assert_eq!(store(&env), before, "{needle}: etcd changed");
    }
}

#[test]
fn namespace_label_and_ls() {
    let env = Env::new(1);
    init(&env, "routed");
    write_cluster_state(&env);
    // Creates the record, kubectl's syntax.
    let v = env.reefctl_json(0, &["namespace", "label", "x", "ns=x", "team=a"]);
    assert_eq!(v["changed"], true);
    assert_eq!(
        record(&env, "/reef/namespaces/x"),
        json!({"name": "x", "labels": {"kubernetes.io/metadata.name": "x", "ns": "x", "team": "a"}})
    );
    assert_eq!(
        env.reefctl_ok(0, &["namespace", "label", "x", "team-", "ns=q"]),
        "namespace/x labeled\n"
    );
    assert_eq!(
        record(&env, "/reef/namespaces/x")["labels"],
        json!({"kubernetes.io/metadata.name": "x", "ns": "q"})
    );
    assert_eq!(
        env.reefctl_ok(0, &["namespace", "label", "x", "ns=q"]),
        "namespace/x not labeled\n"
    );
    // The name label is the namespace's; bad labels and names are refused, nothing written.
    let before = store(&env);
    for args in [
        &[
            "namespace",
            "label",
            "x",
            "kubernetes.io/metadata.name=other",
        ][..],
        &["namespace", "label", "x", "kubernetes.io/metadata.name-"],
        &["namespace", "label", "x", "novalue"],
        &["namespace", "label", "x", "=v"],
        &["namespace", "label", "Bad_NS", "a=b"],
    ] {
        let out = env.reefctl(0, args);
        assert!(!out.status.success(), "{args:?} accepted");
        assert_eq!(store(&env), before, "{args:?}: etcd changed");
    }
    let out = env.reefctl(
        0,
        &["namespace", "label", "x", "kubernetes.io/metadata.name-"],
    );
    assert!(
        stderr(&out).contains("cannot be removed"),
        "{}",
        stderr(&out)
    );
    assert!(env.reefctl(0, &["namespace", "label", "x"]).status.code() == Some(2));

    // ls: x has a record; y and z exist through their pods.
    let rows = env.reefctl_json(0, &["namespace", "ls"]);
    let got: Vec<(String, bool, u64)> = rows
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["applied"].as_bool().unwrap_or_default(),
                r["pods"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("x".to_string(), true, 2),
            ("y".to_string(), false, 1),
            ("z".to_string(), false, 1)
        ]
    );
    assert_eq!(
        rows[1]["labels"],
        json!({"kubernetes.io/metadata.name": "y"})
    );
    let text = env.reefctl_ok(0, &["namespace", "ls"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with('x') && l.contains("applied") && l.contains("ns=q")),
        "{text}"
    );
}

/// `reefctl trace` on a state written to etcd: exit 0 when allowed, 1 when dropped, 2 for
/// usage errors; JSON with the verdict, the hops and both policy points.
#[test]
fn trace_verdicts_and_exit_codes() {
    let env = Env::new(1);
    init(&env, "routed");
    write_cluster_state(&env);
    let trace = |args: &[&str]| {
        let mut full = vec!["trace"];
        full.extend_from_slice(args);
        env.reefctl(0, &full)
    };
    let trace_json = |args: &[&str]| {
        let mut full = vec!["--output", "json", "trace"];
        full.extend_from_slice(args);
        let out = env.reefctl(0, &full);
        (
            out.status.code(),
            parse_stdout(&stdout(&out), &format!("trace {args:?}")),
        )
    };

    // No policy: not isolated, routed between the nodes.
    let (code, v) = trace_json(&["y/a", "x/a", "80/tcp"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["ingress"]["verdict"], "notIsolated");
    assert!(
        v["hops"]
            .to_string()
            .contains("n2 -> n1: routed via n1's underlay address 198.18.1.2"),
        "{v}"
    );

    // deny-all in x; allow from namespaces labelled ns=y to pod a on TCP 80.
    let file = write(&env, "p.yaml", MANIFEST);
    env.reefctl_ok(0, &["apply", "-f", &file]);
    let (code, v) = trace_json(&["y/a", "x/a", "80/tcp"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["ingress"]["policy"], "x/from-y");
    assert_eq!(v["ingress"]["rule"], 0);
    let out = trace(&["y/a", "x/a", "80/tcp"]);
    assert!(
        stdout(&out).contains("ingress at x/a: allowed by x/from-y rule 0"),
        "{}",
        stdout(&out)
    );

    let out = trace(&["z/c", "x/a", "80/tcp"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("dropped: x/a is isolated for ingress by x/allow-same, x/deny-all, x/from-y and no rule admits it"),
        "{}",
        stdout(&out)
    );
    let (code, v) = trace_json(&["z/c", "x/a", "81/tcp"]);
    assert_eq!((code, &v["allowed"]), (Some(1), &json!(false)));
    assert_eq!(
        v["ingress"]["isolatedBy"],
        json!(["x/allow-same", "x/deny-all", "x/from-y"])
    );

    // Same namespace through allow-same; by address too; the pod's own node is never judged.
    assert_eq!(trace(&["x/b", "x/a"]).status.code(), Some(0));
    assert_eq!(
        trace(&["10.244.1.3", "10.244.1.2", "53/udp"]).status.code(),
        Some(0)
    );
    let out = trace(&["198.18.1.2", "x/a", "80/tcp"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("between a pod and its own node is always allowed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        trace(&["198.18.1.3", "x/a", "80/tcp"]).status.code(),
        Some(1)
    );
    // Egress of x/a: only to the pool minus 10.244.9.0/24.
    assert_eq!(trace(&["x/a", "z/c", "80/tcp"]).status.code(), Some(0));
    let (code, v) = trace_json(&["x/a", "203.0.113.9", "443/tcp"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["egress"]["verdict"], "dropped");
    assert_eq!(v["destination"]["kind"], "outside");

    // A service: judged on each endpoint with its target port, allowed only if all allow.
    let svc = write(
        &env,
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {pod: a}\n  ports: [{port: 8080, targetPort: 80}]\n",
    );
    env.reefctl_ok(0, &["apply", "-f", &svc]);
    let (code, v) = trace_json(&["y/a", "10.96.0.10", "8080/tcp"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["translation"]["service"], "x/web");
    assert_eq!(
        v["translation"]["endpoints"],
        json!([{"ip": "10.244.1.2", "port": 80, "pod": "x/a", "node": "n1"}])
    );
    assert_eq!(v["paths"][0]["ingress"]["policy"], "x/from-y");
    assert_eq!(
        trace(&["z/c", "10.96.0.10", "8080/tcp"]).status.code(),
        Some(1)
    );
    let out = trace(&["y/a", "10.96.0.10", "9999/tcp"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("has no port 9999/TCP"),
        "{}",
        stdout(&out)
    );

    // Usage errors exit 2: unknown pods, bad flows, missing arguments, two outside addresses.
    for args in [
        &["x/nope", "x/a"][..],
        &["x/a", "x/a", "80/icmp"],
        &["x/a", "x/a", "0/tcp"],
        &["x/a"],
        &["203.0.113.1", "203.0.113.2"],
        &["a/b/c", "x/a"],
    ] {
        let out = trace(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    assert!(stderr(&trace(&["x/nope", "x/a"])).contains("unknown pod x/nope"));
}

/// With etcd unreachable, trace fails with reefctl's usual error status (1), not 2.
#[test]
fn trace_with_etcd_down_keeps_the_error_status() {
    let env = Env::new(1);
    let out = env
        .host(0)
        .cmd(reef_tests::plugin("reefctl"))
        .env_remove("REEF_ETCD")
        .args(["--etcd", "http://127.0.0.1:9", "trace", "x/a", "x/b"])
        .output()
        .expect("run reefctl");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("etcd"), "{}", stderr(&out));
}
