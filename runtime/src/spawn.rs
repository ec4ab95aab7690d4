//! Creating the container's process: `clone` into new namespaces, so the child is PID 1 of
//! its own PID namespace, then a two-pipe handshake with reef-run.
//!
//! ```text
//! reef-run (host namespaces)               child (new net/uts/pid/mnt/ipc namespaces)
//!   clone ───────────────────────────────▶ PDEATHSIG, mounts private, hostname, lo up,
//!   bind-mount /proc/PID/ns/net               /proc, rootfs mounts (everything not
//!   CNI ADD against it                        needing the network result)
//!   write hosts/resolv.conf                    │ blocks reading `go`
//!   write 1 byte on `go` ─────────────────▶  /etc files, pivot_root, exec CMD
//!   read `report` until EOF  ◀──────────────  (CLOEXEC: EOF = exec happened;
//!                                              bytes = what failed, then it exits)
//! ```
//!
//! reef-run itself never leaves the host's namespaces: the CNI plugins it runs must see the
//! host's network and mounts. The child does the namespace-local work in parallel with ADD.
//!
//! The child is created with a raw `clone` (not `fork` + `unshare`, because
//! `unshare(CLONE_NEWPID)` only affects the caller's future children). Like a forked child it
//! runs on a copy of reef-run's memory; reef-run is single-threaded at that point, so no lock
//! can be held by a thread that does not exist in the child. The child ends in `exec` or
//! `_exit`, never by returning, so no destructor of reef-run's runs twice.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_RUNTIME};
use crate::rootfs;

/// What the child does; built before the clone, so the child only reads it.
#[derive(Debug)]
pub struct Spec {
    /// The network namespace to enter (`--join`); without it, a new one is created.
    pub join_netns: Option<OwnedFd>,
    pub hostname: String,
    /// Canonical path of the root filesystem, if any.
    pub rootfs: Option<PathBuf>,
    /// Files bind-mounted on /etc/hosts and /etc/resolv.conf of the rootfs.
    pub hosts_file: PathBuf,
    pub resolv_file: PathBuf,
    pub argv: Vec<CString>,
    /// The signal mask to restore before exec (reef-run blocks the forwarded signals).
    pub sigmask: SigSet,
    /// reef-run's state-entry lock. The child closes its copy first thing: a flock belongs
    /// to the open file, so a child outliving a killed reef-run by a few milliseconds would
    /// otherwise still show the entry as `creating`.
    pub entry_lock: RawFd,
}

/// The container's process, as reef-run holds it.
#[derive(Debug)]
pub struct Container {
    pub pid: Pid,
    go: Option<File>,
    report: Option<File>,
}

/// A failure inside the child, sent to reef-run as `<exit status> <message>`.
struct ChildFail {
    exit: i32,
    msg: String,
}

impl ChildFail {
    fn sys(what: impl Into<String>, e: Errno) -> ChildFail {
        ChildFail {
            exit: EXIT_RUNTIME,
            msg: format!("{}: {e}", what.into()),
        }
    }
}

type ChildResult<T = ()> = std::result::Result<T, ChildFail>;

/// Clones the container's process. It waits for [`Container::start`].
pub fn spawn(spec: &Spec) -> Result<Container> {
    let (go_rd, go_wr) = pipe()?;
    let (rep_rd, rep_wr) = pipe()?;
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC;
    if spec.join_netns.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    match clone_process(flags) {
        Ok(0) => {
            drop(go_wr);
            drop(rep_rd);
            child_main(spec, go_rd, rep_wr)
        }
        Ok(pid) => Ok(Container {
            pid: Pid::from_raw(pid),
            go: Some(File::from(go_wr)),
            report: Some(File::from(rep_rd)),
        }),
        Err(e) => Err(Error::io("clone the container's process", e)),
    }
}

impl Container {
    /// Lets the child finish its setup and exec the command. Returns once the exec has
    /// happened, or with the child's own account of what failed.
    pub fn start(&mut self) -> Result<()> {
        if let Some(mut go) = self.go.take() {
            // EPIPE: the child already died; its report says why.
            let _ = go.write_all(b"g");
        }
        let mut text = String::new();
        if let Some(mut rep) = self.report.take() {
            let _ = rep.read_to_string(&mut text);
        }
        if text.is_empty() {
            return Ok(());
        }
        let (exit, msg) = match text.split_once(' ') {
            Some((code, msg)) => (code.parse().unwrap_or(EXIT_RUNTIME), msg.to_owned()),
            None => (EXIT_RUNTIME, text),
        };
        Err(Error::Start { msg, exit })
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))
}

