//! Hardening of reef-portmap: long mapping lists (a port range of 1,000 ports) through
//! libcni, ADD, CHECK and DEL. Each test builds its own host and pod namespaces.

use reef_tests::expect::*;
use reef_tests::inspect::portmap_elements;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";
const TABLE: &str = "reef-portmap";

/// `-p 20000-20999:20000-20999`: 1,000 mappings for one pod ADD, CHECK and DEL through
/// libcni, and DEL leaves none of them behind (a retried DEL succeeds too).
#[test]
fn a_thousand_mappings_add_check_and_del_through_libcni() {
    let env = HostWithPods::new(1);
    let dir = tempdir();
    let main = json!({
        "type": "reef-bridge", "bridge": "hpmbr0", "isGateway": true, "ipMasq": true,
        "ipam": {"type": "reef-ipam", "ranges": [[{"subnet": "10.150.0.0/24"}]],
                 "dataDir": dir.path()},
    });
    let list = conflist(
        "hpm-range",
        vec![
            main,
            json!({"type": "reef-portmap", "capabilities": {"portMappings": true}}),
        ],
    );
    let file = env.write_conflist(&list);
    let maps: Vec<Value> = (20000u16..21000)
        .map(|p| json!({"hostPort": p, "containerPort": p, "protocol": "tcp"}))
        .collect();
    let tool = env.cnitool().cap_args(&json!({ "portMappings": maps }));
    let pod = &env.pods[0];
    let out = tool.add(&file, pod.path(), "range", IFNAME);
    let result = parse_stdout(&assert_success(&out, "cnitool add"), "cnitool add");
    let pod4 = result_ip(&result, false);
    let els = portmap_elements(&env.host);
    assert_eq!(els.len(), 1000, "installed elements");
    assert!(els.iter().all(|e| e.contains(&pod4)), "{:?}", &els[..3]);
    assert_success(
        &tool.check(&file, pod.path(), "range", IFNAME),
        "cnitool check",
    );
    for attempt in ["first", "second"] {
        assert_success(
            &tool.del(&file, pod.path(), "range", IFNAME),
            &format!("{attempt} cnitool del"),
        );
    }
    assert_eq!(portmap_elements(&env.host), Vec::<String>::new());
}

/// What `tc filter show dev <dev> ingress` and `tc qdisc show dev <dev>` print.
fn tc_state(host: &Netns, dev: &str) -> (String, String) {
    let filters = host.sh_ok(&format!("tc filter show dev {dev} ingress"));
    let qdiscs = host.sh_ok(&format!("tc qdisc show dev {dev}"));
    (filters, qdiscs)
}

fn route_localnet(host: &Netns, dev: &str) -> String {
    host.sh_ok(&format!("sysctl -n net.ipv4.conf.{dev}.route_localnet"))
        .trim()
        .to_string()
}

/// route_localnet (for 127.0.0.1:hostPort) is on exactly while an IPv4 mapping through the
/// bridge needs it, always behind the loopback guard: the last DEL gives back the value
/// found (0, or the operator's 1), a failed ADD leaves it as it was, and a firewall reload
/// (`nft flush ruleset`) neither removes the guard nor keeps DEL from giving it back.
#[test]
fn route_localnet_lives_as_long_as_a_mapping_needs_it() {
    const BR: &str = "hpmlbr0";
    let env = HostWithPods::new(2);
    let dir = tempdir();
    let main = json!({
        "type": "reef-bridge", "bridge": BR, "isGateway": true,
        "ipam": {"type": "reef-ipam", "ranges": [[{"subnet": "10.151.0.0/24"}]],
                 "dataDir": dir.path()},
    });
    let list = conflist(
        "hpm-localnet",
        vec![
            main,
            json!({"type": "reef-portmap", "capabilities": {"portMappings": true}}),
        ],
    );
    let file = env.write_conflist(&list);
    let tool = |port: u16| {
        env.cnitool().cap_args(&json!({"portMappings": [
            {"hostPort": port, "containerPort": 80, "protocol": "tcp"}
        ]}))
    };
    let add =
        |i: usize, port: u16| tool(port).add(&file, env.pods[i].path(), &format!("c{i}"), IFNAME);
    let del = |i: usize, port: u16| {
        assert_success(
            &tool(port).del(&file, env.pods[i].path(), &format!("c{i}"), IFNAME),
            &format!("cnitool del c{i}"),
        )
    };
    let guarded = |why: &str| {
        let (filters, qdiscs) = tc_state(&env.host, BR);
        assert!(
            filters.contains("reef-loopback-guard") && filters.contains("direct-action"),
            "{why}: no loopback guard on {BR}: {filters}"
        );
        assert!(qdiscs.contains("clsact"), "{why}: {qdiscs}");
        assert_eq!(route_localnet(&env.host, BR), "1", "{why}");
    };
    let given_back = |why: &str, value: &str| {
        let (filters, qdiscs) = tc_state(&env.host, BR);
        assert_eq!(filters.trim(), "", "{why}: the guard stayed");
        assert!(
            !qdiscs.contains("clsact"),
            "{why}: the guard's qdisc stayed: {qdiscs}"
        );
        assert_eq!(route_localnet(&env.host, BR), value, "{why}");
    };

    assert_success(&add(0, 8080), "cnitool add c0");
    guarded("after c0's ADD");
    assert_success(&add(1, 8081), "cnitool add c1");
    guarded("after c1's ADD");
    del(0, 8080);
    guarded("c1 still maps a port through the bridge");
    del(1, 8081);
    given_back("after the last DEL", "0");

    // A failed ADD (the port is held by an element someone else put there, for a pod not
    // behind this bridge) changes nothing.
    env.host.sh_ok(&format!(
        "nft add element inet {TABLE} any4 '{{ tcp . 8082 comment \"other/x/eth0\" : 10.152.0.250 . 80 }}'"
    ));
    let out = add(0, 8082);
    assert!(!out.status.success(), "ADD of a taken port succeeded");
    given_back("after a failed ADD", "0");
    env.host.sh_ok(&format!("nft flush map inet {TABLE} any4"));
    // The failed ADD's bridge attachment is undone by its DEL, as a runtime would.
    del(0, 8082);

    // An operator's own route_localnet=1 is what DEL gives back.
    env.host
        .sh_ok(&format!("sysctl -qw net.ipv4.conf.{BR}.route_localnet=1"));
    assert_success(
        &add(0, 8083),
        "cnitool add c0 (operator's route_localnet=1)",
    );
    guarded("with the operator's route_localnet=1");
    del(0, 8083);
    given_back("after DEL, the operator's value", "1");
    env.host
        .sh_ok(&format!("sysctl -qw net.ipv4.conf.{BR}.route_localnet=0"));

    // A firewall reload: the guard stays, and DEL still gives route_localnet back.
    assert_success(&add(0, 8084), "cnitool add c0 (before the reload)");
    env.host.sh_ok("nft flush ruleset");
    guarded("after nft flush ruleset");
    del(0, 8084);
    given_back("after DEL following the reload", "0");
}
