//! The VXLAN overlay modes across two underlay subnets: hosts `h1`, `h2` on 198.18.1.0/24 and
//! `h3`, `h4` on 198.18.2.0/24, joined by a router that knows nothing about pod addresses, a
//! real etcd, one `reef-agent` process per host, and `reef-routed` pods attached through
//! libcni with the cluster `reef-ipam` (fixture: `reef_tests::routed`).
//!
//! - `routed` mode cannot cross the router: same-subnet pods talk, cross-subnet pods do not,
//!   and `reefctl node ls` says why.
//! - `vxlan`: every pod reaches every pod; the device, its fdb, neighbours and routes are
//!   what the contract says; the pod MTU leaves room for the 50-byte header.
//! - `vxlan-crosssubnet`: only cross-subnet traffic is encapsulated (device counters).
//! - An agent restart under traffic changes nothing; a removed node disappears.
//!
//! Expected state comes from the fixture's own knowledge (underlay addresses and subnets),
//! etcd's blocks (etcdctl) and the other hosts' kernels (their `reef.vxlan` MAC), never from
//! the agents or reefctl. Each test has its own cluster, so they run in parallel threads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use reef_tests::agent::*;
use reef_tests::inspect::*;
use reef_tests::monitor::*;
use reef_tests::overlay::*;
use reef_tests::routed::*;
use reef_tests::traffic::*;
use reef_tests::wait_until;
use serde_json::Value;

/// Readiness bound for the agents to program what etcd says (not a performance figure).
const CONVERGE: Duration = Duration::from_secs(10);
/// Hosts per subnet.
const PER_SUBNET: usize = 2;
const ALL: [usize; 4] = [0, 1, 2, 3];
/// Underlay MTU of the simulated hosts, and the VXLAN overhead.
const UNDERLAY_MTU: u64 = 1500;
const VXLAN_OVERHEAD: u64 = 50;

/// A two-subnet cluster in `mode` (`init` adds flags to `reefctl init`), an agent on every
/// host, `pods[h]` pods on host `h`, converged. In the vxlan modes, pods are added once
/// `reef.vxlan` exists on their host (the plugin sizes the pod MTU from it).
fn cluster(mode: &str, init: &[&str], pods: [usize; 4]) -> RoutedCluster {
    let mut args = vec!["--mode", mode];
    args.extend_from_slice(init);
    let mut rc = RoutedCluster::with_init(Topology::TwoSubnets(PER_SUBNET), &args);
    rc.start_agents(&ALL, &[]);
    if mode != "routed" {
        rc.wait_vxlan_dev(&ALL, CONVERGE);
    }
    for h in ALL {
        for _ in 0..pods[h] {
            rc.add_pod(h);
        }
    }
    if mode != "routed" {
        rc.wait_overlay(&ALL, &ALL, mode, CONVERGE);
    }
    rc
}

/// The first pod on host `h`.
fn pod_on(rc: &RoutedCluster, h: usize) -> &Pod {
    rc.pods
        .iter()
        .find(|p| p.host == h)
        .unwrap_or_else(|| panic!("no pod on host {h}"))
}

/// Pings every pod from every other pod (one thread per source); returns the pairs that got
/// no answer within `wait`.
fn ping_failures(rc: &RoutedCluster, wait: Duration) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = rc
            .pods
            .iter()
            .map(|a| {
                let pods = &rc.pods;
                s.spawn(move || {
                    pods.iter()
                        .filter(|b| b.cid != a.cid)
                        .filter(|b| !ping_within(&a.ns, b.ip, wait))
                        .map(|b| format!("{} ({}) -> {} ({})", a.cid, a.ip, b.cid, b.ip))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("ping thread"))
            .collect()
    })
}

