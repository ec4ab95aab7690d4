//! reef-run end to end on its embedded default network (reef-bridge + reef-ipam +
//! reef-portmap), each test in its own simulated host: exit status, addressing, hostname, PID
//! isolation, container-to-container traffic, pods (`--join`), published ports, a busybox
//! rootfs, and that every way a container can end (its command killed, reef-run signalled,
//! reef-run killed then `rm`) leaves nothing behind.

use nix::sys::signal::Signal;
use reef_tests::run::*;
use reef_tests::*;

#[test]
fn exit_status_is_the_commands() {
    let h = RunHost::new();
    let out = h.run(&["--", "sh", "-c", "exit 7"]);
    assert_eq!(code(&out), 7, "{}", describe(&out));
    let out = h.run(&["--", "true"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let out = h.run(&["--", "/nonexistent/cmd"]);
    assert_eq!(code(&out), 127, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/cmd"),
        "names the missing command: {err}"
    );
    h.assert_clean("after three runs");
}

#[test]
fn container_has_address_gateway_hostname_and_own_pids() {
    let h = RunHost::new();
    let script = format!(
        "hostname; ip -4 -o addr show dev eth0; \
         ip link show lo | grep -q 'UP' && echo lo-up; \
         for i in $(seq 50); do ping -c 1 -W 1 {GATEWAY} >/dev/null && echo gw-ok && break; done; \
         echo pid1=$(cat /proc/1/comm); \
         echo runtime-vars=$(env | grep -c -E '^(CNI|REEF)_'); \
         echo pids=$(ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' ')"
    );
    let out = h.run_ok(&["--hostname", "box", "--", "sh", "-c", &script]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"box"), "hostname: {out}");
    assert!(
        out.contains("inet 10.88."),
        "an address from 10.88.0.0/16: {out}"
    );
    assert!(out.contains("lo-up"), "lo is up: {out}");
    assert!(
        out.contains("gw-ok"),
        "the gateway {GATEWAY} answers: {out}"
    );
    assert!(out.contains("pid1=sh"), "the command is PID 1: {out}");
    assert!(
        out.contains("runtime-vars=0"),
        "no CNI_*/REEF_* variables leak in: {out}"
    );
    let pids = out
        .lines()
        .find_map(|l| l.strip_prefix("pids="))
        .unwrap_or_else(|| panic!("no pid list: {out}"));
    let pids: Vec<u32> = pids
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.first(), Some(&1), "PID 1 is visible: {out}");
    assert!(
        pids.len() <= 6 && pids.iter().all(|&p| p < 100),
        "only the container's own few processes are visible: {pids:?}"
    );
    // The default hostname is the container's name.
    let out = h.run_ok(&["--name", "named1", "--", "hostname"]);
    assert_eq!(out.trim(), "named1");
    h.assert_clean("after the runs");
}

#[test]
fn two_containers_reach_each_other() {
    let h = RunHost::new();
    let mut server = h.spawn(&[
        "--name",
        "srv",
        "--",
        PYTHON,
        "-c",
        &py_server("0.0.0.0", 7000, "hello-from-srv", 1),
    ]);
    let out = lines(server.stdout.take());
    expect_line(&out, "listening");
    let row = h.wait_running("srv");
    let ip = row_ip(&row);
    let client = h.run_ok(&["--name", "cli", "--", PYTHON, "-c", &py_client(&ip, 7000)]);
    assert_eq!(client.trim(), "hello-from-srv");
    assert_eq!(
        wait_exit(&mut server),
        0,
        "the server exits after its one connection"
    );
    h.assert_clean("after both containers");
}

