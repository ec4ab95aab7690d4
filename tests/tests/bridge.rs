//! reef-bridge + reef-ipam driven by the raw exec protocol: the core two-pod scenario
//! (ADD, connectivity, masquerade set, CHECK, CHECK failing on drift, DEL twice, DEL after
//! the pod namespace is gone) for each spec version, IPv4 and dual-stack.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::{json, Value};

const BRIDGE: &str = "reefcore0";
const IFNAME: &str = "eth0";

/// `ipam.ranges` for 10.<octet>.0.0/24, plus fd00:<octet>::/64 when `dual_stack`.
fn ranges(octet: u8, dual_stack: bool) -> Value {
    let mut sets = vec![json!([{ "subnet": format!("10.{octet}.0.0/24") }])];
    if dual_stack {
        sets.push(json!([{ "subnet": format!("fd00:{octet}::/64") }]));
    }
    json!(sets)
}

/// Gateway mode with masquerade: the configuration the scenario exercises.
fn conf(version: &str, net: &str, octet: u8, dual_stack: bool, env: &HostWithPods) -> Value {
    bridge_conf(
        version,
        net,
        BRIDGE,
        ranges(octet, dual_stack),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    )
}

fn families(dual_stack: bool) -> &'static [bool] {
    if dual_stack {
        &[false, true]
    } else {
        &[false]
    }
}

