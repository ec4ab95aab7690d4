//! ADD+DEL latency through libcni (the library containerd and CRI-O use), Reef against
//! Debian's reference plugins in the same run. Each round gets its own pod namespace; each
//! side runs in its own simulated host namespace, so nothing touches the machine's own
//! network. Prints p50/p90 per side and the ratios; the targets are in the README.
//!
//! Two chains per side: bridge + IPAM + ipMasq, and the same with the portmap plugin and one
//! port mapping (CAP_ARGS); Reef's twice, on the nftables and on the iptables driver (the
//! reference plugins' firewall is iptables). Then `reef-run -- true` end to end (process start to exit,
//! network up and down) on its embedded default network.
//!
//! `cargo build --release && cargo bench -p reef-tests --bench cni_add_del`
//! Environment: `REEF_BENCH_ROUNDS` (default 100); `REEF_BENCH_BASELINE=DIR` adds a third
//! side, Reef's plugins from DIR (e.g. built from an earlier commit), interleaved with the
//! other two, to show a change's effect in one run.

use reef_tests::{cni_path, cnitool_bin, tempdir, write_conflist, Cnitool, Netns};
use serde_json::{json, Value};
use std::time::Duration;

use reef_tests::bench::{cnitool_bench, Figures};

/// One side of a comparison: a conflist run by `cnitool bench` inside its own host netns.
struct Side {
    label: &'static str,
    host: Netns,
    conflist: std::path::PathBuf,
    cache: std::path::PathBuf,
    cap_args: Option<Value>,
    cni_path: String,
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
            cap_args: None,
            cni_path: cni_path(),
        }
    }

    /// Plugins from `dir` first (a baseline build), then the usual path.
    fn with_plugins_from(mut self, dir: &str) -> Side {
        self.cni_path = format!("{dir}:{}", cni_path());
        self
    }

    fn with_cap_args(mut self, v: Value) -> Side {
        self.cap_args = Some(v);
        self
    }

    fn run(&self, rounds: usize, tag: &str) -> Figures {
        let prefix = format!("rb{}{}-", std::process::id(), tag);
        let mut tool = Cnitool::new(&self.host, &self.cache)
            .cni_path(self.cni_path.clone())
            .timeout(Duration::from_secs(900));
        if let Some(c) = &self.cap_args {
            tool = tool.cap_args(c);
        }
        cnitool_bench(
            &tool,
            &self.conflist,
            rounds,
            &prefix,
            &format!("{} bench", self.label),
        )
    }
}

fn bridge_conf(
    name: &str,
    dir: &std::path::Path,
    main: &str,
    ipam: &str,
    subnet: &str,
    portmap: Option<&str>,
) -> Value {
    firewall_conf(name, dir, main, ipam, subnet, portmap, None)
}

/// `bridge_conf` with `"firewall"` set on every plugin (Reef's only).
fn firewall_conf(
    name: &str,
    dir: &std::path::Path,
    main: &str,
    ipam: &str,
    subnet: &str,
    portmap: Option<&str>,
    firewall: Option<&str>,
) -> Value {
    let mut plugins = vec![json!({
        "type": main,
        "bridge": format!("{name}0"),
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": ipam,
            "dataDir": dir.join("ipam").display().to_string(),
            "ranges": [[{"subnet": subnet}]],
        },
    })];
    if let Some(pm) = portmap {
        plugins.push(json!({"type": pm, "capabilities": {"portMappings": true}}));
    }
    if let Some(fw) = firewall {
        for p in &mut plugins {
            p["firewall"] = json!(fw);
        }
    }
    json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins})
}

fn avg(v: &[Figures]) -> Figures {
    let n = v.len() as f64;
    Figures {
        add_p50: v.iter().map(|f| f.add_p50).sum::<f64>() / n,
        add_p90: v.iter().map(|f| f.add_p90).sum::<f64>() / n,
        del_p50: v.iter().map(|f| f.del_p50).sum::<f64>() / n,
        del_p90: v.iter().map(|f| f.del_p90).sum::<f64>() / n,
    }
}

/// Every side warmed up, then two interleaved halves each; figures averaged, per side.
fn compare(sides: &[&Side], rounds: usize) -> Vec<Figures> {
    for s in sides {
        s.run(5, "w");
    }
    let half = rounds.div_ceil(2);
    let mut runs: Vec<Vec<Figures>> = sides.iter().map(|_| Vec::new()).collect();
    for tag in ["a", "b"] {
        for (s, r) in sides.iter().zip(runs.iter_mut()) {
            r.push(s.run(half, tag));
        }
    }
    runs.iter().map(|r| avg(r)).collect()
}

fn row(label: &str, f: &Figures) {
    println!(
        "{:<52} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        label, f.add_p50, f.add_p90, f.del_p50, f.del_p90
    );
}

fn ratio(label: &str, r: &Figures, f: &Figures) {
    println!(
        "{:<52} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        label,
        r.add_p50 / f.add_p50,
        r.add_p90 / f.add_p90,
        r.del_p50 / f.del_p50,
        r.del_p90 / f.del_p90
    );
}

