//! reef-routed + local reef-ipam on one simulated host: the Calico-style routed host side
//! (host veth with MAC ee:ee:ee:ee:ee:ee and proxy ARP, a /32 or /128 host route per pod
//! address, pod default route via 169.254.1.1 / fe80::ecee:eeff:feee:eeee), driven by the raw
//! exec protocol for every spec version and through libcni. Every test builds its own host
//! and pod namespaces (dropped even on failure); the plugin only ever runs inside the host
//! namespace.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";
const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GW4: &str = "169.254.1.1";
const GW6: &str = "fe80::ecee:eeff:feee:eeee";
/// The simulated host's own addresses (on its `lo`), so it has a source address to ping
/// pods from and pods have something on the host to ping.
const HOST_IP4: &str = "10.255.77.1";
const HOST_IP6: &str = "fd77:ffff::1";

/// A `reef-routed` network config whose `reef-ipam` state lives in the env's data dir.
fn routed_conf(version: &str, name: &str, range_sets: Value, env: &HostWithPods) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": "reef-routed",
        "ipam": {
            "type": "reef-ipam",
            "ranges": range_sets,
            "dataDir": env.data_dir(),
        },
    })
}

/// `ipam.ranges`: 10.<octet>.0.0/24, plus fd<octet>::/64 when `dual_stack`.
fn ranges(octet: u8, dual_stack: bool) -> Value {
    let mut sets = vec![json!([{ "subnet": format!("10.{octet}.0.0/24") }])];
    if dual_stack {
        sets.push(json!([{ "subnet": format!("fd{octet}::/64") }]));
    }
    json!(sets)
}

fn call(command: &str, pod: &std::path::Path, cid: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-routed")
        .command(command)
        .runtime(pod, cid, IFNAME)
        .path(&cni_path())
        .config(conf)
}

fn net_call(command: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-routed")
        .command(command)
        .path(&cni_path())
        .config(conf)
}

fn add(env: &HostWithPods, pod: usize, cid: &str, conf: &Value) -> Value {
    let out = call("ADD", env.pods[pod].path(), cid, conf).run(&env.host);
    expect_ok(&out, &format!("ADD {cid}")).result().clone()
}

/// Gives the simulated host its own addresses (as a real host has on its uplink).
fn give_host_addresses(env: &HostWithPods) {
    env.host.sh_ok(&format!(
        "ip addr add {HOST_IP4}/32 dev lo && ip addr add {HOST_IP6}/128 dev lo"
    ));
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.sh_ok(&format!("cat /proc/sys/{key}")).trim().to_owned()
}

/// `ip -j [-6] route show` inside `ns`.
fn routes(ns: &Netns, v6: bool) -> Vec<Value> {
    let fam = if v6 { "-6" } else { "-4" };
    let out = ns.sh_ok(&format!("ip -j {fam} route show"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j route: {e}: {out}"))
}

/// Whether `ns` has a route to `dst` (as `ip -j` prints it: `default`, `10.1.2.3`, ...) on
/// `dev`, via `gw` if given.
fn has_route(ns: &Netns, v6: bool, dst: &str, dev: &str, gw: Option<&str>) -> bool {
    routes(ns, v6).iter().any(|r| {
        r["dst"] == dst && r["dev"] == dev && gw.is_none_or(|g| r["gateway"].as_str() == Some(g))
    })
}

/// `ip -j neigh show dev DEV` inside `ns`.
fn neighbours(ns: &Netns, dev: &str) -> Vec<Value> {
    let out = ns.sh_ok(&format!("ip -j neigh show dev {dev}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j neigh: {e}: {out}"))
}

fn has_permanent_neighbour(ns: &Netns, dev: &str, ip: &str, mac: &str) -> bool {
    neighbours(ns, dev).iter().any(|n| {
        n["dst"] == ip
            && n["lladdr"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(mac))
            && n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))
    })
}

/// The host veth of a reef-routed result (`interfaces[0]`).
fn host_veth(result: &Value) -> String {
    result["interfaces"][0]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no interfaces[0].name: {result}"))
        .to_owned()
}

/// Links in `ns` named like Reef host veths.
fn reef_veths(ns: &Netns) -> Vec<String> {
    link_names(ns)
        .into_iter()
        .filter(|n| n.starts_with("reef"))
        .collect()
}

