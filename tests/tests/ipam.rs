//! reef-ipam behaviour seen through reef-bridge (and alone): range exhaustion with ADD
//! rollback, CNI 1.1 GC with valid attachments, and STATUS.

use std::path::Path;

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";

/// A reef-bridge config with gateway and masquerade over the given `ipam.ranges`.
fn conf(version: &str, net: &str, bridge: &str, ranges: Value, data_dir: &Path) -> Value {
    bridge_conf(
        version,
        net,
        bridge,
        ranges,
        data_dir,
        json!({"isGateway": true, "ipMasq": true}),
    )
}

/// reef-ipam itself, called the way a main plugin delegates to it.
fn ipam_call(command: &str, pod: &Path, cid: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-ipam")
        .command(command)
        .runtime(pod, cid, IFNAME)
        .path(&cni_path())
        .config(conf)
}

/// One address fits; the second ADD must fail with 104, change nothing on disk, leave no
/// link behind, and work again once the first is released.
fn second_add_exhausts(net: &str, bridge: &str, ranges: Value, must_mention: &[&str]) {
    let env = HostWithPods::new(2);
    let conf = conf("1.0.0", net, bridge, ranges, &env.data_dir());
    let (first, second) = (&env.pods[0], &env.pods[1]);

    let add = bridge_call("ADD", first.path(), "fits", IFNAME, &conf).run(&env.host);
    let result = expect_ok(&add, "first ADD").result().clone();
    let taken = result_ip(&result, false);

    let store_before = dir_snapshot(&env.data_dir());
    let host_links_before = link_names(&env.host);
    let pod_links_before = link_names(second);
    let masq_before = masq_set(&env.host, net, false);

    let add = bridge_call("ADD", second.path(), "overflow", IFNAME, &conf).run(&env.host);
    let msg = expect_error(&add, 104, "ADD into a full range");
    for needle in must_mention {
        assert!(
            msg.contains(needle),
            "error message should mention {needle:?}: {msg}"
        );
    }

    assert_eq!(
        dir_snapshot(&env.data_dir()),
        store_before,
        "a failed ADD must leave the IPAM store byte-identical"
    );
    assert_eq!(
        link_names(&env.host),
        host_links_before,
        "failed ADD left a host link"
    );
    assert_eq!(
        link_names(second),
        pod_links_before,
        "failed ADD left a link in the pod"
    );
    assert_eq!(
        masq_set(&env.host, net, false),
        masq_before,
        "masquerade set changed"
    );

    // Once the address is released, the same ADD succeeds and gets it.
    let del = bridge_call(
        "DEL",
        first.path(),
        "fits",
        IFNAME,
        &with_prev(&conf, &result),
    )
    .run(&env.host);
    expect_ok(&del, "DEL of the first pod");
    let add = bridge_call("ADD", second.path(), "overflow", IFNAME, &conf).run(&env.host);
    let again = expect_ok(&add, "ADD after the range was freed")
        .result()
        .clone();
    assert_eq!(
        result_ip(&again, false),
        taken,
        "the only free address is handed out"
    );
    let del = bridge_call(
        "DEL",
        second.path(),
        "overflow",
        IFNAME,
        &with_prev(&conf, &again),
    )
    .run(&env.host);
    expect_ok(&del, "DEL of the second pod");
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}

#[test]
fn exhausted_slash_30_fails_with_104_and_rolls_back() {
    // 10.71.0.0/30: .1 is the gateway, .2 the only address to hand out.
    second_add_exhausts(
        "full30",
        "reeffull0",
        json!([[{"subnet": "10.71.0.0/30"}]]),
        &["10.71.0.0/30"],
    );
}

#[test]
fn exhausted_single_address_range_fails_with_104_and_rolls_back() {
    second_add_exhausts(
        "full1",
        "reeffull1",
        json!([[{"subnet": "10.72.0.0/24", "rangeStart": "10.72.0.50", "rangeEnd": "10.72.0.50"}]]),
        &["10.72.0.50"],
    );
}

