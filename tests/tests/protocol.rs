//! The CNI exec protocol as reef-bridge and reef-ipam speak it: VERSION, error codes and the
//! error object, verb/version gating, and that a failed ADD leaves nothing behind.

use std::path::Path;

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";
const PLUGINS: [&str; 2] = ["reef-bridge", "reef-ipam"];

/// A usable reef-bridge config for 10.<octet>.0.0/24 (gateway and masquerade on).
fn conf(version: &str, net: &str, octet: u8, data_dir: &Path) -> Value {
    bridge_conf(
        version,
        net,
        &format!("reefp{octet}"),
        json!([[{ "subnet": format!("10.{octet}.0.0/24") }]]),
        data_dir,
        json!({"isGateway": true, "ipMasq": true}),
    )
}

/// `plugin` with every variable a runtime sets for an attachment, and `stdin`.
fn full_call(plugin: &str, command: &str, pod: &Path, stdin: impl ConfigInput) -> CniCall {
    CniCall::plugin(plugin)
        .command(command)
        .runtime(pod, "proto", IFNAME)
        .path(&cni_path())
        .config(stdin)
}

#[test]
fn version_lists_supported_spec_versions() {
    let host = Netns::new("ver").expect("host netns");
    for plugin in PLUGINS {
        for stdin in [String::new(), json!({"cniVersion": "1.0.0"}).to_string()] {
            let out = CniCall::plugin(plugin)
                .command("VERSION")
                .config(&stdin)
                .run(&host);
            let v = expect_ok(&out, &format!("{plugin} VERSION (stdin {stdin:?})")).result();
            let list: Vec<&str> = v["supportedVersions"]
                .as_array()
                .unwrap_or_else(|| panic!("{plugin}: no supportedVersions:\n{out}"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
                assert!(
                    list.contains(&want),
                    "{plugin} VERSION lacks {want}: {list:?}"
                );
            }
            assert!(
                v["cniVersion"].is_string(),
                "{plugin} VERSION has cniVersion:\n{out}"
            );
        }
    }
}

#[test]
fn malformed_stdin_is_error_6() {
    let env = HostWithPods::new(1);
    for plugin in PLUGINS {
        for (stdin, what) in [
            ("{not json", "broken JSON"),
            ("[1, 2]", "not an object"),
            ("", "empty"),
        ] {
            for command in ["ADD", "DEL", "CHECK"] {
                let out = full_call(plugin, command, env.pods[0].path(), stdin).run(&env.host);
                expect_error(&out, 6, &format!("{plugin} {command} with {what} stdin"));
            }
        }
    }
    assert_eq!(
        link_names(&env.host),
        vec!["lo".to_owned()],
        "nothing was set up"
    );
}

#[test]
fn unknown_cni_version_is_error_1() {
    let env = HostWithPods::new(1);
    for plugin in PLUGINS {
        for version in ["9.9.9", "0.2.0", "1.2.3"] {
            let c = conf(version, "vers", 81, &env.data_dir());
            let out = full_call(plugin, "ADD", env.pods[0].path(), &c).run(&env.host);
            let msg = expect_error(&out, 1, &format!("{plugin} ADD with cniVersion {version}"));
            assert!(
                msg.contains(version),
                "{plugin}: message should quote {version}: {msg}"
            );
        }
    }
    assert_eq!(ip_files(&env.data_dir(), "vers"), Vec::<String>::new());
    assert_eq!(
        link_names(&env.host),
        vec!["lo".to_owned()],
        "nothing was set up"
    );
}

#[test]
fn invalid_runtime_variables_are_error_4() {
    let env = HostWithPods::new(1);
    let c = conf("1.0.0", "envs", 82, &env.data_dir());
    let pod = env.pods[0].path();
    let base = || {
        CniCall::plugin("reef-bridge")
            .command("ADD")
            .path(&cni_path())
            .config(&c)
    };

    let cases: Vec<(&str, CniCall, &str)> = vec![
        (
            "no CNI_NETNS",
            base().container_id("envs").ifname(IFNAME),
            "CNI_NETNS",
        ),
        (
            "no CNI_CONTAINERID",
            base().netns(pod).ifname(IFNAME),
            "CNI_CONTAINERID",
        ),
        (
            "no CNI_IFNAME",
            base().netns(pod).container_id("envs"),
            "CNI_IFNAME",
        ),
        (
            "bad container id",
            base().runtime(pod, "bad id!", IFNAME),
            "",
        ),
        ("bad ifname", base().runtime(pod, "envs", "a/b"), ""),
        (
            "ifname too long",
            base().runtime(pod, "envs", "waytoolongifname0"),
            "",
        ),
    ];
    for (what, call, mention) in cases {
        let out = call.run(&env.host);
        let msg = expect_error(&out, 4, &format!("ADD with {what}"));
        assert!(
            msg.contains(mention),
            "ADD with {what}: message should mention {mention}: {msg}"
        );
    }
    for plugin in PLUGINS {
        let out = CniCall::plugin(plugin)
            .command("ADD")
            .container_id("envs")
            .ifname(IFNAME)
            .path(&cni_path())
            .config(&c)
            .run(&env.host);
        expect_error(&out, 4, &format!("{plugin} ADD without CNI_NETNS"));
    }
    assert_eq!(ip_files(&env.data_dir(), "envs"), Vec::<String>::new());
    assert_eq!(
        link_names(&env.host),
        vec!["lo".to_owned()],
        "nothing was set up"
    );
}

#[test]
fn verbs_are_gated_by_config_version() {
    let env = HostWithPods::new(1);
    let pod = env.pods[0].path();
    for plugin in PLUGINS {
        let c = conf("0.3.1", "gate", 83, &env.data_dir());
        let out = full_call(plugin, "CHECK", pod, &c).run(&env.host);
        expect_error(&out, 1, &format!("{plugin} CHECK with cniVersion 0.3.1"));
        for version in ["0.4.0", "1.0.0"] {
            let c = conf(version, "gate", 83, &env.data_dir());
            for verb in ["GC", "STATUS"] {
                let out = CniCall::plugin(plugin)
                    .command(verb)
                    .path(&cni_path())
                    .config(&c)
                    .run(&env.host);
                expect_error(
                    &out,
                    1,
                    &format!("{plugin} {verb} with cniVersion {version}"),
                );
            }
        }
        let out = full_call(
            plugin,
            "FROB",
            pod,
            conf("1.0.0", "gate", 83, &env.data_dir()),
        )
        .run(&env.host);
        expect_error(&out, 4, &format!("{plugin} with unknown CNI_COMMAND"));
    }
}

#[test]
fn bad_config_is_error_7() {
    let env = HostWithPods::new(1);
    let pod = env.pods[0].path();
    let mut no_ipam = conf("1.0.0", "badconf", 84, &env.data_dir());
    no_ipam.as_object_mut().expect("object").remove("ipam");
    let mut bad_subnet = conf("1.0.0", "badconf", 84, &env.data_dir());
    bad_subnet["ipam"]["ranges"] = json!([[{"subnet": "10.84.0.5/24"}]]);
    let mut bad_mtu = conf("1.0.0", "badconf", 84, &env.data_dir());
    bad_mtu["mtu"] = json!(10);
    let mut bad_name = conf("1.0.0", "badconf", 84, &env.data_dir());
    bad_name["name"] = json!("bad/name");
    for (what, c) in [
        ("no ipam section", no_ipam),
        ("subnet with host bits", bad_subnet),
        ("mtu 10", bad_mtu),
        ("network name with '/'", bad_name),
    ] {
        let out = full_call("reef-bridge", "ADD", pod, &c).run(&env.host);
        expect_error(&out, 7, &format!("ADD with {what}"));
    }
    assert_eq!(ip_files(&env.data_dir(), "badconf"), Vec::<String>::new());
    assert!(
        links_of_kind(&env.host, "veth").is_empty(),
        "no veth after failed ADDs"
    );
}

/// What a failed ADD must leave: the host's links as before, no IP file, no set element.
struct Before {
    host_links: Vec<String>,
    pod_links: Vec<String>,
    ip_files: Vec<String>,
    masq: Vec<String>,
}

impl Before {
    fn take(env: &HostWithPods, pod: &Netns, net: &str) -> Before {
        Before {
            host_links: link_names(&env.host),
            pod_links: link_names(pod),
            ip_files: ip_files(&env.data_dir(), net),
            masq: masq_set(&env.host, net, false),
        }
    }

    fn assert_unchanged(
        &self,
        env: &HostWithPods,
        pod: &Netns,
        net: &str,
        what: &str,
        out: &CniOutput,
    ) {
        assert_eq!(
            link_names(&env.host),
            self.host_links,
            "{what}: host links changed\n{out}"
        );
        assert_eq!(
            link_names(pod),
            self.pod_links,
            "{what}: pod links changed\n{out}"
        );
        assert_eq!(
            ip_files(&env.data_dir(), net),
            self.ip_files,
            "{what}: address leaked\n{out}"
        );
        assert_eq!(
            masq_set(&env.host, net, false),
            self.masq,
            "{what}: masquerade set changed"
        );
    }
}

/// A step after the veth and the address exist fails: both are undone.
#[test]
fn failed_add_leaves_nothing_behind() {
    let env = HostWithPods::new(2);
    let net = "rollback";
    let base = conf("1.0.0", net, 85, &env.data_dir());
    // One good attachment first, so the bridge, gateway and masquerade table exist.
    let ok = full_call("reef-bridge", "ADD", env.pods[0].path(), &base).run(&env.host);
    expect_ok(&ok, "first ADD");
    let pod = &env.pods[1];

    // (a) An IPAM route whose gateway is not on-link: route installation fails in the pod.
    let mut unreachable_gw = base.clone();
    unreachable_gw["ipam"]["routes"] = json!([{"dst": "192.168.0.0/16", "gw": "10.99.0.1"}]);
    // (b) The bridge name taken by a link that is not a bridge (a veth) in the host.
    env.host
        .sh_ok("ip link add reefpnotbr type veth peer name reefpnotbr1");
    let mut not_a_bridge = base.clone();
    not_a_bridge["bridge"] = json!("reefpnotbr");

    // (what, config, a word of the expected error: proves which step failed)
    for (what, c, step) in [
        ("route via an unreachable gateway", &unreachable_gw, "route"),
        ("bridge name held by a veth", &not_a_bridge, "not a bridge"),
    ] {
        let before = Before::take(&env, pod, net);
        let out = CniCall::plugin("reef-bridge")
            .command("ADD")
            .runtime(pod.path(), "rb-x", IFNAME)
            .path(&cni_path())
            .config(c)
            .run(&env.host);
        let (_, msg) = expect_failure(&out, what);
        assert!(
            msg.contains(step),
            "{what}: expected a failure at the {step:?} step:\n{out}"
        );
        before.assert_unchanged(&env, pod, net, what, &out);
    }

    // (c) The pod already has an interface called eth0 (here a bridge): it must survive.
    pod.sh_ok("ip link add eth0 type bridge");
    let before = Before::take(&env, pod, net);
    let out = CniCall::plugin("reef-bridge")
        .command("ADD")
        .runtime(pod.path(), "rb-y", IFNAME)
        .path(&cni_path())
        .config(&base)
        .run(&env.host);
    let (_, msg) = expect_failure(&out, "ADD into a pod that already has eth0");
    assert!(
        msg.contains("exists"),
        "expected an \"already exists\" failure:\n{out}"
    );
    before.assert_unchanged(&env, pod, net, "pod already has eth0", &out);
    let kind = link(pod, "eth0").map(|l| l["linkinfo"]["info_kind"].clone());
    assert_eq!(
        kind,
        Some(json!("bridge")),
        "the pod's own eth0 must be left alone"
    );
}

/// Gateway mode on a second interface of the same pod: the default route already exists, so
/// ADD fails after creating the veth and reserving the address; both must be undone.
#[test]
fn failed_add_on_second_interface_rolls_back() {
    let env = HostWithPods::new(1);
    let net = "rollback2";
    let c = conf("1.0.0", net, 86, &env.data_dir());
    let pod = &env.pods[0];
    let first = CniCall::plugin("reef-bridge")
        .command("ADD")
        .runtime(pod.path(), "two-if", "eth0")
        .path(&cni_path())
        .config(&c)
        .run(&env.host);
    let first_result = expect_ok(&first, "ADD eth0").result().clone();

    let before = Before::take(&env, pod, net);
    let second = CniCall::plugin("reef-bridge")
        .command("ADD")
        .runtime(pod.path(), "two-if", "eth1")
        .path(&cni_path())
        .config(&c)
        .run(&env.host);
    if second.ok() {
        // Tolerated if the plugin handles the existing default route; then clean it up.
        let r = second.result().clone();
        expect_ok(
            &CniCall::plugin("reef-bridge")
                .command("DEL")
                .runtime(pod.path(), "two-if", "eth1")
                .path(&cni_path())
                .config(with_prev(&c, &r))
                .run(&env.host),
            "DEL eth1",
        );
    } else {
        expect_failure(&second, "ADD eth1");
        before.assert_unchanged(&env, pod, net, "failed ADD of eth1", &second);
    }
    // eth0 is untouched by eth1's failure.
    let check = CniCall::plugin("reef-bridge")
        .command("CHECK")
        .runtime(pod.path(), "two-if", "eth0")
        .path(&cni_path())
        .config(with_prev(&c, &first_result))
        .run(&env.host);
    expect_ok(&check, "CHECK eth0 after eth1's failed ADD");
}

/// DEL needs no CNI_NETNS (the runtime may have lost it): it still cleans up.
#[test]
fn del_without_netns_variable_succeeds() {
    let env = HostWithPods::new(1);
    let net = "delnons";
    let c = conf("1.0.0", net, 87, &env.data_dir());
    let add = full_call("reef-bridge", "ADD", env.pods[0].path(), &c).run(&env.host);
    let result = expect_ok(&add, "ADD").result().clone();
    let del = CniCall::plugin("reef-bridge")
        .command("DEL")
        .container_id("proto")
        .ifname(IFNAME)
        .path(&cni_path())
        .config(with_prev(&c, &result))
        .run(&env.host);
    expect_ok(&del, "DEL without CNI_NETNS");
    assert_eq!(del.stdout.trim(), "", "DEL prints nothing on success");
    assert!(
        !has_link(&env.host, &result_host_veth(&result)),
        "host veth survived DEL"
    );
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    assert!(masq_set(&env.host, net, false).is_empty());
}

/// What kubelet-driven runtimes really send: 64-hex container IDs and K8S_* CNI_ARGS.
#[test]
fn realistic_container_ids_and_cni_args_are_accepted() {
    let env = HostWithPods::new(2);
    let net = "k8sargs";
    let c = conf("1.0.0", net, 88, &env.data_dir());
    let ids = [
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdee",
    ];
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=1b2c-3d4e";
    let mut results = Vec::new();
    for (pod, id) in env.pods.iter().zip(ids) {
        let add = bridge_call("ADD", pod.path(), id, IFNAME, &c)
            .args(args)
            .run(&env.host);
        let r = expect_ok(&add, "ADD with a 64-hex container id and K8S_* args")
            .result()
            .clone();
        let veth = result_host_veth(&r);
        assert!(
            veth.len() <= 15 && has_link(&env.host, &veth),
            "host veth {veth}: {r}"
        );
        results.push(r);
    }
    assert_ne!(
        result_host_veth(&results[0]),
        result_host_veth(&results[1]),
        "ids differing in the last character get distinct veths"
    );
    for ((pod, id), r) in env.pods.iter().zip(ids).zip(&results) {
        let cc = with_prev(&c, r);
        let check = bridge_call("CHECK", pod.path(), id, IFNAME, &cc)
            .args(args)
            .run(&env.host);
        expect_ok(&check, "CHECK");
        let del = bridge_call("DEL", pod.path(), id, IFNAME, &cc)
            .args(args)
            .run(&env.host);
        expect_ok(&del, "DEL");
    }
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
}

/// Some runtimes pass `/proc/<pid>/ns/net` of a process in the sandbox instead of a bind
/// mount: ADD, CHECK and DEL work with it, and the result's sandbox is that path.
#[test]
fn proc_pid_netns_path_is_accepted() {
    let env = HostWithPods::new(1);
    let net = "procns";
    let c = conf("1.0.0", net, 89, &env.data_dir());
    let sleeper = env.pods[0]
        .spawn("sleep", ["600"])
        .expect("spawn sleep in the pod");
    let path = std::path::PathBuf::from(format!("/proc/{}/ns/net", sleeper.pid()));
    let add = bridge_call("ADD", &path, "procns", IFNAME, &c).run(&env.host);
    let r = expect_ok(&add, "ADD with a /proc/<pid>/ns/net path")
        .result()
        .clone();
    assert_eq!(r["interfaces"][2]["sandbox"], json!(path), "{r}");
    let cidr = result_cidrs(&r)[0].clone();
    assert!(
        addresses(&env.pods[0], IFNAME).contains(&cidr),
        "address lands in the pod"
    );
    let cc = with_prev(&c, &r);
    expect_ok(
        &bridge_call("CHECK", &path, "procns", IFNAME, &cc).run(&env.host),
        "CHECK",
    );
    expect_ok(
        &bridge_call("DEL", &path, "procns", IFNAME, &cc).run(&env.host),
        "DEL",
    );
    assert_eq!(ip_files(&env.data_dir(), net), Vec::<String>::new());
    drop(sleeper);
}

/// CNI_NETNS that is not a network namespace: ADD fails and leaves nothing behind.
#[test]
fn add_with_bogus_netns_leaves_nothing_behind() {
    let env = HostWithPods::new(1);
    let net = "bogusns";
    let c = conf("1.0.0", net, 90, &env.data_dir());
    // One good pod first, so the shared bridge and masquerade table exist.
    expect_ok(
        &full_call("reef-bridge", "ADD", env.pods[0].path(), &c).run(&env.host),
        "ADD",
    );
    let before = Before::take(&env, &env.pods[0], net);
    let file = env.dir.path().join("not-a-netns");
    std::fs::write(&file, b"").expect("write");
    let missing = env.dir.path().join("no-such-netns");
    for (what, path) in [("a regular file", &file), ("a missing path", &missing)] {
        let out = CniCall::plugin("reef-bridge")
            .command("ADD")
            .runtime(path, "bogus", IFNAME)
            .path(&cni_path())
            .config(&c)
            .run(&env.host);
        expect_failure(&out, &format!("ADD with CNI_NETNS = {what}"));
        before.assert_unchanged(
            &env,
            &env.pods[0],
            net,
            &format!("CNI_NETNS = {what}"),
            &out,
        );
    }
}