/// `reef-run -- true` on the embedded default network inside a throwaway host: wall time of
/// the whole process (namespaces, ADD chain, command, DEL chain, teardown).
fn reef_run_true(runs: usize) -> (f64, f64) {
    let host = Netns::new("benchrun").expect("host netns");
    let dir = tempdir();
    let mut times = Vec::new();
    for _ in 0..runs + 2 {
        let t = std::time::Instant::now();
        let out = host
            .cmd(reef_tests::plugin("reef-run"))
            .env("CNI_PATH", reef_tests::plugin_dir())
            .env("REEF_STATE_DIR", dir.path().join("state"))
            .env("REEF_CNI_CACHE_DIR", dir.path().join("cache"))
            .env("REEF_IPAM_DATA_DIR", dir.path().join("ipam"))
            .args(["--", "true"])
            .output()
            .expect("run reef-run");
        assert!(
            out.status.success(),
            "reef-run -- true failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut times = times.split_off(2); // warm-up: first bridge and tables
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[(times.len() * 9) / 10])
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a name filter we don't need.
    let rounds: usize = std::env::var("REEF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    cnitool_bin();
    let dir = tempdir();
    let d = dir.path();
    let mapping =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let reef = Side::new(
        "reef",
        d,
        bridge_conf(
            "benchreef",
            d,
            "reef-bridge",
            "reef-ipam",
            "10.210.0.0/16",
            None,
        ),
    );
    let reference = Side::new(
        "reference",
        d,
        bridge_conf("benchref", d, "bridge", "host-local", "10.211.0.0/16", None),
    );
    let reef_ipt = Side::new(
        "reefipt",
        d,
        firewall_conf(
            "benchipt",
            d,
            "reef-bridge",
            "reef-ipam",
            "10.216.0.0/16",
            None,
            Some("iptables"),
        ),
    );
    let baseline = std::env::var("REEF_BENCH_BASELINE").ok();
    let base = baseline.as_deref().map(|b| {
        Side::new(
            "reefbase",
            d,
            bridge_conf(
                "benchbase",
                d,
                "reef-bridge",
                "reef-ipam",
                "10.214.0.0/16",
                None,
            ),
        )
        .with_plugins_from(b)
    });
    let mut sides = vec![&reef, &reference, &reef_ipt];
    sides.extend(base.as_ref());
    let res1 = compare(&sides, rounds);
    drop(sides);
    drop((reef, reference, reef_ipt, base));
    let reef_pm = Side::new(
        "reefpm",
        d,
        bridge_conf(
            "benchreefpm",
            d,
            "reef-bridge",
            "reef-ipam",
            "10.212.0.0/16",
            Some("reef-portmap"),
        ),
    )
    .with_cap_args(mapping.clone());
    let ref_pm = Side::new(
        "refpm",
        d,
        bridge_conf(
            "benchrefpm",
            d,
            "bridge",
            "host-local",
            "10.213.0.0/16",
            Some("portmap"),
        ),
    )
    .with_cap_args(mapping.clone());
    let ipt_pm = Side::new(
        "iptpm",
        d,
        firewall_conf(
            "benchiptpm",
            d,
            "reef-bridge",
            "reef-ipam",
            "10.217.0.0/16",
            Some("reef-portmap"),
            Some("iptables"),
        ),
    )
    .with_cap_args(mapping.clone());
    let base_pm = baseline.as_deref().map(|b| {
        Side::new(
            "basepm",
            d,
            bridge_conf(
                "benchbasepm",
                d,
                "reef-bridge",
                "reef-ipam",
                "10.215.0.0/16",
                Some("reef-portmap"),
            ),
        )
        .with_cap_args(mapping.clone())
        .with_plugins_from(b)
    });
    let mut sides = vec![&reef_pm, &ref_pm, &ipt_pm];
    sides.extend(base_pm.as_ref());
    let res2 = compare(&sides, rounds);
    drop(sides);
    drop((reef_pm, ref_pm, ipt_pm, base_pm));

    println!("ADD+DEL through libcni, {rounds} rounds per side (two interleaved halves, figures averaged), own pod netns per round");
    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>9}",
        "ms", "ADD p50", "ADD p90", "DEL p50", "DEL p90"
    );
    for (res, what) in [(&res1, ""), (&res2, " + portmap")] {
        let reef_label = format!(
            "reef-bridge + reef-ipam + ipMasq{}",
            if what.is_empty() {
                ""
            } else {
                " + reef-portmap"
            }
        );
        row(&reef_label, &res[0]);
        row(
            &format!("reference bridge + host-local + ipMasq{what}"),
            &res[1],
        );
        ratio("  ratio reef/reference", &res[0], &res[1]);
        row(
            &format!("{reef_label}, \"firewall\": \"iptables\""),
            &res[2],
        );
        ratio("  ratio iptables driver/nftables driver", &res[2], &res[0]);
        ratio("  ratio iptables driver/reference", &res[2], &res[1]);
        if let Some(b) = res.get(3) {
            row(&format!("{reef_label} (baseline)"), b);
            ratio("  ratio reef/baseline", &res[0], b);
        }
    }
    println!("targets: ADD p50 <= 0.20x, DEL p50 <= 0.35x the reference; iptables driver ADD p50 <= 2x the nftables driver and <= 0.3x the reference");
    let (p50, p90) = reef_run_true(20);
    println!("reef-run -- true (default network, process start to exit): p50 {p50:.1} ms, p90 {p90:.1} ms");
}
