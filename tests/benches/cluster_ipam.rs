//! ADD+DEL latency through libcni with reef-bridge and the cluster IPAM (etcd store), and the
//! number of etcd round trips per ADD and per DEL, counted by etcd itself
//! (`grpc_server_handled_total{grpc_type="unary"}` from its /metrics endpoint).
//!
//! One simulated host and one etcd host on the same underlay (netns-fixtures `Cluster`); the
//! plugins run inside the host namespace, each round with its own pod namespace. Prints
//! figures, asserts nothing about time. Targets (from the issue): ADD p50 <= 10 ms, one etcd
//! round trip for an allocation in the common case.
//!
//! `cargo build --release && cargo bench -p reef-tests --bench cluster_ipam`
//! Environment: `REEF_BENCH_ROUNDS` (default 100).

use reef_tests::fixtures::Cluster;
use reef_tests::{cni_path, cnitool_bin, tempdir, write_conflist, Cnitool, Netns};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reef_tests::bench::{cnitool_bench, Figures};

/// Unary gRPC calls etcd has completed, per method (`Txn`, `Range`, ...), from its metrics.
fn etcd_calls(host: &Netns, etcd_addr: &str) -> BTreeMap<String, f64> {
    let out = host
        .cmd("curl")
        .args([
            "-sf",
            "--max-time",
            "10",
            &format!("http://{etcd_addr}:2379/metrics"),
        ])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "GET /metrics failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.contains("grpc_type=\"unary\"") {
            continue;
        }
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .map(|m| m.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        *calls.entry(method).or_insert(0.0) += v;
    }
    calls
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn total(m: &BTreeMap<String, f64>) -> f64 {
    m.values().sum()
}

fn fmt(m: &BTreeMap<String, f64>, per: f64) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {:.2}", v / per))
        .collect::<Vec<_>>()
        .join(", ")
}

fn conflist(endpoint: &str, node: &str, cache: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchcl",
        "plugins": [{
            "type": "reef-bridge",
            "bridge": "benchcl0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "reef-ipam",
                "etcd": {"endpoints": [endpoint]},
                "nodeName": node,
                "dataDir": cache.display().to_string(),
            },
        }],
    })
}

/// The same network with the embedded local store instead (reference for the etcd cost).
fn local_conflist(dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchlocal",
        "plugins": [{
            "type": "reef-bridge",
            "bridge": "benchlo0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "reef-ipam",
                "dataDir": dir.display().to_string(),
                "ranges": [[{"subnet": "10.213.0.0/16"}]],
            },
        }],
    })
}

