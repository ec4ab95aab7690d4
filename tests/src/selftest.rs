//! Tests of the harness itself. They use only the reference plugins in /usr/lib/cni (Reef's
//! own plugins may not be built), each in namespaces and directories it creates and removes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// A reference bridge + host-local network whose IPAM state lives in `data_dir`.
fn reference_bridge(bridge: &str, subnet: &str, data_dir: &Path) -> Value {
    json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir,
        },
    })
}

/// The pod's IPv4 address on `ifname` in CIDR form, if any.
fn pod_ipv4(pod: &Netns, ifname: &str) -> Option<String> {
    let out = pod
        .run("ip", ["-4", "-o", "addr", "show", "dev", ifname])
        .expect("run ip addr");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "inet")?;
    words.next().map(str::to_owned)
}

fn has_link(ns: &Netns, ifname: &str) -> bool {
    ns.run("ip", ["link", "show", "dev", ifname])
        .expect("run ip link")
        .status
        .success()
}

/// Files host-local keeps per reserved address (everything but its lock and cursor files).
fn reservations(data_dir: &Path, network: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(network)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[test]
fn cni_call_version_of_reference_bridge() {
    let host = Netns::new("rt-ver").expect("host netns");
    let out = CniCall::new(reference_plugin("bridge"))
        .command("VERSION")
        .config(json!({"cniVersion": CNI_VERSION}))
        .run(&host);
    assert!(out.ok(), "{out}");
    assert_eq!(out.error_code(), None);
    let versions = out.result()["supportedVersions"]
        .as_array()
        .expect("supportedVersions array");
    assert!(versions.contains(&json!("1.0.0")), "{out}");
}

#[test]
fn cni_call_reports_missing_variable_as_cni_error() {
    let host = Netns::new("rt-err").expect("host netns");
    let pod = Netns::new("rt-errp").expect("pod netns");
    let dir = tempdir();
    let mut conf = reference_bridge("refbr0", "10.232.9.0/24", dir.path());
    conf["cniVersion"] = json!(CNI_VERSION);
    conf["name"] = json!("refnet");
    // CNI_CONTAINERID deliberately left out.
    let out = CniCall::new(reference_plugin("bridge"))
        .command("ADD")
        .netns(pod.path())
        .ifname("eth0")
        .path(REFERENCE_PLUGIN_DIR)
        .config(&conf)
        .run(&host);
    assert!(!out.ok(), "{out}");
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.error_code(), Some(4), "{out}");
    assert!(
        out.error_msg()
            .unwrap_or_default()
            .contains("CNI_CONTAINERID"),
        "{out}"
    );
    assert!(
        !has_link(&host, "refbr0"),
        "nothing should have been set up"
    );
}

#[test]
fn cni_call_sets_only_given_variables_and_feeds_stdin() {
    let host = Netns::new("rt-env").expect("host netns");
    let out = CniCall::new("/usr/bin/env")
        .command("ADD")
        .ifname("eth1")
        .env("REEF_EXTRA", "1")
        .run(&host);
    assert!(out.ok(), "{out}");
    let mut cni: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("CNI_"))
        .collect();
    cni.sort();
    assert_eq!(cni, ["CNI_COMMAND=ADD", "CNI_IFNAME=eth1"]);
    assert!(out.stdout.lines().any(|l| l == "REEF_EXTRA=1"));

    let conf = json!({"cniVersion": CNI_VERSION, "name": "echo"});
    let echoed = CniCall::new("/bin/cat").config(&conf).run(&host);
    assert!(echoed.ok(), "{echoed}");
    assert_eq!(echoed.json, Some(conf));
}

#[test]
fn cni_call_add_del_with_reference_plugins() {
    let host = Netns::new("rt-raw").expect("host netns");
    let pod = Netns::new("rt-rawp").expect("pod netns");
    let dir = tempdir();
    let mut conf = reference_bridge("refbr0", "10.232.1.0/24", dir.path());
    conf["cniVersion"] = json!(CNI_VERSION);
    conf["name"] = json!("refraw");
    let base = CniCall::new(reference_plugin("bridge"))
        .runtime(pod.path(), "raw-1", "eth0")
        .path(REFERENCE_PLUGIN_DIR)
        .config(&conf);

    let add = base.clone().command("ADD").run(&host);
    let result = add.result();
    let addr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address")
        .to_owned();
    assert!(addr.starts_with("10.232.1."), "{add}");
    assert_eq!(pod_ipv4(&pod, "eth0").as_deref(), Some(addr.as_str()));
    assert!(
        has_link(&host, "refbr0"),
        "bridge belongs in the host netns"
    );
    let ip = addr.split('/').next().expect("address");
    assert!(ping(&host, ip, 2), "host cannot reach pod at {ip}");
    assert_eq!(reservations(dir.path(), "refraw").len(), 1);

    base.clone().command("DEL").run(&host).assert_ok();
    assert!(!has_link(&pod, "eth0"), "DEL should remove eth0");
    assert!(
        reservations(dir.path(), "refraw").is_empty(),
        "DEL should release the address"
    );
    // DEL is idempotent.
    base.command("DEL").run(&host).assert_ok();
}