/// The whole lifecycle of two pods on one bridge, under spec `version`.
fn two_pods_on_one_bridge(version: &str, octet: u8, dual_stack: bool) {
    let mut env = HostWithPods::new(2);
    let net = format!("core{octet}");
    let conf = conf(version, &net, octet, dual_stack, &env);
    let cids = ["core-a", "core-b"];

    // ADD both pods.
    let mut results = Vec::new();
    for (pod, cid) in env.pods.iter().zip(cids) {
        let add = bridge_call("ADD", pod.path(), cid, IFNAME, &conf).run(&env.host);
        let result = expect_ok(&add, &format!("ADD {cid} (cniVersion {version})"))
            .result()
            .clone();
        assert_eq!(result["cniVersion"], version, "result version:\n{add}");
        let want = if dual_stack { 2 } else { 1 };
        assert_eq!(
            result_cidrs(&result).len(),
            want,
            "one address per range set:\n{add}"
        );
        let live = addresses(pod, IFNAME);
        for cidr in result_cidrs(&result) {
            assert!(
                live.contains(&cidr),
                "{cid}: {cidr} from the result is not on {IFNAME} in the pod (has {live:?})"
            );
        }
        results.push(result);
    }
    let veths: Vec<String> = results.iter().map(result_host_veth).collect();
    assert_ne!(veths[0], veths[1], "each attachment has its own host veth");
    let mut ports = bridge_ports(&env.host, BRIDGE);
    ports.sort();
    let mut want_ports = veths.clone();
    want_ports.sort();
    assert_eq!(ports, want_ports, "both host veths are ports of {BRIDGE}");

    // Connectivity and masquerade set, per family.
    for &v6 in families(dual_stack) {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let ip_a = result_ip(&results[0], v6);
        let ip_b = result_ip(&results[1], v6);
        let gw = result_gateway(&results[0], v6);
        assert!(
            reachable(&env.pods[0], &ip_b),
            "{fam}: pod a cannot ping pod b at {ip_b}"
        );
        assert!(
            reachable(&env.pods[1], &ip_a),
            "{fam}: pod b cannot ping pod a at {ip_a}"
        );
        assert!(
            reachable(&env.pods[0], &gw),
            "{fam}: pod a cannot ping the gateway {gw}"
        );
        assert!(
            reachable(&env.pods[1], &gw),
            "{fam}: pod b cannot ping the gateway {gw}"
        );
        let set = masq_set(&env.host, &net, v6);
        assert!(
            set.contains(&ip_a) && set.contains(&ip_b),
            "{fam}: masquerade set should hold {ip_a} and {ip_b}, has {set:?}"
        );
    }

    // CHECK passes for both.
    for ((pod, cid), result) in env.pods.iter().zip(cids).zip(&results) {
        let check =
            bridge_call("CHECK", pod.path(), cid, IFNAME, &with_prev(&conf, result)).run(&env.host);
        expect_ok(&check, &format!("CHECK {cid} (cniVersion {version})"));
    }

    // CHECK fails once pod b's address (the last family's) is removed by hand.
    let victim = result_cidrs(&results[1])
        .last()
        .cloned()
        .expect("an address");
    env.pods[1].sh_ok(&format!("ip addr del {victim} dev {IFNAME}"));
    let check = bridge_call(
        "CHECK",
        env.pods[1].path(),
        cids[1],
        IFNAME,
        &with_prev(&conf, &results[1]),
    )
    .run(&env.host);
    let msg = expect_error(&check, 101, "CHECK after `ip addr del` in the pod");
    assert!(
        msg.contains(&addr_of(&victim)),
        "CHECK error should name the missing address {victim}: {msg}"
    );

    // DEL pod b twice: both succeed; its veth, reservations and set elements are gone.
    for attempt in ["first", "second"] {
        let del = bridge_call(
            "DEL",
            env.pods[1].path(),
            cids[1],
            IFNAME,
            &with_prev(&conf, &results[1]),
        )
        .run(&env.host);
        expect_ok(
            &del,
            &format!("{attempt} DEL of {} (cniVersion {version})", cids[1]),
        );
    }
    assert!(
        !has_link(&env.host, &veths[1]),
        "host veth {} survived DEL",
        veths[1]
    );
    assert!(
        !has_link(&env.pods[1], IFNAME),
        "{IFNAME} survived DEL in pod b"
    );
    let files = ip_files(&env.data_dir(), &net);
    for cidr in result_cidrs(&results[1]) {
        assert!(
            !files.contains(&addr_of(&cidr)),
            "{cidr} still reserved after DEL: {files:?}"
        );
    }
    for cidr in result_cidrs(&results[0]) {
        assert!(
            files.contains(&addr_of(&cidr)),
            "pod a lost {cidr} on pod b's DEL: {files:?}"
        );
    }
    for &v6 in families(dual_stack) {
        let set = masq_set(&env.host, &net, v6);
        let (gone, kept) = (result_ip(&results[1], v6), result_ip(&results[0], v6));
        assert!(
            !set.contains(&gone),
            "{gone} still masqueraded after DEL: {set:?}"
        );
        assert!(
            set.contains(&kept),
            "pod a's {kept} left the masquerade set: {set:?}"
        );
    }

    // Pod a's namespace disappears first (the runtime lost the sandbox), then DEL.
    let pod_a = env.pods.remove(0);
    let pod_a_path = pod_a.path().to_path_buf();
    drop(pod_a);
    for attempt in ["first", "second"] {
        let del = bridge_call(
            "DEL",
            &pod_a_path,
            cids[0],
            IFNAME,
            &with_prev(&conf, &results[0]),
        )
        .run(&env.host);
        expect_ok(
            &del,
            &format!("{attempt} DEL of {} after its netns was deleted", cids[0]),
        );
    }
    assert!(
        !has_link(&env.host, &veths[0]),
        "host veth {} survived DEL",
        veths[0]
    );
    assert_eq!(
        ip_files(&env.data_dir(), &net),
        Vec::<String>::new(),
        "every address is released"
    );
    for &v6 in families(dual_stack) {
        let set = masq_set(&env.host, &net, v6);
        assert!(
            set.is_empty(),
            "masquerade set should be empty after both DELs: {set:?}"
        );
    }
    assert_eq!(
        bridge_ports(&env.host, BRIDGE),
        Vec::<String>::new(),
        "no ports left"
    );
}

#[test]
fn two_pods_ipv4_exec_0_4_0() {
    two_pods_on_one_bridge("0.4.0", 41, false);
}

#[test]
fn two_pods_ipv4_exec_1_0_0() {
    two_pods_on_one_bridge("1.0.0", 42, false);
}

#[test]
fn two_pods_ipv4_exec_1_1_0() {
    two_pods_on_one_bridge("1.1.0", 43, false);
}

#[test]
fn two_pods_dual_stack_exec_0_4_0() {
    two_pods_on_one_bridge("0.4.0", 44, true);
}

#[test]
fn two_pods_dual_stack_exec_1_0_0() {
    two_pods_on_one_bridge("1.0.0", 45, true);
}

#[test]
fn two_pods_dual_stack_exec_1_1_0() {
    two_pods_on_one_bridge("1.1.0", 46, true);
}

