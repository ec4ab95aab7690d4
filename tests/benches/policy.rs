//! Network policy at work: what a policy costs a connection, how fast a change reaches every
//! host, and how fast a new pod joins the peer sets that name it.
//!
//! **Cluster.** `REEF_BENCH_HOSTS` (10) simulated hosts with a real etcd and a reef-agent
//! each; in namespace `bench`, one target pod per host (`app=target`, reef-routed through
//! libcni) and two clients, `c1` (`role=v1`, host 1) and `c2` (`role=v2`, host 2). The
//! policy `bench/p` selects `app=target` and admits ingress TCP 80 from `role=v1` (or, in
//! part 2, alternately `role=v2`).
//!
//! 1. **New connections/s** from `c1` to the target on host 1 (the bench's threads inside
//!    the pods' namespaces; each connection reset at once), with 0 policies, with `bench/p`,
//!    and with `bench/p` plus 999 policies `bench/oN` that each select their own pod
//!    (`app=other-N`; workload records the bench writes for host 1 with addresses in
//!    10.99.0.0/22, so host 1 renders all 1,000 policies: 1,000 pod chains, 1,000 dispatch
//!    entries, 1,000 peer sets). Rounds interleaved (0, 1, 1,000, 0, ...); each switch waits
//!    for host 1's agent to report the count and for the kernel's table, then 1 s.
//! 2. **Change → enforcement on every host**: `bench/p` rewritten to admit `role=v2`
//!    instead of `role=v1` (and back); from right before the etcd put to the nftables
//!    notification, on each host, that the rule's peer set `in.bench.p.0` now holds the
//!    other client's address (the commit of the agent's transaction). Per round, the slowest
//!    host; p50 and p99 over the rounds.
//! 3. **ADD → every peer set**: a new `role=v1` pod on host `r % hosts`; from its ADD's
//!    start to the notification on every host that `in.bench.p.0` holds its address (and how
//!    often that was before the ADD returned); the ADD's own duration too. The pod is
//!    deleted after each round.
//!
//! Targets: rate(1,000)/rate(0) ≥ 0.9, change p99 ≤ 100 ms. Printed, never asserted.
//!
//! `cargo build --release --workspace && cargo bench -p reef-tests --bench policy`
//! Environment: `REEF_BENCH_HOSTS` (10), `REEF_BENCH_OTHERS` (999), `REEF_BENCH_ROUNDS`
//! (rate rounds per side, 4), `REEF_BENCH_CONNECTS` (connections per rate round, 10000),
//! `REEF_BENCH_CHANGES` (part 2 rounds, 50), `REEF_BENCH_ADDS` (part 3 rounds, 20).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use reef_tests::bench::{env_or, fmt, loadavg, median};
use reef_tests::benchkit::{ms, percentile, rate, reachable, AcceptLoop, Kv};
use reef_tests::monitor::NftMonitor;
use reef_tests::routed::RoutedCluster;
use serde_json::json;

const NS: &str = "bench";
const PORT: u16 = 80;
const SET: &str = "in.bench.p.0";
const WAIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(1);

fn policy(name: &str, select: &str, from_role: &str) -> String {
    json!({
        "namespace": NS, "name": name,
        "podSelector": {"matchLabels": {"app": select}},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "peers": [{"podSelector": {"matchLabels": {"role": from_role}}}],
            "ports": [{"protocol": "TCP", "port": PORT}],
        }],
    })
    .to_string()
}

fn policy_key(name: &str) -> String {
    format!("/reef/policies/{NS}/{name}")
}

fn other_ip(i: usize) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(10, 99, 0, 1)) + i as u32;
    Ipv4Addr::from(n)
}

/// A workload record of host `node` that no pod backs: something for a policy to select.
fn other_workload(node: &str, i: usize) -> (String, String) {
    let cid = format!("other{i}");
    (
        format!("/reef/workloads/{node}/{cid}/eth0"),
        json!({
            "node": node, "network": "routednet", "containerId": cid, "ifname": "eth0",
            "ips": [other_ip(i).to_string()], "namespace": NS,
            "labels": {"app": format!("other-{i}")},
        })
        .to_string(),
    )
}

