//! Throughput measurement shared by the routed and VXLAN benches: iperf3 (Debian's) between
//! namespaces, rotated rounds, medians, and a pod wired by hand like reef-routed wires one.
#![allow(dead_code)] // each bench uses its own subset

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use netns_fixtures::SimHost;
use reef_tests::{ChildGuard, Netns};
use serde_json::Value;

pub const PORT: u16 = 5201;

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[(s.len() - 1) / 2]
}

/// Starts `iperf3 -s -B ip` inside `ns` and waits until it listens.
pub fn iperf_server(ns: &Netns, ip: Ipv4Addr) -> ChildGuard {
    let guard = ns
        .spawn(
            "iperf3",
            ["-s", "-B", &ip.to_string(), "-p", &PORT.to_string()],
        )
        .expect("spawn iperf3 -s");
    let ok = reef_tests::wait_until(Duration::from_secs(10), || {
        let out = ns.sh(&format!("ss -Hltn 'sport = :{PORT}'"));
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
    assert!(ok, "iperf3 server on {ip} in {} not listening", ns.name());
    guard
}

/// `iperf3 -c DST -t SECS -J` inside `ns`: received Gbit/s.
pub fn iperf(ns: &Netns, dst: Ipv4Addr, secs: usize) -> f64 {
    let out = ns
        .cmd("iperf3")
        .args(["-c", &dst.to_string(), "-p", &PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J"])
        .stdin(Stdio::null())
        .output()
        .expect("run iperf3 -c");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| {
            panic!(
                "iperf3 -c {dst} in {} failed ({}): {}\n{}",
                ns.name(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    bps / 1e9
}

/// A pod wired by hand like reef-routed wires one (veth with the fixed host MAC and proxy
/// ARP, /32 address, default via 169.254.1.1 pinned by a permanent neighbour, /32 host
/// route), both veth ends at `mtu`. Its veth dies with the namespace.
pub fn hand_pod(host: &SimHost, ip: Ipv4Addr, tag: &str, mtu: u32) -> Netns {
    let pod = Netns::new("vxhand").expect("hand pod netns");
    let hv = format!("hand{tag}");
    host.ns().sh_ok(&format!(
        "ip link add {hv} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {pod} && \
         ip link set {hv} address ee:ee:ee:ee:ee:ee up && \
         sysctl -qw net.ipv4.conf.{hv}.proxy_arp=1 && \
         ip route add {ip}/32 dev {hv}",
        pod = pod.name()
    ));
    pod.sh_ok(&format!(
        "ip link set lo up && ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
         ip route add 169.254.1.1 dev eth0 scope link && \
         ip route add default via 169.254.1.1 dev eth0 && \
         ip neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent"
    ));
    pod
}

pub fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Measures every path `rounds` times (first path rotated each round); returns the samples.
pub fn rotated(paths: &[(&Netns, Ipv4Addr)], rounds: usize, secs: usize) -> Vec<Vec<f64>> {
    for (ns, dst) in paths {
        iperf(ns, *dst, 1); // warm-up
    }
    let mut out = vec![Vec::new(); paths.len()];
    for r in 0..rounds {
        for k in 0..paths.len() {
            let i = (r + k) % paths.len();
            out[i].push(iperf(paths[i].0, paths[i].1, secs));
        }
    }
    out
}
