//! A real etcd server (Debian's `/usr/bin/etcd`, 3.4) on a simulated host.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{ChildGuard, Netns, SimHost, TempDir, TlsMaterial, Underlay};

/// How long [`EtcdHost::start`] and [`EtcdHost::start_again`] wait for etcd to be healthy.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`EtcdHost::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Backend quota: 64 MiB is far more than any test writes, and keeps a runaway test from
/// filling the disk (etcd raises the NOSPACE alarm instead).
const QUOTA_BACKEND_BYTES: &str = "67108864";

/// The TLS files an [`EtcdHost`] uses: copies in its own directory (so the
/// [`TlsMaterial`] they came from may be dropped).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA certificate (trusted for client certificates, and what clients verify etcd with).
    pub ca: PathBuf,
    /// Client certificate and key accepted by this etcd.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// etcd's server certificate and key (valid for its underlay address and 127.0.0.1).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A single-member etcd cluster on its own [`SimHost`] (named `etcd`) of an underlay, run
/// from the test's process and owned by PID.
///
/// - Client URLs: `http(s)://<host addr>:2379` ([`EtcdHost::endpoint`]) and
///   `http(s)://127.0.0.1:2379` inside its own namespace; peer URL `http://<host addr>:2380`.
/// - With TLS, clients must present a certificate signed by the CA (`--client-cert-auth`).
/// - Data directory and log (`etcd.log`, stdout and stderr of every run) live in a temporary
///   directory; [`EtcdHost::log_tail`] reads it.
/// - Dropping it kills etcd (SIGKILL, by PID), reaps it, deletes the namespace and the
///   directory.
#[derive(Debug)]
pub struct EtcdHost {
    // Field order matters for the implicit drops after `Drop::drop`: the process is killed
    // there, then the namespace goes, then the directory.
    child: Option<ChildGuard>,
    host: SimHost,
    tls: Option<EtcdTls>,
    extra_args: Vec<String>,
    last_startup: Duration,
    dir: TempDir,
}

impl EtcdHost {
    /// Client port.
    pub const CLIENT_PORT: u16 = 2379;
    /// Peer port.
    pub const PEER_PORT: u16 = 2380;

    /// Adds a host named `etcd` to `underlay`, starts etcd on it and waits until it is
    /// healthy (at most [`ETCD_READY_TIMEOUT`]; the error then includes the end of etcd's
    /// log). With `tls`, etcd serves HTTPS only and requires client certificates.
    pub fn start(underlay: &mut Underlay, tls: Option<&TlsMaterial>) -> io::Result<EtcdHost> {
        Self::start_with_args(underlay, tls, &[])
    }

    /// Like [`EtcdHost::start`], with extra etcd flags appended (e.g.
    /// `["--auto-compaction-retention=1"]`); they are reused by [`EtcdHost::start_again`].
    pub fn start_with_args(
        underlay: &mut Underlay,
        tls: Option<&TlsMaterial>,
        extra_args: &[&str],
    ) -> io::Result<EtcdHost> {
        let host = underlay.add_host("etcd")?;
        let dir = tempfile::Builder::new().prefix("reef-etcd-").tempdir()?;
        let tls = match tls {
            None => None,
            Some(material) => Some(copy_tls(material, dir.path(), host.addr())?),
        };
        let mut etcd = EtcdHost {
            child: None,
            host,
            tls,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            last_startup: Duration::ZERO,
            dir,
        };
        etcd.launch()?;
        Ok(etcd)
    }

