//! Services end to end on a routed cluster: real etcd, one reef-agent per simulated host,
//! pods through libcni with Kubernetes labels, services through `reefctl apply -f -`.
//! Every answer names the endpoint that served it, so the tests see where each connection
//! went.

use reef_tests::routed::*;
use reef_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Answers every TCP connection and UDP datagram on 8080 with its own name.
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 8080))
    while True:
        d, a = s.recvfrom(2048)
        s.sendto((name + " " + a[0]).encode(), a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(128)
while True:
    c, a = s.accept()
    try:
        c.sendall((name + " " + a[0]).encode())
    finally:
        c.close()
"#;

/// `client.py tcp|udp HOST PORT N`: N connections (or datagrams from fresh sockets), one
/// JSON object of answer -> count ("refused", "timeout" for failures) and the slowest try.
const CLIENT: &str = r#"
import json, socket, sys, time
proto, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
counts, slowest = {}, 0.0
for _ in range(n):
    t = time.monotonic()
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            a = s.recv(256).decode().split()[0]
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            s.connect((host, port))
            s.send(b"?")
            a = s.recv(256).decode().split()[0]
        s.close()
    except ConnectionRefusedError:
        a = "refused"
    except (socket.timeout, TimeoutError):
        a = "timeout"
    except OSError as e:
        a = "error " + str(e.errno)
    slowest = max(slowest, time.monotonic() - t)
    counts[a] = counts.get(a, 0) + 1
print(json.dumps({"counts": counts, "slowest": slowest}))
"#;

struct World {
    rc: RoutedCluster,
    dir: TempDir,
    servers: Vec<ChildGuard>,
}

impl World {
    fn new(hosts: usize) -> World {
        let mut rc = RoutedCluster::new(hosts);
        let all: Vec<usize> = (0..hosts).collect();
        rc.start_agents(&all, &[]);
        let dir = tempdir();
        for (n, text) in [("server.py", SERVER), ("client.py", CLIENT)] {
            std::fs::write(dir.path().join(n), text).expect("write script");
        }
        World {
            rc,
            dir,
            servers: Vec::new(),
        }
    }

    /// An endpoint pod `name` with `labels` on host `i`, serving on 8080.
    fn endpoint(&mut self, i: usize, name: &str, labels: Value) -> usize {
        let p = self.rc.add_labelled_pod(i, name, &labels);
        let script = self.dir.path().join("server.py");
        let guard = self.rc.pods[p]
            .ns
            .spawn("python3", [script.to_str().unwrap_or_default(), name])
            .expect("start server");
        self.servers.push(guard);
        p
    }

    fn apply(&self, manifest: &str) {
        let out = reef_tests::agent::reefctl_with_stdin(
            self.rc.host(0),
            self.rc.cluster.etcd(),
            &["apply", "-f", "-"],
            manifest,
        );
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the client in pod `p` (or any netns).
    fn ask(
        &self,
        ns: &Netns,
        proto: &str,
        host: &str,
        port: u16,
        n: usize,
    ) -> (BTreeMap<String, u64>, f64) {
        let script = self.dir.path().join("client.py");
        let out = ns.sh_ok(&format!(
            "python3 {} {proto} {host} {port} {n}",
            script.display()
        ));
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        let counts = v["counts"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or_default()))
            .collect();
        (counts, v["slowest"].as_f64().unwrap_or_default())
    }

    /// Waits until one connection from `ns` gets `want` (a name, or "refused").
    fn until(&self, ns: &Netns, proto: &str, host: &str, port: u16, want: &str, within: Duration) {
        let start = Instant::now();
        loop {
            let (c, _) = self.ask(ns, proto, host, port, 1);
            if c.contains_key(want) {
                return;
            }
            assert!(
                start.elapsed() < within,
                "{proto} {host}:{port} never answered {want:?} (last {c:?})\n{}",
                self.rc.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn vip_of(rc: &RoutedCluster, ns: &str, name: &str) -> String {
    let v = rc.reefctl_json(0, &["service", "show", name, "-n", ns]);
    v["service"]["clusterIp"]
        .as_str()
        .unwrap_or_else(|| panic!("no VIP: {v}"))
        .to_string()
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 8080}\n";

/// 3 hosts, an endpoint on each, a client pod on each: every client's connections (TCP and
/// UDP) reach all three endpoints, each at least 10%; a service without endpoints refuses
/// at once; an endpoint that goes gets nothing new.
#[test]
fn a_vip_balances_across_hosts_and_refuses_without_endpoints() {
    let mut w = World::new(3);
    let eps: Vec<usize> = (0..3)
        .map(|i| w.endpoint(i, &format!("shop/web-{i}"), json!({"app": "web"})))
        .collect();
    let clients: Vec<usize> = (0..3).map(|i| w.rc.add_pod(i)).collect();
    w.apply(WEB);
    w.apply("apiVersion: v1\nkind: Service\nmetadata: {name: nobody, namespace: shop}\nspec:\n  selector: {app: ghost}\n  ports: [{name: a, port: 80}, {name: b, port: 53, protocol: UDP}]\n");
    let vip = vip_of(&w.rc, "shop", "web");
    let nobody = vip_of(&w.rc, "shop", "nobody");
    for &c in &clients {
        for i in 0..3 {
            w.until(
                &w.rc.pods[c].ns,
                "tcp",
                &vip,
                80,
                &format!("shop/web-{i}"),
                Duration::from_secs(10),
            );
        }
    }
    for &c in &clients {
        for proto in ["tcp", "udp"] {
            let port = if proto == "tcp" { 80 } else { 53 };
            let (counts, _) = w.ask(&w.rc.pods[c].ns, proto, &vip, port, 60);
            for i in 0..3 {
                let got = counts.get(&format!("shop/web-{i}")).copied().unwrap_or(0);
                assert!(
                    got >= 6,
                    "{proto} from pod {c}: web-{i} got {got} of 60: {counts:?}"
                );
            }
        }
    }
    // No endpoints: refused (TCP reset, ICMP port unreachable), not left to time out.
    let client = &w.rc.pods[clients[0]].ns;
    let (counts, slowest) = w.ask(client, "tcp", &nobody, 80, 10);
    assert_eq!(counts.get("refused"), Some(&10), "{counts:?}");
    assert!(slowest < 0.1, "refusal took {slowest} s");
    let (counts, _) = w.ask(client, "udp", &nobody, 53, 3);
    assert!(
        counts.get("refused").copied().unwrap_or(0) >= 1,
        "{counts:?}"
    );
    // A port the VIP does not define is refused too.
    let (counts, _) = w.ask(client, "tcp", &vip, 81, 3);
    assert_eq!(counts.get("refused"), Some(&3), "{counts:?}");

    // web-2 goes: within a second nothing new reaches it.
    w.rc.del_pod(eps[2]);
    let gone = Instant::now();
    loop {
        let (counts, _) = w.ask(client, "tcp", &vip, 80, 20);
        if !counts.contains_key("shop/web-2") {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(1),
            "web-2 still chosen: {counts:?}"
        );
    }
    let (counts, _) = w.ask(client, "tcp", &vip, 80, 40);
    assert!(
        !counts.contains_key("shop/web-2") && counts.len() == 2,
        "{counts:?}"
    );
}

/// The node port answers on every node's underlay address, from a machine outside the
/// cluster (a host without Reef), whichever node holds the endpoint.
#[test]
fn a_node_port_answers_on_every_node() {
    let mut w = World::new(3);
    w.endpoint(2, "shop/web-0", json!({"app": "web"}));
    w.apply(WEB);
    let outside = w.rc.add_host();
    let outside_ns = w.rc.host(outside).ns();
    for i in 0..3 {
        let addr = w.rc.host(i).addr().to_string();
        w.until(
            outside_ns,
            "tcp",
            &addr,
            30080,
            "shop/web-0",
            Duration::from_secs(10),
        );
    }
}
