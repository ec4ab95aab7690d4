//! ADD+DEL latency through libcni (the library containerd and CRI-O use), Reef against
//! Debian's reference plugins in the same run. Each round gets its own pod namespace; each
//! side runs in its own simulated host namespace, so nothing touches the machine's own
//! network. Prints p50/p90 per side and the ratios; the targets are in the README.
//!
//! `cargo build --release && cargo bench -p reef-tests --bench cni_add_del`
//! Environment: `REEF_BENCH_ROUNDS` (default 100).

use reef_tests::{cni_path, cnitool_bin, tempdir, write_conflist, Cnitool, Netns};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    add_p50: f64,
    add_p90: f64,
    del_p50: f64,
    del_p90: f64,
}

fn parse(out: &str) -> Option<Figures> {
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

/// One side of a comparison: a conflist run by `cnitool bench` inside its own host netns.
struct Side {
    label: &'static str,
    host: Netns,
    conflist: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Side {
    fn new(label: &'static str, dir: &std::path::Path, conf: Value) -> Side {
        let host = Netns::new("bench").expect("create host netns");
        let conflist = write_conflist(dir, &conf);
        let cache = dir.join(format!("cache-{label}"));
        Side {
            label,
            host,
            conflist,
            cache,
        }
    }

    fn run(&self, rounds: usize, tag: &str) -> Figures {
        let prefix = format!("rb{}{}-", std::process::id(), tag);
        let out = Cnitool::new(&self.host, &self.cache)
            .cni_path(cni_path())
            .timeout(Duration::from_secs(900))
            .run([
                "bench",
                &self.conflist.display().to_string(),
                &rounds.to_string(),
                &prefix,
            ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} bench failed: {stdout}\n{}",
            self.label,
            String::from_utf8_lossy(&out.stderr)
        );
        parse(&stdout).unwrap_or_else(|| panic!("unparsable bench output: {stdout}"))
    }
}

fn bridge_conf(name: &str, dir: &std::path::Path, main: &str, ipam: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": main,
            "bridge": format!("{name}0"),
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": ipam,
                "dataDir": dir.join("ipam").display().to_string(),
                "ranges": [[{"subnet": subnet}]],
            },
        }],
    })
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a name filter we don't need.
    let rounds: usize = std::env::var("REEF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    cnitool_bin();
    let dir = tempdir();
    let reef = Side::new(
        "reef",
        dir.path(),
        bridge_conf(
            "benchreef",
            dir.path(),
            "reef-bridge",
            "reef-ipam",
            "10.210.0.0/16",
        ),
    );
    let reference = Side::new(
        "reference",
        dir.path(),
        bridge_conf(
            "benchref",
            dir.path(),
            "bridge",
            "host-local",
            "10.211.0.0/16",
        ),
    );
    // Warm-up: first rounds create the bridges and tables and fault in the binaries.
    reef.run(5, "w");
    reference.run(5, "w");
    // Two interleaved halves per side, so drift on a noisy machine hits both alike.
    let half = rounds.div_ceil(2);
    let runs = [
        ("reef", reef.run(half, "a")),
        ("reference", reference.run(half, "a")),
        ("reef", reef.run(half, "b")),
        ("reference", reference.run(half, "b")),
    ];
    let avg = |who: &str| {
        let v: Vec<Figures> = runs
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, f)| *f)
            .collect();
        let n = v.len() as f64;
        Figures {
            add_p50: v.iter().map(|f| f.add_p50).sum::<f64>() / n,
            add_p90: v.iter().map(|f| f.add_p90).sum::<f64>() / n,
            del_p50: v.iter().map(|f| f.del_p50).sum::<f64>() / n,
            del_p90: v.iter().map(|f| f.del_p90).sum::<f64>() / n,
        }
    };
    let (r, f) = (avg("reef"), avg("reference"));
    println!("ADD+DEL through libcni, {rounds} rounds per side (two interleaved halves, figures averaged), own pod netns per round");
    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>9}",
        "ms", "ADD p50", "ADD p90", "DEL p50", "DEL p90"
    );
    println!(
        "{:<52} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "reef-bridge + reef-ipam + ipMasq", r.add_p50, r.add_p90, r.del_p50, r.del_p90
    );
    println!(
        "{:<52} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "reference bridge + host-local + ipMasq", f.add_p50, f.add_p90, f.del_p50, f.del_p90
    );
    println!(
        "{:<52} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        "ratio reef/reference",
        r.add_p50 / f.add_p50,
        r.add_p90 / f.add_p90,
        r.del_p50 / f.del_p50,
        r.del_p90 / f.del_p90
    );
    println!("targets: ADD p50 <= 0.20x, DEL p50 <= 0.35x the reference");
}