/// Waits until `node`'s agent reports `n` policies and the kernel of `host` shows the
/// target's chain as wanted, then settles.
fn wait_policies(rc: &RoutedCluster, kv: &Kv, host: usize, n: usize, target: Ipv4Addr) {
    let deadline = Instant::now() + WAIT;
    let node = rc.node(host);
    loop {
        let reported = kv
            .get_json(format!("/reef/agents/{node}"))
            .and_then(|v| v["policies"].as_u64())
            .unwrap_or(0) as usize;
        let chain = rc
            .host(host)
            .ns()
            .run(
                "nft",
                [
                    "list",
                    "chain",
                    "inet",
                    "reef-policy",
                    &format!("to-pod.{target}"),
                ],
            )
            .map(|o| o.status.success())
            .unwrap_or(false);
        if reported == n && chain == (n > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{node} did not apply {n} policies within {WAIT:?} (reports {reported})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(SETTLE);
}

/// The slowest host's time from `t0` to a new element `ip` in the peer set (None: missed).
fn slowest(monitors: &[NftMonitor], skips: &[usize], t0: Instant, ip: Ipv4Addr) -> Option<f64> {
    let key = ip.octets().to_vec();
    let mut worst: f64 = 0.0;
    for (m, skip) in monitors.iter().zip(skips) {
        let e = m.wait_for(*skip, Instant::now() + Duration::from_secs(5), |e| {
            e.new && e.set == SET && e.key == key
        })?;
        worst = worst.max(ms(e.at.saturating_duration_since(t0)));
    }
    Some(worst)
}

fn main() {
    let hosts = env_or("REEF_BENCH_HOSTS", 10).max(3);
    let others = env_or("REEF_BENCH_OTHERS", 999);
    let rounds = env_or("REEF_BENCH_ROUNDS", 4);
    let connects = env_or("REEF_BENCH_CONNECTS", 10000);
    let changes = env_or("REEF_BENCH_CHANGES", 50);
    let adds = env_or("REEF_BENCH_ADDS", 20);
    println!("policy bench: {hosts} hosts, load {}", loadavg());

    let mut rc = RoutedCluster::new(hosts);
    let all: Vec<usize> = (0..hosts).collect();
    rc.start_agents(&all, &[]);
    let kv = Kv::start(rc.host(0).ns(), &rc.endpoint());
    let targets: Vec<usize> = (0..hosts)
        .map(|i| rc.add_labelled_pod(i, &format!("{NS}/t{i}"), &json!({"app": "target"})))
        .collect();
    let c1 = rc.add_labelled_pod(0, &format!("{NS}/c1"), &json!({"role": "v1"}));
    let c2 = rc.add_labelled_pod(1, &format!("{NS}/c2"), &json!({"role": "v2"}));
    let (c1_ip, c2_ip) = (rc.pods[c1].ip, rc.pods[c2].ip);
    let target = rc.pods[targets[0]].ip;
    let to = SocketAddr::from((target, PORT));
    let server = AcceptLoop::start(&rc.pods[targets[0]].ns, PORT);
    reachable(&rc.pods[c1].ns, to, WAIT, "c1 to the target");

    // Part 1.
    let node0 = rc.node(0);
    kv.put_all((0..others).map(|i| other_workload(&node0, i)).collect());
    let put_others = || {
        kv.put_all(
            (0..others)
                .map(|i| {
                    let name = format!("o{i}");
                    (
                        policy_key(&name),
                        policy(&name, &format!("other-{i}"), "v1"),
                    )
                })
                .collect(),
        );
    };
    let mut by_side: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut switch_s: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (side, n) in [(0usize, 0usize), (1, 1), (2, 1 + others)] {
            let t = Instant::now();
            match side {
                0 => {
                    kv.delete_range(
                        format!("/reef/policies/{NS}/"),
                        format!("/reef/policies/{NS}0"),
                    );
                }
                1 => {
                    kv.put(policy_key("p"), policy("p", "target", "v1"));
                }
                _ => put_others(),
            }
            wait_policies(&rc, &kv, 0, n, target);
            switch_s[side].push(t.elapsed().as_secs_f64() - SETTLE.as_secs_f64());
            let what = format!("round {r}, {n} policies");
            by_side[side].push(rate(&rc.pods[c1].ns, to, connects, &what));
        }
    }
    drop(server);
    let med: Vec<f64> = by_side.iter().map(|v| median(v)).collect();
    println!("\n1. new connections/s, c1 -> target on {node0}, {connects} per round, {rounds} rounds interleaved");
    for (i, label) in [
        "0 policies",
        "1 policy",
        &format!("{} policies", 1 + others),
    ]
    .iter()
    .enumerate()
    {
        println!(
            "   {label:>14}: median {:>8.0}  rounds [{}]  switch {} s",
            med[i],
            fmt(&by_side[i]),
            fmt(&switch_s[i])
        );
    }
    println!(
        "   rate(1,000)/rate(0) = {:.3}   rate(1)/rate(0) = {:.3}   (target >= 0.9)",
        med[2] / med[0],
        med[1] / med[0]
    );

    // Back to bench/p alone for parts 2 and 3.
    kv.delete_range(
        format!("/reef/policies/{NS}/o"),
        format!("/reef/policies/{NS}/p"),
    );
    wait_policies(&rc, &kv, 0, 1, target);
    let monitors: Vec<NftMonitor> = (0..hosts)
        .map(|i| NftMonitor::start(rc.host(i).ns()))
        .collect();

    // Part 2.
    let mut change_ms = Vec::new();
    let mut missed = 0;
    for r in 0..changes {
        let (role, ip) = if r % 2 == 0 {
            ("v2", c2_ip)
        } else {
            ("v1", c1_ip)
        };
        let skips: Vec<usize> = monitors.iter().map(NftMonitor::count).collect();
        let (t0, _) = kv.put(policy_key("p"), policy("p", "target", role));
        match slowest(&monitors, &skips, t0, ip) {
            Some(v) => change_ms.push(v),
            None => missed += 1,
        }
    }
    if changes % 2 == 1 {
        let skips: Vec<usize> = monitors.iter().map(NftMonitor::count).collect();
        let (t0, _) = kv.put(policy_key("p"), policy("p", "target", "v1"));
        let _ = slowest(&monitors, &skips, t0, c1_ip);
    }
    println!("\n2. policy change in etcd -> committed on all {hosts} hosts (slowest host per round), {changes} rounds");
    println!(
        "   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  missed {missed}   (target p99 <= 100 ms)",
        percentile(&change_ms, 50.0),
        percentile(&change_ms, 99.0),
        percentile(&change_ms, 100.0)
    );

    // Part 3.
    let mut join_ms = Vec::new();
    let mut add_ms = Vec::new();
    let mut missed = 0;
    for r in 0..adds {
        let skips: Vec<usize> = monitors.iter().map(NftMonitor::count).collect();
        let t = Instant::now();
        let p = rc.add_labelled_pod(r % hosts, &format!("{NS}/n{r}"), &json!({"role": "v1"}));
        let done = Instant::now();
        add_ms.push(ms(done - t));
        // From the ADD's start: IPAM writes the workload record early in the ADD, so the
        // peer sets usually hold the address before the ADD returns.
        match slowest(&monitors, &skips, t, rc.pods[p].ip) {
            Some(v) => join_ms.push(v),
            None => missed += 1,
        }
        rc.del_pod(p);
    }
    let after_return: Vec<f64> = join_ms.iter().zip(&add_ms).map(|(j, a)| j - a).collect();
    let before = after_return.iter().filter(|d| **d <= 0.0).count();
    println!(
        "\n3. pod ADD start -> its address in the peer set on all {hosts} hosts, {adds} rounds"
    );
    println!(
        "   p50 {:.1} ms  p99 {:.1} ms  missed {missed};  the ADD itself (cnitool): p50 {:.1} ms  p99 {:.1} ms",
        percentile(&join_ms, 50.0),
        percentile(&join_ms, 99.0),
        percentile(&add_ms, 50.0),
        percentile(&add_ms, 99.0)
    );
    println!(
        "   after the ADD returned: p50 {:.1} ms  p99 {:.1} ms  ({before} of {} rounds in place before it returned)",
        percentile(&after_return, 50.0),
        percentile(&after_return, 99.0),
        after_return.len()
    );
    let overflow = monitors.iter().any(NftMonitor::overflowed);
    if overflow {
        println!("   (a monitor overflowed: some notifications were lost)");
    }
}