    /// `http://ADDR:2379`, or `https://...` with TLS.
    pub fn endpoint(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.addr(), Self::CLIENT_PORT)
    }

    /// `http(s)://127.0.0.1:2379`: valid only inside the etcd host's own namespace.
    pub fn local_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), Self::CLIENT_PORT)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The host etcd runs on.
    pub fn host(&self) -> &SimHost {
        &self.host
    }

    /// The etcd host's underlay address.
    pub fn addr(&self) -> Ipv4Addr {
        self.host.addr()
    }

    /// TLS files (client and server), if started with TLS.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// PID of the running etcd, `None` after [`EtcdHost::stop`] / [`EtcdHost::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// True if etcd was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// etcd's data directory (kept across [`EtcdHost::stop`] / [`EtcdHost::start_again`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The log file: etcd's stdout and stderr, every run appended.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// How long the last start took from spawning etcd until it was healthy.
    pub fn startup_time(&self) -> Duration {
        self.last_startup
    }

    /// An `etcdctl` (v3 API) command running inside `from`, with `--endpoints` set to
    /// [`EtcdHost::endpoint`], the client certificate when TLS is on, and timeouts
    /// (dial 2 s, command 5 s). `ETCDCTL_*` variables of the environment are removed.
    /// Add the subcommand: `etcd.etcdctl(h.ns()).args(["put", "k", "v"])`.
    pub fn etcdctl(&self, from: &Netns) -> Command {
        let mut cmd = self.etcdctl_bare(from);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.cert)
                .arg("--key")
                .arg(&tls.key);
        }
        cmd
    }

    /// Like [`EtcdHost::etcdctl`] but with no TLS flags at all (with TLS on, add `--cacert`
    /// yourself to test a client without a certificate).
    pub fn etcdctl_bare(&self, from: &Netns) -> Command {
        let mut cmd = from.cmd("etcdctl");
        remove_env_with_prefix(&mut cmd, "ETCDCTL_");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `etcdctl ARGS...` inside `from` (see [`EtcdHost::etcdctl`]) and returns stdout;
    /// an error carries stderr.
    pub fn ctl<I, S>(&self, from: &Netns, args: I) -> io::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.etcdctl(from);
        cmd.args(args);
        let out = cmd.output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "{cmd:?} in netns {} failed ({}): {}",
                from.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Graceful stop: SIGTERM to etcd's PID, wait for it (SIGKILL after 10 s). No-op if it
    /// is not running. The data directory is kept.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Not reaped yet, so the PID is still ours (a zombie at worst).
        if child.try_wait()?.is_none() {
            let _ = kill(Pid::from_raw(child.pid() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    child.kill_and_wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Crash: SIGKILL to etcd's PID and reap it. No-op if it is not running. The data
    /// directory is kept (with `--unsafe-no-fsync` a process crash loses nothing: the page
    /// cache survives; only a machine crash would).
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill_and_wait()?;
        }
        Ok(())
    }

    /// Starts etcd again after [`EtcdHost::stop`] / [`EtcdHost::kill`]: same host, address,
    /// data directory, flags and certificates; waits until healthy.
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("etcd on {} is already running", self.addr()),
            ));
        }
        self.child = None;
        self.launch()
    }

    fn args(&self) -> Vec<String> {
        let addr = self.addr();
        let scheme = self.scheme();
        let client = format!("{scheme}://{addr}:{}", Self::CLIENT_PORT);
        let peer = format!("http://{addr}:{}", Self::PEER_PORT);
        let name = self.host.name();
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", self.data_dir().display()),
            format!("--listen-client-urls={client},{}", self.local_endpoint()),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={name}={peer}"),
            "--initial-cluster-state=new".into(),
            // Durability is pointless for a throwaway store: skip fsync of WAL and backend
            // (accepted by 3.4.23 though `etcd --help` does not list it).
            "--unsafe-no-fsync".into(),
            // A single member elects itself after about one election timeout: 100 ms instead
            // of the default 1 s, which is most of the start-up time.
            "--heartbeat-interval=10".into(),
            "--election-timeout=100".into(),
            format!("--quota-backend-bytes={QUOTA_BACKEND_BYTES}"),
            // Keep fewer raft entries in memory between snapshots (default 100000).
            "--snapshot-count=10000".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
            "--log-level=warn".into(),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                format!("--cert-file={}", tls.server_cert.display()),
                format!("--key-file={}", tls.server_key.display()),
                format!("--trusted-ca-file={}", tls.ca.display()),
                "--client-cert-auth".into(),
            ]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Spawns etcd and waits until it is healthy.
    fn launch(&mut self) -> io::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let args = self.args();
        writeln!(log, "--- netns-fixtures: etcd {}", args.join(" "))?;
        let mut cmd = self.host.cmd("etcd");
        remove_env_with_prefix(&mut cmd, "ETCD");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let started = Instant::now();
        self.child = Some(ChildGuard::from(cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("spawn etcd in {}: {e}", self.host.ns().name()),
            )
        })?));
        self.wait_healthy(started, ETCD_READY_TIMEOUT)?;
        self.last_startup = started.elapsed();
        Ok(())
    }

    /// Polls until the client port listens and `etcdctl endpoint health` (from etcd's own
    /// namespace, to the underlay address) succeeds.
    fn wait_healthy(&mut self, started: Instant, timeout: Duration) -> io::Result<()> {
        let mut last_error = String::from("client port never listened");
        loop {
            let child = self.child.as_mut().expect("launched");
            let pid = child.pid();
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "etcd on {} exited during start-up ({status}); log tail:\n{}",
                    self.addr(),
                    self.log_tail(30)
                )));
            }
            if listening(pid, Self::CLIENT_PORT) {
                let out = self
                    .etcdctl(self.host.ns())
                    .args(["endpoint", "health"])
                    .output()?;
                if out.status.success() {
                    return Ok(());
                }
                last_error = format!(
                    "etcdctl endpoint health: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if started.elapsed() >= timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd on {} (pid {pid}) not healthy after {timeout:?}; last: {last_error}\nlog tail:\n{}",
                        self.endpoint(),
                        self.log_tail(30)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for EtcdHost {
    fn drop(&mut self) {
        // SIGKILL by PID and reap; the namespace and the directory go with the fields.
        let _ = self.kill();
    }
}

/// Copies the CA and client files, and a server certificate valid for `addr` (the
/// material's own if it covers `addr`, else a new one from its CA), into `dir/tls`.
fn copy_tls(material: &TlsMaterial, dir: &Path, addr: Ipv4Addr) -> io::Result<EtcdTls> {
    let tls_dir = dir.join("tls");
    std::fs::create_dir(&tls_dir)?;
    let copy = |src: &Path, name: &str| -> io::Result<PathBuf> {
        let dst = tls_dir.join(name);
        std::fs::copy(src, &dst).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("copy {} to {}: {e}", src.display(), dst.display()),
            )
        })?;
        Ok(dst)
    };
    let (server_cert, server_key) = if material.covers(addr) {
        (
            copy(&material.server_cert, "server.pem")?,
            copy(&material.server_key, "server-key.pem")?,
        )
    } else {
        material.issue_server_cert(&tls_dir, "server", &[addr])?
    };
    Ok(EtcdTls {
        ca: copy(&material.ca, "ca.pem")?,
        cert: copy(&material.cert, "client.pem")?,
        key: copy(&material.key, "client-key.pem")?,
        server_cert,
        server_key,
    })
}

fn remove_env_with_prefix(cmd: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(prefix) {
            cmd.env_remove(key);
        }
    }
}

/// True if the network namespace of `pid` has a TCP socket listening on `port` (read from
/// `/proc/PID/net/tcp{,6}`, which show that process's namespace: no `setns` needed).
fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|file| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{file}"))
            .map(|text| has_listener(&text, port))
            .unwrap_or(false)
    })
}

/// Parses the `/proc/net/tcp` format: `sl local_address rem_address st ...`, state 0A = LISTEN.
fn has_listener(proc_net_tcp: &str, port: u16) -> bool {
    proc_net_tcp.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && fields[3] == "0A"
            && fields[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

#[cfg(test)]
mod tests {
    use super::has_listener;

    #[test]
    fn proc_net_tcp_listeners() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
            0: 0100007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n   \
            1: 0101A8C6:094C 0201A8C6:D431 01 00000000:00000000 00:00000000 00000000\n";
        assert!(has_listener(text, 2379));
        assert!(!has_listener(text, 2380), "established, not listening");
        assert!(!has_listener(text, 22));
        assert!(!has_listener("", 2379));
    }
}
