//! reef-bridge + reef-ipam driven through libcni (cnitool), as containerd and CRI-O do:
//! libcni parses every result, caches it, and sends it back as prevResult to CHECK and DEL.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::{json, Value};

const BRIDGE: &str = "reefct0";
const IFNAME: &str = "eth0";

/// A one-plugin conflist at `version` for 10.<octet>.0.0/24 with gateway and masquerade.
fn conflist_at(version: &str, net: &str, octet: u8, env: &HostWithPods) -> Value {
    let mut plugin = bridge_conf(
        version,
        net,
        BRIDGE,
        json!([[{ "subnet": format!("10.{octet}.0.0/24") }]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    // In a conflist, name and cniVersion live at the top level.
    let obj = plugin.as_object_mut().expect("object");
    obj.remove("cniVersion");
    obj.remove("name");
    let mut list = conflist(net, vec![plugin]);
    list["cniVersion"] = json!(version);
    list
}

fn two_pods_through_libcni(version: &str, octet: u8) {
    let mut env = HostWithPods::new(2);
    let net = format!("tool{octet}");
    let file = env.write_conflist(&conflist_at(version, &net, octet, &env));
    // Borrows only the host field, so pods can be removed below.
    let tool = Cnitool::new(&env.host, env.cache_dir());
    let cids = ["tool-a", "tool-b"];

    let mut results = Vec::new();
    for (pod, cid) in env.pods.iter().zip(cids) {
        // cnitool exits non-zero if libcni could not parse the plugin's result.
        let stdout = assert_success(
            &tool.add(&file, pod.path(), cid, IFNAME),
            &format!("cnitool add {cid} ({version})"),
        );
        let result = parse_stdout(&stdout, "cnitool add");
        let cidr = result_cidrs(&result)[0].clone();
        assert!(
            addresses(pod, IFNAME).contains(&cidr),
            "{cid}: {cidr} is not on {IFNAME} in the pod"
        );
        results.push(result);
    }
    let ips: Vec<String> = results.iter().map(|r| result_ip(r, false)).collect();
    assert_ne!(ips[0], ips[1]);
    let gw = result_gateway(&results[0], false);
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
    assert!(
        reachable(&env.pods[0], &gw),
        "pod a cannot ping the gateway {gw}"
    );
    let set = masq_set(&env.host, &net, false);
    assert!(
        set.contains(&ips[0]) && set.contains(&ips[1]),
        "masquerade set: {set:?}"
    );

    for (pod, cid) in env.pods.iter().zip(cids) {
        assert_success(
            &tool.check(&file, pod.path(), cid, IFNAME),
            &format!("cnitool check {cid} ({version})"),
        );
    }

    // Pod b: DEL twice (the second has no cached result any more).
    for attempt in ["first", "second"] {
        assert_success(
            &tool.del(&file, env.pods[1].path(), cids[1], IFNAME),
            &format!("{attempt} cnitool del {} ({version})", cids[1]),
        );
    }
    assert!(!has_link(&env.host, &result_host_veth(&results[1])));
    assert!(!has_link(&env.pods[1], IFNAME));
    assert_eq!(ip_files(&env.data_dir(), &net), vec![ips[0].clone()]);
    assert!(!masq_set(&env.host, &net, false).contains(&ips[1]));

    // Pod a: its namespace goes away, then DEL twice.
    let pod_a = env.pods.remove(0);
    let path = pod_a.path().to_path_buf();
    drop(pod_a);
    for attempt in ["first", "second"] {
        assert_success(
            &tool.del(&file, &path, cids[0], IFNAME),
            &format!(
                "{attempt} cnitool del {} after its netns was deleted",
                cids[0]
            ),
        );
    }
    assert!(!has_link(&env.host, &result_host_veth(&results[0])));
    assert_eq!(ip_files(&env.data_dir(), &net), Vec::<String>::new());
    let set = masq_set(&env.host, &net, false);
    assert!(set.is_empty(), "masquerade set after every DEL: {set:?}");
}

#[test]
fn two_pods_cnitool_0_4_0() {
    two_pods_through_libcni("0.4.0", 51);
}

#[test]
fn two_pods_cnitool_1_0_0() {
    two_pods_through_libcni("1.0.0", 52);
}

/// libcni's CHECK sees drift too: the cached result no longer matches the pod.
#[test]
fn cnitool_check_fails_after_address_removed() {
    let env = HostWithPods::new(1);
    let net = "tooldrift";
    let file = env.write_conflist(&conflist_at("1.0.0", net, 53, &env));
    let tool = env.cnitool();
    let pod = &env.pods[0];
    let stdout = assert_success(&tool.add(&file, pod.path(), "drift", IFNAME), "cnitool add");
    let cidr = result_cidrs(&parse_stdout(&stdout, "cnitool add"))[0].clone();
    pod.sh_ok(&format!("ip addr del {cidr} dev {IFNAME}"));
    let check = tool.check(&file, pod.path(), "drift", IFNAME);
    assert!(
        !check.status.success(),
        "cnitool check should fail after {cidr} was removed: {check:?}"
    );
    assert_success(&tool.del(&file, pod.path(), "drift", IFNAME), "cnitool del");
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}
