//! reef-portmap chained behind reef-bridge (raw exec protocol) and behind reef-bridge or the
//! reference bridge through libcni. Every test builds its own world of namespaces:
//!
//! ```text
//!   outside O (another host)            host H                         pod P
//!   eth0 198.18.0.2/24 ──veth── up0 198.18.0.1/24      bridge pmbr0 ── eth0 10.x.0.2
//!        fd00:198:18::2/64          fd00:198:18::1/64  (reef-bridge)       fd00:x::2
//! ```
//!
//! P runs a small TCP+UDP server that answers `<pod name> <client address>`, so each answer
//! says which pod served it and from which source address it saw the client: traffic from
//! other hosts must keep its source, hairpin and localhost traffic is masqueraded.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const IFNAME: &str = "eth0";
const BRIDGE: &str = "pmbr0";
const TABLE: &str = "reef-portmap";
const HOST4: &str = "198.18.0.1";
const OUT4: &str = "198.18.0.2";
const HOST6: &str = "fd00:198:18::1";
const OUT6: &str = "fd00:198:18::2";
/// The Reef code for "host port already mapped".
const PORT_CONFLICT: u64 = 106;

const SERVER: &str = r#"
import socket, sys, threading
port, name = int(sys.argv[1]), sys.argv[2]
def answer(addr):
    a = addr[0]
    return (name + " " + (a[7:] if a.startswith("::ffff:") else a) + "\n").encode()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(answer(a), a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
s.listen(64)
while True:
    c, a = s.accept()
    try:
        c.sendall(answer(a))
    finally:
        c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=2)
    print(s.recv(256).decode().strip())
else:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(1)
    s.bind(("", sport))
    s.sendto(b"?", (host, port))
    print(s.recvfrom(256)[0].decode().strip())
"#;

/// The namespaces of one test. Field order is drop order: servers, then namespaces.
struct World {
    servers: Vec<ChildGuard>,
    outside: Netns,
    env: HostWithPods,
}

impl World {
    fn new(pods: usize) -> World {
        let env = HostWithPods::new(pods);
        let outside = Netns::new("outside").expect("outside netns");
        env.host.sh_ok(&format!(
            "ip link add up0 type veth peer name eth0 netns {o} && \
             ip addr add {HOST4}/24 dev up0 && ip addr add {HOST6}/64 dev up0 nodad && \
             ip link set up0 up",
            o = outside.name()
        ));
        outside.sh_ok(&format!(
            "ip addr add {OUT4}/24 dev eth0 && ip addr add {OUT6}/64 dev eth0 nodad && \
             ip link set eth0 up"
        ));
        for (name, text) in [("server.py", SERVER), ("client.py", CLIENT)] {
            std::fs::write(env.dir.path().join(name), text).expect("write script");
        }
        World {
            servers: Vec::new(),
            outside,
            env,
        }
    }

    fn script(&self, name: &str) -> PathBuf {
        self.env.dir.path().join(name)
    }

    /// Starts the answering server on `port` in pod `i`, named `name`.
    fn serve(&mut self, i: usize, port: u16, name: &str) {
        let guard = self.env.pods[i]
            .spawn(
                "python3",
                [
                    self.script("server.py").to_str().unwrap_or_default(),
                    &port.to_string(),
                    name,
                ],
            )
            .expect("start server");
        self.servers.push(guard);
    }