fn main() {
    let rounds: usize = std::env::var("REEF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    cnitool_bin();
    let cluster = Cluster::new(1, true).expect("cluster with etcd");
    let etcd = cluster.etcd();
    let host = cluster.host(0);
    let etcd_addr = etcd.addr().to_string();
    etcd.ctl(
        host.ns(),
        [
            "put",
            "/reef/config",
            &json!({"pools": [{"cidr": "10.212.0.0/16", "blockPrefix": 26, "natOutgoing": true}],
                    "mode": "routed", "vni": 1})
            .to_string(),
        ],
    )
    .expect("write /reef/config");
    let dir = tempdir();
    let file = write_conflist(
        dir.path(),
        &conflist(
            &etcd.endpoint(),
            host.name(),
            &dir.path().join("etcd-cache"),
        ),
    );
    let cache = dir.path().join("cni-cache");
    let tool = Cnitool::new(host.ns(), &cache)
        .cni_path(cni_path())
        .timeout(Duration::from_secs(900));
    let local_file = write_conflist(dir.path(), &local_conflist(&dir.path().join("local-ipam")));
    let run = |file: &Path, n: usize, tag: &str| -> Figures {
        let prefix = format!("rcl{}{tag}-", std::process::id());
        cnitool_bench(&tool, file, n, &prefix, "bench")
    };

    // Warm-up: the first ADD claims a block, creates the bridge and the masquerade table.
    run(&file, 5, "w");
    run(&local_file, 5, "lw");

    // Interleaved halves (cluster, local, cluster, local) so drift hits both alike; etcd's
    // counters are read around the cluster runs only.
    let half = rounds.div_ceil(2);
    let mut cluster_runs = Vec::new();
    let mut local_runs = Vec::new();
    let mut bench_calls: BTreeMap<String, f64> = BTreeMap::new();
    for tag in ["a", "b"] {
        let before = etcd_calls(host.ns(), &etcd_addr);
        cluster_runs.push(run(&file, half, tag));
        let after = etcd_calls(host.ns(), &etcd_addr);
        for (k, v) in delta(&before, &after) {
            *bench_calls.entry(k).or_insert(0.0) += v;
        }
        local_runs.push(run(&local_file, half, &format!("l{tag}")));
    }
    let mean = |runs: &[Figures]| {
        let n = runs.len() as f64;
        Figures {
            add_p50: runs.iter().map(|f| f.add_p50).sum::<f64>() / n,
            add_p90: runs.iter().map(|f| f.add_p90).sum::<f64>() / n,
            del_p50: runs.iter().map(|f| f.del_p50).sum::<f64>() / n,
            del_p90: runs.iter().map(|f| f.del_p90).sum::<f64>() / n,
        }
    };
    let figs = mean(&cluster_runs);
    let local = mean(&local_runs);

    // ADD and DEL separately, one libcni call at a time, with etcd's counters read around
    // each (the metrics request itself is plain HTTP, not counted).
    let sample = 20usize;
    let mut add_calls = BTreeMap::new();
    let mut del_calls = BTreeMap::new();
    for i in 0..sample {
        let pod = Netns::new("clbench").expect("pod netns");
        let cid = format!("rt-{i}");
        let b = etcd_calls(host.ns(), &etcd_addr);
        let out = tool.add(&file, pod.path(), &cid, "eth0");
        assert!(out.status.success(), "add: {out:?}");
        let m = etcd_calls(host.ns(), &etcd_addr);
        let out = tool.del(&file, pod.path(), &cid, "eth0");
        assert!(out.status.success(), "del: {out:?}");
        let a = etcd_calls(host.ns(), &etcd_addr);
        for (k, v) in delta(&b, &m) {
            *add_calls.entry(k).or_insert(0.0) += v;
        }
        for (k, v) in delta(&m, &a) {
            *del_calls.entry(k).or_insert(0.0) += v;
        }
    }

    println!(
        "reef-bridge + reef-ipam (etcd store) through libcni, {rounds} ADD+DEL rounds \
         (two halves, figures averaged), own pod netns per round, etcd on another host of \
         the underlay"
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "ms", "ADD p50", "ADD p90", "DEL p50", "DEL p90"
    );
    println!(
        "{:<40} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "reef-bridge + cluster reef-ipam + ipMasq",
        figs.add_p50,
        figs.add_p90,
        figs.del_p50,
        figs.del_p90
    );
    println!(
        "{:<40} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "reef-bridge + local reef-ipam + ipMasq",
        local.add_p50,
        local.add_p90,
        local.del_p50,
        local.del_p90
    );
    let r = (2 * half) as f64;
    println!(
        "etcd unary calls during the timed rounds: {:.2} per ADD+DEL ({})",
        total(&bench_calls) / r,
        fmt(&bench_calls, r)
    );
    let s = sample as f64;
    println!(
        "etcd round trips per ADD: {:.2} ({}); per DEL: {:.2} ({})  [{sample} single calls]",
        total(&add_calls) / s,
        fmt(&add_calls, s),
        total(&del_calls) / s,
        fmt(&del_calls, s)
    );
    println!("targets: ADD p50 <= 10 ms; 1 etcd round trip per allocation in the common case");
}
