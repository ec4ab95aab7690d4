//! reef-run's CNI semantics (libcni's) seen from the plugins' side, and its failures: each
//! failure must print a clear message, exit non-zero and leave nothing behind.
//!
//! A recording test plugin (a Python script in the host's scratch `bin/`) stores every
//! invocation's stdin and CNI environment, so the tests can check what each plugin of the
//! chain was sent: names, versions, `prevResult`, `runtimeConfig`, CNI_ARGS, order.

use std::path::Path;

use nix::sys::signal::Signal;
use reef_tests::run::*;
use reef_tests::store::list_dir;
use reef_tests::wait_until;
use serde_json::{json, Value};

/// The test plugin: records each call as `<seq>-<type>-<COMMAND>.json` in `recordDir`, returns
/// its prevResult on ADD. It fails ADD when `failAdd` is set; with `blockAdd` it waits in ADD
/// until `<recordDir>/release` exists (then goes on) or its caller dies (then fails); it fails
/// DEL while `<recordDir>/fail-del` exists.
const RECORDER: &str = r#"#!/usr/bin/python3
import json, os, sys, time
conf = json.load(sys.stdin)
cmd = os.environ.get("CNI_COMMAND", "")
if cmd == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}))
    sys.exit(0)
d = conf["recordDir"]
n = len([f for f in os.listdir(d) if f.endswith(".json")])
with open(os.path.join(d, "%02d-%s-%s.json" % (n, conf["type"], cmd)), "w") as f:
    json.dump({"stdin": conf, "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")}}, f)
if cmd == "DEL" and os.path.exists(os.path.join(d, "fail-del")):
    print(json.dumps({"cniVersion": conf["cniVersion"], "code": 11, "msg": "recorder DEL fails while fail-del exists"}))
    sys.exit(1)
if cmd == "ADD":
    if conf.get("blockAdd"):
        # Stand still mid-chain until our runtime is gone, then fail.
        parent = os.getppid()
        open(os.path.join(d, "blocked"), "w").close()
        while os.getppid() == parent and not os.path.exists(os.path.join(d, "release")):
            time.sleep(0.02)
        if os.getppid() != parent:
            sys.exit(1)
    if conf.get("failAdd"):
        print(json.dumps({"cniVersion": conf["cniVersion"], "code": 7, "msg": "recorder told to fail", "details": "failAdd is set"}))
        sys.exit(1)
    print(json.dumps(conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}))
"#;

/// Installs the recorder as `rec-a` and `rec-b` in the host's scratch bin; returns the
/// record directory.
fn install_recorder(h: &RunHost) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    for name in ["rec-a", "rec-b"] {
        let p = h.bin_dir().join(name);
        std::fs::write(&p, RECORDER).expect("write recorder");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let rec = h.dir.path().join("records");
    std::fs::create_dir_all(&rec).expect("record dir");
    rec
}

/// The default network's bridge + IPAM (so `assert_clean` applies), as a plugin object.
fn bridge(h: &RunHost) -> Value {
    json!({
        "type": "reef-bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
        "ipam": {"type": "reef-ipam", "ranges": [[{"subnet": "10.88.0.0/16"}]], "dataDir": h.ipam_dir()},
    })
}

fn conflist(h: &RunHost, version: &str, plugins: Vec<Value>) -> std::path::PathBuf {
    let text = json!({"cniVersion": version, "name": NET, "plugins": plugins}).to_string();
    h.write_conflist("net.conflist", &text)
}

