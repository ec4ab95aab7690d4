//! A second ADD of a live attachment must fail without touching the live pod: same address
//! kept in IPAM, same veth, still masqueraded, still reachable.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::traffic::*;
use reef_tests::*;
use serde_json::json;

#[test]
fn duplicate_add_fails_and_leaves_the_live_attachment_intact() {
    let env = HostWithPods::new(1);
    let pod = &env.pods[0];
    let conf = bridge_conf(
        "1.0.0",
        "dupnet",
        "dup0",
        json!([[{"subnet": "10.62.0.0/24"}]]),
        &env.data_dir(),
        json!({"isGateway": true, "ipMasq": true}),
    );
    let first = bridge_call("ADD", pod.path(), "dup", "eth0", &conf).run(&env.host);
    expect_ok(&first, "first ADD");
    let result = first.result().clone();
    let ip = addr_of(&result_ip(&result, false));
    let before = dir_snapshot(&store_dir(&env.data_dir(), "dupnet"));

    let again = bridge_call("ADD", pod.path(), "dup", "eth0", &conf).run(&env.host);
    let (_, msg) = expect_failure(&again, "duplicate ADD");
    assert!(msg.contains("already exists"), "unclear message: {msg}");

    assert_eq!(
        dir_snapshot(&store_dir(&env.data_dir(), "dupnet")),
        before,
        "duplicate ADD changed the IPAM store"
    );
    assert!(
        masq_set(&env.host, "dupnet", false).contains(&ip),
        "pod lost its masquerade entry"
    );
    assert!(
        reachable(pod, &result_gateway(&result, false)),
        "pod lost connectivity"
    );
    let check = bridge_call(
        "CHECK",
        pod.path(),
        "dup",
        "eth0",
        &with_prev(&conf, &result),
    )
    .run(&env.host);
    expect_ok(&check, "CHECK of the live attachment");
    let del =
        bridge_call("DEL", pod.path(), "dup", "eth0", &with_prev(&conf, &result)).run(&env.host);
    expect_ok(&del, "DEL");
    assert!(ip_files(&env.data_dir(), "dupnet").is_empty());
}