    /// One request from `ns`: the answer, or None if it failed.
    fn ask(
        &self,
        ns: &Netns,
        proto: &str,
        host: &str,
        port: u16,
        sport: Option<u16>,
    ) -> Option<String> {
        let mut cmd = ns.cmd("python3");
        cmd.arg(self.script("client.py"))
            .args([proto, host, &port.to_string()]);
        if let Some(s) = sport {
            cmd.arg(s.to_string());
        }
        let out = output_with_timeout(&mut cmd, None, Duration::from_secs(30)).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The answer once there is one (a server just started or a path just set up may need
    /// a moment; this is a readiness wait, not a timing assertion).
    fn ask_until(
        &self,
        ns: &Netns,
        proto: &str,
        host: &str,
        port: u16,
        sport: Option<u16>,
        want: &str,
    ) -> String {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(20), || {
            last = self.ask(ns, proto, host, port, sport);
            last.as_deref() == Some(want)
        });
        assert!(
            ok,
            "{proto} {host}:{port} from {}: wanted {want:?}, last answer {last:?}\nportmap table:\n{}",
            ns.name(),
            nft_table_text(&self.env.host, TABLE)
        );
        want.to_owned()
    }
}

fn ranges(octet: u8) -> Value {
    json!([[{"subnet": format!("10.{octet}.0.0/24")}], [{"subnet": format!("fd00:{octet}::/64")}]])
}

fn bridge_conf_for(w: &World, version: &str, net: &str, octet: u8) -> Value {
    bridge_conf(
        version,
        net,
        BRIDGE,
        ranges(octet),
        &w.env.data_dir(),
        // hairpinMode: with br_netfilter loaded, hairpin DNAT happens at the bridge layer
        // and the frame must go back out of the port it came in on.
        json!({"isGateway": true, "ipMasq": true, "hairpinMode": true}),
    )
}

/// The portmap config as a runtime sends it (after libcni's capability injection).
fn portmap_conf(version: &str, net: &str, mappings: Value, prev: Option<&Value>) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": net,
        "type": "reef-portmap",
        "runtimeConfig": {"portMappings": mappings},
    });
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

fn portmap_call(command: &str, pod: &Netns, cid: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-portmap")
        .command(command)
        .runtime(pod.path(), cid, IFNAME)
        .path(&cni_path())
        .config(conf)
}

/// ADD of reef-bridge for pod `i`; returns its result.
fn add_bridge(w: &World, version: &str, net: &str, octet: u8, i: usize, cid: &str) -> Value {
    let conf = bridge_conf_for(w, version, net, octet);
    let add = bridge_call("ADD", w.env.pods[i].path(), cid, IFNAME, &conf).run(&w.env.host);
    expect_ok(&add, &format!("reef-bridge ADD {cid}"))
        .result()
        .clone()
}

/// The elements of the table's maps (see `inspect::portmap_elements`).
fn elements(w: &World) -> Vec<String> {
    portmap_elements(&w.env.host)
}

