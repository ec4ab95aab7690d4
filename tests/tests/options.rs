//! reef-bridge's per-network options: mtu, hairpinMode, isGateway / isDefaultGateway and
//! ipMasq, checked against the live links, routes and nftables of the host and pod.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";

/// ADD one pod with `extra` options on 10.<octet>.0.0/24; returns the result.
fn add_with(
    env: &HostWithPods,
    net: &str,
    bridge: &str,
    octet: u8,
    extra: Value,
) -> (Value, Value) {
    let conf = bridge_conf(
        "1.1.0",
        net,
        bridge,
        json!([[{ "subnet": format!("10.{octet}.0.0/24") }]]),
        &env.data_dir(),
        extra,
    );
    let add = bridge_call("ADD", env.pods[0].path(), "opt", IFNAME, &conf).run(&env.host);
    let result = expect_ok(&add, &format!("ADD {net}")).result().clone();
    (conf, result)
}

/// CHECK then DEL, and the address is released.
fn check_and_del(env: &HostWithPods, net: &str, conf: &Value, result: &Value) {
    let c = with_prev(conf, result);
    let pod = env.pods[0].path();
    expect_ok(
        &bridge_call("CHECK", pod, "opt", IFNAME, &c).run(&env.host),
        "CHECK",
    );
    expect_ok(
        &bridge_call("DEL", pod, "opt", IFNAME, &c).run(&env.host),
        "DEL",
    );
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}

fn mtu_of(ns: &Netns, name: &str) -> Value {
    link(ns, name).unwrap_or_else(|| panic!("{name} missing in {}", ns.name()))["mtu"].clone()
}

#[test]
fn mtu_applies_to_pod_interface_and_host_veth() {
    let env = HostWithPods::new(1);
    let net = "mtu1400";
    let (conf, result) = add_with(&env, net, "reefmtu0", 121, json!({"mtu": 1400}));
    let veth = result_host_veth(&result);
    assert_eq!(mtu_of(&env.pods[0], IFNAME), 1400, "pod {IFNAME} MTU");
    assert_eq!(mtu_of(&env.host, &veth), 1400, "host veth {veth} MTU");
    // A 1.1.0 result that reports MTUs must report the real ones.
    for iface in result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
    {
        if let Some(mtu) = iface.get("mtu") {
            assert_eq!(mtu, 1400, "result interface MTU: {result}");
        }
    }
    check_and_del(&env, net, &conf, &result);
}

#[test]
fn default_mtu_is_1500() {
    let env = HostWithPods::new(1);
    let net = "mtudefault";
    let (conf, result) = add_with(&env, net, "reefmtu1", 122, json!({}));
    assert_eq!(mtu_of(&env.pods[0], IFNAME), 1500);
    assert_eq!(mtu_of(&env.host, &result_host_veth(&result)), 1500);
    check_and_del(&env, net, &conf, &result);
}

/// `ip -d link show <veth>` in the host: the bridge port's hairpin flag.
fn hairpin_text(host: &Netns, veth: &str) -> String {
    host.sh_ok(&format!("ip -d link show {veth}"))
}

#[test]
fn hairpin_mode_sets_hairpin_on_the_bridge_port() {
    let env = HostWithPods::new(1);
    let net = "hairpin";
    let (conf, result) = add_with(&env, net, "reefhp0", 123, json!({"hairpinMode": true}));
    let veth = result_host_veth(&result);
    let text = hairpin_text(&env.host, &veth);
    assert!(
        text.contains("hairpin on"),
        "hairpinMode: {veth} should show `hairpin on`:\n{text}"
    );
    check_and_del(&env, net, &conf, &result);
}

#[test]
fn hairpin_is_off_by_default() {
    let env = HostWithPods::new(1);
    let net = "nohairpin";
    let (conf, result) = add_with(&env, net, "reefhp1", 124, json!({}));
    let veth = result_host_veth(&result);
    let text = hairpin_text(&env.host, &veth);
    assert!(
        text.contains("hairpin off"),
        "{veth} should show `hairpin off`:\n{text}"
    );
    check_and_del(&env, net, &conf, &result);
}

fn default_routes(pod: &Netns) -> String {
    pod.sh_ok("ip -4 route show default")
}

#[test]
fn without_gateway_mode_no_gateway_address_and_no_default_route() {
    let env = HostWithPods::new(1);
    let net = "nogw";
    let (conf, result) = add_with(&env, net, "reefgw0", 125, json!({}));
    assert_eq!(
        addresses(&env.host, "reefgw0"),
        Vec::<String>::new(),
        "bridge has no address"
    );
    assert_eq!(
        default_routes(&env.pods[0]).trim(),
        "",
        "no default route in the pod"
    );
    assert!(
        nft_set(&env.host, &format!("reef-masq-{net}"), "pods4").is_none(),
        "ipMasq off: no masquerade table"
    );
    check_and_del(&env, net, &conf, &result);
}

#[test]
fn gateway_modes_put_gateway_on_bridge_and_default_route_in_pod() {
    for (key, octet) in [("isGateway", 126u8), ("isDefaultGateway", 127)] {
        let env = HostWithPods::new(1);
        let net = format!("gw{octet}");
        let bridge = format!("reefgw{octet}");
        let (conf, result) = add_with(&env, &net, &bridge, octet, json!({ key: true }));
        let gw = result_gateway(&result, false);
        assert_eq!(
            addresses(&env.host, &bridge),
            vec![format!("{gw}/24")],
            "{key}: bridge address"
        );
        let routes = default_routes(&env.pods[0]);
        assert!(
            routes.contains(&format!("default via {gw}")),
            "{key}: pod default route:\n{routes}"
        );
        let forwarding = env.host.sh_ok("cat /proc/sys/net/ipv4/ip_forward");
        assert_eq!(
            forwarding.trim(),
            "1",
            "{key}: forwarding enabled in the host netns"
        );
        assert!(
            reachable(&env.pods[0], &gw),
            "{key}: pod cannot ping the gateway {gw}"
        );
        check_and_del(&env, &net, &conf, &result);
    }
}

