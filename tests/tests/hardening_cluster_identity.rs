//! Hardening: reef-ipam's node cache (`dataDir`) is bound to the cluster's identity. etcd
//! revisions are small integers that repeat across clusters, so a cache filled from one etcd
//! must never be acted upon against another: re-create etcd (new data directory, same node
//! names, `reefctl init` with another pool) and the next ADD with the same `dataDir` must
//! allocate from the new pool and write nothing outside it, still in one round trip once the
//! cache is refilled.

use reef_tests::cluster::*;
use reef_tests::expect::result_ips;
use reef_tests::store::Cidr;
use std::collections::BTreeMap;
use std::net::IpAddr;

const OLD_POOL: &str = "10.89.0.0/16";
const NEW_POOL: &str = "10.90.0.0/16";

fn init(env: &Env, pool: &str, force: bool) {
    let mut args = vec!["--pool", pool, "--block-size", "26", "--mode", "routed"];
    if force {
        args.push("--force");
    }
    env.reefctl_init(&args);
}

/// Throws the etcd away and starts a brand-new one on the same host, address and flags (an
/// empty data directory: revisions count from 1 again).
fn recreate_etcd(env: &mut Env) {
    let etcd = env.cluster.etcd.as_mut().expect("etcd");
    etcd.stop().expect("stop etcd");
    let data = etcd.data_dir();
    std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("remove {}: {e}", data.display()));
    etcd.start_again().expect("start a new etcd");
}

fn cluster_id(env: &Env) -> Option<String> {
    let cfg = env.dump().config.expect("/reef/config");
    cfg["clusterId"].as_str().map(str::to_owned)
}

fn in_pool(pool: &str, ip: IpAddr) -> bool {
    Cidr::parse(pool).contains(ip)
}

/// Unary gRPC calls etcd has completed (all methods), from its plain-HTTP /metrics.
fn etcd_calls(env: &Env) -> f64 {
    let addr = env.cluster.etcd().addr();
    let out = env
        .host(0)
        .ns()
        .cmd("curl")
        .args([
            "-sf",
            "--max-time",
            "10",
            &format!("http://{addr}:2379/metrics"),
        ])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "GET /metrics failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("grpc_server_handled_total{"))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(labels, _)| labels.contains("grpc_type=\"unary\""))
        .map(|(_, v)| v.trim().parse::<f64>().unwrap_or(0.0))
        .sum()
}

#[test]
fn node_cache_from_a_recreated_etcd_is_not_trusted() {
    let mut env = Env::new(1);
    init(&env, OLD_POOL, false);
    let old_id = cluster_id(&env);
    let first = env.add_ok(0, "ident-a");
    let ip = result_ips(&first)[0];
    assert!(in_pool(OLD_POOL, ip), "{ip} from {OLD_POOL}: {first}");

    // A forced re-init of the same cluster keeps its identity.
    init(&env, OLD_POOL, true);
    let forced_id = cluster_id(&env);

    // Another etcd, same node names, another pool; the host keeps its dataDir.
    recreate_etcd(&mut env);
    init(&env, NEW_POOL, false);
    let new_id = cluster_id(&env);

    let second = env.add_ok(0, "ident-b");
    let ip = result_ips(&second)[0];
    let dump = env.dump();
    assert!(
        in_pool(NEW_POOL, ip),
        "ADD after re-creating etcd handed out {ip}, outside the new pool {NEW_POOL} \
         (the cache of the old cluster was trusted): {second}\n{}",
        dump.pretty()
    );
    let outside: Vec<String> = dump
        .blocks
        .keys()
        .filter(|b| !in_pool(NEW_POOL, b.ip))
        .map(|b| format!("{}/{}", b.ip, b.prefix))
        .collect();
    assert!(
        outside.is_empty(),
        "blocks outside {NEW_POOL} written into the new cluster: {outside:?}\n{}",
        dump.pretty()
    );
    dump.assert_consistent("after the first ADD against the new etcd");
    assert!(old_id.is_some(), "reefctl init writes a clusterId");
    assert_eq!(forced_id, old_id, "init --force keeps the cluster id");
    assert!(new_id.is_some(), "reefctl init writes a clusterId");
    assert_ne!(new_id, old_id, "a re-created etcd gets a new cluster id");
    assert_eq!(
        dump.handles.keys().cloned().collect::<Vec<_>>(),
        vec![format!("{}/ident-b/{IFNAME}", env.node(0))],
        "only the new attachment is known to the new cluster"
    );

    // Refilled from the new cluster, the cache serves the common ADD in one round trip again.
    let before = etcd_calls(&env);
    let third = env.add_ok(0, "ident-c");
    let calls = etcd_calls(&env) - before;
    assert_eq!(calls, 1.0, "etcd round trips for a warm-cache ADD: {third}");
    let ip3 = result_ips(&third)[0];
    assert!(in_pool(NEW_POOL, ip3), "{ip3}: {third}");

    // A DEL of an attachment the old cluster knew (its revisions still in the cache) frees
    // nothing in the new one; the new attachments keep their addresses.
    env.del_ok(0, "ident-a", Some(&first));
    let dump = env.dump();
    dump.assert_consistent("after a DEL known only to the old cluster");
    let held: BTreeMap<IpAddr, String> = dump
        .allocations()
        .into_iter()
        .map(|a| (a.ip, a.handle))
        .collect();
    assert_eq!(
        held,
        BTreeMap::from([
            (ip, format!("{}/ident-b/{IFNAME}", env.node(0))),
            (ip3, format!("{}/ident-c/{IFNAME}", env.node(0))),
        ]),
        "{}",
        dump.pretty()
    );
    env.del_ok(0, "ident-b", Some(&second));
    env.del_ok(0, "ident-c", Some(&third));
    let dump = env.dump();
    assert!(dump.allocations().is_empty(), "{}", dump.pretty());
}