/// Conntrack entries of the host namespace mentioning `needle`.
fn conntrack_lines(w: &World, needle: &str) -> Vec<String> {
    let out = w.env.host.sh("cat /proc/net/nf_conntrack 2>/dev/null");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The core scenario under one spec version: every path to a mapped port, CHECK, DEL.
fn reach_the_pod_from_everywhere(version: &str, octet: u8) {
    let mut w = World::new(1);
    let net = format!("pm{octet}");
    let prev = add_bridge(&w, version, &net, octet, 0, "web");
    let pod4 = result_ip(&prev, false);
    let pod6 = result_ip(&prev, true);
    w.serve(0, 80, "web");
    let maps = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let conf = portmap_conf(version, &net, maps, Some(&prev));
    let pod = &w.env.pods[0];
    let add = portmap_call("ADD", pod, "web", &conf).run(&w.env.host);
    let result = expect_ok(&add, &format!("portmap ADD ({version})"))
        .result()
        .clone();
    assert_eq!(result, prev, "ADD returns prevResult unchanged");

    // Another host keeps its own source address; the pod answers directly.
    w.ask_until(&w.outside, "tcp", HOST4, 8080, None, &format!("web {OUT4}"));
    w.ask_until(&w.outside, "tcp", HOST6, 8080, None, &format!("web {OUT6}"));
    // The host itself, through its own address (no masquerade needed) and through
    // 127.0.0.1 (masqueraded to the bridge's address).
    w.ask_until(
        &w.env.host,
        "tcp",
        HOST4,
        8080,
        None,
        &format!("web {HOST4}"),
    );
    let gw4 = result_gateway(&prev, false);
    let gw6 = result_gateway(&prev, true);
    w.ask_until(
        &w.env.host,
        "tcp",
        "127.0.0.1",
        8080,
        None,
        &format!("web {gw4}"),
    );
    // Hairpin: the pod through the host's address reaches itself, masqueraded.
    w.ask_until(pod, "tcp", HOST4, 8080, None, &format!("web {gw4}"));
    w.ask_until(pod, "tcp", HOST6, 8080, None, &format!("web {gw6}"));
    // ::1 is never DNATed (the kernel cannot route a ::1 source off the host).
    assert_eq!(w.ask(&w.env.host, "tcp", "::1", 8080, None), None);

    let els = elements(&w);
    assert_eq!(els.len(), 2, "one element per family: {els:?}");
    assert!(
        els.iter().any(|e| e.contains(&pod4)) && els.iter().any(|e| e.contains(&pod6)),
        "{els:?}"
    );

    // CHECK passes, then fails once the IPv6 element is removed by hand.
    let with = with_prev(&conf, &prev);
    expect_ok(
        &portmap_call("CHECK", pod, "web", &with).run(&w.env.host),
        "CHECK",
    );
    if netns_fixtures::firewall::is_iptables() {
        let rule = w
            .env
            .host
            .sh_ok("ip6tables-save -t nat | grep -- '-A REEF-HOSTPORTS .*--dport 8080 '");
        let rule = rule
            .lines()
            .next()
            .unwrap_or_default()
            .replacen("-A ", "-D ", 1);
        w.env.host.sh_ok(&format!("ip6tables -t nat {rule}"));
    } else {
        w.env.host.sh_ok(&format!(
            "nft delete element inet {TABLE} any6 '{{ tcp . 8080 }}'"
        ));
    }
    let check = portmap_call("CHECK", pod, "web", &with).run(&w.env.host);
    let msg = expect_error(&check, 101, "CHECK after the element was removed");
    assert!(msg.contains("8080"), "{msg}");

    // DEL removes the rest; a repeated DEL succeeds; the port is no longer mapped.
    for attempt in ["first", "second"] {
        expect_ok(
            &portmap_call("DEL", pod, "web", &with).run(&w.env.host),
            &format!("{attempt} DEL"),
        );
    }
    assert_eq!(elements(&w), Vec::<String>::new());
    assert_eq!(w.ask(&w.outside, "tcp", HOST4, 8080, None), None);
    // The pod itself still serves on its own address.
    w.ask_until(&w.env.host, "tcp", &pod4, 80, None, &format!("web {gw4}"));
}

#[test]
fn reach_the_pod_from_everywhere_0_4_0() {
    reach_the_pod_from_everywhere("0.4.0", 140);
}

#[test]
fn reach_the_pod_from_everywhere_1_0_0() {
    reach_the_pod_from_everywhere("1.0.0", 141);
}

#[test]
fn reach_the_pod_from_everywhere_1_1_0() {
    reach_the_pod_from_everywhere("1.1.0", 142);
}

#[test]
fn host_ip_restricts_the_mapping() {
    let mut w = World::new(1);
    w.env.host.sh_ok("ip addr add 198.18.0.3/24 dev up0");
    let net = "pmhostip";
    let prev = add_bridge(&w, "1.0.0", net, 143, 0, "hip");
    w.serve(0, 80, "hip");
    let maps = json!([{"hostPort": 8081, "containerPort": 80, "hostIP": HOST4}]);
    let conf = portmap_conf("1.0.0", net, maps, Some(&prev));
    let pod = &w.env.pods[0];
    expect_ok(
        &portmap_call("ADD", pod, "hip", &conf).run(&w.env.host),
        "ADD",
    );
    w.ask_until(&w.outside, "tcp", HOST4, 8081, None, &format!("hip {OUT4}"));
    assert_eq!(
        w.ask(&w.outside, "tcp", "198.18.0.3", 8081, None),
        None,
        "another address of the host is not mapped"
    );
    let els = elements(&w);
    assert_eq!(els.len(), 1, "only the IPv4 pod address: {els:?}");
    expect_ok(
        &portmap_call("CHECK", pod, "hip", &conf).run(&w.env.host),
        "CHECK",
    );
    expect_ok(
        &portmap_call("DEL", pod, "hip", &conf).run(&w.env.host),
        "DEL",
    );
    assert_eq!(elements(&w), Vec::<String>::new());
}

#[test]
fn udp_mapping_and_its_conntrack_entries_go_on_del() {
    let mut w = World::new(2);
    let net = "pmudp";
    let prev_a = add_bridge(&w, "1.1.0", net, 144, 0, "udp-a");
    let prev_b = add_bridge(&w, "1.1.0", net, 144, 1, "udp-b");
    w.serve(0, 53, "a");
    w.serve(1, 53, "b");
    let maps = json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]);
    let conf_a = portmap_conf("1.1.0", net, maps.clone(), Some(&prev_a));
    let conf_b = portmap_conf("1.1.0", net, maps, Some(&prev_b));
    let (pa, pb) = (&w.env.pods[0], &w.env.pods[1]);
    // A flow that starts before the mapping exists is tracked untranslated (to the host
    // itself); ADD must delete that entry, or the flow would keep bypassing the mapping.
    assert_eq!(w.ask(&w.outside, "udp", HOST4, 5353, Some(40000)), None);
    assert!(
        !conntrack_lines(&w, "dport=5353").is_empty(),
        "the early flow is tracked: {:?}",
        conntrack_lines(&w, "")
    );
    expect_ok(
        &portmap_call("ADD", pa, "udp-a", &conf_a).run(&w.env.host),
        "ADD a",
    );
    // The client always uses source port 40000: the same conntrack tuple every time.
    w.ask_until(
        &w.outside,
        "udp",
        HOST4,
        5353,
        Some(40000),
        &format!("a {OUT4}"),
    );
    w.ask_until(
        &w.outside,
        "udp",
        HOST6,
        5353,
        Some(40000),
        &format!("a {OUT6}"),
    );
    let ip_a = result_ip(&prev_a, false);
    assert!(
        !conntrack_lines(&w, "dport=5353").is_empty(),
        "the flow is tracked: {:?}",
        conntrack_lines(&w, "")
    );

    // DEL a (pod a keeps running and would keep answering a stale flow).
    expect_ok(
        &portmap_call("DEL", pa, "udp-a", &conf_a).run(&w.env.host),
        "DEL a",
    );
    assert!(
        wait_until(Duration::from_secs(20), || conntrack_lines(
            &w,
            "dport=5353"
        )
        .is_empty()),
        "conntrack entries of the removed UDP mapping remain: {:?}",
        conntrack_lines(&w, "dport=5353")
    );
    assert!(elements(&w).iter().all(|e| !e.contains(&ip_a)));

    // The same host port for pod b: the same client flow now reaches b.
    expect_ok(
        &portmap_call("ADD", pb, "udp-b", &conf_b).run(&w.env.host),
        "ADD b",
    );
    w.ask_until(
        &w.outside,
        "udp",
        HOST4,
        5353,
        Some(40000),
        &format!("b {OUT4}"),
    );
    expect_ok(
        &portmap_call("DEL", pb, "udp-b", &conf_b).run(&w.env.host),
        "DEL b",
    );
    assert_eq!(elements(&w), Vec::<String>::new());
}