#[test]
fn join_shares_address_and_localhost() {
    let h = RunHost::new();
    let mut owner = h.spawn(&[
        "--name",
        "pod",
        "--",
        PYTHON,
        "-c",
        &py_server("127.0.0.1", 7001, "hello-over-lo", 1),
    ]);
    let out = lines(owner.stdout.take());
    expect_line(&out, "listening");
    let row = h.wait_running("pod");
    let ip = row_ip(&row);
    let script = format!("ip -4 -o addr show dev eth0; hostname; {PYTHON} -c \"$0\"",);
    let joined = h.run_ok(&[
        "--name",
        "side",
        "--join",
        "pod",
        "--",
        "sh",
        "-c",
        &script,
        &py_client("127.0.0.1", 7001),
    ]);
    assert!(
        joined.contains(&format!("inet {ip}/")),
        "the joined container has the pod's address {ip}: {joined}"
    );
    assert!(
        joined.contains("hello-over-lo"),
        "reached the pod's server on 127.0.0.1: {joined}"
    );
    assert!(
        joined.lines().any(|l| l == "side"),
        "its own hostname: {joined}"
    );
    let owner_id = row["id"].as_str().unwrap_or_default();
    let cached = h.cache_entries();
    assert!(
        cached.iter().all(|e| e.contains(owner_id)),
        "the joined container attached nothing: {cached:?}"
    );
    assert_eq!(wait_exit(&mut owner), 0);
    h.assert_clean("after the pod");
}

#[test]
fn sigkill_of_the_command_leaves_nothing() {
    let h = RunHost::new();
    let mut run = h.spawn(&["--name", "victim", "--", "sleep", "1000"]);
    let row = h.wait_running("victim");
    assert_eq!(h.host_veths().len(), 1, "attached while running");
    assert_eq!(h.ipam_ips().len(), 1);
    assert_eq!(h.masq_elements(), vec![row_ip(&row)]);
    let pid = row["pid"].as_i64().expect("pid");
    signal(pid, Signal::SIGKILL);
    assert_eq!(wait_exit(&mut run), 128 + 9, "reef-run reports the SIGKILL");
    h.assert_clean("after the command was SIGKILLed");
}

#[test]
fn sigterm_to_reef_run_is_forwarded_and_leaves_nothing() {
    let h = RunHost::new();
    // PID 1 only gets signals it handles: this one traps TERM and exits 42.
    let mut run = h.spawn(&[
        "--name",
        "termed",
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 42' TERM; echo ready; sleep 1000 & wait",
    ]);
    let out = lines(run.stdout.take());
    expect_line(&out, "ready");
    h.wait_running("termed");
    signal(run.pid() as i64, Signal::SIGTERM);
    expect_line(&out, "got-term");
    assert_eq!(
        wait_exit(&mut run),
        42,
        "reef-run exits with the command's status"
    );
    h.assert_clean("after SIGTERM to reef-run");
}

#[test]
fn sigterm_to_a_command_without_handler_ends_in_sigkill_after_the_stop_timeout() {
    let h = RunHost::new();
    // `sleep` as PID 1 ignores SIGTERM; with --stop-timeout 0 reef-run follows up at once.
    let mut run = h.spawn(&[
        "--name",
        "deaf",
        "--stop-timeout",
        "0",
        "--",
        "sleep",
        "1000",
    ]);
    h.wait_running("deaf");
    signal(run.pid() as i64, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut run), 128 + 9);
    h.assert_clean("after SIGTERM and SIGKILL");
}

#[test]
fn rm_cleans_up_after_reef_run_was_sigkilled() {
    let h = RunHost::new();
    let mut run = h.spawn(&["--name", "orphan", "--", "sleep", "1000"]);
    let row = h.wait_running("orphan");
    let pid = row["pid"].as_i64().expect("pid");
    signal(run.pid() as i64, Signal::SIGKILL);
    assert_eq!(wait_exit(&mut run), 128 + 9);
    // The command dies with its reef-run; the network state stays until rm.
    assert!(
        wait_until(READY, || !alive(pid)),
        "container PID {pid} outlived reef-run"
    );
    let row = h.ps_row("orphan").expect("listed after reef-run died");
    assert_eq!(row["status"], "dead (needs rm)", "{row}");
    assert_eq!(h.host_veths().len(), 1, "the veth is still there before rm");
    assert_eq!(h.ipam_ips().len(), 1);
    assert_eq!(h.cache_entries().len(), 1);
    // A dead container's name is not free until rm.
    let out = h.run(&["--name", "orphan", "--", "true"]);
    assert_eq!(code(&out), 125, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reef-run rm orphan"),
        "{}",
        describe(&out)
    );

    let out = h.run_ok(&["rm", "orphan"]);
    assert_eq!(out.trim(), "orphan");
    h.assert_clean("after rm");
    let out = h.run(&["rm", "orphan"]);
    assert_ne!(code(&out), 0, "a second rm fails: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such container"));
}

