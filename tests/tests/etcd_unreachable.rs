//! reefctl against an etcd endpoint where nothing listens (issue #18): one line that names
//! the endpoint, what failed and what to check, instead of a tonic error dump; `--verbose`
//! adds the full error.

use std::time::Duration;

use reef_tests::fixtures::Cluster;
use reef_tests::{output_with_timeout, plugin};

#[test]
fn reefctl_says_in_one_line_that_etcd_is_unreachable_and_verbose_adds_the_detail() {
    // One host, no etcd: its own address has nothing on 2379, so the connection is refused.
    let cluster = Cluster::new(1, false).expect("build a host");
    let host = cluster.host(0);
    let endpoint = format!("http://{}:2379", host.addr());
    let run = |extra: &[&str]| {
        let mut cmd = host.cmd(plugin("reefctl"));
        cmd.env_remove("REEF_ETCD")
            .args(["--etcd", &endpoint])
            .args(extra)
            .args(["node", "ls"]);
        let out = output_with_timeout(&mut cmd, None, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("reefctl: {e}"));
        assert_eq!(out.status.code(), Some(1), "reefctl node ls: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let plain = run(&[]);
    assert_eq!(plain.trim_end().lines().count(), 1, "one line: {plain}");
    assert!(
        plain.contains(&endpoint) && plain.contains("cannot reach etcd"),
        "names the endpoint and what failed: {plain}"
    );
    assert!(
        plain.to_ascii_lowercase().contains("refused"),
        "says why: {plain}"
    );
    assert!(plain.contains("check"), "says what to check: {plain}");
    for dump in ["tonic", "source:", "ConnectError", "grpc request error"] {
        assert!(!plain.contains(dump), "no error dump ({dump}): {plain}");
    }

    let verbose = run(&["--verbose"]);
    assert!(
        verbose.starts_with(plain.trim_end()),
        "--verbose starts with the same line: {verbose}"
    );
    assert!(
        verbose.contains("detail:") && verbose.trim_end().lines().count() > 1,
        "--verbose adds the underlying error: {verbose}"
    );
}