/// Dual-stack with the IPv6 set full: the IPv4 address planned for the same ADD must not
/// be reserved either.
#[test]
fn exhausted_second_range_set_reserves_nothing_from_the_first() {
    let env = HostWithPods::new(2);
    let net = "fullv6";
    let ranges = json!([
        [{"subnet": "10.73.0.0/24"}],
        [{"subnet": "fd00:73::/64", "rangeStart": "fd00:73::10", "rangeEnd": "fd00:73::10"}],
    ]);
    let conf = conf("1.0.0", net, "reeffull6", ranges, &env.data_dir());
    let add = bridge_call("ADD", env.pods[0].path(), "v6-a", IFNAME, &conf).run(&env.host);
    expect_ok(&add, "first dual-stack ADD");
    let before = dir_snapshot(&env.data_dir());
    let host_links = link_names(&env.host);

    let add = bridge_call("ADD", env.pods[1].path(), "v6-b", IFNAME, &conf).run(&env.host);
    let msg = expect_error(&add, 104, "ADD with the IPv6 range set full");
    assert!(
        msg.contains("fd00:73::10"),
        "message should name the full range: {msg}"
    );
    assert_eq!(
        dir_snapshot(&env.data_dir()),
        before,
        "store changed by a failed ADD"
    );
    assert_eq!(
        link_names(&env.host),
        host_links,
        "failed ADD left a host link"
    );
}

/// reef-ipam on its own reports exhaustion the same way, and leaves the store untouched.
#[test]
fn ipam_alone_exhausted_fails_with_104() {
    let env = HostWithPods::new(1);
    let net = "ipamfull";
    let conf = conf(
        "1.0.0",
        net,
        "unused0",
        json!([[{"subnet": "10.74.0.0/30"}]]),
        &env.data_dir(),
    );
    let pod = env.pods[0].path();
    let add = ipam_call("ADD", pod, "only", &conf).run(&env.host);
    let result = expect_ok(&add, "reef-ipam ADD").result().clone();
    assert_eq!(
        result_cidrs(&result),
        vec!["10.74.0.2/30".to_owned()],
        "{add}"
    );
    assert_eq!(result_gateway(&result, false), "10.74.0.1");
    assert_eq!(
        std::fs::read(store_dir(&env.data_dir(), net).join("10.74.0.2")).expect("record"),
        b"only\r\neth0",
        "record format is host-local's"
    );
    let before = dir_snapshot(&env.data_dir());
    let add = ipam_call("ADD", pod, "other", &conf).run(&env.host);
    let msg = expect_error(&add, 104, "reef-ipam ADD into a full range");
    assert!(msg.contains("10.74.0.0/30"), "{msg}");
    assert_eq!(dir_snapshot(&env.data_dir()), before);
    // ADD again for the same attachment is idempotent.
    let add = ipam_call("ADD", pod, "only", &conf).run(&env.host);
    assert_eq!(
        result_cidrs(expect_ok(&add, "repeated ADD").result()),
        result_cidrs(&result)
    );
    expect_ok(
        &ipam_call("DEL", pod, "only", &conf).run(&env.host),
        "reef-ipam DEL",
    );
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}

/// CNI 1.1 GC through reef-bridge (delegated to reef-ipam): exactly the attachment missing
/// from `cni.dev/valid-attachments` loses its address.
#[test]
fn gc_releases_only_attachments_not_listed() {
    let env = HostWithPods::new(3);
    let net = "gcnet";
    let conf = conf(
        "1.1.0",
        net,
        "reefgc0",
        json!([[{"subnet": "10.91.0.0/24"}]]),
        &env.data_dir(),
    );
    let cids = ["gc-a", "gc-b", "gc-c"];
    let mut ips = Vec::new();
    for (pod, cid) in env.pods.iter().zip(cids) {
        let add = bridge_call("ADD", pod.path(), cid, IFNAME, &conf).run(&env.host);
        ips.push(result_ip(
            expect_ok(&add, &format!("ADD {cid}")).result(),
            false,
        ));
    }
    let mut all = ips.clone();
    all.sort();
    assert_eq!(ip_files(&env.data_dir(), net), all);
    let store = store_dir(&env.data_dir(), net);
    let records_before: Vec<Vec<u8>> = ips[..2]
        .iter()
        .map(|ip| std::fs::read(store.join(ip)).expect("record"))
        .collect();

    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "gc-a", "ifname": IFNAME},
        {"containerID": "gc-b", "ifname": IFNAME},
    ]);
    for attempt in ["first", "second"] {
        let gc = bridge_net_call("GC", &gc_conf).run(&env.host);
        expect_ok(&gc, &format!("{attempt} GC"));
        let mut kept = ips[..2].to_vec();
        kept.sort();
        assert_eq!(
            ip_files(&env.data_dir(), net),
            kept,
            "{attempt} GC must release exactly gc-c's {}",
            ips[2]
        );
    }
    let records_after: Vec<Vec<u8>> = ips[..2]
        .iter()
        .map(|ip| std::fs::read(store.join(ip)).expect("record"))
        .collect();
    assert_eq!(records_after, records_before, "kept records are untouched");

    // The released address is handed out again; DEL of the collected attachment still works.
    let del = bridge_call("DEL", env.pods[2].path(), "gc-c", IFNAME, &conf).run(&env.host);
    expect_ok(&del, "DEL of the garbage-collected attachment");
    for (pod, cid) in env.pods.iter().zip(cids).take(2) {
        expect_ok(
            &bridge_call("DEL", pod.path(), cid, IFNAME, &conf).run(&env.host),
            &format!("DEL {cid}"),
        );
    }
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}

