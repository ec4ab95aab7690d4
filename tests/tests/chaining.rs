//! Reef's plugins mixed with the reference plugins (containernetworking/plugins in
//! /usr/lib/cni) through libcni: reef-ipam under the reference bridge, the reference
//! host-local under reef-bridge, and a reference plugin chained after reef-bridge.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";

/// Two pods through `conflist`: ADD both (addresses in `network`'s store under the data
/// dir), ping each other, CHECK, DEL twice, and every address released.
fn two_pods_via_cnitool(env: &HostWithPods, list: &Value, network: &str) {
    let file = env.write_conflist(list);
    let tool = env.cnitool();
    let cids = ["chain-a", "chain-b"];
    let mut results = Vec::new();
    for (pod, cid) in env.pods.iter().zip(cids) {
        let stdout = assert_success(
            &tool.add(&file, pod.path(), cid, IFNAME),
            &format!("cnitool add {cid}"),
        );
        let r = parse_stdout(&stdout, "cnitool add");
        let cidr = result_cidrs(&r)[0].clone();
        assert!(
            addresses(pod, IFNAME).contains(&cidr),
            "{cid}: {cidr} not on {IFNAME}: {r}"
        );
        results.push(r);
    }
    let ips: Vec<String> = results.iter().map(|r| result_ip(r, false)).collect();
    let mut want = ips.clone();
    want.sort();
    assert_eq!(
        ip_files(&env.data_dir(), network),
        want,
        "reservations in the data dir"
    );
    assert!(
        reachable(&env.pods[0], &ips[1]),
        "pod a cannot ping pod b at {}",
        ips[1]
    );
    assert!(
        reachable(&env.pods[1], &ips[0]),
        "pod b cannot ping pod a at {}",
        ips[0]
    );

    for (pod, cid) in env.pods.iter().zip(cids) {
        assert_success(
            &tool.check(&file, pod.path(), cid, IFNAME),
            &format!("cnitool check {cid}"),
        );
    }
    for (pod, cid) in env.pods.iter().zip(cids) {
        for attempt in ["first", "second"] {
            assert_success(
                &tool.del(&file, pod.path(), cid, IFNAME),
                &format!("{attempt} cnitool del {cid}"),
            );
        }
        assert!(!has_link(pod, IFNAME), "{cid}: {IFNAME} survived DEL");
    }
    assert_eq!(
        ip_files(&env.data_dir(), network),
        Vec::<String>::new(),
        "all released"
    );
}

/// The reference bridge plugin delegating its IPAM to reef-ipam.
#[test]
fn reef_ipam_under_reference_bridge() {
    let env = HostWithPods::new(2);
    let net = "refbr-reefipam";
    let list = conflist(
        net,
        vec![json!({
            "type": "bridge",
            "bridge": "refbr111",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "reef-ipam",
                "ranges": [[{"subnet": "10.111.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": env.data_dir(),
            },
        })],
    );
    two_pods_via_cnitool(&env, &list, net);
}

/// reef-bridge delegating its IPAM to the reference host-local.
#[test]
fn reef_bridge_with_reference_host_local() {
    let env = HostWithPods::new(2);
    let net = "reefbr-hostlocal";
    let list = conflist(
        net,
        vec![json!({
            "type": "reef-bridge",
            "bridge": "reefhl0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.112.0.0/24"}]],
                "dataDir": env.data_dir(),
            },
        })],
    );
    two_pods_via_cnitool(&env, &list, net);
    assert!(
        masq_set(&env.host, net, false).is_empty(),
        "masquerade set after DELs"
    );
}

/// A reference plugin (tuning) after reef-bridge in a conflist: it must accept reef-bridge's
/// result as prevResult on ADD, CHECK and DEL.
#[test]
fn reference_tuning_chained_after_reef_bridge() {
    let env = HostWithPods::new(1);
    let net = "reef-then-tuning";
    let list = conflist(
        net,
        vec![
            json!({
                "type": "reef-bridge",
                "bridge": "reeftun0",
                "isGateway": true,
                "ipam": {
                    "type": "reef-ipam",
                    "ranges": [[{"subnet": "10.113.0.0/24"}]],
                    "dataDir": env.data_dir(),
                },
            }),
            json!({"type": "tuning", "promisc": true}),
        ],
    );
    let file = env.write_conflist(&list);
    let tool = env.cnitool();
    let pod = &env.pods[0];
    let stdout = assert_success(&tool.add(&file, pod.path(), "tun", IFNAME), "cnitool add");
    let r = parse_stdout(&stdout, "cnitool add");
    let flags = link(pod, IFNAME).expect("eth0")["flags"].clone();
    assert!(
        flags
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f == "PROMISC"),
        "tuning did not act on reef-bridge's interface: {flags}"
    );
    assert_eq!(ip_files(&env.data_dir(), net), vec![result_ip(&r, false)]);
    assert_success(
        &tool.check(&file, pod.path(), "tun", IFNAME),
        "cnitool check",
    );
    assert_success(&tool.del(&file, pod.path(), "tun", IFNAME), "cnitool del");
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    assert!(!has_link(pod, IFNAME));
}
