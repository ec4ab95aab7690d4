//! The VXLAN overlay: what reef.vxlan costs against the underlay and against the same overlay
//! programmed by hand the way flannel's vxlan backend does it.
//!
//! **Across subnets (`vxlan`).** Two hosts on different underlay subnets joined by a router
//! (198.18.1.0/24 and 198.18.2.0/24; the router knows nothing about pods), a real etcd and a
//! `reef-agent` on each, one reef-routed pod per host (libcni, cluster reef-ipam). Three
//! paths, each measured with iperf3 (Debian's, one TCP stream) from the first host to the
//! second:
//! - reef: pod -> pod through reef.vxlan (VNI 1, port 4789, MTU 1450, pod MTU 1450);
//! - flannel by hand: on the same two hosts, a second VXLAN device `flan.1` (VNI 42, port
//!   8472, nolearning, MTU 1450, `local <underlay> dev eth0`), its /32 on each host, and for
//!   the other host an fdb entry, a permanent neighbour and an onlink route to its hand pod
//!   subnet (10.67.x, outside the pool), between two pods wired by hand like reef-routed
//!   wires one (MTU 1450);
//! - host -> host on the underlay, through the router.
//!
//! Target: reef >= 1.0x flannel by hand.
//!
//! **Same subnet (`vxlan-crosssubnet`).** Two hosts on one subnet, pods on each: the agents
//! route between them directly (no encapsulation). pod -> pod versus host -> host.
//! Target: ratio >= 0.95.
//!
//! Rounds rotate which path goes first; figures are medians.
//!
//! `cargo build --release && cargo bench -p reef-tests --bench vxlan`
//! Environment: `REEF_BENCH_TPUT_ROUNDS` (default 7), `REEF_BENCH_TPUT_SECS` (default 3).

use std::net::Ipv4Addr;
use std::time::Duration;

use netns_fixtures::SimHost;
use reef_tests::bench::*;
use reef_tests::cnitool_bin;
use reef_tests::inspect::{link_details, link_mtu};
use reef_tests::monitor::*;
use reef_tests::overlay::*;
use reef_tests::routed::*;
use reef_tests::traffic::*;

const CONVERGE: Duration = Duration::from_secs(10);
/// flannel's vxlan backend by hand on `host`: device `dev` (VNI 42, UDP 8472, nolearning, MTU
/// 1450) with `vtep`/32. Returns its MAC.
fn flannel_dev(host: &SimHost, dev: &str, vtep: Ipv4Addr) -> String {
    host.ns().sh_ok(&format!(
        "ip link add {dev} type vxlan id 42 dstport 8472 local {local} dev {iface} nolearning && \
         ip link set {dev} mtu 1450 up && ip addr add {vtep}/32 dev {dev}",
        local = host.addr(),
        iface = host.iface()
    ));
    link_details(host.ns(), dev)
        .and_then(|l| l["address"].as_str().map(str::to_owned))
        .expect("flannel device MAC")
}

/// What flannel programs on `host` for a remote node: fdb entry, permanent neighbour, onlink
/// route to its subnet via its VTEP address.
fn flannel_peer(
    host: &SimHost,
    dev: &str,
    mac: &str,
    underlay: Ipv4Addr,
    vtep: Ipv4Addr,
    subnet: &str,
) {
    host.ns().sh_ok(&format!(
        "bridge fdb append {mac} dev {dev} dst {underlay} self permanent && \
         ip neigh add {vtep} lladdr {mac} dev {dev} nud permanent && \
         ip route add {subnet} via {vtep} dev {dev} onlink"
    ));
}

fn across_subnets(rounds: usize, secs: usize) {
    let mut rc = RoutedCluster::with(Topology::TwoSubnets(1), "vxlan");
    rc.start_agents(&[0, 1], &[]);
    rc.wait_vxlan_dev(&[0, 1], CONVERGE);
    let a = rc.add_pod(0);
    let b = rc.add_pod(1);
    rc.wait_overlay(&[0, 1], &[0, 1], "vxlan", CONVERGE);
    let (pa, pb) = (&rc.pods[a], &rc.pods[b]);
    let (ha, hb) = (rc.host(0), rc.host(1));
    for p in [pa, pb] {
        assert_eq!(link_mtu(&p.ns, IFNAME), 1450, "reef pod MTU of {}", p.cid);
    }

    // flannel by hand, outside the pool.
    let (va, vb) = (Ipv4Addr::new(10, 67, 0, 0), Ipv4Addr::new(10, 67, 1, 0));
    let (hip_a, hip_b) = (Ipv4Addr::new(10, 67, 0, 2), Ipv4Addr::new(10, 67, 1, 2));
    let mac_a = flannel_dev(ha, "flan.1", va);
    let mac_b = flannel_dev(hb, "flan.1", vb);
    flannel_peer(ha, "flan.1", &mac_b, hb.addr(), vb, "10.67.1.0/24");
    flannel_peer(hb, "flan.1", &mac_a, ha.addr(), va, "10.67.0.0/24");
    let hand_a = hand_pod(ha, hip_a, "a", 1450);
    let hand_b = hand_pod(hb, hip_b, "b", 1450);

    let _s1 = iperf_server(&pb.ns, pb.ip);
    let _s2 = iperf_server(&hand_b, hip_b);
    let _s3 = iperf_server(hb.ns(), hb.addr());
    let load0 = loadavg();
    let v = rotated(
        &[(&pa.ns, pb.ip), (&hand_a, hip_b), (ha.ns(), hb.addr())],
        rounds,
        secs,
    );
    let (reef, flan, host) = (median(&v[0]), median(&v[1]), median(&v[2]));
    println!(
        "vxlan across two subnets (through a router): iperf3, 1 TCP stream, {rounds} rounds x \
         {secs} s per path (order rotated each round), medians; load average {load0} -> {}",
        loadavg()
    );
    println!("{:<48} {:>8}   rounds", "Gbit/s", "median");
    println!(
        "{:<48} {reef:>8.2}   {}",
        "pod -> pod, reef.vxlan (reef-agent)",
        fmt(&v[0])
    );
    println!(
        "{:<48} {flan:>8.2}   {}",
        "pod -> pod, flannel-style VXLAN by hand",
        fmt(&v[1])
    );
    println!(
        "{:<48} {host:>8.2}   {}",
        "host -> host on the underlay",
        fmt(&v[2])
    );
    println!(
        "ratios: reef/underlay {:.3}; flannel/underlay {:.3}; reef/flannel {:.3} (target >= 1.0)",
        reef / host,
        flan / host,
        reef / flan
    );
}