#[test]
fn cnitool_add_check_del_with_reference_plugins() {
    let env = HostWithPods::new(2);
    let conf = conflist(
        "refnet",
        vec![reference_bridge("refbr1", "10.232.2.0/24", &env.data_dir())],
    );
    let file = env.write_conflist(&conf);
    assert_eq!(file, env.dir.path().join("refnet.conflist"));
    let tool = env.cnitool().cni_path(REFERENCE_PLUGIN_DIR);

    let mut addrs = Vec::new();
    for (i, pod) in env.pods.iter().enumerate() {
        let cid = format!("ctr-{i}");
        let stdout = assert_success(&tool.add(&file, pod.path(), &cid, "eth0"), "cnitool add");
        let result: Value = serde_json::from_str(&stdout).expect("add prints JSON");
        let addr = result["ips"][0]["address"]
            .as_str()
            .expect("ips[0].address")
            .to_owned();
        assert_eq!(pod_ipv4(pod, "eth0").as_deref(), Some(addr.as_str()));
        addrs.push(addr);
    }
    assert_ne!(addrs[0], addrs[1]);
    assert_eq!(reservations(&env.data_dir(), "refnet").len(), 2);
    assert!(
        !files_under(&env.cache_dir()).is_empty(),
        "libcni caches results"
    );

    let pod1_ip = addrs[1].split('/').next().expect("address");
    assert!(ping(&env.pods[0], pod1_ip, 2), "pod0 cannot reach pod1");

    for (i, pod) in env.pods.iter().enumerate() {
        let cid = format!("ctr-{i}");
        assert_success(
            &tool.check(&file, pod.path(), &cid, "eth0"),
            "cnitool check",
        );
    }
    for (i, pod) in env.pods.iter().enumerate() {
        let cid = format!("ctr-{i}");
        assert_success(&tool.del(&file, pod.path(), &cid, "eth0"), "cnitool del");
        assert!(!has_link(pod, "eth0"));
    }
    assert!(reservations(&env.data_dir(), "refnet").is_empty());
    assert_eq!(files_under(&env.cache_dir()), Vec::<String>::new());

    // CHECK after DEL has no cached result to compare against: libcni reports an error.
    assert!(!tool
        .check(&file, env.pods[0].path(), "ctr-0", "eth0")
        .status
        .success());
}

#[test]
fn cnitool_reports_plugin_failure() {
    let env = HostWithPods::new(1);
    let conf = conflist("missing", vec![json!({"type": "no-such-plugin"})]);
    let file = env.write_conflist(&conf);
    let out =
        env.cnitool()
            .cni_path(REFERENCE_PLUGIN_DIR)
            .add(&file, env.pods[0].path(), "c", "eth0");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-plugin"),
        "{out:?}"
    );
}

#[test]
fn output_with_timeout_kills_slow_child() {
    let ns = Netns::new("rt-slow").expect("netns");
    let start = Instant::now();
    let err = output_with_timeout(ns.cmd("sleep").arg("30"), None, Duration::from_millis(300))
        .expect_err("sleep 30 must time out");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(start.elapsed() < Duration::from_secs(10));

    let out =
        output_with_timeout(&mut ns.cmd("cat"), Some(b"hi"), Duration::from_secs(30)).expect("cat");
    assert_eq!(out.stdout, b"hi");
}

#[test]
fn plugin_dir_resolution() {
    let dir = tempdir();
    let ws = dir.path().join("ws");
    let ws_release = ws.join("target/release");
    let other = dir.path().join("other-target");
    let other_release = other.join("release");
    let exe = other.join("debug/deps/reef_tests-abc");
    for d in [
        &ws_release,
        &other_release,
        &exe.parent().expect("deps").to_path_buf(),
    ] {
        std::fs::create_dir_all(d).expect("mkdir");
    }

    // Nothing built anywhere: clear message.
    let err = resolve_plugin_dir(None, Some(&exe), &ws).expect_err("nothing built");
    assert!(err.contains("build first: cargo build --release"), "{err}");

    // Only the workspace's target has it.
    std::fs::write(ws_release.join("reef-bridge"), b"").expect("touch");
    assert_eq!(
        resolve_plugin_dir(None, Some(&exe), &ws),
        Ok(ws_release.clone())
    );

    // The test binary's own target directory wins (CARGO_TARGET_DIR).
    std::fs::write(other_release.join("reef-bridge"), b"").expect("touch");
    assert_eq!(resolve_plugin_dir(None, Some(&exe), &ws), Ok(other_release));

    // REEF_BIN_DIR overrides, and must contain the binary.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    assert!(resolve_plugin_dir(Some(bin.clone()), Some(&exe), &ws).is_err());
    std::fs::write(bin.join("reef-bridge"), b"").expect("touch");
    assert_eq!(resolve_plugin_dir(Some(bin.clone()), None, &ws), Ok(bin));

    // Not a cargo layout: workspace only.
    assert_eq!(
        resolve_plugin_dir(None, Some(Path::new("/usr/bin/x")), &ws),
        Ok(ws_release)
    );
}

#[test]
fn workspace_dir_is_the_cargo_workspace() {
    let ws = workspace_dir();
    assert!(ws.join("Cargo.toml").is_file());
    assert!(ws.join("tests/Cargo.toml").is_file());
}