/// A valid attachment is (containerID, ifname): the same container on another interface
/// does not keep this one alive.
#[test]
fn gc_matches_container_id_and_ifname() {
    let env = HostWithPods::new(1);
    let net = "gcifname";
    // No gateway mode: two interfaces in one pod would both want the default route.
    let conf = bridge_conf(
        "1.1.0",
        net,
        "reefgc1",
        json!([[{"subnet": "10.92.0.0/24"}]]),
        &env.data_dir(),
        json!({}),
    );
    let pod = env.pods[0].path();
    expect_ok(
        &bridge_call("ADD", pod, "gc-x", "eth0", &conf).run(&env.host),
        "ADD eth0",
    );
    expect_ok(
        &bridge_call("ADD", pod, "gc-x", "eth1", &conf).run(&env.host),
        "ADD eth1",
    );
    assert_eq!(ip_files(&env.data_dir(), net).len(), 2);

    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "gc-x", "ifname": "eth1"}]);
    expect_ok(&bridge_net_call("GC", &gc_conf).run(&env.host), "GC");
    let files = ip_files(&env.data_dir(), net);
    assert_eq!(
        files.len(),
        1,
        "eth0's address should be collected: {files:?}"
    );
    let record = std::fs::read(store_dir(&env.data_dir(), net).join(&files[0])).expect("record");
    assert_eq!(record, b"gc-x\r\neth1", "the eth1 record survives");
}

#[test]
fn status_ok_for_a_usable_store() {
    let env = HostWithPods::new(0);
    let conf = conf(
        "1.1.0",
        "statusok",
        "reefst0",
        json!([[{"subnet": "10.93.0.0/24"}]]),
        &env.data_dir(),
    );
    let out = bridge_net_call("STATUS", &conf).run(&env.host);
    expect_ok(&out, "STATUS via reef-bridge");
    assert!(
        out.stdout.trim().is_empty(),
        "STATUS prints nothing on success:\n{out}"
    );
    expect_ok(
        &CniCall::plugin("reef-ipam")
            .command("STATUS")
            .path(&cni_path())
            .config(&conf)
            .run(&env.host),
        "STATUS via reef-ipam",
    );
}

#[test]
fn status_50_when_data_dir_is_unusable() {
    let env = HostWithPods::new(0);
    let file = env.dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").expect("write file");
    let conf = conf(
        "1.1.0",
        "statusbad",
        "reefst1",
        json!([[{"subnet": "10.94.0.0/24"}]]),
        &file.join("data"),
    );
    let out = bridge_net_call("STATUS", &conf).run(&env.host);
    expect_error(
        &out,
        50,
        "STATUS via reef-bridge with dataDir under a regular file",
    );
    let out = CniCall::plugin("reef-ipam")
        .command("STATUS")
        .path(&cni_path())
        .config(&conf)
        .run(&env.host);
    expect_error(
        &out,
        50,
        "STATUS via reef-ipam with dataDir under a regular file",
    );
    assert_eq!(
        std::fs::read(&file).expect("file"),
        b"x",
        "the file is untouched"
    );
}

