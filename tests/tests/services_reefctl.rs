//! Services through `reefctl apply -f` / `delete -f` / `service ls|show|rm` against a real
//! etcd: Kubernetes manifests in, records and claims out, allocation without duplicates
//! under concurrency, and refusals that name the field and write nothing. Each test builds its
//! own simulated cluster (hosts and etcd in network namespaces).

use reef_tests::cluster::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Everything under /reef/ as key -> value.
fn store(env: &Env) -> BTreeMap<String, String> {
    env.dump().raw
}

/// The value of a claim held by `id`.
fn held_by(id: &str) -> String {
    json!({ "service": id }).to_string()
}

fn write(env: &Env, name: &str, text: &str) -> String {
    let path = env.scratch.path().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn init(env: &Env) {
    env.reefctl_init(&[
        "--pool",
        "10.244.0.0/16",
        "--mode",
        "routed",
        "--service-cidr",
        "10.96.0.0/24",
        "--node-port-range",
        "30000-30099",
    ]);
}

const MANIFEST: &str = r#"
# Two documents and a List, as kubectl users write them.
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: dns
    namespace: kube-system
  spec:
    type: NodePort
    clusterIP: 10.96.0.10
    selector: {k8s-app: dns}
    ports:
    - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
    - {name: dns-tcp, port: 53, protocol: TCP, nodePort: 30053}
    sessionAffinity: ClientIP
"#;

#[test]
fn apply_creates_updates_and_delete_removes_services_and_their_claims() {
    let env = Env::new(1);
    init(&env);
    let file = write(&env, "svc.yaml", MANIFEST);
    let applied = env.reefctl_json(0, &["apply", "-f", &file]);
    let results: Vec<(&str, &str)> = applied
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default(),
                r["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(results, [("web", "created"), ("dns", "created")]);

    let raw = store(&env);
    let web: Value = serde_json::from_str(&raw["/reef/services/default/web"]).expect("web record");
    let vip = web["clusterIp"]
        .as_str()
        .expect("allocated VIP")
        .to_string();
    assert!(vip.starts_with("10.96.0."), "{vip}");
    assert_ne!(vip, "10.96.0.1", "the first address is kept back");
    assert_eq!(web["ports"][0]["targetPort"], 8080);
    assert_eq!(
        raw[&format!("/reef/service-ips/{vip}")],
        held_by("default/web")
    );
    assert_eq!(
        raw["/reef/service-ips/10.96.0.10"],
        held_by("kube-system/dns")
    );
    assert_eq!(raw["/reef/node-ports/30053"], held_by("kube-system/dns"));
    let dns: Value =
        serde_json::from_str(&raw["/reef/services/kube-system/dns"]).expect("dns record");
    assert_eq!(dns["affinityTimeout"], 10800, "ClientIP defaults to 3 h");

    // ls: default namespace, then every namespace; PORT(S) as kubectl prints them.
    let text = env.reefctl_ok(0, &["service", "ls"]);
    assert!(text.contains("web") && !text.contains("dns"), "{text}");
    let text = env.reefctl_ok(0, &["service", "ls", "-A"]);
    assert!(
        text.contains("kube-system") && text.contains("53:30053/UDP,53:30053/TCP"),
        "{text}"
    );

    // The same file again changes nothing; a changed port keeps the VIP.
    let again = env.reefctl_json(0, &["apply", "-f", &file]);
    assert!(
        again
            .as_array()
            .expect("array")
            .iter()
            .all(|r| r["result"] == "unchanged"),
        "{again}"
    );
    let changed = write(
        &env,
        "svc2.yaml",
        &MANIFEST.replace("targetPort: 8080", "targetPort: 9090"),
    );
    let out = env.reefctl_ok(0, &["apply", "-f", &changed]);
    assert!(out.contains("service/web configured"), "{out}");
    let web2: Value =
        serde_json::from_str(&store(&env)["/reef/services/default/web"]).expect("web record");
    assert_eq!(web2["clusterIp"].as_str(), Some(vip.as_str()), "VIP kept");
    assert_eq!(web2["ports"][0]["targetPort"], 9090);

    // delete -f from stdin removes both services and every claim.
    let out = env.reefctl_stdin(0, &["delete", "-f", "-"], MANIFEST);
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<String> = store(&env)
        .into_keys()
        .filter(|k| {
            k.starts_with("/reef/services/")
                || k.starts_with("/reef/service-ips/")
                || k.starts_with("/reef/node-ports/")
        })
        .collect();
    assert_eq!(left, Vec::<String>::new());
    let out = env.reefctl(0, &["service", "rm", "web"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("service default/web not found"),
        "{}",
        stderr(&out)
    );
}

/// Each refusal names the field, and nothing at all is written (the valid documents of the
/// same file included).
#[test]
fn unsupported_or_clashing_manifests_change_nothing() {
    let env = Env::new(1);
    init(&env);
    let first = write(
        &env,
        "taken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: holder}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.20\n  selector: {app: a}\n  ports: [{port: 80, nodePort: 30080}]\n",
    );
    env.reefctl_ok(0, &["apply", "-f", &first]);
    let before = store(&env);
    let valid = "apiVersion: v1\nkind: Service\nmetadata: {name: fine}\nspec:\n  selector: {app: b}\n  ports: [{port: 80}]\n---\n";
    let cases: &[(&str, &str)] = &[
        (
            "spec:\n  type: LoadBalancer\n  selector: {app: c}\n  ports: [{port: 80}]",
            "spec.type",
        ),
        (
            "spec:\n  selector: {app: c}\n  ports: [{port: 80, targetPort: http}]",
            "spec.ports[0].targetPort",
        ),
        (
            "spec:\n  externalIPs: [198.18.0.9]\n  selector: {app: c}\n  ports: [{port: 80}]",
            "spec.externalIPs",
        ),
        (
            "spec:\n  clusterIP: None\n  selector: {app: c}\n  ports: [{port: 80}]",
            "spec.clusterIP",
        ),
        (
            "spec:\n  clusterIP: 10.97.0.5\n  selector: {app: c}\n  ports: [{port: 80}]",
            "spec.clusterIP",
        ),
        (
            "spec:\n  type: NodePort\n  selector: {app: c}\n  ports: [{port: 80, nodePort: 31000}]",
            "spec.ports[0].nodePort",
        ),
        (
            "spec:\n  clusterIP: 10.96.0.20\n  selector: {app: c}\n  ports: [{port: 80}]",
            "holder",
        ),
        (
            "spec:\n  type: NodePort\n  selector: {app: c}\n  ports: [{port: 80, nodePort: 30080}]",
            "holder",
        ),
    ];
    for (spec, field) in cases {
        let text =
            format!("{valid}apiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\n{spec}\n");
        let file = write(&env, "bad.yaml", &text);
        let out = env.reefctl(0, &["apply", "-f", &file]);
        assert!(!out.status.success(), "{spec}: accepted");
        assert!(
            stderr(&out).contains(field),
            "{spec}: the message does not name {field}: {}",
            stderr(&out)
        );
        assert_eq!(store(&env), before, "{spec}: etcd changed");
    }
    // A bad policy beside a good service writes neither.
    let out = env.reefctl_stdin(
        0,
        &["apply", "-f", "-"],
        &format!("{valid}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec: {{ingress: [{{ports: [{{port: http}}]}}]}}\n"),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("(NetworkPolicy p): spec.ingress[0].ports[0].port: named ports"),
        "{}",
        stderr(&out)
    );
    assert_eq!(store(&env), before, "etcd changed");
}

/// 50 `reefctl apply` processes at once, one service each: 50 distinct VIPs and node ports,
/// every claim held by its service.
#[test]
fn concurrent_applies_get_distinct_vips_and_node_ports() {
    let env = Env::new(1);
    init(&env);
    let files: Vec<String> = (0..50)
        .map(|i| {
            write(
                &env,
                &format!("s{i}.yaml"),
                &format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  type: NodePort\n  selector: {{app: s{i}}}\n  ports: [{{port: 80}}]\n"
                ),
            )
        })
        .collect();
    let handles: Vec<_> = files
        .iter()
        .map(|f| {
            let mut cmd = env.reefctl_command(0, &["apply", "-f", f]);
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().expect("spawn reefctl")
        })
        .collect();
    for h in handles {
        let out = h.wait_with_output().expect("reefctl");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let raw = store(&env);
    let mut vips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for i in 0..50 {
        let s: Value =
            serde_json::from_str(&raw[&format!("/reef/services/default/s{i}")]).expect("record");
        let vip = s["clusterIp"].as_str().expect("vip").to_string();
        let np = s["ports"][0]["nodePort"].as_u64().expect("node port");
        assert_eq!(
            raw[&format!("/reef/service-ips/{vip}")],
            held_by(&format!("default/s{i}"))
        );
        assert_eq!(
            raw[&format!("/reef/node-ports/{np}")],
            held_by(&format!("default/s{i}"))
        );
        vips.insert(vip);
        ports.insert(np);
    }
    assert_eq!((vips.len(), ports.len()), (50, 50));
    let claims = raw
        .keys()
        .filter(|k| k.starts_with("/reef/service-ips/") || k.starts_with("/reef/node-ports/"))
        .count();
    assert_eq!(claims, 100, "no orphan claims from lost races");
}

/// `service show` lists the selected pods of the namespace with their node and whether
/// that node's agent is alive.
#[test]
fn show_lists_endpoints_with_node_liveness() {
    let env = Env::new(1);
    init(&env);
    let file = write(&env, "web.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n");
    env.reefctl_ok(0, &["apply", "-f", &file]);
    let workload = |node: &str, cid: &str, ns: &str, app: &str, ip: &str| {
        json!({"node": node, "network": "net", "containerId": cid, "ifname": "eth0",
               "ips": [ip], "namespace": ns, "name": cid, "labels": {"app": app}})
    };
    for (node, cid, ns, app, ip) in [
        ("n1", "web-1", "shop", "web", "10.244.0.2"),
        ("n2", "web-2", "shop", "web", "10.244.1.2"),
        ("n1", "db-1", "shop", "db", "10.244.0.3"),
        ("n1", "web-x", "other", "web", "10.244.0.4"),
    ] {
        env.etcdctl(&[
            "put",
            &format!("/reef/workloads/{node}/{cid}/eth0"),
            &workload(node, cid, ns, app, ip).to_string(),
        ]);
    }
    env.etcdctl(&[
        "put",
        "/reef/agents/n1",
        r#"{"node":"n1","pid":1,"mode":"routed","started":0,"updated":0,"routes":0}"#,
    ]);
    let show = env.reefctl_json(0, &["service", "show", "web", "-n", "shop"]);
    let eps: Vec<(String, String, bool)> = show["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["ip"].as_str().unwrap_or_default().to_string(),
                e["node"].as_str().unwrap_or_default().to_string(),
                e["alive"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("10.244.0.2".to_string(), "n1".to_string(), true),
            ("10.244.1.2".to_string(), "n2".to_string(), false)
        ]
    );
    let text = env.reefctl_ok(0, &["service", "show", "web", "-n", "shop"]);
    assert!(text.contains("web-2") && text.contains("no"), "{text}");
}
