//! Harness for the reef-run tests: every reef-run runs inside a throwaway host network
//! namespace ([`RunHost`]), with its state, CNI cache and IPAM store in a temporary
//! directory, so nothing touches the root namespace, /run/reef or /var/lib.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::exec::exit_code;
use crate::inspect::{links_of_kind, nft_set};
use crate::store::{ip_files, list_dir};
use crate::{
    assert_success, cni_path, output_with_timeout, plugin, tempdir, wait_until, ChildGuard, Netns,
    TempDir, DEFAULT_TIMEOUT,
};

/// Generous bound for anything a test waits for (readiness, never a performance claim).
pub const READY: Duration = Duration::from_secs(60);

/// The default network's name, bridge, gateway and subnet prefix.
pub const NET: &str = "reef";
pub const BRIDGE: &str = "reef0";
pub const GATEWAY: &str = "10.88.0.1";

/// Python with an absolute path: inside a container the caller's PATH shims may not work.
pub const PYTHON: &str = "/usr/bin/python3";

/// A simulated host for reef-run.
pub struct RunHost {
    pub host: Netns,
    pub dir: TempDir,
}

impl RunHost {
    // Not `Default`: it creates a network namespace and a directory.
    #[allow(clippy::new_without_default)]
    pub fn new() -> RunHost {
        let dir = tempdir();
        let host = Netns::new("runhost").expect("create host netns");
        RunHost { host, dir }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cni-cache")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// `reef-run ARGS...` inside the host namespace with this host's directories.
    pub fn cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = self.host.cmd(reef_run());
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            let key = k.to_string_lossy();
            if key.starts_with("CNI_") || key.starts_with("REEF_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("CNI_PATH", self.cni_path())
            .env("REEF_STATE_DIR", self.state_dir())
            .env("REEF_CNI_CACHE_DIR", self.cache_dir())
            .env("REEF_IPAM_DATA_DIR", self.ipam_dir());
        cmd
    }

    /// `CNI_PATH` for reef-run: the built plugins, the reference plugins, and this host's
    /// scratch `bin/` (for test-only plugins).
    pub fn cni_path(&self) -> String {
        format!("{}:{}", self.bin_dir().display(), cni_path())
    }

    pub fn bin_dir(&self) -> PathBuf {
        let d = self.dir.path().join("bin");
        std::fs::create_dir_all(&d).expect("create bin dir");
        d
    }

    /// Runs reef-run to completion (stdin from /dev/null).
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = self.cmd(args);
        output_with_timeout(&mut cmd, None, DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("reef-run {cmd:?}: {e}"))
    }