/// `ping -M do -s SIZE -c 1 -W 2 DST` inside `ns` (don't fragment).
fn ping_df(ns: &reef_tests::Netns, dst: Ipv4Addr, size: usize) -> Output {
    ns.cmd("ping")
        .args(["-n", "-M", "do", "-c", "1", "-W", "2", "-s"])
        .arg(size.to_string())
        .arg(dst.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run ping")
}

fn text(out: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The host-side veth of a reef-routed pod (the result's interface without a sandbox).
fn host_veth(p: &Pod) -> String {
    p.result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| !matches!(i["sandbox"].as_str(), Some(s) if !s.is_empty()))
        .and_then(|i| i["name"].as_str())
        .unwrap_or_else(|| panic!("no host interface in the result of {}: {}", p.cid, p.result))
        .to_owned()
}

/// A TCP transfer of `bytes` from the first pod on host `a` to the first pod on host `b`;
/// the server must see the client pod's own address.
fn transfer(rc: &RoutedCluster, a: usize, b: usize, bytes: u64) {
    let (src, dst) = (pod_on(rc, a), pod_on(rc, b));
    let report = Transfer::bytes(&src.ns, &dst.ns, dst.ip, bytes)
        .finish()
        .unwrap_or_else(|e| {
            panic!(
                "TCP {} ({}) -> {} ({}): {e}\n{}",
                src.cid,
                src.ip,
                dst.cid,
                dst.ip,
                rc.agent_logs()
            )
        });
    assert_eq!(report.bytes, bytes);
    assert_eq!(
        report.peer.ip(),
        IpAddr::V4(src.ip),
        "server in {} saw {} for a connection from {}",
        dst.cid,
        report.peer,
        src.cid
    );
}

/// `Ip: FragCreates` and `Ip: ReasmReqds` (/proc/net/snmp) of `ns`.
fn frag_stats(ns: &reef_tests::Netns) -> (u64, u64) {
    let snmp = ns.sh_ok("cat /proc/net/snmp");
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
        panic!("no Ip: lines in /proc/net/snmp of {}: {snmp}", ns.name());
    };
    let row: BTreeMap<&str, u64> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    (row["FragCreates"], row["ReasmReqds"])
}

/// [`frag_stats`] of h1, the router and h4.
fn frag_counters(rc: &RoutedCluster) -> Vec<(u64, u64)> {
    vec![
        frag_stats(rc.host(0).ns()),
        frag_stats(rc.cluster.routers[0].ns()),
        frag_stats(rc.host(3).ns()),
    ]
}

/// `reef.vxlan` counters on every host.
fn vxlan_stats(rc: &RoutedCluster) -> Vec<LinkStats> {
    ALL.iter()
        .map(|&h| link_stats(rc.host(h).ns(), VXLAN_DEV))
        .collect()
}

#[test]
fn routed_mode_cannot_cross_the_router_and_node_ls_says_why() {
    let mut rc = RoutedCluster::with(Topology::TwoSubnets(PER_SUBNET), "routed");
    rc.start_agents(&ALL, &[]);
    for h in ALL {
        rc.add_pod(h);
    }
    // Each host routes to the blocks of its own subnet only (plus its own blackhole).
    for h in ALL {
        let same: Vec<usize> = ALL
            .iter()
            .copied()
            .filter(|&o| rc.same_subnet(h, o))
            .collect();
        rc.wait_routes(&[h], &same, CONVERGE);
    }

    for a in ALL {
        for b in ALL.iter().copied().filter(|&b| b != a) {
            let (pa, pb) = (pod_on(&rc, a), pod_on(&rc, b));
            if rc.same_subnet(a, b) {
                assert!(
                    ping_within(&pa.ns, pb.ip, Duration::from_secs(3)),
                    "same subnet: {} ({}) cannot reach {} ({})\n{}",
                    pa.cid,
                    pa.ip,
                    pb.cid,
                    pb.ip,
                    rc.agent_logs()
                );
            } else {
                assert!(
                    !ping1(&pa.ns, pb.ip, "1"),
                    "routed mode across the router: {} ({}) got an answer from {} ({}); \
                     routes on {}: {:?}",
                    pa.cid,
                    pa.ip,
                    pb.cid,
                    pb.ip,
                    rc.node(a),
                    rc.routes(a)
                );
            }
        }
    }

    // Every node reports each node of the other subnet, with the kernel's reason; none of its
    // own subnet.
    let reason = "not on a directly connected network";
    let check = |nodes: &BTreeMap<String, Value>| -> Vec<String> {
        let mut wrong = Vec::new();
        for h in ALL {
            let name = rc.node(h);
            let Some(n) = nodes.get(&name) else {
                wrong.push(format!("{name} missing"));
                continue;
            };
            let problems = n["problems"].as_object().cloned().unwrap_or_default();
            for o in ALL.iter().copied().filter(|&o| o != h) {
                let other = rc.node(o);
                let p = problems.get(&other).and_then(Value::as_str);
                match (rc.same_subnet(h, o), p) {
                    (false, Some(t)) if t.contains(reason) => {}
                    (false, _) => {
                        wrong.push(format!("{name}: no \"{reason}\" about {other}: {p:?}"))
                    }
                    (true, Some(t)) => {
                        wrong.push(format!("{name}: problem about same-subnet {other}: {t}"))
                    }
                    (true, None) => {}
                }
            }
        }
        wrong
    };
    let deadline = Instant::now() + CONVERGE;
    loop {
        let ls = rc.node_ls(0);
        let wrong = check(&ls);
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`reefctl node ls --output json` after {CONVERGE:?}:\n  {}\n{ls:#?}",
            wrong.join("\n  ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = rc.reefctl_json(0, &["status"]);
    let nodes: BTreeMap<String, Value> = status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no nodes array: {status}"))
        .iter()
        .map(|n| (n["name"].as_str().unwrap_or("").to_owned(), n.clone()))
        .collect();
    let wrong = check(&nodes);
    assert!(
        wrong.is_empty(),
        "`reefctl status --output json`:\n  {}\n{status:#}",
        wrong.join("\n  ")
    );
}

#[test]
fn vxlan_full_matrix_device_fdb_neigh_routes_and_mtu() {
    let vni = 7u64;
    let rc = cluster("vxlan", &["--vni", "7"], [2, 1, 2, 1]);
    assert_eq!(
        rc.config(0)["vni"].as_u64(),
        Some(vni),
        "/reef/config: {}",
        rc.config(0)
    );

    // The device on every host.
    let records = rc.node_records(0);
    for h in ALL {
        let ns = rc.host(h).ns();
        let name = rc.node(h);
        let dev = link_details(ns, VXLAN_DEV).expect("reef.vxlan");
        let info = &dev["linkinfo"];
        let data = &info["info_data"];
        assert_eq!(info["info_kind"], "vxlan", "{name}: {dev}");
        assert_eq!(data["id"].as_u64(), Some(vni), "{name}: VNI: {dev}");
        assert_eq!(data["port"].as_u64(), Some(4789), "{name}: dstport: {dev}");
        assert_eq!(
            data["local"].as_str(),
            Some(rc.host(h).addr().to_string().as_str()),
            "{name}: local: {dev}"
        );
        assert_eq!(
            data["link"].as_str(),
            Some(rc.host(h).iface()),
            "{name}: dev: {dev}"
        );
        assert_eq!(data["learning"], false, "{name}: nolearning: {dev}");
        let underlay = link_mtu(ns, rc.host(h).iface());
        assert_eq!(underlay, UNDERLAY_MTU);
        assert_eq!(
            dev["mtu"].as_u64(),
            Some(underlay - VXLAN_OVERHEAD),
            "{name}: MTU: {dev}"
        );
        assert!(
            dev["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            "{name}: reef.vxlan is down: {dev}"
        );
        // VTEP: the first address of the node's lowest block, as /32; the record says the same.
        let want_ip = rc.expected_vtep_ip(0, h).expect("the node owns a block");
        let mac = dev["address"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            link_addrs(ns, VXLAN_DEV),
            BTreeSet::from([format!("{want_ip}/32")]),
            "{name}: addresses on reef.vxlan"
        );
        let rec = records
            .get(&name)
            .unwrap_or_else(|| panic!("no node record for {name}: {records:?}"));
        assert_eq!(
            rec["vtepMac"].as_str(),
            Some(mac.as_str()),
            "{name}: record {rec}"
        );
        assert_eq!(
            rec["vtepIp"].as_str(),
            Some(want_ip.to_string().as_str()),
            "{name}: record {rec}"
        );
        assert_eq!(
            rec["address"].as_str(),
            Some(format!("{}/{}", rc.host(h).addr(), rc.host(h).prefix()).as_str()),
            "{name}: record {rec}"
        );
    }

    // fdb, neighbours and routes: exactly one of each per other node (checked by
    // wait_overlay; spelled out here for h1).
    let h1 = rc.overlay(0);
    assert_eq!(h1.fdb.len(), 3, "h1 fdb: {:?}", h1.fdb);
    assert_eq!(h1.neigh.len(), 3, "h1 neighbours: {:?}", h1.neigh);
    for o in [1usize, 2, 3] {
        let vip = rc.expected_vtep_ip(0, o).expect("block");
        let mac = rc.vtep(o).expect("vtep").mac;
        assert!(
            h1.fdb.contains(&fdb_entry(&mac, rc.host(o).addr())),
            "{h1:?}"
        );
        assert!(h1.neigh.contains(&neigh_entry(vip, &mac)), "{h1:?}");
        for b in rc.blocks_of(0, &rc.node(o)) {
            assert!(h1.routes.contains(&vxlan_route(&b, vip)), "{h1:?}");
        }
    }
    for h in ALL {
        let diff = rc.overlay_diff(h, &ALL, "vxlan");
        assert!(diff.is_empty(), "{}: {diff:?}", rc.node(h));
    }

    // Pod MTU: both ends of every pod's veth follow reef.vxlan.
    for p in &rc.pods {
        assert_eq!(
            link_mtu(&p.ns, IFNAME),
            UNDERLAY_MTU - VXLAN_OVERHEAD,
            "MTU of {} in {}",
            IFNAME,
            p.cid
        );
        let veth = host_veth(p);
        assert_eq!(
            link_mtu(rc.host(p.host).ns(), &veth),
            UNDERLAY_MTU - VXLAN_OVERHEAD,
            "MTU of the host veth {veth} of {}",
            p.cid
        );
    }

    let failures = ping_failures(&rc, Duration::from_secs(3));
    assert!(
        failures.is_empty(),
        "pod pairs without connectivity:\n  {}\n{}",
        failures.join("\n  "),
        rc.agent_logs()
    );

    // TCP between every ordered pair of hosts, pod address preserved.
    for a in ALL {
        for b in ALL.iter().copied().filter(|&b| b != a) {
            transfer(&rc, a, b, 2 << 20);
        }
    }
    // A longer full-size stream across the router, and nothing fragments or reassembles on
    // the way (sender, router, receiver).
    let frag_before = frag_counters(&rc);
    transfer(&rc, 0, 3, 32 << 20);
    let frag_after = frag_counters(&rc);
    assert_eq!(
        frag_after, frag_before,
        "IP fragmentation counters (FragCreates, ReasmReqds) of h1, router, h4 moved during \
         the stream"
    );

    // Across subnets without a routing problem.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let ls = rc.node_ls(0);
        let busy: Vec<String> = ls
            .iter()
            .filter(|(_, n)| !n["problems"].as_object().is_some_and(|p| p.is_empty()))
            .map(|(k, n)| format!("{k}: {}", n["problems"]))
            .collect();
        if busy.is_empty() && ls.len() == ALL.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node ls in vxlan mode reports problems: {busy:?}\n{ls:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Largest unfragmented ICMP payload: 1450 - 20 (IP) - 8 (ICMP) = 1422, DF set, across
    // the router both ways; one byte more does not get through.
    let max = (UNDERLAY_MTU - VXLAN_OVERHEAD - 28) as usize;
    for (a, b) in [(0usize, 2usize), (3, 1)] {
        let (pa, pb) = (pod_on(&rc, a), pod_on(&rc, b));
        let ok = ping_df(&pa.ns, pb.ip, max);
        assert!(
            ok.status.success(),
            "DF ping of {max} bytes {} -> {}: {}",
            pa.ip,
            pb.ip,
            text(&ok)
        );
        let big = ping_df(&pa.ns, pb.ip, max + 1);
        let t = text(&big);
        assert!(
            !big.status.success()
                && (t.contains("message too long")
                    || t.contains(" 0 received")
                    || t.contains("mtu=")),
            "DF ping of {} bytes {} -> {} must fail (message too long / no reply): {t}",
            max + 1,
            pa.ip,
            pb.ip
        );
        eprintln!("DF ping {} bytes {} -> {}: {t}", max + 1, pa.ip, pb.ip);
    }
}

#[test]
fn vxlan_crosssubnet_encapsulates_only_across_the_router() {
    let mode = "vxlan-crosssubnet";
    let rc = cluster(mode, &[], [1, 1, 1, 1]);

    // Routes: same subnet direct on the underlay, the other subnet through reef.vxlan.
    for h in ALL {
        let routes = rc.overlay(h).routes;
        for o in ALL.iter().copied().filter(|&o| o != h) {
            for b in rc.blocks_of(h, &rc.node(o)) {
                let want = if rc.same_subnet(h, o) {
                    direct_route(&b, rc.host(o).addr(), rc.host(h).iface())
                } else {
                    vxlan_route(&b, rc.expected_vtep_ip(h, o).expect("block"))
                };
                assert!(
                    routes.contains(&want),
                    "{}: missing `{want}`: {routes:?}",
                    rc.node(h)
                );
            }
        }
        let diff = rc.overlay_diff(h, &ALL, mode);
        assert!(diff.is_empty(), "{}: {diff:?}", rc.node(h));
    }

    let failures = ping_failures(&rc, Duration::from_secs(3));
    assert!(
        failures.is_empty(),
        "pod pairs without connectivity:\n  {}\n{}",
        failures.join("\n  "),
        rc.agent_logs()
    );

    // Same-subnet traffic (both pairs, both ways, TCP and ping) leaves every reef.vxlan
    // counter where it was.
    let before = vxlan_stats(&rc);
    for (a, b) in [(0usize, 1usize), (1, 0), (2, 3), (3, 2)] {
        transfer(&rc, a, b, 1 << 20);
        let (pa, pb) = (pod_on(&rc, a), pod_on(&rc, b));
        assert!(ping1(&pa.ns, pb.ip, "2"), "{} -> {}", pa.ip, pb.ip);
    }
    let after = vxlan_stats(&rc);
    for h in ALL {
        let d = after[h].since(&before[h]);
        assert!(
            d.is_zero(),
            "{}: same-subnet traffic went through reef.vxlan: {d:?}",
            rc.node(h)
        );
    }

    // Across the router (h1 -> h3): h1 sends and h3 receives at least the payload through
    // reef.vxlan; the uninvolved hosts' counters stay put.
    let bytes = 2u64 << 20;
    let before = vxlan_stats(&rc);
    transfer(&rc, 0, 2, bytes);
    let after = vxlan_stats(&rc);
    let d: Vec<LinkStats> = ALL.iter().map(|&h| after[h].since(&before[h])).collect();
    eprintln!("reef.vxlan deltas for a {bytes}-byte h1 -> h3 transfer: {d:?}");
    assert!(
        d[0].tx_bytes >= bytes,
        "h1 tx through reef.vxlan: {:?}",
        d[0]
    );
    assert!(
        d[0].rx_packets > 0,
        "h1 got the ACKs through reef.vxlan: {:?}",
        d[0]
    );
    assert!(
        d[2].rx_bytes >= bytes,
        "h3 rx through reef.vxlan: {:?}",
        d[2]
    );
    assert!(
        d[2].tx_packets > 0,
        "h3 sent the ACKs through reef.vxlan: {:?}",
        d[2]
    );
    for h in [1usize, 3] {
        assert!(d[h].is_zero(), "{}: {:?}", rc.node(h), d[h]);
    }
}

/// Neighbour/fdb removals on `ifindex` (IPv4 neighbours and fdb entries).
fn overlay_dels(m: &NeighMonitor, ifindex: u32) -> Vec<String> {
    m.events()
        .iter()
        .filter(|e| !e.new && e.ifindex == ifindex)
        .filter(|e| e.family as i32 == libc::AF_INET || e.family as i32 == libc::AF_BRIDGE)
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn vxlan_agent_sigkill_and_restart_during_a_transfer_keeps_the_overlay_and_the_connection() {
    let mode = "vxlan";
    let mut rc = cluster(mode, &[], [1, 1, 1, 1]);
    let before: Vec<Overlay> = ALL.iter().map(|&h| rc.overlay(h)).collect();
    let devs: Vec<(u32, String)> = ALL
        .iter()
        .map(|&h| {
            let ns = rc.host(h).ns();
            (ifindex(ns, VXLAN_DEV), rc.vtep(h).expect("vtep").mac)
        })
        .collect();

    let routes: Vec<RouteMonitor> = ALL
        .iter()
        .map(|&h| RouteMonitor::start(rc.host(h).ns()))
        .collect();
    let neighs: Vec<NeighMonitor> = ALL
        .iter()
        .map(|&h| NeighMonitor::start(rc.host(h).ns()))
        .collect();

    // h1 -> h3 across the router, 32 KiB every 10 ms until both restarts are over.
    let (a, b) = (0usize, 2usize);
    let (src, dst) = (pod_on(&rc, a), pod_on(&rc, b));
    let src_ip = src.ip;
    let transfer = Transfer::paced(
        &src.ns,
        &dst.ns,
        dst.ip,
        32 * 1024,
        Duration::from_millis(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut restarts = Vec::new();
    for h in [a, b] {
        let mut old = rc.take_agent(h);
        old.sigkill();
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        rc.spawn_agent(h, &[]);
        let ready = rc.agent(h).wait_ready(READY_TIMEOUT);
        restarts.push((rc.node(h), ready, t.elapsed()));
        std::thread::sleep(Duration::from_millis(700));
    }
    let report = transfer.finish();
    eprintln!("restarts (node, spawn→ready): {restarts:?}");
    let report = report.unwrap_or_else(|e| {
        panic!(
            "transfer across the agent restarts failed: {e}\n{}",
            rc.agent_logs()
        )
    });
    eprintln!(
        "transfer: {} bytes in {:?}, longest pause at the receiver {:?}",
        report.bytes, report.elapsed, report.max_gap
    );
    assert_eq!(report.peer.ip(), IpAddr::V4(src_ip));
    assert!(report.bytes > 0);

    // Positive controls: both monitors see changes (a TEST-NET route of another protocol; a
    // neighbour on the underlay interface). Neither is the agents' business.
    for h in ALL {
        let ns = rc.host(h).ns();
        ns.sh_ok("ip route add blackhole 192.0.2.0/24 proto 202");
        ns.sh_ok("ip neigh add 192.0.2.9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent");
        let seen = wait_until(Duration::from_secs(2), || {
            routes[h]
                .events()
                .iter()
                .any(|e| e.new && e.protocol == 202 && e.dst == "192.0.2.0/24")
                && neighs[h]
                    .events()
                    .iter()
                    .any(|e| e.new && e.dst == Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))))
        });
        ns.sh_ok("ip route del blackhole 192.0.2.0/24 proto 202");
        ns.sh_ok("ip neigh del 192.0.2.9 dev eth0");
        assert!(seen, "the monitors of {} saw nothing", rc.node(h));
    }

    for h in ALL {
        let name = rc.node(h);
        assert!(
            !routes[h].overflowed(),
            "route monitor of {name} overflowed"
        );
        assert!(
            !neighs[h].overflowed(),
            "neighbour monitor of {name} overflowed"
        );
        let changes: Vec<String> = routes[h]
            .proto_events()
            .iter()
            .map(|e| e.to_string())
            .collect();
        let dels: Vec<&String> = changes.iter().filter(|c| c.starts_with("DEL")).collect();
        assert!(
            dels.is_empty(),
            "{name}: proto 201 routes removed during the restarts: {dels:?}\n{}",
            rc.agent_logs()
        );
        assert!(
            changes.is_empty(),
            "{name}: the restarted agents rewrote routes that were already right (they should \
             only fix differences): {changes:?}"
        );
        let nd = overlay_dels(&neighs[h], devs[h].0);
        assert!(
            nd.is_empty(),
            "{name}: fdb/neighbour entries on reef.vxlan removed during the restarts: {nd:?}\n{}",
            rc.agent_logs()
        );
        // Same device (not recreated), same MAC, same state.
        let ns = rc.host(h).ns();
        assert_eq!(
            (ifindex(ns, VXLAN_DEV), rc.vtep(h).expect("vtep").mac),
            devs[h],
            "{name}: reef.vxlan (ifindex, MAC) after the restarts"
        );
        assert_eq!(
            rc.overlay(h),
            before[h],
            "{name}: overlay after the restarts"
        );
    }
}

#[test]
fn vxlan_a_removed_node_leaves_every_fdb_neighbour_table_and_routing_table() {
    let mode = "vxlan";
    let mut rc = cluster(mode, &[], [1, 1, 1, 1]);
    let gone = 3usize;
    let gone_name = rc.node(gone);
    let vtep = rc.vtep(gone).expect("vtep of the node to remove");
    let gone_blocks = rc.blocks_of(0, &gone_name);
    assert!(!gone_blocks.is_empty(), "{gone_name} owns a block");
    let rest = [0usize, 1, 2];
    for h in rest {
        let o = rc.overlay(h);
        assert!(
            o.fdb.iter().any(|e| e.starts_with(&vtep.mac)),
            "{}: no fdb entry for {gone_name} to begin with: {o:?}",
            rc.node(h)
        );
    }

    let mut agent = rc.take_agent(gone);
    let status = agent.sigterm(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "reef-agent on {gone_name} still runs 5 s after SIGTERM; log:\n{}",
        agent.log()
    );
    rc.reefctl_ok(0, &["node", "rm", &gone_name]);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(5);
    let vip = vtep.ip.to_string();
    for h in rest {
        loop {
            let o = rc.overlay(h);
            let mut left: Vec<String> = o
                .fdb
                .iter()
                .filter(|e| e.starts_with(&vtep.mac))
                .cloned()
                .collect();
            left.extend(
                o.neigh
                    .iter()
                    .filter(|e| e.starts_with(&format!("{vip} ")) || e.contains(&vtep.mac))
                    .cloned(),
            );
            left.extend(
                o.routes
                    .iter()
                    .filter(|r| {
                        gone_blocks.iter().any(|b| r.starts_with(&format!("{b} ")))
                            || r.contains(&format!(" via {vip} "))
                    })
                    .cloned(),
            );
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {gone_name}'s overlay entries still there 5 s after `node rm`: {left:?}\n{}",
                rc.node(h),
                rc.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!(
        "{gone_name}'s fdb/neigh/routes gone everywhere {:?} after node rm",
        t.elapsed()
    );
    assert!(
        !rc.node_records(0).contains_key(&gone_name),
        "node rm removed /reef/nodes/{gone_name}"
    );
    // The rest is exactly the three-node overlay, and still carries traffic across the router.
    rc.wait_overlay(&rest, &rest, mode, CONVERGE);
    for (a, b) in [(0usize, 2usize), (2, 1)] {
        let (pa, pb) = (pod_on(&rc, a), pod_on(&rc, b));
        assert!(
            ping_within(&pa.ns, pb.ip, Duration::from_secs(3)),
            "{} -> {} after node rm",
            pa.cid,
            pb.cid
        );
    }
}
