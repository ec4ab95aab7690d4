//! Hardening of reef-portmap: long mapping lists (a port range of 1,000 ports) through
//! libcni, ADD, CHECK and DEL. Each test builds its own host and pod namespaces.

use reef_tests::expect::*;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";
const TABLE: &str = "reef-portmap";

/// The elements of the table's maps as `nft list map` prints them (empty when the table
/// is absent).
fn elements(host: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for m in ["hostip4", "any4", "hostip6", "any6"] {
        let text = host
            .sh(&format!("nft list map inet {TABLE} {m} 2>/dev/null"))
            .stdout;
        let text = String::from_utf8_lossy(&text).replace('\n', " ");
        let Some(start) = text.find("elements = {") else {
            continue;
        };
        let body = &text[start + "elements = {".len()..];
        let body = &body[..body.find('}').unwrap_or(body.len())];
        out.extend(
            body.split(',')
                .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|e| !e.is_empty()),
        );
    }
    out
}

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
    let els = elements(&env.host);
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
    assert_eq!(elements(&env.host), Vec::<String>::new());
}
