//! An idle `reef-agent` keeps one etcd watch session for as long as it runs (issue #18:
//! every agent's watch used to drop about every 12 s, because the streaming connection sent
//! HTTP/2 pings more often than etcd's `--grpc-keepalive-min-time` allows).
//!
//! Minimal setup of its own (one simulated host and a real etcd from netns-fixtures, an agent
//! whose output goes to a file), independent of the routed-cluster fixture.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reef_tests::fixtures::Cluster;
use reef_tests::{assert_success, output_with_timeout, plugin, tempdir, ChildGuard};

/// How long the agent stays idle (more than three of the old 12 s drop periods).
const IDLE: Duration = Duration::from_secs(40);
/// Generous bound for the agent's first reconcile (not a performance assertion).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// What the agent logs each time its etcd session (watch) ends and it re-lists.
const SESSION_ENDED: &str = "etcd session ended";

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `reefctl init` on `cluster`, then a `reef-agent` on its host with its output in
/// `log_path`, waited for until ready.
fn start_agent(cluster: &Cluster, log_path: &Path) -> ChildGuard {
    let host = cluster.host(0);
    let endpoint = cluster.etcd().endpoint();

    let mut init = host.cmd(plugin("reefctl"));
    init.env_remove("REEF_ETCD")
        .args(["--etcd", &endpoint])
        .args(["init", "--pool", "10.66.0.0/16", "--mode", "routed"]);
    let out = output_with_timeout(&mut init, None, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("reefctl init: {e}"));
    assert_success(&out, "reefctl init");

    let log = File::create(log_path).expect("create the agent log");
    let mut cmd = host.cmd(plugin("reef-agent"));
    cmd.env_remove("REEF_ETCD")
        .args(["--etcd", &endpoint, "--node", host.name()])
        .args(["--iface", host.iface()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log file"))
        .stderr(log);
    // Dropped (SIGKILL by PID, reaped) before the cluster, also when an assertion fails.
    let mut agent = ChildGuard::from(cmd.spawn().expect("spawn reef-agent"));

    let deadline = Instant::now() + READY_TIMEOUT;
    while !read_log(log_path).contains("msg=ready") {
        if let Ok(Some(status)) = agent.try_wait() {
            panic!(
                "reef-agent exited ({status}) before it was ready; log:\n{}",
                read_log(log_path)
            );
        }
        assert!(
            Instant::now() < deadline,
            "reef-agent not ready after {READY_TIMEOUT:?}; log:\n{}",
            read_log(log_path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

#[test]
fn an_idle_agent_keeps_its_etcd_watch_for_40s_without_a_session_restart() {
    let cluster = Cluster::new(1, true).expect("build a host with etcd");
    let dir = tempdir();
    let log_path = dir.path().join("agent.log");
    let mut agent = start_agent(&cluster, &log_path);

    // Nothing happens in the cluster: no pod, no other node, no etcd write.
    std::thread::sleep(IDLE);

    let text = read_log(&log_path);
    assert!(
        matches!(agent.try_wait(), Ok(None)),
        "reef-agent exited while idle; log:\n{text}"
    );
    let restarts: Vec<&str> = text.lines().filter(|l| l.contains(SESSION_ENDED)).collect();
    assert!(
        restarts.is_empty(),
        "{} etcd session restart(s) in {IDLE:?} of an idle cluster:\n{}\nfull log:\n{text}\n\
         etcd log tail:\n{}",
        restarts.len(),
        restarts.join("\n"),
        cluster.etcd().log_tail(20)
    );
    drop(agent);
}

/// The other side of the keep-alive trade-off: an etcd that silently stops answering (its
/// host drops every packet to the client port, so no reset, no FIN) still ends the watch
/// session within keep-alive interval + timeout (10 s + 5 s), with margin.
#[test]
fn a_silently_dead_etcd_ends_the_watch_session_within_20s() {
    const NOTICED_WITHIN: Duration = Duration::from_secs(20);
    let cluster = Cluster::new(1, true).expect("build a host with etcd");
    let dir = tempdir();
    let log_path = dir.path().join("agent.log");
    let agent = start_agent(&cluster, &log_path);

    // Inside etcd's own namespace only.
    let rules = format!(
        "table inet reef_test_drop {{\n chain input {{\n  type filter hook input priority 0;\n  \
         tcp dport {} drop\n }}\n}}\n",
        reef_tests::fixtures::EtcdHost::CLIENT_PORT
    );
    let mut nft = cluster.etcd().host().cmd("nft");
    nft.args(["-f", "-"]);
    let out = output_with_timeout(&mut nft, Some(rules.as_bytes()), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("nft in etcd's namespace: {e}"));
    assert_success(&out, "nft: drop etcd's client port");
    let dropped = Instant::now();

    while !read_log(&log_path).contains(SESSION_ENDED) {
        assert!(
            dropped.elapsed() < NOTICED_WITHIN,
            "no session restart {NOTICED_WITHIN:?} after etcd stopped answering; log:\n{}",
            read_log(&log_path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("silently dead etcd noticed after {:?}", dropped.elapsed());
    drop(agent);
}
