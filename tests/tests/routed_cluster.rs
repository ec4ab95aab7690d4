//! Routed mode across simulated hosts: `reef-routed` pods (through libcni, with the cluster
//! `reef-ipam`) and one `reef-agent` process per host against a real etcd, all inside network
//! namespaces (fixture: `reef_tests::routed`).
//!
//! Each test builds its own cluster (its own etcd), so the tests run in parallel threads and
//! may all use the pool 10.66.0.0/16 with /26 blocks. Expected routes are derived from etcd
//! (read with etcdctl) and the underlay addresses the fixture gave the hosts, never from the
//! agent or reefctl.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use reef_tests::agent::*;
use reef_tests::monitor::*;
use reef_tests::routed::*;
use reef_tests::traffic::*;
use reef_tests::wait_until;
use serde_json::Value;

/// Bound for the agents to program what etcd says after a setup step (generous: this is a
/// readiness wait, not the convergence figure; the bench measures that).
const CONVERGE: Duration = Duration::from_secs(10);

fn ipv4(s: &str) -> Ipv4Addr {
    s.parse()
        .unwrap_or_else(|_| panic!("not an IPv4 address: {s}"))
}

/// `rc` with an agent on each of `hosts` hosts and `per_host` pods on each, converged.
fn cluster(hosts: usize, per_host: usize, agent_args: &[&str]) -> RoutedCluster {
    let mut rc = RoutedCluster::new(hosts);
    let all: Vec<usize> = (0..hosts).collect();
    rc.start_agents(&all, agent_args);
    for h in 0..hosts {
        for _ in 0..per_host {
            rc.add_pod(h);
        }
    }
    rc.wait_routes(&all, &all, CONVERGE);
    rc
}