/// Host routes (dst as `ip -j` prints it) through `dev`.
fn routes_via(ns: &Netns, dev: &str) -> Vec<String> {
    [false, true]
        .iter()
        .flat_map(|&v6| routes(ns, v6))
        .filter(|r| r["dev"] == dev)
        .filter_map(|r| r["dst"].as_str().map(str::to_owned))
        .collect()
}

/// Everything the host and the pod must look like after a successful ADD of `result`.
fn assert_attached(env: &HostWithPods, pod: usize, result: &Value) {
    let veth = host_veth(result);
    let what = format!("pod {pod} ({veth})");
    let l = link(&env.host, &veth).unwrap_or_else(|| panic!("{what}: host veth missing"));
    assert_eq!(l["address"], HOST_MAC, "{what}: host veth MAC");
    assert_eq!(l["linkinfo"]["info_kind"], "veth", "{what}");
    assert_eq!(
        addresses(&env.host, &veth),
        Vec::<String>::new(),
        "{what}: the host veth has no address"
    );
    assert_eq!(
        sysctl(&env.host, &format!("net/ipv4/conf/{veth}/proxy_arp")),
        "1",
        "{what}: proxy_arp"
    );
    assert_eq!(
        sysctl(&env.host, &format!("net/ipv4/neigh/{veth}/proxy_delay")),
        "0",
        "{what}: proxy_delay"
    );
    assert_eq!(sysctl(&env.host, "net/ipv4/ip_forward"), "1", "{what}");
    let pod_ns = &env.pods[pod];
    let pod_mac = result["interfaces"][1]["mac"].as_str().unwrap_or_default();
    let live = addresses(pod_ns, IFNAME);
    for cidr in result_cidrs(result) {
        let v6 = cidr.contains(':');
        let ip = addr_of(&cidr);
        let full = if v6 { "128" } else { "32" };
        assert_eq!(
            cidr,
            format!("{ip}/{full}"),
            "{what}: result address is a host address"
        );
        assert!(
            live.contains(&cidr),
            "{what}: {cidr} is not on {IFNAME} (has {live:?})"
        );
        assert!(
            has_route(&env.host, v6, &ip, &veth, None),
            "{what}: host route {ip}/{full} dev {veth} missing: {:?}",
            routes(&env.host, v6)
        );
        let gw = if v6 { GW6 } else { GW4 };
        assert!(
            has_route(pod_ns, v6, "default", IFNAME, Some(gw)),
            "{what}: pod default route via {gw} missing: {:?}",
            routes(pod_ns, v6)
        );
        assert!(
            has_permanent_neighbour(pod_ns, IFNAME, gw, HOST_MAC),
            "{what}: pod neighbour {gw} -> {HOST_MAC}: {:?}",
            neighbours(pod_ns, IFNAME)
        );
        if v6 {
            assert_eq!(
                sysctl(&env.host, "net/ipv6/conf/all/forwarding"),
                "1",
                "{what}"
            );
            assert!(
                has_permanent_neighbour(&env.host, &veth, &ip, pod_mac),
                "{what}: host neighbour {ip} -> {pod_mac}: {:?}",
                neighbours(&env.host, &veth)
            );
        } else {
            assert!(
                has_route(pod_ns, false, GW4, IFNAME, None),
                "{what}: pod route {GW4} dev {IFNAME} scope link missing"
            );
        }
    }
}