#[test]
fn status_50_when_range_is_exhausted() {
    let env = HostWithPods::new(1);
    let conf = conf(
        "1.1.0",
        "statusfull",
        "reefst2",
        json!([[{"subnet": "10.95.0.0/30"}]]),
        &env.data_dir(),
    );
    expect_ok(
        &bridge_net_call("STATUS", &conf).run(&env.host),
        "STATUS before ADD",
    );
    let add = bridge_call("ADD", env.pods[0].path(), "st", IFNAME, &conf).run(&env.host);
    let result = expect_ok(&add, "ADD").result().clone();
    let out = bridge_net_call("STATUS", &conf).run(&env.host);
    expect_error(&out, 50, "STATUS with the only address taken");
    let del = bridge_call(
        "DEL",
        env.pods[0].path(),
        "st",
        IFNAME,
        &with_prev(&conf, &result),
    )
    .run(&env.host);
    expect_ok(&del, "DEL");
    expect_ok(
        &bridge_net_call("STATUS", &conf).run(&env.host),
        "STATUS after DEL",
    );
}

/// An IPAM-only config (what a main plugin hands its IPAM) for `ipam`.
fn ipam_only(net: &str, ipam: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": net, "type": "reef-bridge", "ipam": ipam})
}

/// ADD through `call` for `cid` and return the single address handed out.
fn alloc(host: &Netns, call: &CniCall, cid: &str) -> String {
    let out = call.clone().command("ADD").container_id(cid).run(host);
    result_ip(expect_ok(&out, &format!("ADD {cid}")).result(), false)
}

fn release(host: &Netns, call: &CniCall, cid: &str) {
    let out = call.clone().command("DEL").container_id(cid).run(host);
    expect_ok(&out, &format!("DEL {cid}"));
}

/// Round-robin after the last reserved address, wrapping around; the gateway is never
/// handed out.
#[test]
fn allocation_is_round_robin_and_skips_the_gateway() {
    let env = HostWithPods::new(1);
    let net = "roundrobin";
    let conf = ipam_only(
        net,
        json!({"type": "reef-ipam", "ranges": [[{"subnet": "10.75.0.0/29"}]], "dataDir": env.data_dir()}),
    );
    let call = CniCall::plugin("reef-ipam")
        .netns(env.pods[0].path())
        .ifname(IFNAME)
        .path(&cni_path())
        .config(&conf);
    let host = &env.host;
    assert_eq!(
        alloc(host, &call, "a"),
        "10.75.0.2",
        "first usable after the gateway .1"
    );
    release(host, &call, "a");
    assert_eq!(
        alloc(host, &call, "b"),
        "10.75.0.3",
        "a just-released address is not reused"
    );
    for (cid, want) in [("c", "10.75.0.4"), ("d", "10.75.0.5"), ("e", "10.75.0.6")] {
        assert_eq!(alloc(host, &call, cid), want);
    }
    assert_eq!(
        alloc(host, &call, "f"),
        "10.75.0.2",
        "wraps around to the freed address"
    );
    let out = call.clone().command("ADD").container_id("g").run(host);
    expect_error(&out, 104, "ADD with .2-.6 taken");
}

#[test]
fn explicit_gateway_is_never_handed_out() {
    let env = HostWithPods::new(1);
    let net = "midgw";
    let conf = ipam_only(
        net,
        json!({
            "type": "reef-ipam",
            "ranges": [[{"subnet": "10.76.0.0/29", "gateway": "10.76.0.4"}]],
            "dataDir": env.data_dir(),
        }),
    );
    let call = CniCall::plugin("reef-ipam")
        .netns(env.pods[0].path())
        .ifname(IFNAME)
        .path(&cni_path())
        .config(&conf);
    let got: Vec<String> = (0..5)
        .map(|i| alloc(&env.host, &call, &format!("c{i}")))
        .collect();
    assert_eq!(
        got,
        [
            "10.76.0.1",
            "10.76.0.2",
            "10.76.0.3",
            "10.76.0.5",
            "10.76.0.6"
        ]
    );
    let out = call
        .clone()
        .command("ADD")
        .container_id("c5")
        .run(&env.host);
    let r = out.json.clone().unwrap_or_default();
    expect_error(&out, 104, &format!("ADD with only the gateway left: {r}"));
}