/// IPAM routes are installed in the pod (gateway defaulting to the range's) and reported.
#[test]
fn ipam_routes_are_installed_in_the_pod() {
    let env = HostWithPods::new(1);
    let net = "routes";
    let conf = bridge_conf(
        "1.0.0",
        net,
        "reefrt0",
        json!([[{"subnet": "10.128.0.0/24"}]]),
        &env.data_dir(),
        json!({}),
    );
    let mut conf = conf;
    conf["ipam"]["routes"] = json!([
        {"dst": "192.168.128.0/24"},
        {"dst": "172.16.128.0/24", "gw": "10.128.0.254"},
    ]);
    let add = bridge_call("ADD", env.pods[0].path(), "opt", IFNAME, &conf).run(&env.host);
    let result = expect_ok(&add, "ADD with IPAM routes").result().clone();
    let live = env.pods[0].sh_ok("ip -4 route show");
    assert!(
        live.contains("192.168.128.0/24 via 10.128.0.1"),
        "route via the gateway:\n{live}"
    );
    assert!(
        live.contains("172.16.128.0/24 via 10.128.0.254"),
        "route via its own gw:\n{live}"
    );
    let routes = result["routes"].as_array().cloned().unwrap_or_default();
    for dst in ["192.168.128.0/24", "172.16.128.0/24"] {
        assert!(
            routes.iter().any(|r| r["dst"] == dst),
            "result lacks route {dst}: {result}"
        );
    }
    check_and_del(&env, net, &conf, &result);
}

/// DNS: from IPAM's resolvConf when set, else from the network config's `dns`.
#[test]
fn dns_comes_from_resolv_conf_or_network_config() {
    let env = HostWithPods::new(1);
    let resolv = env.dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "# test\nnameserver 10.129.0.53\nnameserver 10.129.0.54\ndomain example.test\n\
         search a.example.test b.example.test\noptions ndots:2 edns0\n",
    )
    .expect("write resolv.conf");
    let base = bridge_conf(
        "1.0.0",
        "dns",
        "reefdns0",
        json!([[{"subnet": "10.129.0.0/24"}]]),
        &env.data_dir(),
        json!({}),
    );

    let mut from_file = base.clone();
    from_file["ipam"]["resolvConf"] = json!(resolv);
    let mut from_conf = base.clone();
    from_conf["dns"] = json!({"nameservers": ["10.129.0.99"], "search": ["conf.test"]});

    let cases = [
        (
            from_file,
            json!({
                "nameservers": ["10.129.0.53", "10.129.0.54"],
                "domain": "example.test",
                "search": ["a.example.test", "b.example.test"],
                "options": ["ndots:2", "edns0"],
            }),
        ),
        (
            from_conf,
            json!({"nameservers": ["10.129.0.99"], "search": ["conf.test"]}),
        ),
    ];
    for (conf, want) in cases {
        let add = bridge_call("ADD", env.pods[0].path(), "opt", IFNAME, &conf).run(&env.host);
        let result = expect_ok(&add, "ADD").result().clone();
        assert_eq!(result["dns"], want, "dns in the result: {result}");
        check_and_del(&env, "dns", &conf, &result);
    }
}

/// ipMasq really NATs: an "outside" namespace, linked to the host and with no route back to
/// the pod subnets, answers the pod only because the pod's traffic leaves masqueraded.
#[test]
fn ip_masq_lets_pods_reach_outside_without_return_route() {
    let env = HostWithPods::new(1);
    let outside = Netns::new("outside").expect("outside netns");
    let net = "masqout";
    let conf = bridge_conf(
        "1.0.0",
        net,
        "reefmq0",
        json!([[{"subnet": "10.130.0.0/24"}], [{"subnet": "fd00:130::/64"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    let add = bridge_call("ADD", env.pods[0].path(), "opt", IFNAME, &conf).run(&env.host);
    let result = expect_ok(&add, "ADD").result().clone();

    // host ext0 (10.130.1.1, fd00:131::1) <-> outside ext1 (10.130.1.2, fd00:131::2).
    env.host.sh_ok(&format!(
        "ip link add ext0 type veth peer name ext1 netns {out} && \
         ip addr add 10.130.1.1/24 dev ext0 && ip addr add fd00:131::1/64 dev ext0 nodad && \
         ip link set ext0 up",
        out = outside.name()
    ));
    outside.sh_ok(
        "ip addr add 10.130.1.2/24 dev ext1 && ip addr add fd00:131::2/64 dev ext1 nodad && \
         ip link set ext1 up",
    );
    let no_route_back = outside.sh_ok("ip -4 route show; ip -6 route show");
    assert!(
        !no_route_back.contains("10.130.0."),
        "outside must not route to pods"
    );
    assert!(
        reachable(&env.pods[0], "10.130.1.2"),
        "IPv4: pod cannot reach outside via NAT"
    );
    assert!(
        reachable(&env.pods[0], "fd00:131::2"),
        "IPv6: pod cannot reach outside via NAT"
    );
    check_and_del(&env, net, &conf, &result);
}