/// The recorded calls, in order: (file name, record).
fn records(dir: &Path) -> Vec<(String, Value)> {
    list_dir(dir)
        .into_iter()
        .map(|n| {
            let v: Value =
                serde_json::from_slice(&std::fs::read(dir.join(&n)).expect("read record"))
                    .expect("record json");
            (n, v)
        })
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed run: exit 125 and a message containing every `want`.
fn expect_failure(out: &std::process::Output, wants: &[&str]) {
    assert_eq!(code(out), 125, "{}", describe(out));
    let err = stderr(out);
    assert!(err.starts_with("reef-run: "), "{}", describe(out));
    for w in wants {
        assert!(err.contains(w), "message lacks {w:?}: {}", describe(out));
    }
}

#[test]
fn chain_follows_libcni_semantics() {
    let h = RunHost::new();
    let rec = install_recorder(&h);
    let file = conflist(
        &h,
        "1.1.0",
        vec![
            json!({"type": "rec-a", "recordDir": rec, "cniVersion": "0.3.1", "capabilities": {"labels": false}}),
            bridge(&h),
            json!({"type": "rec-b", "recordDir": rec, "capabilities": {"labels": true, "portMappings": true}}),
        ],
    );
    let f = file.to_str().unwrap_or_default();
    let out = h.run_ok(&[
        "--net",
        f,
        "--name",
        "rec",
        "--label",
        "app=web",
        "-p",
        "8081:81/udp",
        "--",
        "true",
    ]);
    assert_eq!(out, "");
    let calls = records(&rec);
    let names: Vec<String> = calls.iter().map(|(n, _)| n[3..].to_owned()).collect();
    assert_eq!(
        names,
        [
            "rec-a-ADD.json",
            "rec-b-ADD.json",
            "rec-b-DEL.json",
            "rec-a-DEL.json"
        ],
        "ADD in order, DEL in reverse"
    );
    let (a_add, b_add, b_del, a_del) = (&calls[0].1, &calls[1].1, &calls[2].1, &calls[3].1);

    // Name and version come from the list, whatever the plugin object says.
    assert_eq!(a_add["stdin"]["name"], NET);
    assert_eq!(a_add["stdin"]["cniVersion"], "1.1.0");
    assert!(
        a_add["stdin"].get("prevResult").is_none(),
        "the first plugin has no prevResult"
    );
    assert!(
        a_add["stdin"].get("runtimeConfig").is_none(),
        "no declared capability, no runtimeConfig"
    );

    // prevResult chaining: rec-b gets reef-bridge's result.
    let prev = &b_add["stdin"]["prevResult"];
    let addr = prev["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        addr.starts_with("10.88."),
        "rec-b's prevResult is the bridge's result: {prev}"
    );
    assert_eq!(
        b_add["stdin"]["runtimeConfig"],
        json!({
            "labels": {"labels": {"app": "web"}},
            "portMappings": [{"hostPort": 8081, "containerPort": 81, "protocol": "udp"}],
        }),
        "declared capabilities only"
    );

    // The environment, as libcni sets it.
    let env = &b_add["env"];
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=rec"
    );
    let cid = env["CNI_CONTAINERID"].as_str().unwrap_or_default();
    assert_eq!(cid.len(), 64, "a 64-hex-digit container ID: {cid}");
    assert!(
        env["CNI_NETNS"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/containers/rec/netns"),
        "CNI_NETNS is the pinned namespace: {env}"
    );
    assert!(env["CNI_PATH"]
        .as_str()
        .unwrap_or_default()
        .contains(&h.bin_dir().display().to_string()));

    // DEL: every plugin gets the cached (final) result as prevResult, same args.
    for del in [b_del, a_del] {
        assert_eq!(
            del["stdin"]["prevResult"]["ips"][0]["address"],
            addr.as_str(),
            "{del}"
        );
        assert_eq!(del["env"]["CNI_CONTAINERID"], cid);
        assert_eq!(del["env"]["CNI_ARGS"], env["CNI_ARGS"]);
    }
    assert_eq!(
        b_del["stdin"]["runtimeConfig"],
        b_add["stdin"]["runtimeConfig"]
    );
    h.assert_clean("after the recorded run");
}

#[test]
fn add_failing_half_way_is_undone() {
    let h = RunHost::new();
    let rec = install_recorder(&h);
    let file = conflist(
        &h,
        "1.0.0",
        vec![
            bridge(&h),
            json!({"type": "rec-b", "recordDir": rec, "failAdd": true}),
        ],
    );
    let out = h.run(&["--net", file.to_str().unwrap_or_default(), "--", "true"]);
    expect_failure(&out, &["rec-b", "ADD", "recorder told to fail"]);
    let names: Vec<String> = records(&rec)
        .into_iter()
        .map(|(n, _)| n[3..].to_owned())
        .collect();
    assert_eq!(
        names,
        ["rec-b-ADD.json", "rec-b-DEL.json"],
        "the failed plugin gets DEL too"
    );
    // reef-bridge's DEL ran as well: its veth and address are gone.
    h.assert_clean("after the failed ADD");
}

#[test]
fn missing_plugin_fails_before_anything_is_created() {
    let h = RunHost::new();
    let file = conflist(
        &h,
        "1.0.0",
        vec![bridge(&h), json!({"type": "reef-nonexistent"})],
    );
    let out = h.run(&["--net", file.to_str().unwrap_or_default(), "--", "true"]);
    expect_failure(&out, &["reef-nonexistent", "not found"]);
    assert!(
        !h.host
            .sh(&format!("ip link show {BRIDGE}"))
            .status
            .success(),
        "no plugin ran: no bridge"
    );
    h.assert_clean("after the missing plugin");
}

#[test]
fn invalid_conflists_are_refused_clearly() {
    let h = RunHost::new();
    let cases = [
        (
            r#"{"cniVersion":"1.0.0","name":"x","plugins":["#,
            "invalid JSON",
        ),
        (r#"{"cniVersion":"1.0.0","name":"x"}"#, "no \"plugins\""),
        (
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"bridge":"b"}]}"#,
            "missing \"type\"",
        ),
        (
            r#"{"name":"x","plugins":[{"type":"reef-bridge"}]}"#,
            "cniVersion",
        ),
    ];
    for (text, want) in cases {
        let file = h.write_conflist("bad.conflist", text);
        let out = h.run(&["--net", file.to_str().unwrap_or_default(), "--", "true"]);
        expect_failure(&out, &[want, "bad.conflist"]);
    }
    let out = h.run(&["--net", "/nonexistent.conflist", "--", "true"]);
    expect_failure(&out, &["/nonexistent.conflist", "cannot read"]);
    h.assert_clean("after the invalid conflists");
}