/// ADD's result in every spec version: two interfaces (host veth without sandbox, pod
/// interface in the sandbox), host addresses via the link-local gateways, default routes,
/// DNS from the config; CHECK passes and DEL cleans up in the same version.
#[test]
fn add_result_shape_every_version() {
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let env = HostWithPods::new(1);
        let net = format!("shape{i}");
        let mut conf = routed_conf(version, &net, ranges(71, true), &env);
        conf["dns"] = json!({"nameservers": ["10.71.0.53"], "search": ["svc.local"]});
        let out = call("ADD", env.pods[0].path(), "shape", &conf).run(&env.host);
        let r = expect_ok(&out, &format!("ADD ({version})"))
            .result()
            .clone();
        let ctx = format!("cniVersion {version}: {r}");
        assert_eq!(r["cniVersion"], version, "{ctx}");
        let ifs = r["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifs.len(), 2, "{ctx}");
        assert!(ifs[0]["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("reef"));
        assert_eq!(ifs[0]["mac"], HOST_MAC, "{ctx}");
        assert!(ifs[0].get("sandbox").is_none(), "{ctx}");
        assert_eq!(ifs[1]["name"], IFNAME, "{ctx}");
        assert_eq!(
            ifs[1]["sandbox"].as_str(),
            env.pods[0].path().to_str(),
            "{ctx}"
        );
        assert!(
            ifs[1]["mac"].as_str().is_some_and(|m| m.len() == 17),
            "{ctx}"
        );
        if version == "1.1.0" {
            assert_eq!(ifs[0]["mtu"], 1500, "kernel default MTU: {ctx}");
            assert_eq!(ifs[1]["mtu"], 1500, "kernel default MTU: {ctx}");
        }
        let ips = r["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{ctx}");
        let (v4, v6) = (&ips[0], &ips[1]);
        assert!(
            v4["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.71.0.") && a.ends_with("/32")),
            "{ctx}"
        );
        assert_eq!(v4["gateway"], GW4, "{ctx}");
        assert!(
            v6["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("fd71::") && a.ends_with("/128")),
            "{ctx}"
        );
        assert_eq!(v6["gateway"], GW6, "{ctx}");
        for ip in ips {
            assert_eq!(ip["interface"], 1, "{ctx}");
        }
        if version == "0.4.0" {
            assert_eq!(v4["version"], "4", "{ctx}");
            assert_eq!(v6["version"], "6", "{ctx}");
        } else {
            assert!(v4.get("version").is_none(), "{ctx}");
        }
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": GW4}, {"dst": "::/0", "gw": GW6}]),
            "{ctx}"
        );
        assert_eq!(r["dns"]["nameservers"], json!(["10.71.0.53"]), "{ctx}");
        assert_eq!(r["dns"]["search"], json!(["svc.local"]), "{ctx}");
        assert_attached(&env, 0, &r);

        let c = with_prev(&conf, &r);
        let check = call("CHECK", env.pods[0].path(), "shape", &c).run(&env.host);
        expect_ok(&check, &format!("CHECK ({version})"));
        let del = call("DEL", env.pods[0].path(), "shape", &c).run(&env.host);
        expect_ok(&del, &format!("DEL ({version})"));
        assert_eq!(reef_veths(&env.host), Vec::<String>::new(), "{version}");
        assert!(!has_link(&env.pods[0], IFNAME), "{version}");
        assert_eq!(ip_files(&env.data_dir(), &net), Vec::<String>::new());
    }
}

/// `mtu` sets both ends of the pair.
#[test]
fn mtu_from_config() {
    let env = HostWithPods::new(1);
    let mut conf = routed_conf("1.1.0", "mtunet", ranges(72, false), &env);
    conf["mtu"] = json!(1400);
    let r = add(&env, 0, "mtu", &conf);
    assert_eq!(r["interfaces"][0]["mtu"], 1400, "{r}");
    assert_eq!(r["interfaces"][1]["mtu"], 1400, "{r}");
    assert_eq!(link(&env.host, &host_veth(&r)).expect("veth")["mtu"], 1400);
    assert_eq!(link(&env.pods[0], IFNAME).expect("pod if")["mtu"], 1400);
    expect_ok(
        &call("DEL", env.pods[0].path(), "mtu", &conf).run(&env.host),
        "DEL",
    );
    conf["mtu"] = json!(20);
    let out = call("ADD", env.pods[0].path(), "mtu2", &conf).run(&env.host);
    expect_error(&out, 7, "ADD with mtu 20");
}

/// Two IPv4 pods on one host: connectivity pod↔pod, pod↔host through the /32 routes and the
/// pinned gateway; CHECK passes, and fails (101) once a pod's default route is gone; DEL
/// removes the veth, the host route and the reservation, and is repeatable; DEL after the
/// pod's namespace is gone succeeds too.
#[test]
fn two_pods_ipv4_on_one_host() {
    let mut env = HostWithPods::new(2);
    give_host_addresses(&env);
    let net = "routed4";
    let conf = routed_conf("1.0.0", net, ranges(77, false), &env);
    let cids = ["r4-a", "r4-b"];
    let results: Vec<Value> = (0..2).map(|i| add(&env, i, cids[i], &conf)).collect();
    for (i, r) in results.iter().enumerate() {
        assert_attached(&env, i, r);
    }
    let ips: Vec<String> = results.iter().map(|r| result_ip(r, false)).collect();
    assert_ne!(ips[0], ips[1]);
    let veths: Vec<String> = results.iter().map(host_veth).collect();
    assert_ne!(veths[0], veths[1]);
    let table = env.pods[0].sh_ok("ip route show");
    assert!(
        table.contains(&format!("default via {GW4} dev {IFNAME}")),
        "pod routing table:\n{table}"
    );
    let host_table = env.host.sh_ok("ip route show");
    for (ip, veth) in ips.iter().zip(&veths) {
        assert!(
            host_table.contains(&format!("{ip} dev {veth}")) && host_table.contains("scope link"),
            "host routing table lacks {ip} dev {veth} scope link:\n{host_table}"
        );
    }

    assert!(reachable(&env.pods[0], &ips[1]), "pod a cannot ping pod b");
    assert!(reachable(&env.pods[1], &ips[0]), "pod b cannot ping pod a");
    assert!(
        reachable(&env.pods[0], HOST_IP4),
        "pod a cannot ping the host"
    );
    assert!(reachable(&env.host, &ips[0]), "the host cannot ping pod a");
    assert!(reachable(&env.host, &ips[1]), "the host cannot ping pod b");

    for (i, r) in results.iter().enumerate() {
        let c = with_prev(&conf, r);
        let out = call("CHECK", env.pods[i].path(), cids[i], &c).run(&env.host);
        expect_ok(&out, &format!("CHECK {}", cids[i]));
    }
    env.pods[1].sh_ok("ip route del default");
    let c1 = with_prev(&conf, &results[1]);
    let out = call("CHECK", env.pods[1].path(), cids[1], &c1).run(&env.host);
    let msg = expect_error(&out, 101, "CHECK after the pod's default route was deleted");
    assert!(msg.contains("0.0.0.0/0"), "CHECK names the route: {msg}");

    for attempt in ["first", "second"] {
        let out = call("DEL", env.pods[1].path(), cids[1], &c1).run(&env.host);
        expect_ok(&out, &format!("{attempt} DEL of {}", cids[1]));
    }
    assert!(!has_link(&env.host, &veths[1]), "veth survived DEL");
    assert!(!has_link(&env.pods[1], IFNAME), "pod end survived DEL");
    assert_eq!(
        routes_via(&env.host, &veths[1]),
        Vec::<String>::new(),
        "host routes survived DEL"
    );
    assert!(
        !routes(&env.host, false).iter().any(|r| r["dst"] == ips[1]),
        "host route to {} survived DEL",
        ips[1]
    );
    assert_eq!(ip_files(&env.data_dir(), net), vec![ips[0].clone()]);
    assert!(reachable(&env.host, &ips[0]), "pod a lost connectivity");

    // Pod a's namespace disappears before its DEL.
    let pod_a = env.pods.remove(0);
    let path = pod_a.path().to_path_buf();
    drop(pod_a);
    let c0 = with_prev(&conf, &results[0]);
    for attempt in ["first", "second"] {
        let out = call("DEL", &path, cids[0], &c0).run(&env.host);
        expect_ok(&out, &format!("{attempt} DEL after the netns was deleted"));
    }
    assert_eq!(reef_veths(&env.host), Vec::<String>::new());
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    assert!(!routes(&env.host, false).iter().any(|r| r["dst"] == ips[0]));
}

/// Dual stack: IPv6 pod↔pod through the /128 routes and the permanent neighbours on both
/// sides (no NDP needed), pod↔host over IPv6 too.
#[test]
fn dual_stack_two_pods_on_one_host() {
    let env = HostWithPods::new(2);
    give_host_addresses(&env);
    let net = "routed46";
    let conf = routed_conf("1.1.0", net, ranges(78, true), &env);
    let cids = ["r6-a", "r6-b"];
    let results: Vec<Value> = (0..2).map(|i| add(&env, i, cids[i], &conf)).collect();
    for (i, r) in results.iter().enumerate() {
        assert_attached(&env, i, r);
    }
    let table = env.pods[0].sh_ok("ip -6 route show");
    assert!(
        table.contains(&format!("default via {GW6} dev {IFNAME}")),
        "pod IPv6 routing table:\n{table}"
    );
    for v6 in [false, true] {
        let a = result_ip(&results[0], v6);
        let b = result_ip(&results[1], v6);
        let host_ip = if v6 { HOST_IP6 } else { HOST_IP4 };
        assert!(
            reachable(&env.pods[0], &b),
            "pod a cannot ping pod b at {b}"
        );
        assert!(
            reachable(&env.pods[1], &a),
            "pod b cannot ping pod a at {a}"
        );
        assert!(
            reachable(&env.pods[1], host_ip),
            "pod b cannot ping {host_ip}"
        );
        assert!(
            reachable(&env.host, &a),
            "the host cannot ping pod a at {a}"
        );
    }
    for (i, r) in results.iter().enumerate() {
        let c = with_prev(&conf, r);
        expect_ok(
            &call("CHECK", env.pods[i].path(), cids[i], &c).run(&env.host),
            "CHECK",
        );
    }
    // CHECK sees the IPv6 default route go too.
    env.pods[0].sh_ok("ip -6 route del default");
    let c0 = with_prev(&conf, &results[0]);
    let out = call("CHECK", env.pods[0].path(), cids[0], &c0).run(&env.host);
    let msg = expect_error(&out, 101, "CHECK after the IPv6 default route was deleted");
    assert!(msg.contains("::/0"), "{msg}");
    for (i, r) in results.iter().enumerate() {
        let c = with_prev(&conf, r);
        expect_ok(
            &call("DEL", env.pods[i].path(), cids[i], &c).run(&env.host),
            "DEL",
        );
    }
    assert_eq!(reef_veths(&env.host), Vec::<String>::new());
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    for v6 in [false, true] {
        let left: Vec<Value> = routes(&env.host, v6)
            .into_iter()
            .filter(|r| r["dev"].as_str().is_some_and(|d| d.starts_with("reef")))
            .collect();
        assert!(left.is_empty(), "host routes left: {left:?}");
    }
}

/// CHECK compares every part of the routed setup (error 101 naming what drifted).
#[test]
fn check_detects_drift() {
    type Break = fn(&HostWithPods, &Value) -> String;
    let cases: [(&str, Break); 7] = [
        ("host veth deleted", |env, r| {
            env.host.sh_ok(&format!("ip link del {}", host_veth(r)));
            host_veth(r)
        }),
        ("host veth MAC changed", |env, r| {
            env.host.sh_ok(&format!(
                "ip link set {} address 02:00:00:00:00:77",
                host_veth(r)
            ));
            "MAC".to_owned()
        }),
        ("proxy ARP turned off", |env, r| {
            env.host.sh_ok(&format!(
                "echo 0 > /proc/sys/net/ipv4/conf/{}/proxy_arp",
                host_veth(r)
            ));
            "proxy_arp".to_owned()
        }),
        ("host route removed", |env, r| {
            let ip = result_ip(r, false);
            env.host.sh_ok(&format!("ip route del {ip}/32"));
            ip
        }),
        ("pod address removed", |env, r| {
            let cidr = result_cidrs(r)[0].clone();
            env.pods[0].sh_ok(&format!("ip addr del {cidr} dev {IFNAME}"));
            addr_of(&cidr)
        }),
        ("pod gateway neighbour removed", |env, _| {
            env.pods[0].sh_ok(&format!("ip neigh del {GW4} dev {IFNAME}"));
            GW4.to_owned()
        }),
        ("pod default route removed", |env, _| {
            env.pods[0].sh_ok("ip route del default");
            "0.0.0.0/0".to_owned()
        }),
    ];
    for (what, break_it) in cases {
        let env = HostWithPods::new(1);
        let conf = routed_conf("1.0.0", "rdrift", ranges(79, false), &env);
        let pod = env.pods[0].path();
        let r = add(&env, 0, "drift", &conf);
        let c = with_prev(&conf, &r);
        expect_ok(
            &call("CHECK", pod, "drift", &c).run(&env.host),
            "CHECK before",
        );
        let mention = break_it(&env, &r);
        let out = call("CHECK", pod, "drift", &c).run(&env.host);
        let msg = expect_error(&out, 101, &format!("CHECK after: {what}"));
        assert!(msg.contains(&mention), "{what}: {msg:?} lacks {mention:?}");
        expect_ok(&call("DEL", pod, "drift", &c).run(&env.host), "DEL");
        assert_eq!(reef_veths(&env.host), Vec::<String>::new(), "{what}");
        assert_eq!(
            ip_files(&env.data_dir(), "rdrift"),
            Vec::<String>::new(),
            "{what}"
        );
    }
    // Without prevResult there is nothing to compare against.
    let env = HostWithPods::new(1);
    let conf = routed_conf("1.0.0", "rdrift", ranges(79, false), &env);
    let out = call("CHECK", env.pods[0].path(), "drift", &conf).run(&env.host);
    expect_error(&out, 7, "CHECK without prevResult");
}

/// A failing ADD leaves nothing behind: no host veth, no host route, the address released,
/// the pod's existing interface untouched. A second ADD of a live attachment fails before
/// IPAM, so the live pod keeps its address.
#[test]
fn failed_add_leaves_nothing_behind() {
    let env = HostWithPods::new(2);
    let net = "rfail";
    let conf = routed_conf("1.0.0", net, ranges(80, false), &env);
    // The pod already has an eth0 (a veth pair of its own; dummy links are unavailable).
    env.pods[0].sh_ok(&format!(
        "ip link add {IFNAME} type veth peer name keep0 && ip addr add 192.0.2.9/24 dev {IFNAME}"
    ));
    let out = call("ADD", env.pods[0].path(), "fail", &conf).run(&env.host);
    let (code, msg) = expect_failure(&out, "ADD with eth0 already in the pod");
    assert_eq!(code, 100, "{out}");
    assert!(msg.contains(IFNAME), "{msg}");
    assert_eq!(reef_veths(&env.host), Vec::<String>::new(), "veth left");
    assert_eq!(
        ip_files(&env.data_dir(), net),
        Vec::<String>::new(),
        "address not released"
    );
    assert!(
        !routes(&env.host, false)
            .iter()
            .any(|r| r["dst"].as_str().is_some_and(|d| d.starts_with("10.80."))),
        "host route left behind"
    );
    assert_eq!(
        addresses(&env.pods[0], IFNAME),
        vec!["192.0.2.9/24".to_owned()],
        "the pod's own eth0 was modified"
    );

    // Duplicate ADD of a live attachment.
    let r = add(&env, 1, "live", &conf);
    let ip = result_ip(&r, false);
    let out = call("ADD", env.pods[1].path(), "live", &conf).run(&env.host);
    let msg = expect_error(&out, 100, "second ADD of a live attachment");
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(ip_files(&env.data_dir(), net), vec![ip.clone()]);
    assert!(has_link(&env.host, &host_veth(&r)));
    let c = with_prev(&conf, &r);
    expect_ok(
        &call("CHECK", env.pods[1].path(), "live", &c).run(&env.host),
        "CHECK of the live attachment after the refused duplicate",
    );
    expect_ok(
        &call("DEL", env.pods[1].path(), "live", &c).run(&env.host),
        "DEL",
    );
}

/// GC removes the host veth (and so the host routes) and the address of every attachment the
/// runtime no longer lists, and nothing of listed ones or of another network.
#[test]
fn gc_removes_stale_attachments_only() {
    let env = HostWithPods::new(4);
    let conf = routed_conf("1.1.0", "rgc", ranges(81, false), &env);
    let other = routed_conf("1.1.0", "rgcother", ranges(82, false), &env);
    let results: Vec<Value> = (0..3)
        .map(|i| add(&env, i, &format!("gc{i}"), &conf))
        .collect();
    let other_result = add(&env, 3, "gcx", &other);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": IFNAME}]);
    expect_ok(&net_call("GC", &gc).run(&env.host), "GC");

    assert!(
        has_link(&env.host, &host_veth(&results[0])),
        "listed lost its veth"
    );
    for r in &results[1..] {
        let veth = host_veth(r);
        assert!(!has_link(&env.host, &veth), "stale veth {veth} survived GC");
        let ip = result_ip(r, false);
        assert!(
            !routes(&env.host, false).iter().any(|x| x["dst"] == ip),
            "host route to stale {ip} survived GC"
        );
    }
    assert!(
        has_link(&env.host, &host_veth(&other_result)),
        "GC touched another network"
    );
    assert_eq!(
        ip_files(&env.data_dir(), "rgc"),
        vec![result_ip(&results[0], false)]
    );
    assert_eq!(
        ip_files(&env.data_dir(), "rgcother"),
        vec![result_ip(&other_result, false)]
    );
    assert_attached(&env, 0, &results[0]);
    assert!(reachable(&env.pods[0], &result_ip(&other_result, false)));
}

/// STATUS reports IPAM's readiness: ok with a usable store, 50 when the store is unusable.
#[test]
fn status() {
    let env = HostWithPods::new(0);
    let conf = routed_conf("1.1.0", "rstatus", ranges(83, false), &env);
    expect_ok(&net_call("STATUS", &conf).run(&env.host), "STATUS");
    // dataDir is a regular file: the store cannot be opened.
    let file = env.dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    let mut broken = conf.clone();
    broken["ipam"]["dataDir"] = json!(file);
    let out = net_call("STATUS", &broken).run(&env.host);
    expect_error(&out, 50, "STATUS with an unusable IPAM store");
    let version = net_call("VERSION", &conf).run(&env.host);
    let v = expect_ok(&version, "VERSION").result().clone();
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == want)),
            "VERSION lacks {want}: {v}"
        );
    }
}

