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

#[test]
fn an_idle_agent_keeps_its_etcd_watch_for_40s_without_a_session_restart() {
    let cluster = Cluster::new(1, true).expect("build a host with etcd");
    let host = cluster.host(0);
    let endpoint = cluster.etcd().endpoint();

    let mut init = host.cmd(plugin("reefctl"));
    init.env_remove("REEF_ETCD")
        .args(["--etcd", &endpoint])
        .args(["init", "--pool", "10.66.0.0/16", "--mode", "routed"]);
    let out = output_with_timeout(&mut init, None, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("reefctl init: {e}"));
    assert_success(&out, "reefctl init");

    let dir = tempdir();
    let log_path = dir.path().join("agent.log");
    let log = File::create(&log_path).expect("create the agent log");
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
    while !read_log(&log_path).contains("msg=ready") {
        if let Ok(Some(status)) = agent.try_wait() {
            panic!(
                "reef-agent exited ({status}) before it was ready; log:\n{}",
                read_log(&log_path)
            );
        }
        assert!(
            Instant::now() < deadline,
            "reef-agent not ready after {READY_TIMEOUT:?}; log:\n{}",
            read_log(&log_path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

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
