//! Hardening of config validation: configs that could never work are refused with code 7
//! before anything is set up (an IPv6 /127, a /0 subnet, one subnet on two bridges), and
//! VERSION names only versions the plugin speaks.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::*;
use serde_json::{json, Value};

fn veths(ns: &Netns) -> Vec<String> {
    links_of_kind(ns, "veth")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn unusable_ranges_are_refused_with_code_7() {
    let env = HostWithPods::new(1);
    for (i, ranges) in [
        json!([[{"subnet": "fd70::/127"}]]),
        json!([[{"subnet": "0.0.0.0/0"}]]),
        json!([[{"subnet": "::/0"}]]),
    ]
    .into_iter()
    .enumerate()
    {
        let net = format!("hvbad{i}");
        let conf = bridge_conf(
            "1.1.0",
            &net,
            "hvbad0",
            ranges.clone(),
            &env.data_dir(),
            json!({"isGateway": true}),
        );
        let out = bridge_call("ADD", env.pods[0].path(), "bad", "eth0", &conf).run(&env.host);
        expect_error(&out, 7, &format!("reef-bridge ADD with {ranges}"));
        let out = CniCall::plugin("reef-ipam")
            .command("ADD")
            .runtime(env.pods[0].path(), "bad", "eth0")
            .path(&cni_path())
            .config(json!({
                "cniVersion": "1.1.0", "name": net, "type": "reef-ipam",
                "ipam": {"type": "reef-ipam", "ranges": ranges, "dataDir": env.data_dir()},
            }))
            .run(&env.host);
        expect_error(&out, 7, &format!("reef-ipam ADD with {ranges}"));
        assert_eq!(ip_files(&env.data_dir(), &net), Vec::<String>::new());
    }
    assert_eq!(veths(&env.host), Vec::<String>::new(), "nothing set up");
}

#[test]
fn one_subnet_on_two_bridges_is_refused_with_code_7() {
    let env = HostWithPods::new(2);
    let conf = |net: &str, bridge: &str, gw: bool| {
        bridge_conf(
            "1.1.0",
            net,
            bridge,
            json!([[{"subnet": "10.68.0.0/24"}]]),
            &env.data_dir(),
            json!({"isGateway": gw}),
        )
    };
    let a = conf("hvsuba", "hvsuba0", true);
    let out = bridge_call("ADD", env.pods[0].path(), "a", "eth0", &a).run(&env.host);
    expect_ok(&out, "ADD on the first bridge");
    for gw in [true, false] {
        let b = conf("hvsubb", "hvsubb0", gw);
        let out = bridge_call("ADD", env.pods[1].path(), "b", "eth0", &b).run(&env.host);
        let msg = expect_error(&out, 7, "ADD of the same subnet on a second bridge");
        assert!(
            msg.contains("hvsuba0"),
            "message names the other bridge: {msg}"
        );
        assert_eq!(ip_files(&env.data_dir(), "hvsubb"), Vec::<String>::new());
        assert!(
            links(&env.pods[1]).iter().all(|l| l["ifname"] != "eth0"),
            "nothing left in the refused pod"
        );
        let gw_on_b = env.host.sh_ok("ip -o addr show dev hvsubb0");
        assert!(
            !gw_on_b.contains("10.68.0."),
            "refused ADD put its gateway on the second bridge: {gw_on_b}"
        );
    }
    // A second attachment of the first network on its own bridge is still fine.
    let out = bridge_call("ADD", env.pods[1].path(), "a2", "eth0", &a).run(&env.host);
    expect_ok(&out, "second ADD on the first bridge");
}

#[test]
fn version_names_only_supported_versions() {
    let host = Netns::new("host").expect("host netns");
    for plugin in ["reef-bridge", "reef-ipam"] {
        for (asked, want) in [
            (json!("0.4.0"), "0.4.0"),
            (json!("9.9.9"), "1.1.0"),
            (json!("not-a-version"), "1.1.0"),
        ] {
            let out = CniCall::plugin(plugin)
                .command("VERSION")
                .config(json!({"cniVersion": asked}))
                .run(&host);
            let v = expect_ok(&out, &format!("{plugin} VERSION {asked}")).result();
            assert_eq!(
                v["cniVersion"], want,
                "{plugin} VERSION asked {asked}: {out}"
            );
            let list: Vec<&str> = v["supportedVersions"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert_eq!(
                list,
                ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
                "{plugin}"
            );
        }
    }
}
