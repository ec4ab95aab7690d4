//! Routed mode: how fast the agents converge, and what the routed pod path costs.
//!
//! **Convergence.** 20 simulated hosts on one underlay (plus etcd), a real `reef-agent` on
//! each. Every round registers one new node the way a joining node appears in etcd: its
//! `/reef/nodes/<name>` record (with an underlay address) and a block record
//! `/reef/blocks/<net>-<prefix>` it owns, written in ONE etcd transaction, sent by the bench
//! process itself over etcd's JSON gateway (`POST /v3/kv/txn`) from a socket inside a host
//! namespace. Why synthetic: it gives one clean start timestamp (taken right before the
//! request is written; the commit happens after it) with no process start, CNI or IPAM time
//! in the figure, so the number is the agents' watch → route latency plus etcd's commit.
//! The end is when the block's route (protocol 201) is in the kernel of every one of the 20
//! hosts: each host namespace has an rtnetlink socket (RTMGRP_IPV4_ROUTE) read by the bench,
//! which timestamps each RTM_NEWROUTE as it arrives, so nothing is polled. Prints p50, p90,
//! p99 and max of the per-round "last host" time, and the p50 of the per-host times.
//! Target: p99 <= 200 ms.
//!
//! **Throughput.** Two hosts, one reef-routed pod on each (through libcni, cluster
//! reef-ipam, agents running): iperf3 (Debian's) pod-to-pod across the hosts versus
//! host-to-host on the underlay, and versus the same pod path programmed by hand (veth, /32
//! routes: what the 0.86–0.98 reference was measured on), rotated rounds, medians,
//! ratios.
//! Target: ratio >= 0.95.
//!
//! `cargo build --release && cargo bench -p reef-tests --bench routed`
//! Environment: `REEF_BENCH_ROUNDS` (convergence rounds, default 30), `REEF_BENCH_HOSTS`
//! (default 20), `REEF_BENCH_TPUT_ROUNDS` (default 7), `REEF_BENCH_TPUT_SECS` (default 3);
//! 0 rounds skips that part.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use reef_tests::bench::*;
use reef_tests::monitor::*;
use reef_tests::routed::*;
use reef_tests::traffic::*;
use reef_tests::{cnitool_bin, Netns};
use serde_json::{json, Value};

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// One etcd txn of puts through the JSON gateway, from a socket inside `from`. Returns the
/// instant right before the request was written; panics unless etcd answered 200 with a
/// succeeded txn.
fn etcd_txn_puts(from: &Netns, etcd: SocketAddr, puts: &[(String, String)]) -> Instant {
    let ops: Vec<Value> = puts
        .iter()
        .map(|(k, v)| json!({"request_put": {"key": base64(k.as_bytes()), "value": base64(v.as_bytes())}}))
        .collect();
    let body = json!({"success": ops}).to_string();
    let req = format!(
        "POST /v3/kv/txn HTTP/1.1\r\nHost: {etcd}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = connect_in(from, etcd, Duration::from_secs(5)).expect("connect to etcd");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t0 = Instant::now();
    s.write_all(req.as_bytes()).expect("send txn");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read txn response");
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("\"succeeded\":true"),
        "etcd txn failed: {resp}"
    );
    t0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn convergence(hosts: usize, rounds: usize) {
    let mut rc = RoutedCluster::new(hosts);
    let all: Vec<usize> = (0..hosts).collect();
    let t = Instant::now();
    rc.start_agents(&all, &[]);
    let mut ready: Vec<f64> = all
        .iter()
        .map(|&h| rc.agent(h).wait_ready(READY_TIMEOUT).as_secs_f64() * 1e3)
        .collect();
    ready.sort_by(f64::total_cmp);
    let all_ready = t.elapsed();
    let monitors: Vec<RouteMonitor> = all
        .iter()
        .map(|&h| RouteMonitor::start(rc.host(h).ns()))
        .collect();
    let etcd = SocketAddr::from((rc.cluster.etcd().addr(), 2379));
    let prefix = rc.host(0).prefix();

    let mut last_host = Vec::new();
    let mut per_host = Vec::new();
    for r in 0..rounds {
        let name = format!("sim{r}");
        let addr = Ipv4Addr::new(198, 18, 1, 100 + r as u8);
        // Blocks from the top half of the pool, where the hosts (no pods here) never claim.
        let block = format!("10.66.{}.{}/26", 128 + r / 4, (r % 4) * 64);
        let (net, _) = block.split_once('/').expect("cidr");
        let node = json!({"name": name, "address": format!("{addr}/{prefix}")});
        let blk = json!({"cidr": block, "node": name, "allocations": {}});
        let t0 = etcd_txn_puts(
            rc.host(0).ns(),
            etcd,
            &[
                (format!("/reef/nodes/{name}"), node.to_string()),
                (format!("/reef/blocks/{net}-26"), blk.to_string()),
            ],
        );
        let deadline = t0 + Duration::from_secs(10);
        let mut worst = 0.0f64;
        for (h, m) in monitors.iter().enumerate() {
            let at = m.wait_new(&block, deadline).unwrap_or_else(|| {
                panic!(
                    "round {r}: {} never got a route for {block} (10 s); its events: {:?}\n{}",
                    rc.node(h),
                    m.proto_events(),
                    rc.agent(h).log()
                )
            });
            let ms = at.saturating_duration_since(t0).as_secs_f64() * 1e3;
            per_host.push(ms);
            worst = worst.max(ms);
        }
        last_host.push(worst);
        // Check the content once per round on one host: via the new node's address.
        let routes = proto_routes(rc.host(r % hosts).ns());
        assert!(
            routes.contains(&format!("{block} via {addr}")),
            "round {r}: {} has {routes:?}",
            rc.node(r % hosts)
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    let overflowed = monitors.iter().any(RouteMonitor::overflowed);
    last_host.sort_by(f64::total_cmp);
    per_host.sort_by(f64::total_cmp);
    println!(
        "convergence: {hosts} hosts with reef-agent, {rounds} rounds; each round one etcd txn \
         registers a node (address on the underlay) + one /26 block it owns; time from \
         the txn request to the block's proto-201 route in the kernel of every host \
         (rtnetlink notifications, not polling)"
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}",
        "ms", "p50", "p90", "p99", "max"
    );
    println!(
        "{:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        format!("route on all {hosts} hosts"),
        percentile(&last_host, 50.0),
        percentile(&last_host, 90.0),
        percentile(&last_host, 99.0),
        percentile(&last_host, 100.0)
    );
    println!(
        "{:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        "route on one host (all host×round samples)",
        percentile(&per_host, 50.0),
        percentile(&per_host, 90.0),
        percentile(&per_host, 99.0),
        percentile(&per_host, 100.0)
    );
    println!(
        "agent start (spawn -> msg=\"ready\", {hosts} started at once): p50 {:.0} ms, max {:.0} ms; \
         all ready after {:.0} ms{}",
        percentile(&ready, 50.0),
        percentile(&ready, 100.0),
        all_ready.as_secs_f64() * 1e3,
        if overflowed {
            "  [WARNING: a route monitor overflowed]"
        } else {
            ""
        }
    );
    println!("target: p99 <= 200 ms");
}

/// Starts `iperf3 -s -B ip` inside `ns` and waits until it listens.
fn throughput(rounds: usize, secs: usize) {
    let mut rc = RoutedCluster::new(2);
    rc.start_agents(&[0, 1], &[]);
    let a = rc.add_pod(0);
    let b = rc.add_pod(1);
    rc.wait_routes(&[0, 1], &[0, 1], Duration::from_secs(10));
    let (pa, pb) = (&rc.pods[a], &rc.pods[b]);
    let (ha, hb) = (rc.host(0), rc.host(1));
    // The same path by hand, outside the pool (so natOutgoing leaves it alone as it leaves
    // pod-to-pod traffic alone), with hand-made routes between the hosts.
    let (hip_a, hip_b) = (Ipv4Addr::new(10, 67, 0, 2), Ipv4Addr::new(10, 67, 1, 2));
    let hand_a = hand_pod(ha, hip_a, "a", 1500);
    let hand_b = hand_pod(hb, hip_b, "b", 1500);
    ha.ns()
        .sh_ok(&format!("ip route add 10.67.1.0/24 via {}", hb.addr()));
    hb.ns()
        .sh_ok(&format!("ip route add 10.67.0.0/24 via {}", ha.addr()));
    let _pod_server = iperf_server(&pb.ns, pb.ip);
    let _hand_server = iperf_server(&hand_b, hip_b);
    let _host_server = iperf_server(hb.ns(), hb.addr());
    // Warm-up (ARP, conntrack, first-time allocations).
    iperf(&pa.ns, pb.ip, 1);
    iperf(&hand_a, hip_b, 1);
    iperf(ha.ns(), hb.addr(), 1);
    let mut pod = Vec::new();
    let mut hand = Vec::new();
    let mut host = Vec::new();
    // Rotate which path goes first so no path always runs on a warmer (or busier) machine.
    for r in 0..rounds {
        for k in 0..3 {
            match (r + k) % 3 {
                0 => pod.push(iperf(&pa.ns, pb.ip, secs)),
                1 => hand.push(iperf(&hand_a, hip_b, secs)),
                _ => host.push(iperf(ha.ns(), hb.addr(), secs)),
            }
        }
    }
    let (mp, mh, mx) = (median(&pod), median(&host), median(&hand));
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "throughput: iperf3, 1 TCP stream, {rounds} rounds x {secs} s per path (order rotated \
         each round), medians"
    );
    println!("{:<44} {:>8}   rounds", "Gbit/s", "median");
    println!(
        "{:<44} {:>8.2}   {}",
        "pod -> pod across hosts (reef-routed)",
        mp,
        fmt(&pod)
    );
    println!(
        "{:<44} {:>8.2}   {}",
        "same pod path programmed by hand",
        mx,
        fmt(&hand)
    );
    println!(
        "{:<44} {:>8.2}   {}",
        "host -> host on the underlay",
        mh,
        fmt(&host)
    );
    println!(
        "ratio pod/underlay: {:.3}   (target >= 0.95); by-hand path/underlay: {:.3}; \
         reef/by-hand: {:.3}",
        mp / mh,
        mx / mh,
        mp / mx
    );
}

fn main() {
    cnitool_bin();
    let hosts = env_or("REEF_BENCH_HOSTS", 20);
    let rounds = env_or("REEF_BENCH_ROUNDS", 30);
    let trounds = env_or("REEF_BENCH_TPUT_ROUNDS", 7);
    let tsecs = env_or("REEF_BENCH_TPUT_SECS", 3);
    if rounds > 0 {
        convergence(hosts, rounds);
        println!();
    }
    if trounds > 0 {
        throughput(trounds, tsecs);
    }
}