/// `clone` with fork semantics (the child continues here on a copy of our stack) plus new
/// namespaces. clone3 first; the classic clone where clone3 is filtered (some seccomp
/// profiles answer ENOSYS).
fn clone_process(flags: CloneFlags) -> io::Result<i32> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }
    let args = CloneArgs {
        flags: flags.bits() as u64,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    // SAFETY: fork-like clone (no CLONE_VM, no new stack). reef-run is single-threaded here,
    // and the child only runs `child_main`, which ends in exec or _exit.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc >= 0 {
        return Ok(rc as i32);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // x86_64 and aarch64 agree on (flags, stack, parent_tid, ...); all zero but the flags.
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// The child: never returns.
fn child_main(spec: &Spec, go: OwnedFd, report: OwnedFd) -> ! {
    // Closing (not unlocking) our copy leaves reef-run's lock in place.
    // SAFETY: the child owns no wrapper of this descriptor: it ends in exec or _exit.
    unsafe { libc::close(spec.entry_lock) };
    let fail = match child_setup(spec, go) {
        Ok(()) => exec(spec),
        Err(f) => f,
    };
    let mut report = File::from(report);
    let _ = write!(report, "{} {}", fail.exit, fail.msg);
    // SAFETY: _exit skips every destructor and atexit handler of reef-run's copy.
    unsafe { libc::_exit(fail.exit) }
}

fn child_setup(spec: &Spec, go: OwnedFd) -> ChildResult {
    // If reef-run dies (even by SIGKILL), the container dies with it: nobody would be left to
    // wait for it. PID 1 dying takes the whole PID namespace along.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| ChildFail::sys("prctl(PR_SET_PDEATHSIG)", e))?;
    if let Some(ns) = &spec.join_netns {
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| ChildFail::sys("enter the pod's network namespace", e))?;
    }
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| ChildFail::sys("make mounts private", e))?;
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| ChildFail::sys(format!("sethostname {:?}", spec.hostname), e))?;
    if spec.join_netns.is_none() {
        loopback_up().map_err(|e| ChildFail::sys("bring lo up", e))?;
    }
    match &spec.rootfs {
        Some(root) => rootfs::prepare(root).map_err(|e| ChildFail {
            exit: EXIT_RUNTIME,
            msg: e,
        })?,
        None => rootfs::host_mounts().map_err(|e| ChildFail {
            exit: EXIT_RUNTIME,
            msg: e,
        })?,
    }

    // Wait for the network. EOF instead of the byte: reef-run gave up (or died).
    let mut byte = [0u8; 1];
    let mut go = File::from(go);
    match go.read(&mut byte) {
        Ok(1) => {}
        _ => {
            // SAFETY: as in child_main; nothing to report to a reef-run that is gone.
            unsafe { libc::_exit(EXIT_RUNTIME) }
        }
    }
    drop(go);

    if let Some(root) = &spec.rootfs {
        rootfs::enter(root, &spec.hosts_file, &spec.resolv_file).map_err(|e| ChildFail {
            exit: EXIT_RUNTIME,
            msg: e,
        })?;
        // The host's PATH means nothing in the image; use the conventional one (docker's
        // default). Safe: this process is single-threaded.
        std::env::set_var("PATH", rootfs::DEFAULT_PATH);
    }
    // reef-run's own configuration is not the command's business.
    let runtime_vars: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CNI_") || k.starts_with("REEF_")
        })
        .collect();
    for k in runtime_vars {
        std::env::remove_var(k);
    }
    // Rust ignores SIGPIPE; an ignored disposition would survive exec.
    // SAFETY: resetting a disposition to default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    spec.sigmask
        .thread_set_mask()
        .map_err(|e| ChildFail::sys("restore the signal mask", e))?;
    Ok(())
}

/// execvp: PATH is searched inside the container's root.
fn exec(spec: &Spec) -> ChildFail {
    let Some(prog) = spec.argv.first() else {
        return ChildFail {
            exit: EXIT_RUNTIME,
            msg: "no command".into(),
        };
    };
    let e = match nix::unistd::execvp(prog, &spec.argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let name = prog.to_string_lossy();
    match e {
        Errno::ENOENT if !name.contains('/') => ChildFail {
            exit: EXIT_NOT_FOUND,
            msg: format!("{name}: executable file not found in $PATH"),
        },
        Errno::ENOENT => ChildFail {
            exit: EXIT_NOT_FOUND,
            msg: format!("{name}: no such file or directory"),
        },
        Errno::EACCES | Errno::EPERM | Errno::ENOEXEC | Errno::EISDIR => ChildFail {
            exit: EXIT_CANNOT_EXEC,
            msg: format!("{name}: cannot execute: {e}"),
        },
        e => ChildFail::sys(format!("exec {name}"), e),
    }
}

/// `ip link set lo up` by ioctl: a new network namespace has `lo` down.
fn loopback_up() -> std::result::Result<(), Errno> {
    #[repr(C)]
    struct IfReqFlags {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` has the layout of `struct ifreq` (name, then the flags member of the
    // union, padded to the union's size); both ioctls read and write only that.
    let res = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            Err(Errno::last())
        } else {
            req.flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                Err(Errno::last())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    res
}
