//! Hostile cluster state against reef-agent and reefctl: forged or corrupt block and
//! borrowed-address records must never reach routes the agent does not own (the host's
//! default route, its underlay's connected route, an operator's route), invalid records are
//! reported once (not retried in a loop), and one undecodable record must not stop reefctl
//! from listing the rest or from repairing it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reef_tests::routed::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// Host `i`'s main-table IPv4 routes that are not protocol 201, as `ip route` prints them.
fn foreign_routes(rc: &RoutedCluster, i: usize) -> BTreeSet<String> {
    rc.host(i)
        .ns()
        .sh_ok("ip -4 route show table main | grep -v 'proto 201'")
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The problems host `i`'s own agent publishes (its `reefctl node ls` entry).
fn own_problems(rc: &RoutedCluster, i: usize) -> serde_json::Map<String, Value> {
    rc.node_ls(i)
        .get(&rc.node(i))
        .and_then(|n| n["problems"].as_object().cloned())
        .unwrap_or_default()
}

fn wait_problems(rc: &RoutedCluster, i: usize, keys: &[&str]) -> serde_json::Map<String, Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = own_problems(rc, i);
        if keys.iter().all(|k| p.contains_key(*k)) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "agent of {} never reported {keys:?}; problems {p:?}\n{}",
            rc.node(i),
            rc.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn underlay_net(rc: &RoutedCluster, i: usize) -> String {
    let o = rc.host(i).addr().octets();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

#[test]
fn forged_blocks_never_touch_the_default_or_underlay_route_and_are_reported_once() {
    let mut rc = RoutedCluster::new(2);
    rc.start_agents(&[0, 1], &[]);
    let (n0, n1) = (rc.node(0), rc.node(1));
    let o = rc.host(0).addr().octets();
    let gw = format!("{}.{}.{}.254", o[0], o[1], o[2]);
    let underlay = underlay_net(&rc, 0);
    // The simulated host's own default route (inside its netns), as an operator would set it.
    rc.host(0)
        .ns()
        .sh_ok(&format!("ip route replace default via {gw} proto static"));
    let before = foreign_routes(&rc, 0);
    assert!(
        before.iter().any(|r| r.starts_with("default via")),
        "{before:?}"
    );
    assert!(
        before.iter().any(|r| r.starts_with(&underlay)),
        "{before:?}"
    );

    let forged = [
        (
            "/reef/blocks/x".to_owned(),
            format!(r#"{{"cidr":"0.0.0.0/0","node":"{n0}"}}"#),
        ),
        (
            format!("/reef/blocks/{}", underlay.replace('/', "-")),
            format!(r#"{{"cidr":"{underlay}","node":"{n1}"}}"#),
        ),
        (
            format!("/reef/borrowed/{gw}"),
            format!(r#"{{"node":"{n1}","block":"{underlay}"}}"#),
        ),
        // Host bits set, and not the pool's block size: the kernel would refuse it.
        (
            "/reef/blocks/10.66.0.64-25".to_owned(),
            format!(r#"{{"cidr":"10.66.0.64/25","node":"{n1}"}}"#),
        ),
    ];
    for (k, v) in &forged {
        rc.etcdctl(0, &["put", k, v]);
    }
    let keys: Vec<&str> = forged.iter().map(|(k, _)| k.as_str()).collect();
    let problems = wait_problems(&rc, 0, &keys);
    assert!(
        problems["/reef/blocks/x"]
            .as_str()
            .is_some_and(|p| p.contains("ignored")),
        "{problems:?}"
    );
    // Give a retry loop time to show itself (it ran every 2 s).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(foreign_routes(&rc, 0), before, "{}", rc.agent_logs());
    let ours = rc.routes(0);
    for bad in [
        "0.0.0.0/0",
        "default",
        underlay.as_str(),
        gw.as_str(),
        "10.66.0.64",
    ] {
        assert!(
            !ours.iter().any(|r| r.contains(bad)),
            "agent programmed {bad}: {ours:?}"
        );
    }
    let log = rc.agent(0).log();
    let mentions = log.lines().filter(|l| l.contains("10.66.0.64/25")).count();
    assert_eq!(mentions, 1, "reported once, not retried:\n{log}");
    let status = rc.reefctl_ok(0, &["status"]);
    assert!(status.contains("0.0.0.0/0"), "{status}");

    // Withdrawing the records must not take anything with them either.
    for (k, _) in &forged {
        rc.etcdctl(0, &["del", k]);
    }
    let deadline = Instant::now() + WAIT;
    while !own_problems(&rc, 0).is_empty() {
        assert!(Instant::now() < deadline, "problems never cleared");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(foreign_routes(&rc, 0), before, "{}", rc.agent_logs());
    // etcd is still reachable over the untouched underlay.
    rc.reefctl_ok(0, &["node", "ls"]);
}

#[test]
fn an_operator_route_to_a_remote_block_is_never_replaced() {
    let mut rc = RoutedCluster::new(2);
    rc.start_agents(&[0, 1], &[]);
    let n1 = rc.node(1);
    let o = rc.host(0).addr().octets();
    let other = format!("{}.{}.{}.250", o[0], o[1], o[2]);
    let cidr = "10.66.200.0/26";
    rc.host(0)
        .ns()
        .sh_ok(&format!("ip route add {cidr} via {other} proto static"));
    // A valid block of n1 whose destination host 0's operator already routes elsewhere.
    rc.etcdctl(
        0,
        &[
            "put",
            "/reef/blocks/10.66.200.0-26",
            &format!(r#"{{"cidr":"{cidr}","node":"{n1}"}}"#),
        ],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let p = own_problems(&rc, 0);
        if p.values()
            .any(|v| v.as_str().is_some_and(|s| s.contains("not Reef's")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no foreign-route problem: {p:?}\n{}",
            rc.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Host 1 owns it (blackhole): the block itself is valid.
    let deadline = Instant::now() + WAIT;
    while !rc.routes(1).contains(&format!("blackhole {cidr}")) {
        assert!(Instant::now() < deadline, "{:?}", rc.routes(1));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let r = rc.host(0).ns().sh_ok(&format!("ip -4 route show {cidr}"));
    assert_eq!(
        r.trim(),
        format!("{cidr} via {other} dev {} proto static", rc.host(0).iface()).trim(),
        "{}",
        rc.agent_logs()
    );
}

#[test]
fn reefctl_lists_around_garbage_records_and_repairs_them() {
    let rc = RoutedCluster::new(1);
    let n0 = rc.node(0);
    let handle = format!("/reef/handles/{n0}/zz/eth0");
    rc.etcdctl(0, &["put", &handle, "garbage"]);
    rc.etcdctl(0, &["put", "/reef/blocks/junk", "{"]);
    rc.etcdctl(0, &["put", "/reef/borrowed/10.66.0.9", "nope"]);
    for args in [
        &["node", "ls"][..],
        &["ipam", "show"],
        &["block", "ls"],
        &["status"],
    ] {
        let out = rc.reefctl(0, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "reefctl {args:?}: {err}");
        for k in [
            handle.as_str(),
            "/reef/blocks/junk",
            "/reef/borrowed/10.66.0.9",
        ] {
            assert!(err.contains(k), "reefctl {args:?} names {k}: {err}");
        }
    }
    let gc = rc.reefctl_json(0, &["ipam", "gc"]);
    let removed: BTreeSet<&str> = gc["removedRecords"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        removed,
        BTreeSet::from([
            handle.as_str(),
            "/reef/blocks/junk",
            "/reef/borrowed/10.66.0.9"
        ]),
        "{gc}"
    );
    let left = rc.etcdctl(0, &["get", "--prefix", "/reef/", "--keys-only"]);
    assert!(!left.contains("junk") && !left.contains("/zz/"), "{left}");

    // A bad config: listing still works, init refuses without --force and repairs with it.
    rc.etcdctl(0, &["put", "/reef/config", "not json"]);
    let out = rc.reefctl(0, &["node", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/reef/config"));
    let init = [
        "init",
        "--pool",
        POOL,
        "--block-size",
        "26",
        "--mode",
        "routed",
    ];
    let out = rc.reefctl(0, &init);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && said.contains("unreadable"),
        "init over an unreadable config needs --force: {said}"
    );
    let mut forced = init.to_vec();
    forced.push("--force");
    rc.reefctl_ok(0, &forced);
    let cfg = rc.config(0);
    assert_eq!(cfg["pools"][0]["cidr"], POOL, "{cfg}");
    let out = rc.reefctl(0, &["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{:?}", out);
}