/// The store is host-local's: host-local and reef-ipam can share a data directory, each
/// respecting and releasing the other's reservations.
#[test]
fn store_interoperates_with_host_local() {
    let env = HostWithPods::new(1);
    let net = "shared-store";
    let ipam = |ty: &str| {
        ipam_only(
            net,
            json!({"type": ty, "ranges": [[{"subnet": "10.77.0.0/24"}]], "dataDir": env.data_dir()}),
        )
    };
    let call = |bin: std::path::PathBuf, ty: &str| {
        CniCall::new(bin)
            .netns(env.pods[0].path())
            .ifname(IFNAME)
            .path(&cni_path())
            .config(ipam(ty))
    };
    let host_local = call(reference_plugin("host-local"), "host-local");
    let reef = call(plugin("reef-ipam"), "reef-ipam");
    let host = &env.host;

    let a = alloc(host, &host_local, "by-host-local");
    let b = alloc(host, &reef, "by-reef");
    let c = alloc(host, &host_local, "by-host-local-2");
    let mut all = vec![a.clone(), b.clone(), c.clone()];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "no address handed out twice: {a} {b} {c}");
    let store = store_dir(&env.data_dir(), net);
    assert_eq!(
        std::fs::read(store.join(&b)).expect("record"),
        b"by-reef\r\neth0"
    );

    // Each releases the other's reservations.
    release(host, &reef, "by-host-local");
    release(host, &host_local, "by-reef");
    assert_eq!(ip_files(&env.data_dir(), net), vec![c.clone()]);
    // CHECK by reef-ipam of host-local's remaining allocation.
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": format!("{c}/24")}]});
    let check = reef
        .clone()
        .command("CHECK")
        .container_id("by-host-local-2")
        .config(with_prev(&ipam("reef-ipam"), &prev))
        .run(host);
    expect_ok(&check, "reef-ipam CHECK of a host-local reservation");
    release(host, &reef, "by-host-local-2");
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}

/// Networks sharing a dataDir are independent: GC of one never touches the other.
#[test]
fn gc_is_scoped_to_its_network() {
    let env = HostWithPods::new(1);
    let conf_of = |net: &str, octet: u8| {
        let mut c = ipam_only(
            net,
            json!({"type": "reef-ipam", "ranges": [[{"subnet": format!("10.{octet}.0.0/24")}]],
                   "dataDir": env.data_dir()}),
        );
        c["cniVersion"] = json!("1.1.0");
        c
    };
    let (one, two) = (conf_of("scope-one", 78), conf_of("scope-two", 79));
    for (c, cid) in [(&one, "x1"), (&two, "x2")] {
        let call = CniCall::plugin("reef-ipam")
            .netns(env.pods[0].path())
            .ifname(IFNAME)
            .path(&cni_path())
            .config(c);
        alloc(&env.host, &call, cid);
    }
    let mut gc = one.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = CniCall::plugin("reef-ipam")
        .command("GC")
        .path(&cni_path())
        .config(&gc)
        .run(&env.host);
    expect_ok(&out, "GC of scope-one with no valid attachments");
    assert_eq!(ip_files(&env.data_dir(), "scope-one"), Vec::<String>::new());
    assert_eq!(
        ip_files(&env.data_dir(), "scope-two").len(),
        1,
        "scope-two untouched"
    );
}

/// A range set of several ranges is used in order, then reported full as a whole.
#[test]
fn multi_range_set_spans_its_ranges_then_exhausts() {
    let env = HostWithPods::new(1);
    let net = "multirange";
    let conf = ipam_only(
        net,
        json!({
            "type": "reef-ipam",
            "ranges": [[
                {"subnet": "10.80.0.0/24", "rangeStart": "10.80.0.10", "rangeEnd": "10.80.0.11"},
                {"subnet": "10.80.1.0/24", "rangeStart": "10.80.1.20", "rangeEnd": "10.80.1.20"},
            ]],
            "dataDir": env.data_dir(),
        }),
    );
    let call = CniCall::plugin("reef-ipam")
        .netns(env.pods[0].path())
        .ifname(IFNAME)
        .path(&cni_path())
        .config(&conf);
    let got: Vec<String> = (0..3)
        .map(|i| alloc(&env.host, &call, &format!("m{i}")))
        .collect();
    assert_eq!(got, ["10.80.0.10", "10.80.0.11", "10.80.1.20"]);
    let before = dir_snapshot(&env.data_dir());
    let out = call
        .clone()
        .command("ADD")
        .container_id("m3")
        .run(&env.host);
    let msg = expect_error(&out, 104, "ADD with every range of the set full");
    assert!(
        msg.contains("10.80.0.10") && msg.contains("10.80.1.20"),
        "names both ranges: {msg}"
    );
    assert_eq!(dir_snapshot(&env.data_dir()), before);
}
