//! The routed-mode daemons and the cluster CLI as processes: [`Agent`] (a `reef-agent`
//! started inside a simulated host, its output collected, stopped by signal to its own PID)
//! and `reefctl` run inside a host against the cluster's etcd.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use netns_fixtures::{EtcdHost, SimHost};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{assert_success, output_with_timeout, plugin, ChildGuard};

/// The route protocol the agent tags its routes with.
pub const PROTO: u8 = 201;
/// Generous bound for one plugin or CLI run (not a performance assertion).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous bound for an agent's first full reconcile (not a performance assertion).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `reef-agent` with its output collected (stdout and stderr, interleaved by line).
#[derive(Debug)]
pub struct Agent {
    pub node: String,
    spawned: Instant,
    child: ChildGuard,
    log: Arc<Mutex<String>>,
    ready: mpsc::Receiver<Instant>,
    ready_at: Option<Instant>,
}

impl Agent {
    /// Starts `reef-agent --etcd EP --node NAME --iface eth0 EXTRA...` inside `host`.
    pub fn spawn(host: &SimHost, endpoint: &str, extra: &[&str]) -> Agent {
        let mut cmd = host.cmd(plugin("reef-agent"));
        cmd.env_remove("REEF_ETCD")
            .args([
                "--etcd",
                endpoint,
                "--node",
                host.name(),
                "--iface",
                host.iface(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = ChildGuard::from(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn reef-agent on {}: {e}", host.name())),
        );
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, ready) = mpsc::channel();
        let out = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        for pipe in [out, err].into_iter().flatten() {
            let log = Arc::clone(&log);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("msg=\"ready\"") || line.contains("msg=ready") {
                        let _ = tx.send(Instant::now());
                    }
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Agent {
            node: host.name().to_owned(),
            spawned,
            child,
            log,
            ready,
            ready_at: None,
        }
    }

    /// The agent's PID (e.g. for /proc/PID/status).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for `msg="ready"`; returns the time from spawn to ready. Panics (with the log)
    /// if the agent exits first or takes longer than `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        if let Some(at) = self.ready_at {
            return at - self.spawned;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.ready.recv_timeout(Duration::from_millis(50)) {
                Ok(at) => {
                    self.ready_at = Some(at);
                    return at - self.spawned;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!(
                        "reef-agent on {} closed its output without printing msg=\"ready\" \
                         (status {:?}); log:\n{}",
                        self.node,
                        self.child.try_wait(),
                        self.log()
                    );
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "reef-agent on {} exited ({status}) before it was ready; log:\n{}",
                    self.node,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "reef-agent on {} not ready after {timeout:?}; log:\n{}",
                    self.node,
                    self.log()
                );
            }
        }
    }

    /// SIGKILL (by its own PID) and reap.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill_and_wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit; `None` if it did not exit in time
    /// (it is then still running; drop kills it).
    pub fn sigterm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // Not reaped yet, so the PID is still our child's.
        let _ = kill(Pid::from_raw(self.child.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `reefctl --etcd EP [--etcd-ca CA --etcd-cert CERT --etcd-key KEY] ARGS` inside `host`,
/// with the client certificate when `etcd` requires TLS.
fn reefctl_cmd(host: &SimHost, etcd: &EtcdHost, args: &[&str]) -> Command {
    let mut cmd = host.cmd(plugin("reefctl"));
    cmd.env_remove("REEF_ETCD")
        .arg("--etcd")
        .arg(etcd.endpoint());
    if let Some(t) = etcd.tls() {
        cmd.arg("--etcd-ca")
            .arg(&t.ca)
            .arg("--etcd-cert")
            .arg(&t.cert)
            .arg("--etcd-key")
            .arg(&t.key);
    }
    cmd.args(args);
    cmd
}

/// Runs `reefctl --etcd EP [TLS flags] ARGS` inside `host` to completion (bounded by
/// [`CALL_TIMEOUT`]).
pub fn reefctl(host: &SimHost, etcd: &EtcdHost, args: &[&str]) -> Output {
    let mut cmd = reefctl_cmd(host, etcd, args);
    output_with_timeout(&mut cmd, None, CALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("reefctl {args:?}: {e}"))
}

/// The `reefctl --etcd EP [TLS flags] ARGS` command inside `host`, not started.
pub fn reefctl_command(host: &SimHost, etcd: &EtcdHost, args: &[&str]) -> Command {
    reefctl_cmd(host, etcd, args)
}

/// [`reefctl`] with `input` on its stdin (for `apply -f -`).
pub fn reefctl_with_stdin(host: &SimHost, etcd: &EtcdHost, args: &[&str], input: &str) -> Output {
    let mut cmd = reefctl_cmd(host, etcd, args);
    output_with_timeout(&mut cmd, Some(input.as_bytes()), CALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("reefctl {args:?}: {e}"))
}

/// [`reefctl`] that must succeed; returns stdout.
pub fn reefctl_ok(host: &SimHost, etcd: &EtcdHost, args: &[&str]) -> String {
    assert_success(&reefctl(host, etcd, args), &format!("reefctl {args:?}"))
}
