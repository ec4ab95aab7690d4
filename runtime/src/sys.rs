//! Small process-level system helpers: identities of processes (PID + start time), pidfds,
//! random IDs, signal masks.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat). With the
/// PID, it names a process for good: a recycled PID has another start time.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start` still exists (a zombie counts).
pub fn is_same_process(pid: i32, start: u64) -> bool {
    proc_start_time(pid) == Some(start)
}

/// Whether the process `pid` that started at `start` (0: unknown) is provably gone: /proc
/// works here and shows no such process (PIDs are those of our PID namespace).
pub fn is_gone(pid: i32, start: u64) -> bool {
    match proc_start_time(pid) {
        Some(s) => start != 0 && s != start,
        None => proc_start_time(std::process::id() as i32).is_some(),
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A 64-hex-digit container ID, like docker's and containerd's.
pub fn random_id() -> io::Result<String> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A pidfd for `pid` (Linux 5.3+): signals through it cannot reach a recycled PID.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly opened descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn pidfd_kill(fd: &OwnedFd, sig: Signal) -> io::Result<()> {
    // SAFETY: plain syscall on a valid pidfd, no info struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // Already exited: nothing to kill.
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Waits until the process behind `fd` has exited; false on timeout.
pub fn pidfd_wait(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return rc > 0;
    }
}

/// The signals reef-run forwards to the container (plus SIGCHLD, which ends its wait).
pub const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn wait_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks the forwarded signals and SIGCHLD, so they queue up until reef-run asks for them
/// (no handlers, no races with the work in between). Returns the previous mask, which the
/// container's process restores before exec.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&wait_set()), Some(&mut old))?;
    Ok(old)
}

/// Waits up to `timeout` (forever if `None`) for one of the blocked signals.
pub fn wait_signal(timeout: Option<Duration>) -> Option<Signal> {
    let set = wait_set();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    // SAFETY: valid set and optional timespec; no siginfo wanted.
    let rc = unsafe {
        libc::sigtimedwait(
            set.as_ref(),
            std::ptr::null_mut(),
            ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
        )
    };
    if rc <= 0 {
        return None;
    }
    Signal::try_from(rc).ok()
}

/// A forwarded signal that arrived (and is still queued) while reef-run was busy.
pub fn pending_stop_signal() -> Option<Signal> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    let set = unsafe {
        if libc::sigpending(set.as_mut_ptr()) != 0 {
            return None;
        }
        set.assume_init()
    };
    FORWARDED.into_iter().find(|s| {
        // SAFETY: `set` is initialised.
        unsafe { libc::sigismember(&set, *s as i32) == 1 }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_us() {
        let me = std::process::id() as i32;
        let t = proc_start_time(me).expect("our own start time");
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
    }

    #[test]
    fn ids_are_hex() {
        let id = random_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, random_id().unwrap());
    }
}
