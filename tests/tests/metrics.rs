//! reef-agent's `/metrics` and `/healthz` (`--metrics-addr`, 127.0.0.1:9653 by default) on a
//! two-host VXLAN cluster: the output passes `promtool check metrics` (Debian's prometheus
//! package), and the figures follow the cluster: routes, FDB entries and neighbours when a
//! node gets pods, service ports when a service is applied, watch restarts and etcd errors
//! when etcd goes away and comes back. An agent that never reached etcd answers 503.
//!
//! Each agent runs in its own simulated host, so each serves on that namespace's loopback;
//! the test reads it from inside the namespace, with Python's urllib.

use std::process::{Command, Stdio};
use std::time::Duration;

use reef_tests::agent::{reefctl_with_stdin, Agent, READY_TIMEOUT};
use reef_tests::routed::{RoutedCluster, Topology};
use reef_tests::wait_until;

const CONVERGE: Duration = Duration::from_secs(10);
const FETCH: &str = "import sys, urllib.request, urllib.error\n\
try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n    code, body = r.status, r.read()\n\
except urllib.error.HTTPError as e:\n    code, body = e.code, e.read()\n\
except OSError:\n    code, body = 0, b''\n\
sys.stdout.write(str(code) + '\\n' + body.decode())\n";

/// (status code, body) of `GET http://ADDR/PATH` from inside `host`'s namespace.
fn get(host: &netns_fixtures::SimHost, addr: &str, path: &str) -> (u16, String) {
    let out = host
        .cmd("python3")
        .args(["-c", FETCH, &format!("http://{addr}{path}")])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text.split_once('\n').unwrap_or(("0", ""));
    assert!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code.parse().unwrap_or(0), body.to_string())
}

/// The value of the sample `name` (with its labels, as printed) in `body`.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn metric(rc: &RoutedCluster, h: usize, name: &str) -> f64 {
    let (code, body) = get(rc.host(h), "127.0.0.1:9653", "/metrics");
    assert_eq!(code, 200, "{body}");
    sample(&body, name).unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
}

/// Waits for `cond`, polling; panics naming `what` after `timeout`.
fn eventually(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, cond),
        "timed out after {timeout:?}: {what}"
    );
}

fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package; .ci/run installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("promtool stdin");
        stdin.write_all(body.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_follow_the_cluster() {
    let mut rc = RoutedCluster::with_init(Topology::TwoSubnets(1), &["--mode", "vxlan"]);
    rc.start_agents(&[0, 1], &[]);

    let (code, body) = get(rc.host(0), "127.0.0.1:9653", "/healthz");
    assert_eq!((code, body.lines().next()), (200, Some("ok")), "{body}");
    let (code, body) = get(rc.host(0), "127.0.0.1:9653", "/metrics");
    assert_eq!(code, 200);
    promtool_check(&body);
    for name in [
        "reef_build_info",
        "reef_reconcile_duration_seconds_bucket",
        "reef_manager_sync_duration_seconds_bucket",
        "reef_watch_restarts_total",
        "reef_problems{kind=\"route\"}",
        "reef_lease_alive",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    // What Prometheus asks for: OpenMetrics, with its `# EOF`.
    let out = rc
        .host(0)
        .cmd("python3")
        .args([
            "-c",
            "import urllib.request as u; r = u.urlopen(u.Request('http://127.0.0.1:9653/metrics', \
             headers={'Accept': 'application/openmetrics-text; version=1.0.0'})); \
             print(r.headers['Content-Type']); print(r.read().decode())",
        ])
        .output()
        .expect("python3");
    let open = String::from_utf8_lossy(&out.stdout);
    assert!(open.starts_with("application/openmetrics-text"), "{open}");
    assert!(open.trim_end().ends_with("# EOF"), "{open}");
    let (code, _) = get(rc.host(0), "127.0.0.1:9653", "/nothing");
    assert_eq!(code, 404);

    // A pod on host 1: host 0 routes its block through the overlay.
    let reconciles = metric(
        &rc,
        0,
        "reef_reconcile_duration_seconds_count{kind=\"incremental\"}",
    );
    rc.add_pod(1);
    eventually(
        CONVERGE,
        "host 0 reports a route, an FDB entry and a neighbour",
        || {
            metric(&rc, 0, "reef_routes") >= 1.0
                && metric(&rc, 0, "reef_fdb_entries") == 1.0
                && metric(&rc, 0, "reef_neighbours") == 1.0
        },
    );
    assert!(
        metric(
            &rc,
            0,
            "reef_reconcile_duration_seconds_count{kind=\"incremental\"}"
        ) > reconciles
    );
    assert!(metric(&rc, 0, "reef_watch_events_total") > 0.0);

    // A service: every agent programs its port.
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
                   spec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n";
    let out = reefctl_with_stdin(
        rc.host(0),
        rc.cluster.etcd(),
        &["apply", "-f", "-"],
        service,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(CONVERGE, "both agents report the service port", || {
        metric(&rc, 0, "reef_service_ports") == 1.0 && metric(&rc, 1, "reef_service_ports") == 1.0
    });

    // etcd goes away and comes back: the session restarts, errors are counted by kind, and
    // the agent stays healthy throughout (it keeps the data plane).
    let etcd = rc.cluster.etcd.as_mut().expect("etcd");
    etcd.stop().expect("stop etcd");
    eventually(CONVERGE, "host 0 reports etcd down", || {
        metric(&rc, 0, "reef_etcd_connected") == 0.0
    });
    let (code, body) = get(rc.host(0), "127.0.0.1:9653", "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("etcd: reconnecting"), "{body}");
    rc.cluster
        .etcd
        .as_mut()
        .expect("etcd")
        .start_again()
        .expect("start etcd again");
    eventually(Duration::from_secs(20), "host 0 is back on etcd", || {
        metric(&rc, 0, "reef_etcd_connected") == 1.0 && metric(&rc, 0, "reef_lease_alive") == 1.0
    });
    assert!(metric(&rc, 0, "reef_watch_restarts_total") >= 1.0);
    let (_, body) = get(rc.host(0), "127.0.0.1:9653", "/metrics");
    let errors: f64 = body
        .lines()
        .filter(|l| l.starts_with("reef_etcd_request_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors >= 1.0, "no etcd error counted:\n{body}");
    promtool_check(&body);
}

#[test]
fn an_agent_that_never_synced_is_not_healthy_and_the_address_is_configurable() {
    let rc = RoutedCluster::new(1);
    // Nothing listens on this port: the agent never completes its first sync.
    let mut agent = Agent::spawn(
        rc.host(0),
        "http://127.0.0.1:1",
        &["--metrics-addr", "127.0.0.1:19653", "--log-format", "json"],
    );
    eventually(READY_TIMEOUT, "the endpoint answers", || {
        get(rc.host(0), "127.0.0.1:19653", "/healthz").0 != 0
    });
    let (code, body) = get(rc.host(0), "127.0.0.1:19653", "/healthz");
    assert_eq!(code, 503, "{body}");
    let (code, body) = get(rc.host(0), "127.0.0.1:19653", "/metrics");
    assert_eq!(code, 200);
    assert_eq!(sample(&body, "reef_etcd_connected"), Some(0.0), "{body}");
    promtool_check(&body);
    // JSON logs: every line a JSON object with the message and its fields.
    eventually(CONVERGE, "the agent logs an etcd failure", || {
        agent.log().contains("etcd session ended")
    });
    for line in agent.log().lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
    }
    // Nothing on the default address in this run.
    assert_eq!(get(rc.host(0), "127.0.0.1:9653", "/healthz").0, 0);
    agent.sigterm(Duration::from_secs(5));
}
