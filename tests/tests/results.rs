//! The shape of reef-bridge's ADD result in each spec version, and that CHECK and DEL accept
//! a prevResult written in any of them.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::*;
use serde_json::{json, Value};

const BRIDGE: &str = "reefres0";
const IFNAME: &str = "eth0";

fn dual_stack_conf(version: &str, net: &str, octet: u8, env: &HostWithPods) -> Value {
    bridge_conf(
        version,
        net,
        BRIDGE,
        json!([
            [{ "subnet": format!("10.{octet}.0.0/24") }],
            [{ "subnet": format!("fd00:{octet}::/64") }],
        ]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    )
}

/// Asserts the result of an ADD for `pod` under `version` has the spec's shape.
fn assert_result_shape(version: &str, r: &Value, pod: &Netns, host: &Netns) {
    let ctx = format!("cniVersion {version} result {r}");
    assert_eq!(r["cniVersion"], version, "{ctx}");

    let ifs = r["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no interfaces: {ctx}"));
    assert_eq!(ifs.len(), 3, "bridge, host veth, pod interface: {ctx}");
    assert_eq!(ifs[0]["name"], BRIDGE, "{ctx}");
    assert!(
        ifs[0].get("sandbox").is_none(),
        "the bridge is not in a sandbox: {ctx}"
    );
    assert!(
        ifs[1].get("sandbox").is_none(),
        "the host veth is not in a sandbox: {ctx}"
    );
    assert_eq!(ifs[2]["name"], IFNAME, "{ctx}");
    assert_eq!(ifs[2]["sandbox"], json!(pod.path()), "{ctx}");
    for (i, (iface, ns)) in ifs.iter().zip([host, host, pod]).enumerate() {
        let name = iface["name"].as_str().unwrap_or_default();
        let live =
            link(ns, name).unwrap_or_else(|| panic!("interfaces[{i}] {name} missing: {ctx}"));
        if i > 0 {
            assert_eq!(iface["mac"], live["address"], "interfaces[{i}] MAC: {ctx}");
        }
        if let Some(mtu) = iface.get("mtu") {
            assert_eq!(mtu, &live["mtu"], "interfaces[{i}] MTU: {ctx}");
        }
    }

    let ips = r["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips: {ctx}"));
    assert_eq!(ips.len(), 2, "one IPv4 and one IPv6 address: {ctx}");
    for ip in ips {
        let addr = ip["address"].as_str().unwrap_or_default();
        let v6 = addr.contains(':');
        assert_eq!(ip["interface"], 2, "ips point at the pod interface: {ctx}");
        assert!(ip["gateway"].is_string(), "gateway present: {ctx}");
        if version.starts_with("0.") {
            let fam = if v6 { "6" } else { "4" };
            assert_eq!(
                ip["version"], fam,
                "{version} results carry ips[].version: {ctx}"
            );
        } else {
            assert!(
                ip.get("version").is_none(),
                "{version} results have no ips[].version: {ctx}"
            );
        }
    }
    let routes = r["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("no routes: {ctx}"));
    for (dst, v6) in [("0.0.0.0/0", false), ("::/0", true)] {
        let gw = result_gateway(r, v6);
        assert!(
            routes
                .iter()
                .any(|rt| rt["dst"] == dst && rt["gw"] == gw.as_str()),
            "default route {dst} via {gw} expected: {ctx}"
        );
    }
    assert!(r["dns"].is_object(), "dns object: {ctx}");
}

#[test]
fn add_result_shape_per_version() {
    for (version, octet) in [
        ("0.3.1", 101u8),
        ("0.4.0", 102),
        ("1.0.0", 103),
        ("1.1.0", 104),
    ] {
        let env = HostWithPods::new(1);
        let net = format!("shape{octet}");
        let conf = dual_stack_conf(version, &net, octet, &env);
        let pod = &env.pods[0];
        let add = bridge_call("ADD", pod.path(), "shape", IFNAME, &conf).run(&env.host);
        let r = expect_ok(&add, &format!("ADD {version}")).result().clone();
        assert_result_shape(version, &r, pod, &env.host);
        let del = bridge_call("DEL", pod.path(), "shape", IFNAME, &with_prev(&conf, &r));
        expect_ok(&del.run(&env.host), &format!("DEL {version}"));
        assert_eq!(
            ip_files(&env.data_dir(), &net),
            Vec::<String>::new(),
            "{version}"
        );
    }
}

