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

/// `client.py tcp|udp HOST PORT N [full]`: N connections (or datagrams from fresh sockets),
/// one JSON object of answer -> count ("refused", "timeout" for failures; the endpoint's
/// name, or with `full` its whole answer `name client-address`) and the slowest try.
/// `client.py udp-stream HOST PORT N`: N datagrams 100 ms apart from ONE socket (one
/// conntrack entry), the list of answers.
const CLIENT: &str = r#"
import json, socket, sys, time
proto, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
full = len(sys.argv) > 5
if proto == "udp-stream":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.1)
    s.connect((host, port))
    out = []
    for _ in range(n):
        try:
            s.send(b"?")
            out.append(s.recv(256).decode().split()[0])
            time.sleep(0.1)
        except (socket.timeout, TimeoutError):
            out.append("timeout")
        except OSError as e:
            out.append("error " + str(e.errno))
            time.sleep(0.1)
    print(json.dumps({"answers": out}))
    sys.exit(0)
counts, slowest = {}, 0.0
for _ in range(n):
    t = time.monotonic()
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            a = s.recv(256).decode()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            s.connect((host, port))
            s.send(b"?")
            a = s.recv(256).decode()
        s.close()
        if not full:
            a = a.split()[0]
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
        World::with_agent_flags(hosts, &[])
    }

    fn with_agent_flags(hosts: usize, flags: &[&str]) -> World {
        World::build(RoutedCluster::new(hosts), flags)
    }

    /// `hosts` hosts on two underlay subnets' worth of modes: `mode` is the data plane.
    fn in_mode(topology: Topology, mode: &str) -> World {
        World::build(RoutedCluster::with(topology, mode), &[])
    }

    /// Like [`World::in_mode`], with reef-bridge pods (`isGateway`, `hairpinMode`) on a
    /// bridge of this test file's own name in every host.
    fn bridged(topology: Topology, mode: &str) -> World {
        let rc = RoutedCluster::with(topology, mode).with_plugin(Plugin::Bridge(BRIDGE.into()));
        World::build(rc, &[])
    }

    fn build(mut rc: RoutedCluster, flags: &[&str]) -> World {
        let hosts = rc.cluster.hosts.len();
        let all: Vec<usize> = (0..hosts).collect();
        rc.start_agents(&all, flags);
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

    /// `client.py ... N full`: answer (`name client-address`) -> count.
    fn ask_full(&self, ns: &Netns, host: &str, port: u16, n: usize) -> BTreeMap<String, u64> {
        let script = self.dir.path().join("client.py");
        let out = ns.sh_ok(&format!(
            "python3 {} tcp {host} {port} {n} full",
            script.display()
        ));
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["counts"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or_default()))
            .collect()
    }

    /// Starts `client.py udp-stream` in `ns` (one socket, `n` datagrams 100 ms apart).
    fn udp_stream(&self, ns: &Netns, host: &str, port: u16, n: usize) -> std::process::Child {
        let script = self.dir.path().join("client.py");
        ns.cmd("python3")
            .args([
                script.to_str().unwrap_or_default(),
                "udp-stream",
                host,
                &port.to_string(),
                &n.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start udp stream")
    }

    /// Waits until a connection from `ns` is answered by any endpoint.
    fn until_any(&self, ns: &Netns, host: &str, port: u16, within: Duration) {
        let start = Instant::now();
        loop {
            let (c, _) = self.ask(ns, "tcp", host, port, 1);
            if c.keys().any(|k| k.starts_with("shop/")) {
                return;
            }
            assert!(
                start.elapsed() < within,
                "{host}:{port} never answered: {c:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
                "{proto} {host}:{port} never answered {want:?} in {} (last {c:?})\n{}",
                ns.name(),
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

/// The bridge of the reef-bridge tests (one per host namespace).
const BRIDGE: &str = "rbr-svc";

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 8080}\n";

/// 3 hosts, an endpoint on each, a client pod on each: every client's connections (TCP and
/// UDP) reach all three endpoints, each at least 10%; a service without endpoints refuses
/// at once; an endpoint that goes gets nothing new.
#[test]
fn a_vip_balances_across_hosts_and_refuses_without_endpoints() {
    balances_and_refuses(World::new(3));
}

/// The same over the VXLAN overlay, and with vxlan-crosssubnet across two subnets.
#[test]
fn a_vip_balances_in_the_vxlan_modes() {
    for (topology, mode) in [
        (Topology::OneSubnet(3), "vxlan"),
        (Topology::TwoSubnets(2), "vxlan-crosssubnet"),
    ] {
        balances_and_refuses(World::in_mode(topology, mode));
    }
}

/// reef-bridge pods (cluster reef-ipam, the bridge as each block's gateway) in routed mode:
/// the same as [`a_vip_balances_across_hosts_and_refuses_without_endpoints`]. Every agent
/// still has its blackhole for its own block, behind the bridge's connected route to it.
#[test]
fn bridge_pods_a_vip_balances_across_hosts() {
    let w = balances_and_refuses(World::bridged(Topology::OneSubnet(3), "routed"));
    w.rc.wait_routes(&[0, 1, 2], &[0, 1, 2], Duration::from_secs(5));
}

/// reef-bridge pods over the VXLAN overlay, and with vxlan-crosssubnet across two subnets;
/// their MTU (the bridge's too) follows reef.vxlan's, as reef-routed pods' does.
#[test]
fn bridge_pods_a_vip_balances_in_the_vxlan_modes() {
    for (topology, mode) in [
        (Topology::OneSubnet(3), "vxlan"),
        (Topology::TwoSubnets(2), "vxlan-crosssubnet"),
    ] {
        let w = balances_and_refuses(World::bridged(topology, mode));
        // web-2's pod is gone (its namespace stays until the end).
        for pod in
            w.rc.pods
                .iter()
                .filter(|p| inspect::has_link(&p.ns, IFNAME))
        {
            let host = w.rc.host(pod.host).ns();
            let overlay = inspect::link_mtu(host, "reef.vxlan");
            assert_eq!(overlay, 1450, "{mode}: reef.vxlan MTU");
            assert_eq!(
                inspect::link_mtu(&pod.ns, IFNAME),
                overlay,
                "{mode}: pod MTU"
            );
            assert_eq!(
                inspect::link_mtu(host, BRIDGE),
                overlay,
                "{mode}: bridge MTU"
            );
        }
    }
}

/// Endpoints on hosts 0..3 and a client pod on each; whatever the cluster's plugin and mode:
/// every client reaches every endpoint pod directly, and every client and every host
/// process reaches every endpoint through the VIP; then the balance and refusals.
fn balances_and_refuses(mut w: World) -> World {
    let eps: Vec<usize> = (0..3)
        .map(|i| w.endpoint(i, &format!("shop/web-{i}"), json!({"app": "web"})))
        .collect();
    let clients: Vec<usize> = (0..3).map(|i| w.rc.add_pod(i)).collect();
    for &c in &clients {
        for &e in &eps {
            let (from, to) = (&w.rc.pods[c], &w.rc.pods[e]);
            assert!(
                ping(&from.ns, &to.ip.to_string(), 1),
                "pod {} on host {} cannot reach pod {} on host {}\n{}",
                from.ip,
                from.host,
                to.ip,
                to.host,
                w.rc.agent_logs()
            );
        }
    }
    w.apply(WEB);
    w.apply("apiVersion: v1\nkind: Service\nmetadata: {name: nobody, namespace: shop}\nspec:\n  selector: {app: ghost}\n  ports: [{name: a, port: 80}, {name: b, port: 53, protocol: UDP}]\n");
    let vip = vip_of(&w.rc, "shop", "web");
    let nobody = vip_of(&w.rc, "shop", "nobody");
    let sources: Vec<&Netns> = clients
        .iter()
        .map(|&c| &w.rc.pods[c].ns)
        .chain((0..3).map(|h| w.rc.host(h).ns()))
        .collect();
    for ns in sources {
        for i in 0..3 {
            w.until(
                ns,
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
    w
}

/// The node port answers on every node's underlay address, from a machine outside the
/// cluster (a host without Reef), whichever node holds the endpoint.
#[test]
fn a_node_port_answers_on_every_node() {
    let w = World::new(3);
    // A reef-portmap mapping of host 0 already holds 30080/tcp: reported, not hidden.
    w.rc.host(0).ns().sh_ok(
        "nft 'add table inet reef-portmap; add map inet reef-portmap any4 { type inet_proto . inet_service : ipv4_addr . inet_service; elements = { tcp . 30080 : 10.66.0.99 . 80 } }'",
    );
    node_port_answers_from_outside(w);
}

/// The same with reef-bridge pods, in routed mode and over the VXLAN overlay.
#[test]
fn bridge_pods_a_node_port_answers_on_every_node() {
    for mode in ["routed", "vxlan"] {
        node_port_answers_from_outside(World::bridged(Topology::OneSubnet(3), mode));
    }
}

/// One endpoint on host 2; a host outside the cluster reaches it at every node's address.
fn node_port_answers_from_outside(mut w: World) {
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

const STICKY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: shop}\nspec:\n  selector: {app: sticky}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: loc, namespace: shop}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  selector: {app: loc}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30090}]\n";

/// ClientIP affinity pins a client to one endpoint; a pod reaching a service that picks
/// itself is answered (hairpin); externalTrafficPolicy Local keeps the client's address and
/// refuses on a node without a local endpoint.
#[test]
fn affinity_hairpin_and_local_node_ports() {
    let mut w = World::new(2);
    let own = w.endpoint(0, "shop/sticky-0", json!({"app": "sticky"}));
    w.endpoint(1, "shop/sticky-1", json!({"app": "sticky"}));
    w.endpoint(0, "shop/loc-0", json!({"app": "loc"}));
    let client = w.rc.add_pod(1);
    w.apply(STICKY);
    let vip = vip_of(&w.rc, "shop", "sticky");
    let c = &w.rc.pods[client].ns;
    w.until_any(c, &vip, 80, Duration::from_secs(10));
    let (counts, _) = w.ask(c, "tcp", &vip, 80, 30);
    assert_eq!(
        counts.len(),
        1,
        "affinity: one endpoint for one client: {counts:?}"
    );
    // Hairpin: sticky-0 through its own service, until the choice is itself (its affinity
    // entry may pin it elsewhere: then any answer proves the path).
    let me = &w.rc.pods[own].ns;
    let (counts, _) = w.ask(me, "tcp", &vip, 80, 5);
    assert_eq!(
        counts.values().sum::<u64>(),
        5,
        "hairpin answered: {counts:?}"
    );
    assert!(
        !counts.contains_key("refused") && !counts.contains_key("timeout"),
        "{counts:?}"
    );
    // Local: the endpoint's node answers and sees the outside client's own address.
    let outside = w.rc.add_host();
    let out_ns = w.rc.host(outside).ns();
    let out_addr = w.rc.host(outside).addr().to_string();
    let node0 = w.rc.host(0).addr().to_string();
    let node1 = w.rc.host(1).addr().to_string();
    w.until(
        out_ns,
        "tcp",
        &node0,
        30090,
        "shop/loc-0",
        Duration::from_secs(10),
    );
    let full = w.ask_full(out_ns, &node0, 30090, 5);
    assert_eq!(
        full.get(&format!("shop/loc-0 {out_addr}")),
        Some(&5),
        "{full:?}"
    );
    let (counts, _) = w.ask(out_ns, "tcp", &node1, 30090, 3);
    assert_eq!(
        counts.get("refused"),
        Some(&3),
        "no local endpoint on node 1: {counts:?}"
    );
}

/// A reef-bridge pod reaching a service whose only endpoint is itself is answered, by TCP and
/// UDP: the bridge sends the DNATed packet back out of the port it came in on (hairpinMode),
/// and the source is masqueraded so the reply returns through the host's conntrack.
#[test]
fn bridge_pods_hairpin() {
    let mut w = World::bridged(Topology::OneSubnet(1), "routed");
    let me = w.endpoint(0, "shop/self-0", json!({"app": "self"}));
    w.apply("apiVersion: v1\nkind: Service\nmetadata: {name: self, namespace: shop}\nspec:\n  selector: {app: self}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 8080}\n");
    let vip = vip_of(&w.rc, "shop", "self");
    let ns = &w.rc.pods[me].ns;
    w.until(ns, "tcp", &vip, 80, "shop/self-0", Duration::from_secs(10));
    for (proto, port) in [("tcp", 80), ("udp", 53)] {
        let (counts, _) = w.ask(ns, proto, &vip, port, 10);
        assert_eq!(
            counts.get("shop/self-0"),
            Some(&10),
            "{proto} hairpin: {counts:?}\n{}",
            w.rc.agent_logs()
        );
    }
}

/// A node whose agent dies (SIGKILL; its 2 s lease expires) stops getting new connections
/// from every host; when its agent is back, it gets them again.
#[test]
fn endpoints_on_a_dead_node_leave_and_come_back() {
    let mut w = World::with_agent_flags(3, &["--lease-ttl", "2"]);
    w.endpoint(1, "shop/web-1", json!({"app": "web"}));
    w.endpoint(2, "shop/web-2", json!({"app": "web"}));
    let client = w.rc.add_pod(0);
    w.apply(WEB);
    let vip = vip_of(&w.rc, "shop", "web");
    for name in ["shop/web-1", "shop/web-2"] {
        w.until(
            &w.rc.pods[client].ns,
            "tcp",
            &vip,
            80,
            name,
            Duration::from_secs(10),
        );
    }
    w.rc.agent(2).sigkill();
    let killed = Instant::now();
    loop {
        let (counts, _) = w.ask(&w.rc.pods[client].ns, "tcp", &vip, 80, 20);
        if counts.keys().all(|k| k == "shop/web-1") {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "web-2 still chosen 10 s after its agent died: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(w.rc.take_agent(2));
    w.rc.start_agent(2, &["--lease-ttl", "2"]);
    w.until(
        &w.rc.pods[client].ns,
        "tcp",
        &vip,
        80,
        "shop/web-2",
        Duration::from_secs(10),
    );
}

/// The client host's agent is SIGKILLed and restarted in the middle of a TCP transfer to a
/// VIP: the transfer completes (the table outlives the agent, and the new agent's full sync
/// changes nothing).
#[test]
fn a_transfer_through_a_vip_survives_an_agent_restart() {
    let mut w = World::new(2);
    let ep = w.endpoint(1, "shop/bulk-0", json!({"app": "bulk"}));
    let client = w.rc.add_pod(0);
    w.apply("apiVersion: v1\nkind: Service\nmetadata: {name: bulk, namespace: shop}\nspec:\n  selector: {app: bulk}\n  ports: [{port: 9000}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: probe, namespace: shop}\nspec:\n  selector: {app: bulk}\n  ports: [{port: 80, targetPort: 8080}]\n");
    let vip = vip_of(&w.rc, "shop", "bulk");
    let probe = vip_of(&w.rc, "shop", "probe");
    w.until(
        &w.rc.pods[client].ns,
        "tcp",
        &probe,
        80,
        "shop/bulk-0",
        Duration::from_secs(10),
    );
    let pod_ip = w.rc.pods[ep].ip;
    let t = reef_tests::traffic::Transfer::paced_via(
        &w.rc.pods[client].ns,
        &w.rc.pods[ep].ns,
        std::net::SocketAddr::from((pod_ip, 9000)),
        format!("{vip}:9000").parse().expect("vip addr"),
        16 * 1024,
        Duration::from_millis(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    w.rc.agent(0).sigkill();
    drop(w.rc.take_agent(0));
    std::thread::sleep(Duration::from_millis(300));
    w.rc.start_agent(0, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let report = t
        .finish()
        .unwrap_or_else(|e| panic!("transfer broke: {e}\n{}", w.rc.agent_logs()));
    assert!(report.bytes > 16 * 1024 * 50, "{report:?}");
}

/// A UDP flow keeps one conntrack entry for as long as it sends: when its endpoint goes,
/// the entry is deleted, so the same socket's next datagrams reach a live endpoint instead
/// of the departed address.
#[test]
fn a_udp_flow_moves_off_a_deleted_endpoint() {
    let mut w = World::new(3);
    let first = w.endpoint(1, "shop/web-1", json!({"app": "web"}));
    let client = w.rc.add_pod(0);
    w.apply(WEB);
    let vip = vip_of(&w.rc, "shop", "web");
    w.until(
        &w.rc.pods[client].ns,
        "udp",
        &vip,
        53,
        "shop/web-1",
        Duration::from_secs(10),
    );
    // One socket, ~10 s of datagrams: its conntrack entry points at web-1.
    let stream = w.udp_stream(&w.rc.pods[client].ns, &vip, 53, 100);
    std::thread::sleep(Duration::from_millis(500));
    w.endpoint(2, "shop/web-2", json!({"app": "web"}));
    w.until(
        &w.rc.pods[client].ns,
        "udp",
        &vip,
        53,
        "shop/web-2",
        Duration::from_secs(10),
    );
    w.rc.del_pod(first);
    let out = stream.wait_with_output().expect("udp stream");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let answers: Vec<&str> = v["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(answers.first(), Some(&"shop/web-1"), "{answers:?}");
    // The flow's last datagrams are answered by web-2.
    let tail = &answers[answers.len() - 10..];
    assert!(tail.iter().all(|a| *a == "shop/web-2"), "{answers:?}");
}

/// An agent whose status changes more often than every ttl/3 (here: a service added every
/// 300 ms) still renews its 2 s lease: its node never reads as dead.
#[test]
fn a_busy_agent_keeps_its_lease() {
    let mut w = World::with_agent_flags(1, &["--lease-ttl", "2"]);
    w.endpoint(0, "shop/web-0", json!({"app": "web"}));
    let node = w.rc.node(0);
    for i in 0..20 {
        w.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: churn-{i}, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        ));
        std::thread::sleep(Duration::from_millis(300));
        let nodes = w.rc.node_ls(0);
        assert_eq!(
            nodes[&node]["alive"],
            json!(true),
            "node read as dead after {i} changes\n{}",
            w.rc.agent_logs()
        );
    }
    assert!(
        !w.rc.agent_logs().contains("heartbeat interrupted"),
        "{}",
        w.rc.agent_logs()
    );
}
