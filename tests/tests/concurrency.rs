//! Many plugin processes at once on one host: the bridge, the gateway address, the masquerade
//! table and the IPAM store are all shared, and every race must end in a consistent state.

use std::collections::BTreeSet;
use std::sync::Barrier;

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::{json, Value};

const PODS: usize = 50;
const BRIDGE: &str = "reefconc0";
const NET: &str = "conc";
const IFNAME: &str = "eth0";

/// Runs `call(i)` for every pod index in its own thread, all released at once by a barrier;
/// each call spawns one plugin process. Returns the outputs in index order.
fn all_at_once(n: usize, call: impl Fn(usize) -> CniOutput + Sync) -> Vec<CniOutput> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, call) = (&barrier, &call);
                s.spawn(move || {
                    barrier.wait();
                    call(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("plugin thread panicked"))
            .collect()
    })
}

#[test]
fn fifty_concurrent_adds_then_dels() {
    let env = HostWithPods::new(PODS);
    let conf = bridge_conf(
        "1.0.0",
        NET,
        BRIDGE,
        json!([[{"subnet": "10.61.0.0/24"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    let cid = |i: usize| format!("conc-{i:02}");

    let adds = all_at_once(PODS, |i| {
        bridge_call("ADD", env.pods[i].path(), &cid(i), IFNAME, &conf).run(&env.host)
    });
    let results: Vec<Value> = adds
        .iter()
        .enumerate()
        .map(|(i, out)| {
            expect_ok(out, &format!("concurrent ADD {}", cid(i)))
                .result()
                .clone()
        })
        .collect();

    // 50 distinct addresses, each on its pod.
    let ips: BTreeSet<String> = results.iter().map(|r| result_ip(r, false)).collect();
    assert_eq!(ips.len(), PODS, "addresses are not distinct: {ips:?}");
    for (i, (pod, r)) in env.pods.iter().zip(&results).enumerate() {
        let cidr = result_cidrs(r)[0].clone();
        assert!(
            addresses(pod, IFNAME).contains(&cidr),
            "pod {i}: {cidr} is not on {IFNAME}"
        );
    }
    assert_eq!(
        ip_files(&env.data_dir(), NET)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ips,
        "the store holds exactly the handed-out addresses"
    );

    // Exactly one bridge, with the 50 host veths attached.
    let bridges: Vec<String> = links_of_kind(&env.host, "bridge")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        bridges,
        vec![BRIDGE.to_owned()],
        "exactly one bridge in the host"
    );
    let ports: BTreeSet<String> = bridge_ports(&env.host, BRIDGE).into_iter().collect();
    let veths: BTreeSet<String> = results.iter().map(result_host_veth).collect();
    assert_eq!(veths.len(), PODS, "host veth names are distinct");
    assert_eq!(
        ports, veths,
        "every host veth (and nothing else) is a port of {BRIDGE}"
    );
    assert_eq!(
        links_of_kind(&env.host, "veth").len(),
        PODS,
        "no stray veths"
    );
    let masq: BTreeSet<String> = masq_set(&env.host, NET, false).into_iter().collect();
    assert_eq!(masq, ips, "masquerade set holds every pod address");
    let gw = result_gateway(&results[0], false);
    assert!(
        reachable(&env.pods[PODS - 1], &gw),
        "last pod cannot ping the gateway {gw}"
    );

    // 50 concurrent DELs, as a runtime sends them (with prevResult).
    let dels = all_at_once(PODS, |i| {
        bridge_call(
            "DEL",
            env.pods[i].path(),
            &cid(i),
            IFNAME,
            &with_prev(&conf, &results[i]),
        )
        .run(&env.host)
    });
    for (i, out) in dels.iter().enumerate() {
        expect_ok(out, &format!("concurrent DEL {}", cid(i)));
    }
    assert_eq!(
        ip_files(&env.data_dir(), NET),
        Vec::<String>::new(),
        "no IP file left"
    );
    assert_eq!(links_of_kind(&env.host, "veth").len(), 0, "no veth left");
    let masq = masq_set(&env.host, NET, false);
    assert!(masq.is_empty(), "masquerade set after every DEL: {masq:?}");
}