/// Runtimes send no prevResult to DEL for 0.3.x configs (and may have lost their cache for
/// newer ones): DEL must still take the pod's address out of the masquerade set.
#[test]
fn del_without_prev_result_cleans_masquerade_set() {
    for (version, octet) in [("0.3.1", 47u8), ("1.0.0", 48)] {
        let env = HostWithPods::new(1);
        let net = format!("noprev{octet}");
        let conf = conf(version, &net, octet, false, &env);
        let pod = &env.pods[0];
        let add = bridge_call("ADD", pod.path(), "noprev", IFNAME, &conf).run(&env.host);
        let result = expect_ok(&add, &format!("ADD ({version})"))
            .result()
            .clone();
        let ip = result_ip(&result, false);
        assert!(masq_set(&env.host, &net, false).contains(&ip));

        let del = bridge_call("DEL", pod.path(), "noprev", IFNAME, &conf).run(&env.host);
        expect_ok(&del, &format!("DEL without prevResult ({version})"));
        let set = masq_set(&env.host, &net, false);
        assert!(
            !set.contains(&ip),
            "cniVersion {version}: DEL without prevResult left {ip} in the masquerade set: {set:?}"
        );
        assert_eq!(
            ip_files(&env.data_dir(), &net),
            Vec::<String>::new(),
            "{version}"
        );
        assert!(
            !has_link(&env.host, &result_host_veth(&result)),
            "{version}"
        );
    }
}

/// DEL with neither prevResult nor the pod's namespace still releases the address.
#[test]
fn del_without_prev_result_after_netns_gone_frees_address() {
    let mut env = HostWithPods::new(1);
    let net = "lostns";
    let conf = conf("1.0.0", net, 49, false, &env);
    let add = bridge_call("ADD", env.pods[0].path(), "lost", IFNAME, &conf).run(&env.host);
    let result = expect_ok(&add, "ADD").result().clone();
    assert_eq!(
        ip_files(&env.data_dir(), net),
        vec![result_ip(&result, false)]
    );

    let pod = env.pods.remove(0);
    let path = pod.path().to_path_buf();
    drop(pod);
    let del = bridge_call("DEL", &path, "lost", IFNAME, &conf).run(&env.host);
    expect_ok(&del, "DEL without prevResult after the netns was deleted");
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    assert!(!has_link(&env.host, &result_host_veth(&result)));
}

