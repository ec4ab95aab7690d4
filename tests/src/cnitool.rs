use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use netns_fixtures::Netns;
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::exec::{output_with_timeout, scrub_env, DEFAULT_TIMEOUT};

/// Path of the libcni driver (`reef-libcni`, a thin Go program over libcni, the library
/// containerd and CRI-O use; source in `tests/libcni-driver`), building it on first use.
///
/// Built at most once per test process, into `<workspace>/target/reef-libcni`, under an
/// exclusive `flock` on `<workspace>/target/reef-libcni.lock` so parallel test processes do not
/// race; `build.sh` itself skips the build when the binary is newer than its source.
/// Panics if the build fails.
pub fn cnitool_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_cnitool)
}

fn build_cnitool() -> PathBuf {
    let workspace = crate::workspace_dir();
    let target = workspace.join("target");
    fs::create_dir_all(&target).unwrap_or_else(|e| panic!("create {}: {e}", target.display()));
    let out = target.join("reef-libcni");
    let script = workspace.join("tests/libcni-driver/build.sh");
    let lock_path = target.join("reef-libcni.lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", lock_path.display()));
    let built = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    if !built.status.success() || !out.is_file() {
        panic!(
            "building reef-libcni with {} failed ({})\nstdout: {}\nstderr: {}",
            script.display(),
            built.status,
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );
    }
    out
}

/// Runs `cnitool` inside a host namespace, the way a runtime drives a conflist through libcni.
///
/// Environment: `CNI_PATH` ([`crate::cni_path`] unless [`Cnitool::cni_path`] overrides it),
/// `CNI_CACHE` (the directory given to [`Cnitool::new`], usually a `TempDir`), and `CAP_ARGS`
/// / `RT_ARGS` only if set here.
///
/// ```no_run
/// # use reef_tests::*;
/// # let (host, pod, dir) = (Netns::new("h").expect("host"), Netns::new("p").expect("pod"), tempdir());
/// # let conflist_file = std::path::PathBuf::new();
/// let tool = Cnitool::new(&host, dir.path());
/// let out = tool.add(&conflist_file, pod.path(), "c1", "eth0");
/// let result = assert_success(&out, "cnitool add");
/// ```
#[derive(Clone, Debug)]
pub struct Cnitool<'a> {
    host: &'a Netns,
    cache_dir: PathBuf,
    cni_path: Option<String>,
    cap_args: Option<String>,
    rt_args: Option<String>,
    timeout: Duration,
    sysfs: bool,
}

impl<'a> Cnitool<'a> {
    /// cnitool running inside `host`, caching results in `cache_dir` (`CNI_CACHE`).
    pub fn new(host: &'a Netns, cache_dir: impl Into<PathBuf>) -> Self {
        Cnitool {
            host,
            cache_dir: cache_dir.into(),
            cni_path: None,
            cap_args: None,
            rt_args: None,
            timeout: DEFAULT_TIMEOUT,
            sysfs: false,
        }
    }

    /// Overrides `CNI_PATH` (default: [`crate::cni_path`]).
    pub fn cni_path(mut self, path: impl Into<String>) -> Self {
        self.cni_path = Some(path.into());
        self
    }

    /// `CAP_ARGS`: runtime capability args (`{"portMappings": [...]}`, ...).
    pub fn cap_args(mut self, args: &Value) -> Self {
        self.cap_args = Some(args.to_string());
        self
    }

    /// `RT_ARGS`: `K=V;K=V` pairs passed as `CNI_ARGS`.
    pub fn rt_args(mut self, args: &str) -> Self {
        self.rt_args = Some(args.to_owned());
        self
    }

    /// Kill cnitool (and panic) if it runs longer than this; default [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Also give cnitool and its plugins a private `/sys` showing the host namespace
    /// (see [`Netns::cmd_with_sysfs`]). Off by default.
    pub fn with_sysfs(mut self, on: bool) -> Self {
        self.sysfs = on;
        self
    }

    /// `cnitool add <conflist> <netns> <container_id> <ifname>`; on success stdout is the
    /// JSON result.
    pub fn add(&self, conflist: &Path, netns: &Path, container_id: &str, ifname: &str) -> Output {
        self.verb("add", conflist, netns, container_id, ifname)
    }

    /// `cnitool del <conflist> <netns> <container_id> <ifname>`.
    pub fn del(&self, conflist: &Path, netns: &Path, container_id: &str, ifname: &str) -> Output {
        self.verb("del", conflist, netns, container_id, ifname)
    }

    /// `cnitool check <conflist> <netns> <container_id> <ifname>`.
    pub fn check(&self, conflist: &Path, netns: &Path, container_id: &str, ifname: &str) -> Output {
        self.verb("check", conflist, netns, container_id, ifname)
    }

    fn verb(
        &self,
        verb: &str,
        conflist: &Path,
        netns: &Path,
        container_id: &str,
        ifname: &str,
    ) -> Output {
        self.run([
            OsStr::new(verb),
            conflist.as_os_str(),
            netns.as_os_str(),
            OsStr::new(container_id),
            OsStr::new(ifname),
        ])
    }

    /// cnitool with arbitrary arguments (e.g. `bench <conflist> <n> <prefix>`). Panics only if
    /// it cannot be started or exceeds the timeout.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = cnitool_bin();
        let mut cmd = if self.sysfs {
            self.host.cmd_with_sysfs(bin)
        } else {
            self.host.cmd(bin)
        };
        cmd.args(args);
        scrub_env(&mut cmd);
        let cni_path = self.cni_path.clone().unwrap_or_else(crate::cni_path);
        cmd.env("CNI_PATH", cni_path)
            .env("CNI_CACHE", &self.cache_dir);
        if let Some(cap) = &self.cap_args {
            cmd.env("CAP_ARGS", cap);
        }
        if let Some(rt) = &self.rt_args {
            cmd.env("RT_ARGS", rt);
        }
        output_with_timeout(&mut cmd, None, self.timeout)
            .unwrap_or_else(|e| panic!("cnitool {cmd:?} in netns {}: {e}", self.host.name()))
    }
}