/// Through libcni (cnitool) with the `labels` capability: ADD, connectivity, CHECK, DEL twice.
#[test]
fn cnitool_add_check_del() {
    let env = HostWithPods::new(2);
    give_host_addresses(&env);
    let net = "rtool";
    let mut plugin = routed_conf("1.0.0", net, ranges(84, false), &env);
    let obj = plugin.as_object_mut().expect("object");
    obj.remove("cniVersion");
    obj.remove("name");
    plugin["capabilities"] = json!({"labels": true});
    let file = env.write_conflist(&conflist(net, vec![plugin]));
    let tool = env
        .cnitool()
        .cap_args(&json!({"labels": {"app": "web", "tier": "front"}}));
    let cids = ["tool-a", "tool-b"];
    let mut results = Vec::new();
    for (pod, cid) in env.pods.iter().zip(cids) {
        let stdout = assert_success(
            &tool.add(&file, pod.path(), cid, IFNAME),
            &format!("cnitool add {cid}"),
        );
        results.push(parse_stdout(&stdout, "cnitool add"));
    }
    for (i, r) in results.iter().enumerate() {
        assert_attached(&env, i, r);
    }
    let ips: Vec<String> = results.iter().map(|r| result_ip(r, false)).collect();
    assert!(reachable(&env.pods[0], &ips[1]), "pod a cannot ping pod b");
    assert!(
        reachable(&env.pods[1], HOST_IP4),
        "pod b cannot ping the host"
    );
    for (pod, cid) in env.pods.iter().zip(cids) {
        assert_success(
            &tool.check(&file, pod.path(), cid, IFNAME),
            &format!("cnitool check {cid}"),
        );
    }
    env.pods[0].sh_ok("ip route del default");
    let check = tool.check(&file, env.pods[0].path(), cids[0], IFNAME);
    assert!(
        !check.status.success(),
        "cnitool check should fail without the default route: {check:?}"
    );
    for (pod, cid) in env.pods.iter().zip(cids) {
        for attempt in ["first", "second"] {
            assert_success(
                &tool.del(&file, pod.path(), cid, IFNAME),
                &format!("{attempt} cnitool del {cid}"),
            );
        }
    }
    assert_eq!(reef_veths(&env.host), Vec::<String>::new());
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}