#[test]
fn rm_kills_a_command_that_outlived_its_reef_run() {
    let h = RunHost::new();
    // The command clears its parent-death signal (prctl(PR_SET_PDEATHSIG, 0)), so it survives
    // its reef-run's SIGKILL: rm must kill it, by the recorded PID.
    let script = "import ctypes, time\n\
                  ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\n\
                  print('ready', flush=True)\n\
                  time.sleep(1000)\n";
    let mut run = h.spawn(&["--name", "stubborn", "--", PYTHON, "-c", script]);
    let out = lines(run.stdout.take());
    expect_line(&out, "ready");
    let row = h.wait_running("stubborn");
    let pid = row["pid"].as_i64().expect("pid");
    signal(run.pid() as i64, Signal::SIGKILL);
    assert_eq!(wait_exit(&mut run), 128 + 9);
    assert!(alive(pid), "the command outlived reef-run");
    assert_eq!(
        h.ps_row("stubborn").expect("listed")["status"],
        "dead (needs rm)"
    );
    h.run_ok(&["rm", "stubborn"]);
    assert!(!alive(pid), "rm killed the leftover command");
    h.assert_clean("after rm of the leftover");
}

#[test]
fn rm_refuses_a_running_container_unless_forced() {
    let h = RunHost::new();
    let mut run = h.spawn(&["--name", "busy", "--", "sleep", "1000"]);
    h.wait_running("busy");
    let out = h.run(&["rm", "busy"]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is running"),
        "{}",
        describe(&out)
    );
    assert_eq!(h.ps_row("busy").expect("still listed")["status"], "running");
    h.run_ok(&["rm", "--force", "busy"]);
    assert_eq!(wait_exit(&mut run), 128 + 9);
    h.assert_clean("after rm --force");
}