    /// Runs reef-run and panics unless it succeeds; returns stdout.
    pub fn run_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert_success(&out, "reef-run")
    }

    /// Starts reef-run in the background, its stdout piped (see [`lines`]), stderr inherited
    /// so the test log shows it.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> ChildGuard {
        let mut cmd = self.cmd(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        ChildGuard::from(cmd.spawn().expect("spawn reef-run"))
    }

    /// `reef-run ps --output json`.
    pub fn ps(&self) -> Vec<Value> {
        let out = self.run_ok(&["ps", "--output", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ps json: {e}: {out}"))
    }

    /// The `ps` row of `name`, if listed.
    pub fn ps_row(&self, name: &str) -> Option<Value> {
        self.ps().into_iter().find(|r| r["name"] == name)
    }

    /// Waits until `name` is listed as running with its addresses; returns its row.
    pub fn wait_running(&self, name: &str) -> Value {
        let mut row = None;
        let ok = wait_until(READY, || {
            row = self
                .ps_row(name)
                .filter(|r| r["status"] == "running" && r["pid"].is_i64());
            row.is_some()
        });
        assert!(ok, "{name} never showed up as running: {:?}", self.ps());
        row.unwrap_or_default()
    }

    /// The entries of the state directory.
    pub fn state_entries(&self) -> Vec<String> {
        list_dir(&self.state_dir().join("containers"))
    }

    /// The files of the CNI cache's `results/`.
    pub fn cache_entries(&self) -> Vec<String> {
        list_dir(&self.cache_dir().join("results"))
    }

    /// Addresses reserved in the default network's IPAM store.
    pub fn ipam_ips(&self) -> Vec<String> {
        ip_files(&self.ipam_dir(), NET)
    }

    /// reef-bridge's veths (`reef` + 11 hex digits) in the host namespace.
    pub fn host_veths(&self) -> Vec<String> {
        links_of_kind(&self.host, "veth")
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("reef"))
            .collect()
    }

    /// Elements of the default network's masquerade set (empty if the table is absent).
    pub fn masq_elements(&self) -> Vec<String> {
        nft_set(&self.host, "reef-masq-reef", "pods4").unwrap_or_default()
    }

    /// Pod addresses (10.88.x.y, not the /16 itself) anywhere in the host's nftables ruleset:
    /// masquerade set elements, port-mapping map elements (reef-portmap, or the reference
    /// portmap's iptables-nft rules).
    fn ruleset_pod_addresses(&self) -> Vec<String> {
        let text = self.host.sh_ok("nft list ruleset");
        let mut found = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("10.88.") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(tail.len());
            if !tail[end..].starts_with('/') {
                found.push(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
        found
    }

    /// Asserts that no container left anything: no veth on the host, no IPAM reservation,
    /// no pod address in the firewall (masquerade, port mappings), no CNI cache entry, no
    /// state entry, no pinned namespace.
    pub fn assert_clean(&self, what: &str) {
        assert_eq!(
            self.host_veths(),
            Vec::<String>::new(),
            "{what}: veths left on the host"
        );
        assert_eq!(
            self.ipam_ips(),
            Vec::<String>::new(),
            "{what}: IPAM reservations left"
        );
        assert_eq!(
            self.masq_elements(),
            Vec::<String>::new(),
            "{what}: masquerade entries left"
        );
        assert_eq!(
            self.ruleset_pod_addresses(),
            Vec::<String>::new(),
            "{what}: pod addresses left in the firewall:\n{}",
            self.host.sh_ok("nft list ruleset")
        );
        assert_eq!(
            self.cache_entries(),
            Vec::<String>::new(),
            "{what}: CNI cache entries left"
        );
        assert_eq!(
            self.state_entries(),
            Vec::<String>::new(),
            "{what}: state entries left"
        );
        assert_eq!(
            pins_under(self.dir.path()),
            Vec::<String>::new(),
            "{what}: netns pins left"
        );
    }

    /// Writes a conflist into the scratch directory and returns its path.
    pub fn write_conflist(&self, file: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(file);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for RunHost {
    /// Whatever a failed test left: `reef-run rm --force` every entry, then unmount any
    /// namespace pin still under the directory, so the namespace and the directory can go.
    fn drop(&mut self) {
        let names = self.state_entries();
        if !names.is_empty() {
            let mut args = vec!["rm".to_owned(), "--force".to_owned()];
            args.extend(names.into_iter().filter(|n| !n.starts_with('.')));
            let mut cmd = self.cmd(&args);
            let _ = output_with_timeout(&mut cmd, None, DEFAULT_TIMEOUT);
        }
        for pin in pins_under(self.dir.path()) {
            let _ = nix::mount::umount2(Path::new(&pin), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The reef-run binary.
fn reef_run() -> PathBuf {
    plugin("reef-run")
}

/// Mount points under `dir` (from /proc/self/mountinfo).
fn pins_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Lines of a background reef-run's stdout, delivered through a channel (so a test waits for
/// a line with a bound instead of blocking forever).
pub fn lines(stdout: Option<ChildStdout>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = stdout {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits for a line containing `want`; panics (with what came) if none does.
pub fn expect_line(rx: &mpsc::Receiver<String>, want: &str) -> String {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(READY) {
            Ok(l) if l.contains(want) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line containing {want:?}; got {seen:?}"),
        }
    }
}

/// Waits for a background reef-run to exit; returns its exit code (128+signal if killed).
pub fn wait_exit(child: &mut ChildGuard) -> i32 {
    let mut status = None;
    let done = wait_until(READY * 2, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    assert!(done, "reef-run (PID {}) did not exit", child.pid());
    exit_code(status.unwrap_or_default())
}

/// Sends `sig` to a process the test started (or one reef-run reported), by PID.
pub fn signal(pid: i64, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill {pid}: {e}"));
}

/// Whether `pid` exists (as anything but a zombie).
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// stdout, stderr and status of a finished run, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The exit code of a finished run as a shell reports it (128 + signal if killed).
pub fn code(out: &Output) -> i32 {
    exit_code(out.status)
}

/// The first IPv4 address (no prefix) of a `ps` row.
pub fn row_ip(row: &Value) -> String {
    row["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|c| c.split('/').next().unwrap_or(c).to_owned())
        .find(|a| !a.contains(':'))
        .unwrap_or_else(|| panic!("no IPv4 address in {row}"))
}

/// A Python TCP server: listens on `addr:port`, prints "listening" (flushed), answers
/// `reply` to each of `conns` connections, then exits 0.
pub fn py_server(addr: &str, port: u16, reply: &str, conns: u32) -> String {
    format!(
        "import socket,sys\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{addr}', {port})); s.listen(8)\n\
         print('listening', flush=True)\n\
         for _ in range({conns}):\n    c,_=s.accept(); c.sendall(b'{reply}\\n'); c.close()\n"
    )
}

/// A Python TCP client: connects to `addr:port` (retrying while the server is not up yet,
/// within the test's readiness bound) and prints what it receives.
pub fn py_client(addr: &str, port: u16) -> String {
    format!(
        "import socket,time,sys\n\
         end=time.time()+60\n\
         while True:\n    \
             try:\n        c=socket.create_connection(('{addr}', {port}), timeout=5); break\n    \
             except OSError as e:\n        \
                 if time.time()>end: print('connect failed:', e); sys.exit(3)\n        \
                 time.sleep(0.1)\n\
         print(c.makefile().readline().strip(), flush=True)\n"
    )
}