/// A port held by one container: a second container's ADD fails with 106 and installs
/// nothing; a retried DEL of the first (with or without prevResult) never removes the
/// second's mapping once it owns the port.
#[test]
fn a_mapped_port_is_not_taken_over() {
    let mut w = World::new(2);
    let net = "pmconflict";
    let version = "1.1.0";
    let prev_a = add_bridge(&w, version, net, 145, 0, "ctr-a");
    let prev_b = add_bridge(&w, version, net, 145, 1, "ctr-b");
    w.serve(0, 80, "a");
    w.serve(1, 80, "b");
    let conf_a = portmap_conf(
        version,
        net,
        json!([{"hostPort": 8082, "containerPort": 80}]),
        Some(&prev_a),
    );
    let conf_b = portmap_conf(
        version,
        net,
        json!([{"hostPort": 9092, "containerPort": 80}, {"hostPort": 8082, "containerPort": 80}]),
        Some(&prev_b),
    );
    let (pa, pb) = (&w.env.pods[0], &w.env.pods[1]);
    expect_ok(
        &portmap_call("ADD", pa, "ctr-a", &conf_a).run(&w.env.host),
        "ADD a",
    );
    let before = elements(&w);

    let add_b = portmap_call("ADD", pb, "ctr-b", &conf_b).run(&w.env.host);
    let msg = expect_error(&add_b, PORT_CONFLICT, "ADD b of a taken port");
    assert!(msg.contains("8082") && msg.contains("tcp"), "{msg}");
    assert_eq!(elements(&w), before, "the failed ADD changed nothing");
    // A single address of the host overlapping a's every-address mapping also conflicts.
    let conf_b_ip = portmap_conf(
        version,
        net,
        json!([{"hostPort": 8082, "containerPort": 80, "hostIP": HOST4}]),
        Some(&prev_b),
    );
    let add_b_ip = portmap_call("ADD", pb, "ctr-b", &conf_b_ip).run(&w.env.host);
    expect_error(
        &add_b_ip,
        PORT_CONFLICT,
        "ADD b of a taken port on one address",
    );
    assert_eq!(elements(&w), before);
    // The runtime cleans up the failed attachment: that DEL must not touch a's mapping.
    expect_ok(
        &portmap_call("DEL", pb, "ctr-b", &conf_b).run(&w.env.host),
        "DEL b",
    );
    assert_eq!(elements(&w), before);
    w.ask_until(&w.outside, "tcp", HOST4, 8082, None, &format!("a {OUT4}"));

    // a leaves, b takes the port.
    expect_ok(
        &portmap_call("DEL", pa, "ctr-a", &conf_a).run(&w.env.host),
        "DEL a",
    );
    expect_ok(
        &portmap_call("ADD", pb, "ctr-b", &conf_b).run(&w.env.host),
        "ADD b",
    );
    w.ask_until(&w.outside, "tcp", HOST4, 8082, None, &format!("b {OUT4}"));
    let owned_by_b = elements(&w);
    assert_eq!(owned_by_b.len(), 4, "{owned_by_b:?}");

    // Retried DELs of a: with its prevResult, without prevResult, without anything.
    let bare = json!({"cniVersion": version, "name": net, "type": "reef-portmap"});
    let mut no_prev = conf_a.clone();
    no_prev.as_object_mut().map(|o| o.remove("prevResult"));
    for (what, c) in [
        ("stale prevResult", &conf_a),
        ("no prevResult", &no_prev),
        ("bare", &bare),
    ] {
        let del = CniCall::plugin("reef-portmap")
            .command("DEL")
            .container_id("ctr-a")
            .ifname(IFNAME)
            .path(&cni_path())
            .config(c)
            .run(&w.env.host);
        expect_ok(&del, &format!("retried DEL of a ({what})"));
        assert_eq!(elements(&w), owned_by_b, "retried DEL of a ({what})");
    }
    w.ask_until(&w.outside, "tcp", HOST4, 8082, None, &format!("b {OUT4}"));
    expect_ok(
        &portmap_call("CHECK", pb, "ctr-b", &conf_b).run(&w.env.host),
        "CHECK b",
    );
    // b's DEL without prevResult or capability args still finds its elements by owner.
    let del_b = CniCall::plugin("reef-portmap")
        .command("DEL")
        .container_id("ctr-b")
        .ifname(IFNAME)
        .path(&cni_path())
        .config(&bare)
        .run(&w.env.host);
    expect_ok(&del_b, "DEL b without prevResult");
    assert_eq!(elements(&w), Vec::<String>::new());
}

