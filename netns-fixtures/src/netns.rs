use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, CloneFlags};

use crate::ChildGuard;

/// Where iproute2 keeps named network namespaces (bind mounts of `/proc/<pid>/ns/net`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Longest name [`Netns::new`] generates; the prefix is shortened to fit.
const MAX_NAME_LEN: usize = 32;

/// Serialises `ip netns add` across the threads and processes of a test run: concurrent
/// first-time `ip netns add`s can stack several bind mounts on `/run/netns`.
const CREATE_LOCK: &str = "/run/lock/reef-netns-fixtures.lock";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A named network namespace owned by the test: created by [`Netns::new`], deleted on drop.
///
/// The namespace starts empty except for `lo`, which is brought up. Nothing runs in it until a
/// program is started with [`Netns::cmd`] (or the `run`/`sh`/`spawn` shorthands).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a namespace named `{prefix}-{pid}-{counter}` (at most 32 characters: a long
    /// prefix is shortened) with `ip netns add`, and brings `lo` up inside it.
    ///
    /// `prefix` may hold ASCII letters, digits, `-`, `_` and `.` and must not be empty.
    /// A leftover namespace with the same name (from an earlier process that had our PID and
    /// died without cleaning up) is skipped, never reused or deleted.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        validate_prefix(prefix)?;
        let pid = std::process::id();
        for _ in 0..1000 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = make_name(prefix, pid, n);
            let path = Path::new(NETNS_RUN_DIR).join(&name);
            if path.symlink_metadata().is_ok() {
                continue;
            }
            let out = {
                let _lock = creation_lock();
                Command::new("ip")
                    .args(["netns", "add", &name])
                    .stdin(Stdio::null())
                    .output()?
            };
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "ip netns add {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            // From here on, Drop removes the namespace if anything below fails.
            let ns = Netns { name, path };
            let out = ns.run("ip", ["link", "set", "lo", "up"])?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "ip link set lo up in {}: {}",
                    ns.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            return Ok(ns);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free namespace name for prefix {prefix:?}"),
        ))
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what runtimes pass as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file (e.g. for an in-process `setns` on a dedicated thread).
    pub fn open(&self) -> io::Result<File> {
        File::open(&self.path)
    }

    /// A [`Command`] whose spawned process runs inside this namespace.
    ///
    /// The namespace file is opened now, in the calling thread; the forked child enters it
    /// with `setns(fd, CLONE_NEWNET)` right before `exec`. The calling thread never changes
    /// namespace. If the file cannot be opened, spawning fails (the program is never run in
    /// the wrong namespace).
    ///
    /// Only the network namespace changes: the mount namespace, and so `/sys`, stays the
    /// caller's, where `/sys/class/net` shows the root namespace's links. Use
    /// [`Netns::cmd_with_sysfs`] for a program that reads `/sys/class/net`.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.program_env());
        match self.open() {
            Ok(file) => {
                // SAFETY: the closure only makes the setns(2) syscall on an fd opened before
                // the fork, and builds an io::Error from an errno (no allocation).
                unsafe {
                    cmd.pre_exec(move || {
                        setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
                    });
                }
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::ENOENT);
                // SAFETY: only constructs an io::Error from an errno.
                unsafe {
                    cmd.pre_exec(move || Err(io::Error::from_raw_os_error(errno)));
                }
            }
        }
        cmd
    }

    /// Like [`Netns::cmd`], and the child also gets a private mount namespace (mounts
    /// propagate into it, not out of it) with a fresh sysfs on `/sys` that shows this network
    /// namespace, just as `ip netns exec` does.
    pub fn cmd_with_sysfs(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.cmd(program);
        // Names are validated ASCII, so this cannot contain NUL.
        let source = CString::new(self.name.as_str()).unwrap_or_else(|_| c"sysfs".to_owned());
        // SAFETY: runs after the setns closure; only raw syscalls on pre-built C strings.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let none = std::ptr::null();
                if libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // Fails harmlessly if /sys is not a mount point.
                libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
                if libc::mount(
                    source.as_ptr(),
                    c"/sys".as_ptr(),
                    c"sysfs".as_ptr(),
                    0,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `program args...` inside the namespace (stdin from /dev/null) and collects its
    /// output.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(program).args(args).stdin(Stdio::null()).output()
    }

    /// `bash -c SCRIPT` inside the namespace. Panics only if bash cannot be started; the
    /// script's own failure is in the returned [`Output`].
    pub fn sh(&self, script: &str) -> Output {
        self.run("bash", ["-c", script])
            .unwrap_or_else(|e| panic!("run bash in netns {}: {e}", self.name))
    }

    /// `bash -c SCRIPT` inside the namespace; panics with the script, exit status, stdout and
    /// stderr unless it succeeds. Returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.status.success() {
            panic!(
                "in netns {}: `{script}` failed ({})\nstdout: {}\nstderr: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `program args...` in the background inside the namespace, with stdin, stdout
    /// and stderr on /dev/null; it is killed when the guard drops. For other stdio use
    /// `ChildGuard::from(ns.cmd(..).stdout(..).spawn()?)`.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> io::Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(ChildGuard)
    }
}

impl Netns {
    /// What every program started in the namespace gets in its environment (`cmd` sets it;
    /// a test that clears a command's environment puts it back with `envs`): the firewall
    /// driver under test and, so nothing lands in the host's /run/reef/firewall, the
    /// plugins' firewall records and Reef's iptables lock in a directory of the namespace.
    pub fn program_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        // A simulated host's namespace is named after it (`h1-<pid>-<n>`).
        let host = self.name.split('-').next().unwrap_or_default();
        let state = self.state_dir();
        let _ = std::fs::create_dir_all(&state);
        vec![
            (
                crate::firewall::DRIVER_ENV,
                crate::firewall::for_host(host).into(),
            ),
            ("REEF_FIREWALL_STATE_DIR", state.join("firewall").into()),
            ("REEF_IPTABLES_LOCK", state.join("iptables.lock").into()),
        ]
    }

    /// Per-namespace state of the programs a test runs in it (removed on drop).
    fn state_dir(&self) -> PathBuf {
        std::env::temp_dir()
            .join("reef-netns-state")
            .join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.state_dir());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.path.symlink_metadata().is_err() {
            return;
        }
        // `ip netns del` failed or is missing: do what it does (lazy unmount, then unlink).
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!(
                "netns-fixtures: could not delete namespace {}: {e}",
                self.name
            );
        }
    }
}

fn validate_prefix(prefix: &str) -> io::Result<()> {
    let ok = !prefix.is_empty()
        && !prefix.starts_with('.')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("netns prefix {prefix:?}: use ASCII letters, digits, '-', '_', '.'"),
        ))
    }
}

fn make_name(prefix: &str, pid: u32, n: u64) -> String {
    let suffix = format!("-{pid}-{n}");
    let keep = MAX_NAME_LEN.saturating_sub(suffix.len()).min(prefix.len());
    format!("{}{suffix}", &prefix[..keep])
}

/// Best effort: without the lock file, creation is merely unserialised.
fn creation_lock() -> Option<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(CREATE_LOCK)
        .ok()?;
    Flock::lock(file, FlockArg::LockExclusive).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_keep_suffix() {
        assert_eq!(make_name("host", 1234, 7), "host-1234-7");
        let long = make_name("a-very-long-prefix-for-a-namespace-name", 4194304, 123456);
        assert!(long.len() <= MAX_NAME_LEN, "{long}");
        assert!(long.ends_with("-4194304-123456"), "{long}");
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("host_1.a-b").is_ok());
        for bad in ["", ".x", "a/b", "a b", "ä"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
