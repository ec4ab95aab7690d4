//! Switching a host's firewall driver: attachments keep the driver their ADD used (DEL and
//! CHECK follow the record, not the new setting), and GC after the switch leaves nothing of
//! the old driver's per-pod state behind (masquerade entries, anti-spoofing elements).

use reef_firewall::iptables::{masquerade_set, Family};
use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::*;
use serde_json::{json, Value};

fn conf(env: &HostWithPods, firewall: &str) -> Value {
    bridge_conf(
        "1.1.0",
        "swnet",
        "sw0",
        json!([[{"subnet": "10.68.0.0/24"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true, "firewall": firewall}),
    )
}

/// Every element of the nftables driver's own guard and masquerade sets that names `veth`
/// or `ip` (the `bridge reef-guard` table is both drivers' bridge layer: not counted).
fn nft_state(env: &HostWithPods, veth: &str, ip: &str) -> Vec<String> {
    let mut found = Vec::new();
    let out = env
        .host
        .run("nft", ["list", "table", "inet", "reef-guard"])
        .expect("nft");
    if String::from_utf8_lossy(&out.stdout).contains(veth) {
        found.push(format!("inet reef-guard holds {veth}"));
    }
    if nft_set(&env.host, "reef-masq-swnet", "pods4")
        .unwrap_or_default()
        .iter()
        .any(|e| e == ip)
    {
        found.push(format!("reef-masq-swnet holds {ip}"));
    }
    found
}

/// Every member of the iptables driver's guard and masquerade ipsets naming `veth` or `ip`.
fn ipt_state(env: &HostWithPods, veth: &str, ip: &str) -> Vec<String> {
    let out = env.host.sh("ipset save 2>/dev/null");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let masq = masquerade_set("swnet", Family::V4);
    text.lines()
        .filter(|l| l.starts_with("add "))
        .filter(|l| l.contains(veth) || (l.starts_with(&format!("add {masq} ")) && l.ends_with(ip)))
        .map(str::to_string)
        .collect()
}

#[test]
fn gc_after_a_driver_switch_leaves_nothing_of_the_old_driver() {
    let env = HostWithPods::new(3);
    let tag = std::process::id();
    let cids: Vec<String> = (0..3).map(|i| format!("sw{tag}x{i}")).collect();
    let nft = conf(&env, "nftables");
    let ipt = conf(&env, "iptables");
    let mut results = Vec::new();
    for (i, c) in [&nft, &nft, &ipt].into_iter().enumerate() {
        let out = bridge_call("ADD", env.pods[i].path(), &cids[i], "eth0", c).run(&env.host);
        results.push(expect_ok(&out, "ADD").result().clone());
    }
    let veth = |i: usize| result_host_veth(&results[i]);
    let ip = |i: usize| addr_of(&result_ip(&results[i], false));
    assert!(
        !nft_state(&env, &veth(0), &ip(0)).is_empty(),
        "pod 0 on nftables"
    );
    assert!(
        ipt_state(&env, &veth(0), &ip(0)).is_empty(),
        "pod 0 not on iptables"
    );
    assert!(
        !ipt_state(&env, &veth(2), &ip(2)).is_empty(),
        "pod 2 on iptables"
    );
    assert!(
        nft_state(&env, &veth(2), &ip(2)).is_empty(),
        "pod 2 not on nftables"
    );

    // The setting now says iptables; CHECK and DEL of pod 0 still use its ADD's nftables.
    expect_ok(
        &bridge_call(
            "CHECK",
            env.pods[0].path(),
            &cids[0],
            "eth0",
            &with_prev(&ipt, &results[0]),
        )
        .run(&env.host),
        "CHECK of an attachment ADDed on nftables",
    );
    expect_ok(
        &bridge_call("DEL", env.pods[0].path(), &cids[0], "eth0", &ipt).run(&env.host),
        "DEL",
    );
    assert_eq!(
        nft_state(&env, &veth(0), &ip(0)),
        Vec::<String>::new(),
        "after DEL"
    );

    // GC listing only pod 2: pod 1's nftables state goes although the setting is iptables.
    let mut gc = ipt.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": cids[2], "ifname": "eth0"}]);
    expect_ok(&bridge_net_call("GC", &gc).run(&env.host), "GC");
    assert_eq!(
        nft_state(&env, &veth(1), &ip(1)),
        Vec::<String>::new(),
        "after GC"
    );
    assert!(
        !ipt_state(&env, &veth(2), &ip(2)).is_empty(),
        "GC kept the listed pod"
    );

    expect_ok(
        &bridge_call("DEL", env.pods[2].path(), &cids[2], "eth0", &ipt).run(&env.host),
        "DEL",
    );
    assert_eq!(
        ipt_state(&env, &veth(2), &ip(2)),
        Vec::<String>::new(),
        "after the last DEL"
    );
}