#[test]
fn three_hosts_full_ping_matrix_tcp_between_every_pair_and_proto_201_routes() {
    let rc = cluster(3, 2, &[]);
    let all = [0, 1, 2];

    // Each host got one block (2 pods fit in a /26); the routes are exactly: the two remote
    // blocks via their hosts' underlay addresses, and a blackhole for its own block.
    let blocks = rc.blocks(0);
    let mut block_of = BTreeMap::new();
    for h in all {
        let own: Vec<&String> = blocks
            .iter()
            .filter(|(_, n)| **n == rc.node(h))
            .map(|(c, _)| c)
            .collect();
        assert_eq!(own.len(), 1, "{} owns one block: {blocks:?}", rc.node(h));
        block_of.insert(h, own[0].clone());
    }
    for h in all {
        let mut want = BTreeSet::from([format!("blackhole {}", block_of[&h])]);
        for o in all.iter().filter(|&&o| o != h) {
            want.insert(format!("{} via {}", block_of[o], rc.host(*o).addr()));
        }
        assert_eq!(
            rc.routes(h),
            want,
            "`ip route show proto 201` on {}",
            rc.node(h)
        );
    }
    // Every pod's address is in its host's block.
    for p in &rc.pods {
        let block = &block_of[&p.host];
        let (net, _) = block.split_once('/').expect("cidr");
        let base = u32::from(ipv4(net));
        let ip = u32::from(p.ip);
        assert!(
            ip >= base && ip < base + 64,
            "{} of {} is outside its host's block {block}",
            p.ip,
            p.cid
        );
    }

    // Full ping matrix (6 × 5), one thread per source pod.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = rc
            .pods
            .iter()
            .map(|a| {
                let pods = &rc.pods;
                s.spawn(move || {
                    pods.iter()
                        .filter(|b| b.cid != a.cid)
                        .filter(|b| !ping_within(&a.ns, b.ip, Duration::from_secs(3)))
                        .map(|b| format!("{} ({}) -> {} ({})", a.cid, a.ip, b.cid, b.ip))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("ping thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "pod pairs without connectivity:\n  {}\n{}",
        failures.join("\n  "),
        rc.agent_logs()
    );

    // A TCP transfer between a pod on every ordered pair of hosts; the server sees the pod's
    // own address (no NAT between pods).
    for a in all {
        for b in all.iter().copied().filter(|&b| b != a) {
            let src = rc.pods.iter().find(|p| p.host == a).expect("pod");
            let dst = rc.pods.iter().find(|p| p.host == b).expect("pod");
            let report = Transfer::bytes(&src.ns, &dst.ns, dst.ip, 4 << 20)
                .finish()
                .unwrap_or_else(|e| panic!("TCP {} -> {}: {e}", src.cid, dst.cid));
            assert_eq!(report.bytes, 4 << 20);
            assert_eq!(
                report.peer.ip(),
                IpAddr::V4(src.ip),
                "server in {} saw {} for a connection from {}",
                dst.cid,
                report.peer,
                src.cid
            );
        }
    }
}

#[test]
fn agent_sigkill_and_restart_during_a_transfer_keeps_the_routes_and_the_connection() {
    let mut rc = cluster(2, 1, &[]);
    let (a, b) = (0usize, 1usize);
    let before: Vec<BTreeSet<String>> = (0..2).map(|h| rc.routes(h)).collect();
    let remote_a: BTreeSet<String> = before[a]
        .iter()
        .filter(|r| !r.starts_with("blackhole"))
        .cloned()
        .collect();
    assert_eq!(remote_a.len(), 1, "h1 routes: {:?}", before[a]);

    let monitors: Vec<RouteMonitor> = (0..2)
        .map(|h| RouteMonitor::start(rc.host(h).ns()))
        .collect();
    let samplers: Vec<RouteSampler> = (0..2)
        .map(|h| {
            RouteSampler::start(
                rc.host(h).ns(),
                before[h].clone(),
                Duration::from_millis(10),
            )
        })
        .collect();
    let (src, dst) = (&rc.pods[0], &rc.pods[1]);
    assert_eq!((src.host, dst.host), (a, b));
    let (src_ip, dst_ip) = (src.ip, dst.ip);
    // 32 KiB every 10 ms (~3 MB/s) until both restarts are over.
    let transfer = Transfer::paced(
        &src.ns,
        &dst.ns,
        dst_ip,
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
        // Let the new agent run past its first reconcile before judging it.
        std::thread::sleep(Duration::from_millis(700));
    }
    let report = transfer.finish();
    let sampled: Vec<(usize, Misses)> = samplers.into_iter().map(RouteSampler::finish).collect();
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

    // Positive control: the monitors do see route changes (a TEST-NET blackhole of another
    // protocol, which the agents do not manage).
    for h in [a, b] {
        let ns = rc.host(h).ns();
        ns.sh_ok("ip route add blackhole 192.0.2.0/24 proto 202");
        let seen = wait_until(Duration::from_secs(2), || {
            monitors[h]
                .events()
                .iter()
                .any(|e| e.new && e.protocol == 202 && e.dst == "192.0.2.0/24")
        });
        ns.sh_ok("ip route del blackhole 192.0.2.0/24 proto 202");
        assert!(seen, "the route monitor of {} saw nothing", rc.node(h));
    }

    for h in [a, b] {
        let (n, misses) = &sampled[h];
        assert!(*n >= 20, "{}: only {n} route samples taken", rc.node(h));
        assert!(
            misses.is_empty(),
            "{}: proto 201 routes missing in {} of {n} samples during the restarts \
             (time since start, missing): {misses:?}\n{}",
            rc.node(h),
            misses.len(),
            rc.agent_logs()
        );
        let mon = &monitors[h];
        assert!(
            !mon.overflowed(),
            "route monitor of {} overflowed",
            rc.node(h)
        );
        let events = mon.proto_events();
        let dels: Vec<String> = events
            .iter()
            .filter(|e| !e.new)
            .map(|e| e.to_string())
            .collect();
        assert!(
            dels.is_empty(),
            "{}: the restarted agent removed still-wanted routes: {dels:?}",
            rc.node(h)
        );
        // Nothing changed in etcd, so the restarted agents had nothing to fix.
        let changes: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        assert!(
            changes.is_empty(),
            "{}: the restarted agent rewrote routes that were already right \
             (it should only fix differences): {changes:?}",
            rc.node(h)
        );
        assert_eq!(
            rc.routes(h),
            before[h],
            "{} routes after the restarts",
            rc.node(h)
        );
    }
}

#[test]
fn a_joining_host_is_reachable_from_every_pod_within_1s_of_its_first_pod_add() {
    let mut rc = cluster(3, 1, &[]);
    let new = rc.add_host();
    rc.start_agent(new, &[]);
    let nodes: Vec<usize> = (0..=new).collect();
    // Before its first pod the new host owns no block, but already routes to the others.
    rc.wait_routes(&[new], &nodes, CONVERGE);

    let (p, added) = rc.add_pod_timed(new);
    let target = rc.pods[p].ip;
    let reached: Vec<(String, Option<Duration>)> = std::thread::scope(|s| {
        let handles: Vec<_> = rc
            .pods
            .iter()
            .filter(|q| q.host != new)
            .map(|q| {
                s.spawn(move || {
                    let deadline = added + Duration::from_secs(5);
                    loop {
                        if ping1(&q.ns, target, "0.1") {
                            return (q.cid.clone(), Some(added.elapsed()));
                        }
                        if Instant::now() >= deadline {
                            return (q.cid.clone(), None);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect()
    });
    eprintln!("first answer from {target} after its ADD returned: {reached:?}");
    for (cid, t) in &reached {
        let t = t.unwrap_or_else(|| {
            panic!(
                "{cid} never reached the new pod {target} (5 s)\n{}",
                rc.agent_logs()
            )
        });
        assert!(
            t < Duration::from_secs(1),
            "{cid} reached the new pod {target} only {t:?} after its ADD returned (bound 1 s)"
        );
    }
    // And the other way round; every table now holds the new block.
    let q = &rc.pods[p];
    for other in rc.pods.iter().filter(|o| o.host != new) {
        assert!(
            ping_within(&q.ns, other.ip, Duration::from_secs(3)),
            "new pod {} cannot reach {} ({})",
            q.ip,
            other.cid,
            other.ip
        );
    }
    rc.wait_routes(&nodes, &nodes, CONVERGE);
}

#[test]
fn a_removed_host_disappears_from_every_routing_table_and_from_node_ls() {
    let mut rc = cluster(3, 1, &[]);
    let gone = 2usize;
    let gone_name = rc.node(gone);
    let gone_blocks = rc.blocks_of(0, &gone_name);
    assert!(!gone_blocks.is_empty(), "{gone_name} owns a block");
    let gone_routes = rc.routes(gone);

    // SIGTERM: the agent exits and revokes its lease (so it is dead at once, not after the
    // 10 s TTL), and leaves its routes in place.
    let mut agent = rc.take_agent(gone);
    let status = agent.sigterm(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "reef-agent on {gone_name} still runs 5 s after SIGTERM; log:\n{}",
        agent.log()
    );
    eprintln!("reef-agent on {gone_name} exited after SIGTERM: {status:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let ls = rc.node_ls(0);
        if ls.get(&gone_name).is_some_and(|n| n["alive"] == false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{gone_name} still alive in node ls 3 s after SIGTERM (lease not revoked?): {ls:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        rc.routes(gone),
        gone_routes,
        "SIGTERM leaves the routes of {gone_name} in place"
    );

    rc.reefctl_ok(0, &["node", "rm", &gone_name]);
    let t = Instant::now();
    let rest = [0usize, 1];
    let deadline = t + Duration::from_secs(5);
    for h in rest {
        loop {
            let have = rc.routes(h);
            let left: Vec<&String> = have
                .iter()
                .filter(|r| gone_blocks.iter().any(|b| r.starts_with(&format!("{b} "))))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: routes to {gone_name}'s blocks still there 5 s after `node rm`: {left:?}\n{}",
                rc.node(h),
                rc.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!(
        "{gone_name}'s routes gone everywhere {:?} after node rm",
        t.elapsed()
    );
    assert!(
        rc.blocks_of(0, &gone_name).is_empty(),
        "node rm released {gone_name}'s blocks: {:?}",
        rc.blocks(0)
    );
    let ls = rc.node_ls(0);
    assert!(
        !ls.contains_key(&gone_name),
        "node ls still lists {gone_name}: {ls:?}"
    );
    assert_eq!(
        ls.keys().cloned().collect::<BTreeSet<_>>(),
        rest.iter().map(|&h| rc.node(h)).collect(),
        "node ls after removing {gone_name}"
    );
    // The remaining hosts keep routing to each other.
    rc.wait_routes(&rest, &rest, CONVERGE);
    let (p0, p1) = (&rc.pods[0], &rc.pods[1]);
    assert!(
        ping_within(&p0.ns, p1.ip, Duration::from_secs(3)),
        "h1 pod -> h2 pod after node rm"
    );
}

#[test]
fn pod_egress_to_the_underlay_is_masqueraded_and_pod_to_pod_keeps_the_pod_address() {
    let mut rc = RoutedCluster::new(2);
    // A plain host on the underlay: no agent, no route to the pool.
    let outside = rc.add_host();
    rc.start_agents(&[0, 1], &[]);
    let p0 = rc.add_pod(0);
    let p1 = rc.add_pod(1);
    rc.wait_routes(&[0, 1], &[0, 1], CONVERGE);
    let (pod0, pod1) = (&rc.pods[p0], &rc.pods[p1]);
    let out_host = rc.host(outside);
    let node0 = rc.host(0).addr();

    // Only masquerade makes this answer: `outside` has no route back to 10.66.0.0/16.
    assert!(
        ping_within(&pod0.ns, out_host.addr(), Duration::from_secs(3)),
        "pod {} cannot ping the underlay host {}\n{}",
        pod0.ip,
        out_host.addr(),
        rc.agent_logs()
    );
    let r = Transfer::bytes(&pod0.ns, out_host.ns(), out_host.addr(), 256 * 1024)
        .finish()
        .unwrap_or_else(|e| panic!("TCP pod -> underlay host: {e}\n{}", rc.agent_logs()));
    assert_eq!(
        r.peer.ip(),
        IpAddr::V4(node0),
        "the underlay host must see the node's underlay address, not the pod's {}",
        pod0.ip
    );
    // Another node's underlay address is outside the pool too.
    let h1 = rc.host(1);
    let r = Transfer::bytes(&pod0.ns, h1.ns(), h1.addr(), 64 * 1024)
        .finish()
        .unwrap_or_else(|e| panic!("TCP pod -> other node: {e}"));
    assert_eq!(
        r.peer.ip(),
        IpAddr::V4(node0),
        "pod -> other node's underlay address"
    );

    // Pod to pod (across hosts) is never masqueraded.
    let r = Transfer::bytes(&pod0.ns, &pod1.ns, pod1.ip, 256 * 1024)
        .finish()
        .unwrap_or_else(|e| panic!("TCP pod -> pod: {e}"));
    assert_eq!(
        r.peer.ip(),
        IpAddr::V4(pod0.ip),
        "pod -> pod keeps the source"
    );
    let r = Transfer::bytes(&pod1.ns, &pod0.ns, pod0.ip, 64 * 1024)
        .finish()
        .unwrap_or_else(|e| panic!("TCP pod -> pod (reverse): {e}"));
    assert_eq!(
        r.peer.ip(),
        IpAddr::V4(pod1.ip),
        "pod -> pod keeps the source"
    );

    // The NAT lives in the node's own namespace: table inet reef-nat, or the iptables
    // driver's pool sets and rule.
    let (what, probe) = if netns_fixtures::firewall::is_iptables() {
        (
            "ipset reef-nat4 and its rule",
            "ipset save reef-nat4 && iptables-save -t nat | grep -q 'reef natOutgoing'",
        )
    } else {
        ("table inet reef-nat", "nft list table inet reef-nat")
    };
    let t = rc.host(0).ns().sh(probe);
    assert!(
        t.status.success(),
        "{what} missing on {}: {}",
        rc.node(0),
        String::from_utf8_lossy(&t.stderr)
    );
}

fn entry<'a>(ls: &'a BTreeMap<String, Value>, node: &str) -> &'a Value {
    ls.get(node)
        .unwrap_or_else(|| panic!("node ls lacks {node}: {ls:?}"))
}

#[test]
fn node_ls_shows_liveness_and_routes_and_a_killed_agent_goes_dead_after_its_lease() {
    let mut rc = cluster(3, 1, &["--lease-ttl", "2"]);
    let all = [0usize, 1, 2];
    let blocks = rc.blocks(0);

    // All alive, routes = what each kernel holds (> 0), addresses and blocks as in etcd.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ls = loop {
        let ls = rc.node_ls(0);
        let ok = all.iter().all(|&h| {
            ls.get(&rc.node(h)).is_some_and(|n| {
                n["alive"] == true && n["routes"].as_u64() == Some(rc.routes(h).len() as u64)
            })
        });
        if ok {
            break ls;
        }
        assert!(
            Instant::now() < deadline,
            "node ls never showed every node alive with its kernel's route count: {ls:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ls.len(), 3, "node ls: {ls:?}");
    for h in all {
        let n = entry(&ls, &rc.node(h));
        assert!(n["routes"].as_u64().unwrap_or(0) > 0, "{n}");
        assert_eq!(
            n["address"].as_str(),
            Some(format!("{}/{}", rc.host(h).addr(), rc.host(h).prefix()).as_str()),
            "{n}"
        );
        let want: BTreeSet<&str> = blocks
            .iter()
            .filter(|(_, o)| **o == rc.node(h))
            .map(|(c, _)| c.as_str())
            .collect();
        let have: BTreeSet<&str> = n["blocks"]
            .as_array()
            .unwrap_or_else(|| panic!("no blocks array: {n}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(have, want, "blocks of {}", rc.node(h));
        assert!(
            n["problems"].as_object().is_some_and(|p| p.is_empty()),
            "problems of {}: {n}",
            rc.node(h)
        );
    }
    // `reefctl status` carries the same nodes.
    let status = rc.reefctl_json(0, &["status"]);
    let snodes: BTreeMap<String, bool> = status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no nodes array: {status}"))
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").to_owned(),
                n["alive"] == true,
            )
        })
        .collect();
    assert_eq!(
        snodes,
        all.iter().map(|&h| (rc.node(h), true)).collect(),
        "status nodes: {status}"
    );

    // SIGKILL h2's agent: no revoke, so it turns dead when its 2 s lease expires.
    let dead = 1usize;
    let dead_name = rc.node(dead);
    let dead_block: Vec<String> = rc.blocks_of(0, &dead_name).into_iter().collect();
    let dead_routes = rc.routes(dead);
    let mut agent = rc.take_agent(dead);
    agent.sigkill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(8);
    loop {
        let ls = rc.node_ls(0);
        if entry(&ls, &dead_name)["alive"] == false {
            eprintln!(
                "{dead_name} dead in node ls {:?} after SIGKILL",
                killed.elapsed()
            );
            for h in [0usize, 2] {
                assert_eq!(entry(&ls, &rc.node(h))["alive"], true, "{ls:?}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dead_name} still alive 8 s after its agent was SIGKILLed (lease TTL 2 s): {:?}",
            entry(&ls, &dead_name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its routes stay on the others (and on itself), and traffic to its pod still flows.
    std::thread::sleep(Duration::from_millis(500));
    for h in [0usize, 2] {
        let have = rc.routes(h);
        for b in &dead_block {
            let want = format!("{b} via {}", rc.host(dead).addr());
            assert!(
                have.contains(&want),
                "{}: {want} gone after {dead_name}'s agent died: {have:?}",
                rc.node(h)
            );
        }
    }
    assert_eq!(rc.routes(dead), dead_routes, "routes of {dead_name} itself");
    let target = rc.pods.iter().find(|p| p.host == dead).expect("pod").ip;
    for p in rc.pods.iter().filter(|p| p.host != dead) {
        assert!(
            ping_within(&p.ns, target, Duration::from_secs(3)),
            "{} -> {target}",
            p.cid
        );
    }
}

/// reef-bridge pods: the gateway address on the bridge gives the node's block a connected
/// route, and the agent's blackhole for the block sits behind it (the highest metric), not in
/// front of it. A blackhole in front (where an older agent put it, at metric 0) is moved
/// behind by the next agent's start.
#[test]
fn a_blackhole_for_an_own_block_stays_behind_a_bridge_route() {
    let mut rc = RoutedCluster::new(2).with_plugin(Plugin::Bridge("rbr-rt".into()));
    rc.start_agents(&[0, 1], &[]);
    let (a, b) = (rc.add_pod(0), rc.add_pod(1));
    rc.wait_routes(&[0, 1], &[0, 1], CONVERGE);
    let block = rc
        .blocks_of(0, &rc.node(0))
        .into_iter()
        .next()
        .expect("h1 has a block");
    let to_a = rc.pods[a].ip.to_string();
    let reaches = |rc: &RoutedCluster| reef_tests::ping(&rc.pods[b].ns, &to_a, 1);
    let blackholes = |rc: &RoutedCluster| {
        rc.host(0).ns().sh_ok(&format!(
            "ip route show type blackhole proto {PROTO} {block}"
        ))
    };
    assert!(
        reaches(&rc),
        "pod on h2 cannot reach the pod on h1's bridge"
    );
    assert!(
        blackholes(&rc).contains("metric 4294967295"),
        "{}",
        blackholes(&rc)
    );

    rc.take_agent(0).sigkill();
    rc.host(0)
        .ns()
        .sh_ok(&format!("ip route prepend blackhole {block} proto {PROTO}"));
    assert!(
        !reaches(&rc),
        "control: a blackhole at metric 0 shadows the bridge"
    );
    rc.start_agent(0, &[]);
    assert!(
        wait_until(CONVERGE, || reaches(&rc)),
        "the restarted agent left the blackhole in front: {}\n{}",
        blackholes(&rc),
        rc.agent_logs()
    );
    assert_eq!(
        blackholes(&rc).trim(),
        format!("blackhole {block} metric 4294967295"),
        "exactly one blackhole, behind the bridge's route"
    );
    rc.wait_routes(&[0, 1], &[0, 1], CONVERGE);
}