/// DEL is idempotent: a repeated DEL of an attachment whose address has meanwhile been handed
/// to another pod (a runtime retrying with its cached prevResult) must not touch the new
/// holder: neither its reservation nor its masquerade set element.
#[test]
fn repeated_del_does_not_hurt_the_address_new_holder() {
    let env = HostWithPods::new(2);
    let net = "reuse";
    // A one-address range, so the released address is reused at once.
    let conf = bridge_conf(
        "1.0.0",
        net,
        BRIDGE,
        json!([[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.9", "rangeEnd": "10.40.0.9"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    let (old_pod, new_pod) = (&env.pods[0], &env.pods[1]);
    let add = bridge_call("ADD", old_pod.path(), "old", IFNAME, &conf).run(&env.host);
    let old = expect_ok(&add, "ADD old").result().clone();
    let del_old = bridge_call(
        "DEL",
        old_pod.path(),
        "old",
        IFNAME,
        &with_prev(&conf, &old),
    );
    expect_ok(&del_old.run(&env.host), "DEL old");

    let add = bridge_call("ADD", new_pod.path(), "new", IFNAME, &conf).run(&env.host);
    let new = expect_ok(&add, "ADD new").result().clone();
    let ip = result_ip(&new, false);
    assert_eq!(ip, result_ip(&old, false), "the single address is reused");
    assert!(masq_set(&env.host, net, false).contains(&ip));

    // The runtime retries the old DEL with its cached result.
    let out = del_old.run(&env.host);
    expect_ok(&out, "repeated DEL old");
    assert_eq!(
        ip_files(&env.data_dir(), net),
        vec![ip.clone()],
        "new's reservation must stay"
    );
    let check = bridge_call(
        "CHECK",
        new_pod.path(),
        "new",
        IFNAME,
        &with_prev(&conf, &new),
    )
    .run(&env.host);
    let set = masq_set(&env.host, net, false);
    assert!(
        set.contains(&ip),
        "a repeated DEL of `old` removed {ip} from the masquerade set although `new` holds it \
         now (set: {set:?}); CHECK of `new` now says:\n{check}"
    );
    expect_ok(&check, "CHECK new after the repeated DEL of old");
}

/// IPv6-only network: the pod gets only an IPv6 address and reaches its gateway.
#[test]
fn ipv6_only_network() {
    let env = HostWithPods::new(2);
    let net = "v6only";
    let conf = bridge_conf(
        "1.0.0",
        net,
        BRIDGE,
        json!([[{"subnet": "fd00:40::/64"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    let mut results = Vec::new();
    for (i, pod) in env.pods.iter().enumerate() {
        let cid = format!("v6-{i}");
        let add = bridge_call("ADD", pod.path(), &cid, IFNAME, &conf).run(&env.host);
        results.push(expect_ok(&add, &format!("ADD {cid}")).result().clone());
    }
    let (a, b) = (result_ip(&results[0], true), result_ip(&results[1], true));
    let gw = result_gateway(&results[0], true);
    assert!(
        reachable(&env.pods[0], &gw),
        "pod cannot ping the IPv6 gateway {gw}"
    );
    assert!(
        reachable(&env.pods[0], &b),
        "pod a cannot ping pod b at {b}"
    );
    let set = masq_set(&env.host, net, true);
    assert!(set.contains(&a) && set.contains(&b), "pods6: {set:?}");
    for (i, (pod, r)) in env.pods.iter().zip(&results).enumerate() {
        let c = with_prev(&conf, r);
        let cid = format!("v6-{i}");
        expect_ok(
            &bridge_call("CHECK", pod.path(), &cid, IFNAME, &c).run(&env.host),
            "CHECK",
        );
        expect_ok(
            &bridge_call("DEL", pod.path(), &cid, IFNAME, &c).run(&env.host),
            "DEL",
        );
    }
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    assert!(masq_set(&env.host, net, true).is_empty());
}

/// CHECK notices drift of every kind it is documented to compare (error 101).
#[test]
fn check_detects_drift() {
    type Break = fn(&HostWithPods, &Value) -> String;
    let cases: [(&str, Break); 6] = [
        ("pod interface MAC changed", |env, _| {
            env.pods[0].sh_ok(&format!("ip link set {IFNAME} address 02:00:00:00:00:39"));
            "MAC".to_owned()
        }),
        ("host veth detached from the bridge", |env, r| {
            env.host
                .sh_ok(&format!("ip link set {} nomaster", result_host_veth(r)));
            String::new()
        }),
        ("host veth deleted", |env, r| {
            env.host
                .sh_ok(&format!("ip link del {}", result_host_veth(r)));
            String::new()
        }),
        ("default route removed in the pod", |env, _| {
            env.pods[0].sh_ok("ip route del default");
            "0.0.0.0/0".to_owned()
        }),
        ("pod address removed from the masquerade set", |env, r| {
            let ip = result_ip(r, false);
            remove_masq_member(&env.host, "drift", &ip);
            ip
        }),
        ("reservation file removed from the IPAM store", |env, r| {
            let ip = result_ip(r, false);
            std::fs::remove_file(store_dir(&env.data_dir(), "drift").join(&ip))
                .expect("remove record");
            ip
        }),
    ];
    for (what, break_it) in cases {
        let env = HostWithPods::new(1);
        let conf = conf("1.0.0", "drift", 39, false, &env);
        let pod = env.pods[0].path();
        let add = bridge_call("ADD", pod, "drift", IFNAME, &conf).run(&env.host);
        let r = expect_ok(&add, "ADD").result().clone();
        let c = with_prev(&conf, &r);
        expect_ok(
            &bridge_call("CHECK", pod, "drift", IFNAME, &c).run(&env.host),
            "CHECK",
        );
        let mention = break_it(&env, &r);
        let out = bridge_call("CHECK", pod, "drift", IFNAME, &c).run(&env.host);
        assert!(!out.ok(), "CHECK should fail after: {what}\n{out}");
        let code = out.error_code();
        assert!(
            matches!(code, Some(101)),
            "CHECK after {what}: want error code 101, got {code:?}\n{out}"
        );
        assert!(
            out.error_msg().unwrap_or_default().contains(&mention),
            "{what}: {out}"
        );
        expect_ok(
            &bridge_call("DEL", pod, "drift", IFNAME, &c).run(&env.host),
            "DEL",
        );
        assert_eq!(
            ip_files(&env.data_dir(), "drift"),
            Vec::<String>::new(),
            "{what}"
        );
    }
}