#[test]
fn gc_removes_mappings_of_attachments_not_listed_and_status_is_ok() {
    let w = World::new(2);
    let net = "pmgc";
    let version = "1.1.0";
    let mut prevs = Vec::new();
    for (i, cid) in ["gc-a", "gc-b"].iter().enumerate() {
        let prev = add_bridge(&w, version, net, 146, i, cid);
        let conf = portmap_conf(
            version,
            net,
            json!([{"hostPort": 8090 + i, "containerPort": 80}]),
            Some(&prev),
        );
        expect_ok(
            &portmap_call("ADD", &w.env.pods[i], cid, &conf).run(&w.env.host),
            "ADD",
        );
        prevs.push(prev);
    }
    // Another network's mapping is outside this GC's scope.
    let other = portmap_conf(
        version,
        "pmgc-other",
        json!([{"hostPort": 7070, "containerPort": 80}]),
        Some(&prevs[0]),
    );
    expect_ok(
        &portmap_call("ADD", &w.env.pods[0], "gc-other", &other).run(&w.env.host),
        "ADD other net",
    );
    assert_eq!(elements(&w).len(), 6);

    let gc_conf = json!({
        "cniVersion": version, "name": net, "type": "reef-portmap",
        "cni.dev/valid-attachments": [{"containerID": "gc-b", "ifname": IFNAME}],
    });
    let gc = CniCall::plugin("reef-portmap")
        .command("GC")
        .path(&cni_path())
        .config(&gc_conf);
    expect_ok(&gc.run(&w.env.host), "GC");
    let left = elements(&w);
    assert_eq!(left.len(), 4, "{left:?}");
    let text = elements(&w).join("\n");
    assert!(!text.contains("pmgc/gc-a/"), "{text}");
    assert!(
        text.contains("pmgc/gc-b/eth0") && text.contains("pmgc-other/gc-other/eth0"),
        "{text}"
    );

    let status = CniCall::plugin("reef-portmap")
        .command("STATUS")
        .path(&cni_path())
        .config(&gc_conf);
    expect_ok(&status.run(&w.env.host), "STATUS");
    // Still needed by gc-b and gc-other: route_localnet stays on until GC takes the last.
    let route_localnet = || {
        w.env
            .host
            .sh_ok(&format!("sysctl -n net.ipv4.conf.{BRIDGE}.route_localnet"))
            .trim()
            .to_string()
    };
    assert_eq!(route_localnet(), "1");
    for n in [net, "pmgc-other"] {
        let none = json!({
            "cniVersion": version, "name": n, "type": "reef-portmap",
            "cni.dev/valid-attachments": [],
        });
        let gc = CniCall::plugin("reef-portmap")
            .command("GC")
            .path(&cni_path())
            .config(&none);
        expect_ok(&gc.run(&w.env.host), &format!("GC of every {n} attachment"));
    }
    assert_eq!(elements(&w), Vec::<String>::new());
    assert_eq!(
        route_localnet(),
        "0",
        "GC of the last mapping gives it back"
    );
    // GC and STATUS need 1.1.0.
    let old = at_version(&gc_conf, "1.0.0");
    let gc_old = CniCall::plugin("reef-portmap")
        .command("GC")
        .path(&cni_path())
        .config(&old);
    expect_error(&gc_old.run(&w.env.host), 1, "GC at 1.0.0");
}