/// A prevResult in 0.4.0, 1.0.0 or 1.1.0 shape is accepted by CHECK and DEL under each of
/// these config versions.
#[test]
fn prev_result_of_any_version_accepted_by_check_and_del() {
    for (add_version, octet) in [("0.4.0", 105u8), ("1.0.0", 106), ("1.1.0", 107)] {
        let env = HostWithPods::new(1);
        let net = format!("prev{octet}");
        let conf = dual_stack_conf(add_version, &net, octet, &env);
        let pod = &env.pods[0];
        let add = bridge_call("ADD", pod.path(), "prev", IFNAME, &conf).run(&env.host);
        let prev = expect_ok(&add, &format!("ADD {add_version}"))
            .result()
            .clone();

        for conf_version in EXEC_VERSIONS {
            let c = with_prev(&at_version(&conf, conf_version), &prev);
            let check = bridge_call("CHECK", pod.path(), "prev", IFNAME, &c).run(&env.host);
            expect_ok(
                &check,
                &format!("CHECK under {conf_version} with a {add_version} prevResult"),
            );
        }
        // DEL under every version with this prevResult (idempotent after the first).
        for conf_version in EXEC_VERSIONS {
            let c = with_prev(&at_version(&conf, conf_version), &prev);
            let del = bridge_call("DEL", pod.path(), "prev", IFNAME, &c).run(&env.host);
            expect_ok(
                &del,
                &format!("DEL under {conf_version} with a {add_version} prevResult"),
            );
        }
        assert_eq!(
            ip_files(&env.data_dir(), &net),
            Vec::<String>::new(),
            "{add_version}"
        );
        assert!(
            !has_link(&env.host, &result_host_veth(&prev)),
            "{add_version}"
        );
        for v6 in [false, true] {
            assert!(masq_set(&env.host, &net, v6).is_empty(), "{add_version}");
        }
    }
}

/// reef-ipam's own result (what a main plugin receives) per version.
#[test]
fn ipam_result_shape_per_version() {
    for (version, octet) in [("0.4.0", 108u8), ("1.0.0", 109), ("1.1.0", 110)] {
        let env = HostWithPods::new(1);
        let net = format!("ipamshape{octet}");
        let mut conf = dual_stack_conf(version, &net, octet, &env);
        conf["ipam"]["routes"] = json!([{"dst": "192.168.0.0/16"}]);
        let call = CniCall::plugin("reef-ipam")
            .runtime(env.pods[0].path(), "ipshape", IFNAME)
            .path(&cni_path())
            .config(&conf);
        let add = call.clone().command("ADD").run(&env.host);
        let r = expect_ok(&add, &format!("reef-ipam ADD {version}"))
            .result()
            .clone();
        assert_eq!(r["cniVersion"], version, "{add}");
        let ips = r["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("no ips: {add}"));
        assert_eq!(ips.len(), 2, "{add}");
        assert_eq!(ips[0]["address"], format!("10.{octet}.0.2/24"), "{add}");
        assert_eq!(ips[0]["gateway"], format!("10.{octet}.0.1"), "{add}");
        assert_eq!(ips[1]["address"], format!("fd00:{octet}::2/64"), "{add}");
        for ip in ips {
            assert_eq!(
                ip.get("version").is_some(),
                version == "0.4.0",
                "{version}: {add}"
            );
            assert!(
                ip.get("interface").is_none(),
                "IPAM results name no interface: {add}"
            );
        }
        assert_eq!(r["routes"], json!([{"dst": "192.168.0.0/16"}]), "{add}");

        let check = call
            .clone()
            .command("CHECK")
            .config(with_prev(&conf, &r))
            .run(&env.host);
        expect_ok(&check, &format!("reef-ipam CHECK {version}"));
        let del = call
            .command("DEL")
            .config(with_prev(&conf, &r))
            .run(&env.host);
        expect_ok(&del, &format!("reef-ipam DEL {version}"));
        assert_eq!(ip_files(&env.data_dir(), &net), Vec::<String>::new());
    }
}
