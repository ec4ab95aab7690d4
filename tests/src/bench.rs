//! Shared by the benches: the figures `cnitool bench` prints, the statistics and knobs of
//! the printed figures, and the baseline pod wired by hand.

use std::net::Ipv4Addr;
use std::path::Path;

use netns_fixtures::SimHost;

use crate::{Cnitool, Netns};

/// p50/p90 of ADD and DEL in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub add_p50: f64,
    pub add_p90: f64,
    pub del_p50: f64,
    pub del_p90: f64,
}

impl Figures {
    /// Parses `add_p50_ms=… add_p90_ms=… del_p50_ms=… del_p90_ms=…`.
    pub fn parse(out: &str) -> Option<Figures> {
        let mut f = Figures::default();
        for kv in out.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let v: f64 = v.parse().ok()?;
            match k {
                "add_p50_ms" => f.add_p50 = v,
                "add_p90_ms" => f.add_p90 = v,
                "del_p50_ms" => f.del_p50 = v,
                "del_p90_ms" => f.del_p90 = v,
                _ => {}
            }
        }
        Some(f)
    }
}

/// `cnitool bench CONFLIST ROUNDS PREFIX` (container ids `PREFIX0`, `PREFIX1`, ...) with
/// `tool`: its figures. Panics with `what`, stdout and stderr if it fails, or if it prints
/// no figures.
pub fn cnitool_bench(
    tool: &Cnitool,
    conflist: &Path,
    rounds: usize,
    prefix: &str,
    what: &str,
) -> Figures {
    let out = tool.run([
        "bench",
        &conflist.display().to_string(),
        &rounds.to_string(),
        prefix,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Figures::parse(&stdout).unwrap_or_else(|| panic!("unparsable bench output: {stdout}"))
}

/// `$name` as a number, or `default` if unset or not a number.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), for the printed figures.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The median (the lower one of an even count; NaN if empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[(s.len() - 1) / 2]
}

/// The samples with two decimals, space-separated.
pub fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
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

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cnitool_bench_output() {
        let f = super::Figures::parse("add_p50_ms=1.5 add_p90_ms=2 del_p50_ms=3 del_p90_ms=4.25")
            .unwrap();
        assert_eq!(
            (f.add_p50, f.add_p90, f.del_p50, f.del_p90),
            (1.5, 2.0, 3.0, 4.25)
        );
    }
}