#[test]
fn unsupported_cni_version_is_caught_by_version() {
    let h = RunHost::new();
    let file = conflist(&h, "0.2.0", vec![bridge(&h)]);
    let out = h.run(&["--net", file.to_str().unwrap_or_default(), "--", "true"]);
    expect_failure(
        &out,
        &[
            "reef-bridge",
            "does not support cniVersion \"0.2.0\"",
            "1.0.0",
        ],
    );
    h.assert_clean("after the version mismatch");
}

#[test]
fn nonexistent_rootfs_is_refused() {
    let h = RunHost::new();
    let missing = h.dir.path().join("no-such-rootfs");
    let out = h.run(&[
        "--rootfs",
        missing.to_str().unwrap_or_default(),
        "--",
        "/bin/sh",
    ]);
    expect_failure(&out, &["no-such-rootfs", "does not exist"]);
    h.assert_clean("after the missing rootfs");
}

#[test]
fn bad_arguments_are_refused() {
    let h = RunHost::new();
    let cases: [(&[&str], &str); 6] = [
        (&["--name", "a/b", "--", "true"], "invalid container name"),
        (&["-p", "8080", "--", "true"], "HOST_PORT:CONTAINER_PORT"),
        (
            &["-p", "8080:80", "-p", "8080:81", "--", "true"],
            "given twice",
        ),
        (
            &["--join", "nobody", "--", "true"],
            "no such container: nobody",
        ),
        (&["--label", "novalue", "--", "true"], "KEY=VALUE"),
        (&["--name", "x"], "CMD"),
    ];
    for (args, want) in cases {
        let out = h.run(args);
        assert_eq!(code(&out), 125, "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains(want),
            "{args:?}: message lacks {want:?}: {}",
            describe(&out)
        );
    }
    h.assert_clean("after the bad arguments");
}

#[test]
fn duplicate_name_is_refused_and_the_first_keeps_running() {
    let h = RunHost::new();
    let mut first = h.spawn(&["--name", "dup", "--", "sleep", "1000"]);
    let row = h.wait_running("dup");
    let out = h.run(&["--name", "dup", "--", "true"]);
    expect_failure(&out, &["\"dup\"", "already in use", "running"]);
    let again = h.ps_row("dup").expect("still listed");
    assert_eq!(again["status"], "running");
    assert_eq!(again["id"], row["id"], "the entry is the first container's");
    assert_eq!(h.host_veths().len(), 1, "the second attached nothing");
    assert_eq!(h.ipam_ips().len(), 1);
    signal(row["pid"].as_i64().expect("pid"), Signal::SIGKILL);
    wait_exit(&mut first);
    h.assert_clean("after the duplicate");
}

#[test]
fn port_taken_by_another_container_fails_and_is_undone() {
    let h = RunHost::new();
    let mut first = h.spawn(&["--name", "holder", "-p", "8085:80", "--", "sleep", "1000"]);
    let row = h.wait_running("holder");
    let out = h.run(&["--name", "taker", "-p", "8085:80", "--", "true"]);
    expect_failure(&out, &["reef-portmap", "8085"]);
    assert_eq!(
        h.host_veths().len(),
        1,
        "the second container's veth is gone"
    );
    assert_eq!(
        h.ipam_ips().len(),
        1,
        "the second container's address is released"
    );
    assert_eq!(h.masq_elements(), vec![row_ip(&row)]);
    assert_eq!(h.state_entries(), ["holder"]);
    assert_eq!(h.cache_entries().len(), 1);
    signal(row["pid"].as_i64().expect("pid"), Signal::SIGKILL);
    wait_exit(&mut first);
    h.assert_clean("after the port conflict");
}