fn same_subnet(rounds: usize, secs: usize) {
    let mode = "vxlan-crosssubnet";
    let mut rc = RoutedCluster::with(Topology::OneSubnet(2), mode);
    rc.start_agents(&[0, 1], &[]);
    rc.wait_vxlan_dev(&[0, 1], CONVERGE);
    let a = rc.add_pod(0);
    let b = rc.add_pod(1);
    rc.wait_overlay(&[0, 1], &[0, 1], mode, CONVERGE);
    let (pa, pb) = (&rc.pods[a], &rc.pods[b]);
    let (ha, hb) = (rc.host(0), rc.host(1));
    let mtu = link_mtu(&pa.ns, IFNAME);
    // The same direct path by hand, at the pod MTU and at the full underlay MTU (which one
    // the gap to the underlay comes from), outside the pool, routed via the underlay.
    let hand = |tag: &str, net: u8, mtu: u32| {
        let (ia, ib) = (
            Ipv4Addr::new(10, 67, net, 2),
            Ipv4Addr::new(10, 67, net + 1, 2),
        );
        let a = hand_pod(ha, ia, &format!("{tag}a"), mtu);
        let b = hand_pod(hb, ib, &format!("{tag}b"), mtu);
        ha.ns().sh_ok(&format!(
            "ip route add 10.67.{}.0/24 via {}",
            net + 1,
            hb.addr()
        ));
        hb.ns()
            .sh_ok(&format!("ip route add 10.67.{net}.0/24 via {}", ha.addr()));
        (a, b, ib)
    };
    let (h14a, h14b, h14ip) = hand("s", 10, mtu as u32);
    let (h15a, h15b, h15ip) = hand("f", 20, 1500);
    let _s1 = iperf_server(&pb.ns, pb.ip);
    let _s2 = iperf_server(hb.ns(), hb.addr());
    let _s3 = iperf_server(&h14b, h14ip);
    let _s4 = iperf_server(&h15b, h15ip);
    let before = link_stats(ha.ns(), VXLAN_DEV);
    let load0 = loadavg();
    let v = rotated(
        &[
            (&pa.ns, pb.ip),
            (ha.ns(), hb.addr()),
            (&h14a, h14ip),
            (&h15a, h15ip),
        ],
        rounds,
        secs,
    );
    let encapsulated = link_stats(ha.ns(), VXLAN_DEV).since(&before);
    let (pod, host) = (median(&v[0]), median(&v[1]));
    let (by14, by15) = (median(&v[2]), median(&v[3]));
    println!(
        "vxlan-crosssubnet, two hosts on one subnet: {rounds} rounds x {secs} s, medians; \
         load average {load0} -> {}",
        loadavg()
    );
    println!("{:<48} {:>8}   rounds", "Gbit/s", "median");
    println!(
        "{:<48} {pod:>8.2}   {}",
        format!("pod -> pod, direct route (pod MTU {mtu})"),
        fmt(&v[0])
    );
    println!(
        "{:<48} {by14:>8.2}   {}",
        format!("same path by hand, MTU {mtu}"),
        fmt(&v[2])
    );
    println!(
        "{:<48} {by15:>8.2}   {}",
        "same path by hand, MTU 1500",
        fmt(&v[3])
    );
    println!(
        "{:<48} {host:>8.2}   {}",
        "host -> host on the underlay",
        fmt(&v[1])
    );
    println!(
        "ratio pod/underlay: {:.3} (target >= 0.95); by hand/underlay: {:.3} (MTU {mtu}), \
         {:.3} (MTU 1500); reef.vxlan tx on the sender during the run: {} bytes",
        pod / host,
        by14 / host,
        by15 / host,
        encapsulated.tx_bytes
    );
}

fn main() {
    cnitool_bin();
    let rounds = env_or("REEF_BENCH_TPUT_ROUNDS", 7);
    let secs = env_or("REEF_BENCH_TPUT_SECS", 3);
    if rounds == 0 {
        return;
    }
    across_subnets(rounds, secs);
    println!();
    same_subnet(rounds, secs);
}