/// An exec'd IPAM (the reference `host-local`) with routes of its own: a route without a
/// gateway, or via the range's gateway (which nobody holds in routed mode), goes via
/// 169.254.1.1; the default route is not doubled. CHECK and DEL work on the exec path.
#[test]
fn host_local_ipam_routes_go_via_the_routed_gateway() {
    let env = HostWithPods::new(1);
    let net = "rhl";
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": net,
        "type": "reef-routed",
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.85.0.0/24", "gateway": "10.85.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.85.0.1"}],
            "dataDir": env.data_dir(),
        },
    });
    let r = add(&env, 0, "hl", &conf);
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GW4}, {"dst": "192.168.0.0/16", "gw": GW4}]),
        "{r}"
    );
    assert_eq!(r["ips"][0]["gateway"], GW4, "{r}");
    assert_attached(&env, 0, &r);
    assert!(has_route(
        &env.pods[0],
        false,
        "192.168.0.0/16",
        IFNAME,
        Some(GW4)
    ));
    let ip = result_ip(&r, false);
    assert_eq!(ip_files(&env.data_dir(), net), vec![ip]);
    let c = with_prev(&conf, &r);
    expect_ok(
        &call("CHECK", env.pods[0].path(), "hl", &c).run(&env.host),
        "CHECK",
    );
    expect_ok(
        &call("DEL", env.pods[0].path(), "hl", &c).run(&env.host),
        "DEL",
    );
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    assert_eq!(reef_veths(&env.host), Vec::<String>::new());
}