#[test]
fn del_failure_keeps_the_entry_for_rm() {
    let h = RunHost::new();
    let rec = install_recorder(&h);
    let file = conflist(
        &h,
        "1.0.0",
        vec![bridge(&h), json!({"type": "rec-b", "recordDir": rec})],
    );
    std::fs::write(rec.join("fail-del"), "").expect("arm DEL failure");
    let out = h.run(&[
        "--net",
        file.to_str().unwrap_or_default(),
        "--name",
        "sticky",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(
        code(&out),
        3,
        "the command's status, even when DEL fails: {}",
        describe(&out)
    );
    for want in [
        "rec-b failed (DEL)",
        "recorder DEL fails",
        "reef-run rm sticky",
    ] {
        assert!(
            stderr(&out).contains(want),
            "message lacks {want:?}: {}",
            describe(&out)
        );
    }
    // reef-bridge's DEL still ran: every plugin gets its DEL.
    assert_eq!(h.host_veths(), Vec::<String>::new());
    assert_eq!(h.ipam_ips(), Vec::<String>::new());
    assert_eq!(
        h.ps_row("sticky").expect("kept")["status"],
        "dead (needs rm)"
    );
    assert_eq!(
        h.cache_entries().len(),
        1,
        "the cache entry stays for the retry"
    );

    let out = h.run(&["rm", "sticky"]);
    assert_ne!(
        code(&out),
        0,
        "rm fails while DEL fails: {}",
        describe(&out)
    );
    assert!(h.ps_row("sticky").is_some(), "and keeps the entry");
    std::fs::remove_file(rec.join("fail-del")).expect("disarm");
    h.run_ok(&["rm", "sticky"]);
    let dels = records(&rec)
        .iter()
        .filter(|(n, _)| n.ends_with("rec-b-DEL.json"))
        .count();
    assert_eq!(dels, 3, "DEL at exit, at the failed rm, at the good rm");
    h.assert_clean("after rm");
}

#[test]
fn rm_after_reef_run_was_killed_in_the_middle_of_add() {
    let h = RunHost::new();
    let rec = install_recorder(&h);
    let file = conflist(
        &h,
        "1.0.0",
        vec![
            bridge(&h),
            json!({"type": "rec-b", "recordDir": rec, "blockAdd": true}),
        ],
    );
    let mut run = h.spawn(&[
        "--net",
        file.to_str().unwrap_or_default(),
        "--name",
        "midway",
        "--",
        "true",
    ]);
    assert!(
        wait_until(READY, || rec.join("blocked").exists()),
        "rec-b's ADD never started"
    );
    assert_eq!(h.host_veths().len(), 1, "reef-bridge's ADD is done");
    signal(run.pid() as i64, Signal::SIGKILL);
    wait_exit(&mut run);
    assert_eq!(
        h.ps_row("midway").expect("listed")["status"],
        "dead (needs rm)"
    );
    h.run_ok(&["rm", "midway"]);
    h.assert_clean("after rm of a half-attached container");
}

#[test]
fn sigterm_before_the_command_runs_aborts_cleanly() {
    let h = RunHost::new();
    let rec = install_recorder(&h);
    let file = conflist(
        &h,
        "1.0.0",
        vec![
            bridge(&h),
            json!({"type": "rec-b", "recordDir": rec, "blockAdd": true}),
        ],
    );
    let marker = h.dir.path().join("command-ran");
    let mut run = h.spawn(&[
        "--net",
        file.to_str().unwrap_or_default(),
        "--",
        "touch",
        marker.to_str().unwrap_or_default(),
    ]);
    assert!(
        wait_until(READY, || rec.join("blocked").exists()),
        "rec-b's ADD never started"
    );
    signal(run.pid() as i64, Signal::SIGTERM);
    std::fs::write(rec.join("release"), "").expect("release ADD");
    assert_eq!(wait_exit(&mut run), 128 + 15, "stopped by the SIGTERM");
    assert!(!marker.exists(), "the command never ran");
    h.assert_clean("after the aborted start");
}
