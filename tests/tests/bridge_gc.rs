//! GC (CNI 1.1) through reef-bridge removes everything the network holds for attachments the
//! runtime no longer lists — IPAM records, masquerade entries, host veths and their guard
//! (anti-spoofing) elements — and nothing of
//! the listed ones, nor of another network sharing the bridge.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::json;

#[test]
fn gc_removes_stale_veths_addresses_and_masquerade_entries_only() {
    let mut env = HostWithPods::new(3);
    env.add_pod();
    let conf = bridge_conf(
        "1.1.0",
        "gcnet",
        "gc0",
        json!([[{"subnet": "10.63.0.0/24"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    // A second network on the same bridge: its attachment is not ours to collect.
    let other = bridge_conf(
        "1.1.0",
        "gcother",
        "gc0",
        json!([[{"subnet": "10.64.0.0/24"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    let mut results = Vec::new();
    for (i, pod) in env.pods.iter().take(3).enumerate() {
        let out = bridge_call("ADD", pod.path(), &format!("gc{i}"), "eth0", &conf).run(&env.host);
        results.push(expect_ok(&out, "ADD").result().clone());
    }
    let out = bridge_call("ADD", env.pods[3].path(), "gcx", "eth0", &other).run(&env.host);
    let other_result = expect_ok(&out, "ADD other network").result().clone();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": "eth0"}]);
    expect_ok(&bridge_net_call("GC", &gc).run(&env.host), "GC");

    let veth = |r: &serde_json::Value| result_host_veth(r);
    assert!(
        has_link(&env.host, &veth(&results[0])),
        "listed attachment lost its veth"
    );
    for r in &results[1..] {
        assert!(
            !has_link(&env.host, &veth(r)),
            "stale veth {} survived GC",
            veth(r)
        );
    }
    assert!(
        has_link(&env.host, &veth(&other_result)),
        "GC touched another network's veth"
    );
    let ips = ip_files(&env.data_dir(), "gcnet");
    assert_eq!(
        ips,
        vec![addr_of(&result_ip(&results[0], false))],
        "IPAM after GC"
    );
    let set = masq_set(&env.host, "gcnet", false);
    assert_eq!(
        set,
        vec![addr_of(&result_ip(&results[0], false))],
        "masquerade set after GC"
    );
    // The pods' anti-spoofing elements: the listed and the other network's stay, the stale
    // ones' are gone, in both guard tables.
    for family in ["inet", "bridge"] {
        let out = env
            .host
            .run("nft", ["list", "set", family, "reef-guard", "pod-sources"])
            .expect("nft list set");
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        for (r, want) in [
            (&results[0], true),
            (&results[1], false),
            (&results[2], false),
            (&other_result, true),
        ] {
            let elem = format!("\"{}\" . {}", veth(r), addr_of(&result_ip(r, false)));
            assert_eq!(
                listing.contains(&elem),
                want,
                "{family} pod-sources after GC, {elem}: {listing}"
            );
        }
    }
    assert!(reachable(&env.pods[0], &result_gateway(&results[0], false)));
    assert!(reachable(
        &env.pods[3],
        &result_gateway(&other_result, false)
    ));
}