#[test]
fn bad_input_is_a_clean_cni_error() {
    let w = World::new(1);
    let pod = &w.env.pods[0];
    let maps = json!([{"hostPort": 8080, "containerPort": 80}]);
    // Not chained: no prevResult.
    let c = portmap_conf("1.0.0", "pmbad", maps.clone(), None);
    let msg = expect_error(
        &portmap_call("ADD", pod, "bad", &c).run(&w.env.host),
        7,
        "ADD without prevResult",
    );
    assert!(msg.contains("prevResult"), "{msg}");
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.2/24"}]});
    for (what, m) in [
        ("port 0", json!([{"hostPort": 0, "containerPort": 80}])),
        (
            "unknown protocol",
            json!([{"hostPort": 1, "containerPort": 80, "protocol": "icmp"}]),
        ),
        (
            "bad hostIP",
            json!([{"hostPort": 1, "containerPort": 80, "hostIP": "x"}]),
        ),
        (
            "no pod address of hostIP's family",
            json!([{"hostPort": 1, "containerPort": 80, "hostIP": HOST6}]),
        ),
    ] {
        let c = portmap_conf("1.0.0", "pmbad", m, Some(&prev));
        expect_error(
            &portmap_call("ADD", pod, "bad", &c).run(&w.env.host),
            7,
            what,
        );
    }
    let mut snat_off = portmap_conf("1.0.0", "pmbad", maps.clone(), Some(&prev));
    snat_off["snat"] = json!(false);
    expect_error(
        &portmap_call("ADD", pod, "bad", &snat_off).run(&w.env.host),
        7,
        "snat: false",
    );
    assert_eq!(elements(&w), Vec::<String>::new(), "nothing was installed");
    // No mappings: prevResult passes through and nothing is created.
    let none = portmap_conf("1.0.0", "pmbad", json!([]), Some(&prev));
    let out = portmap_call("ADD", pod, "bad", &none).run(&w.env.host);
    assert_eq!(
        expect_ok(&out, "ADD without mappings").result()["ips"],
        prev["ips"]
    );
    assert!(
        !w.env
            .host
            .sh(&format!("nft list table inet {TABLE}"))
            .status
            .success(),
        "no table without mappings"
    );
}