#[test]
fn ps_lists_name_pid_ips_ports_and_command() {
    let h = RunHost::new();
    let mut run = h.spawn(&[
        "--name", "listed", "-p", "8089:80", "--label", "app=web", "--", "sleep", "1000",
    ]);
    let row = h.wait_running("listed");
    assert!(row_ip(&row).starts_with("10.88."), "{row}");
    assert_eq!(row["ports"][0]["hostPort"], 8089, "{row}");
    assert_eq!(
        row["command"],
        serde_json::json!(["sleep", "1000"]),
        "{row}"
    );
    assert_eq!(row["labels"]["app"], "web", "{row}");
    let pid = row["pid"].as_i64().expect("pid");
    assert!(alive(pid));
    let table = h.run_ok(&["ps"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("listed"))
        .unwrap_or_else(|| panic!("{table}"));
    for want in [
        "running",
        &pid.to_string(),
        &row_ip(&row),
        "8089->80/tcp",
        "sleep 1000",
    ] {
        assert!(line.contains(want), "ps line lacks {want:?}: {line}");
    }
    signal(pid, Signal::SIGKILL);
    wait_exit(&mut run);
    h.assert_clean("after the listed container");
}

#[test]
fn published_port_is_reachable_from_outside_and_from_the_host() {
    let h = RunHost::new();
    // Another machine on the host's LAN: 192.168.77.2 ↔ host 192.168.77.1.
    let outside = Netns::new("outside").expect("outside netns");
    let (a, b) = ("rrlan-h", "rrlan-o");
    h.host.sh_ok(&format!(
        "ip link add {a} type veth peer name {b} netns {} && ip addr add 192.168.77.1/24 dev {a} && ip link set {a} up",
        outside.name()
    ));
    outside.sh_ok(&format!(
        "ip addr add 192.168.77.2/24 dev {b} && ip link set {b} up"
    ));

    let mut server = h.spawn(&[
        "--name",
        "web",
        "-p",
        "8080:80",
        "--",
        PYTHON,
        "-c",
        &py_server("0.0.0.0", 80, "hello-via-8080", 2),
    ]);
    let out = lines(server.stdout.take());
    expect_line(&out, "listening");
    h.wait_running("web");

    let client = |ns: &Netns| {
        let o = ns
            .run(PYTHON, ["-c", &py_client("192.168.77.1", 8080)])
            .expect("run client");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    assert_eq!(
        client(&outside),
        "hello-via-8080",
        "from another machine via the host's address"
    );
    assert_eq!(client(&h.host), "hello-via-8080", "from the host itself");
    assert_eq!(wait_exit(&mut server), 0);
    h.assert_clean("after the published container");
}

#[test]
fn cache_is_libcnis_and_cnitool_can_check_it() {
    let h = RunHost::new();
    // libcni 1.1 knows results up to 1.0.0, so this network is 1.0.0; reef-bridge only.
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"tooled","plugins":[{{"type":"reef-bridge","bridge":"rrtool0",
            "isGateway":true,"ipam":{{"type":"reef-ipam","ranges":[[{{"subnet":"10.99.0.0/24"}}]],
            "dataDir":"{}"}}}}]}}"#,
        h.ipam_dir().display()
    );
    let file = h.write_conflist("tooled.conflist", &conf);
    let mut run = h.spawn(&[
        "--net",
        file.to_str().unwrap_or_default(),
        "--name",
        "tooled",
        "--",
        "sleep",
        "1000",
    ]);
    let row = h.wait_running("tooled");
    let id = row["id"].as_str().expect("id").to_owned();
    let cache_file = h
        .cache_dir()
        .join("results")
        .join(format!("tooled-{id}-eth0"));
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache_file).expect("cache file")).expect("json");
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], id.as_str());
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["networkName"], "tooled");
    assert_eq!(
        cached["cniArgs"],
        serde_json::json!([
            ["IgnoreUnknown", "1"],
            ["K8S_POD_NAMESPACE", "default"],
            ["K8S_POD_NAME", "tooled"]
        ])
    );
    assert!(
        cached["config"].is_string(),
        "config is base64 bytes: {cached}"
    );
    assert_eq!(
        cached["result"]["ips"][0]["address"]
            .as_str()
            .map(|a| a.starts_with("10.99.0.")),
        Some(true)
    );

    // libcni reads the cache and CHECKs the live attachment against it.
    let pin = h.state_dir().join("containers/tooled/netns");
    let tool = Cnitool::new(&h.host, h.cache_dir()).cni_path(h.cni_path());
    assert_success(
        &tool.check(&file, &pin, &id, "eth0"),
        "cnitool check of reef-run's attachment",
    );

    signal(row["pid"].as_i64().expect("pid"), Signal::SIGKILL);
    wait_exit(&mut run);
    assert_eq!(h.cache_entries(), Vec::<String>::new());
    assert_eq!(h.state_entries(), Vec::<String>::new());
    assert_eq!(h.host_veths(), Vec::<String>::new());
}

#[test]
fn a_killed_joined_container_is_dropped_from_ps() {
    let h = RunHost::new();
    let mut owner = h.spawn(&["--name", "base", "--", "sleep", "1000"]);
    let row = h.wait_running("base");
    let mut side = h.spawn(&["--name", "side", "--join", "base", "--", "sleep", "1000"]);
    h.wait_running("side");
    signal(side.pid() as i64, Signal::SIGKILL);
    wait_exit(&mut side);
    // It held no network state of its own: nothing to rm, so ps drops it.
    let names: Vec<String> = h
        .ps()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["base"]);
    assert_eq!(h.state_entries(), ["base"]);
    signal(row["pid"].as_i64().expect("pid"), Signal::SIGKILL);
    wait_exit(&mut owner);
    h.assert_clean("after the pod");
}