/// route_localnet (needed for 127.0.0.1 mappings) does not let pods reach the host's
/// loopback-only services, even after a firewall reload: the loopback guard at the bridge's
/// tc ingress drops such packets without any netfilter rule.
#[test]
fn pods_cannot_reach_host_loopback_services() {
    let mut w = World::new(1);
    let net = "pmlocal";
    let prev = add_bridge(&w, "1.0.0", net, 147, 0, "lo");
    let conf = portmap_conf(
        "1.0.0",
        net,
        json!([{"hostPort": 8083, "containerPort": 80}]),
        Some(&prev),
    );
    let pod = &w.env.pods[0];
    expect_ok(
        &portmap_call("ADD", pod, "lo", &conf).run(&w.env.host),
        "ADD",
    );
    assert_eq!(
        w.env
            .host
            .sh_ok(&format!("sysctl -n net.ipv4.conf.{BRIDGE}.route_localnet"))
            .trim(),
        "1"
    );
    // A loopback-only service on the host, and a pod that routes 127.0.0.1 to its gateway.
    let srv = w
        .env
        .host
        .cmd("python3")
        .args([
            w.script("server.py").to_str().unwrap_or_default(),
            "9999",
            "hostlo",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start host server");
    w.servers.push(ChildGuard::from(srv));
    w.ask_until(
        &w.env.host,
        "tcp",
        "127.0.0.1",
        9999,
        None,
        "hostlo 127.0.0.1",
    );
    let gw = result_gateway(&prev, false);
    pod.sh_ok(&format!(
        "ip addr flush dev lo && ip route flush table local && \
         sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1 && \
         ip route add local {ip} dev eth0 table local && ip route add 127.0.0.0/8 via {gw} dev eth0",
        ip = result_ip(&prev, false)
    ));
    assert_eq!(
        w.ask(pod, "tcp", "127.0.0.1", 9999, None),
        None,
        "pod reached the host's 127.0.0.1:9999"
    );
    // A firewall reload takes every nftables rule away; the pod is still kept out.
    w.env.host.sh_ok("nft flush ruleset");
    assert_eq!(
        w.ask(pod, "tcp", "127.0.0.1", 9999, None),
        None,
        "pod reached the host's 127.0.0.1:9999 after nft flush ruleset"
    );
    // Proof that the guard is what stopped it: without it (and with route_localnet still
    // on, as the reload left it), it works.
    w.env
        .host
        .sh_ok(&format!("tc filter del dev {BRIDGE} ingress pref 1"));
    w.ask_until(
        pod,
        "tcp",
        "127.0.0.1",
        9999,
        None,
        &format!("hostlo {}", result_ip(&prev, false)),
    );
}

/// Through libcni (cnitool with CAP_ARGS): the conflist declares the capability, libcni
/// injects runtimeConfig.portMappings and prevResult, and caches them for CHECK and DEL.
fn through_libcni(main: Value, net: &str, port: u16) {
    let mut w = World::new(1);
    w.serve(0, 80, "lib");
    let list = conflist(
        net,
        vec![
            main,
            json!({"type": "reef-portmap", "capabilities": {"portMappings": true}}),
        ],
    );
    let file = w.env.write_conflist(&list);
    let cap = json!({"portMappings": [
        {"hostPort": port, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": port, "containerPort": 80, "protocol": "udp"},
    ]});
    let tool = w.env.cnitool().cap_args(&cap);
    let pod = &w.env.pods[0];
    let out = tool.add(&file, pod.path(), "lib", IFNAME);
    let result = parse_stdout(&assert_success(&out, "cnitool add"), "cnitool add");
    let pod4 = result_ip(&result, false);
    w.ask_until(&w.outside, "tcp", HOST4, port, None, &format!("lib {OUT4}"));
    w.ask_until(&w.outside, "udp", HOST4, port, None, &format!("lib {OUT4}"));
    w.ask_until(
        pod,
        "tcp",
        HOST4,
        port,
        None,
        &format!("lib {}", result_gateway(&result, false)),
    );
    let els = elements(&w);
    assert_eq!(els.len(), 2, "{els:?}");
    assert!(els.iter().all(|e| e.contains(&pod4)), "{els:?}");
    assert_success(
        &tool.check(&file, pod.path(), "lib", IFNAME),
        "cnitool check",
    );
    for attempt in ["first", "second"] {
        assert_success(
            &tool.del(&file, pod.path(), "lib", IFNAME),
            &format!("{attempt} cnitool del"),
        );
    }
    assert_eq!(elements(&w), Vec::<String>::new());
    assert_eq!(w.ask(&w.outside, "tcp", HOST4, port, None), None);
}

#[test]
fn through_libcni_behind_reef_bridge() {
    let dir = tempdir();
    let main = json!({
        "type": "reef-bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
        "hairpinMode": true,
        "ipam": {"type": "reef-ipam", "ranges": [[{"subnet": "10.148.0.0/24"}]],
                 "dataDir": dir.path()},
    });
    through_libcni(main, "pmlib-reef", 8084);
}

#[test]
fn through_libcni_behind_reference_bridge() {
    let dir = tempdir();
    let main = json!({
        "type": "bridge", "bridge": "pmref0", "isGateway": true, "ipMasq": true,
        "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.149.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.path()},
    });
    through_libcni(main, "pmlib-ref", 8085);
}
