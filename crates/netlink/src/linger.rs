//! Fork-and-linger: hand slow kernel work (a reclamation wait the caller does not need) to a
//! forked child that outlives the CNI plugin. Shared by the veth deleter (`detached`) and the
//! firewall's nf_tables socket close (reef-firewall).
//!
//! fork() is only sound while the process has a single thread, so every entry point checks
//! that first and reports `None` (do the work inline) otherwise.

use nix::unistd::{fork, ForkResult, Pid};

/// fork() is only sound while this process has a single thread.
pub fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim() == "1"))
        })
        .unwrap_or(false)
}

/// Forks a child detached from stdio (the runtime's pipes see EOF as soon as the parent
/// exits) that runs `child` and `_exit`s with its return value. `None`: not forked (threads,
/// fork failure), `child` did not run and the caller does the work itself.
pub fn spawn(child: impl FnOnce() -> i32) -> Option<Pid> {
    if !single_threaded() {
        return None;
    }
    // SAFETY: single-threaded (checked above), so the child cannot inherit a lock held by
    // another thread; it only runs `child` and _exit, which skips the parent's destructors
    // and stdio buffers.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::dup2(null, 1);
                    libc::dup2(null, 2);
                }
            }
            let code = child();
            unsafe { libc::_exit(code.clamp(0, 255)) }
        }
        Ok(ForkResult::Parent { child }) => Some(child),
        Err(_) => None,
    }
}

/// Like `spawn`, but the child, after `work`, waits until this process has exited and then
/// `after_exit` longer before it exits: whatever it holds (an nf_tables socket) is released
/// only then. `Err(work)`: not forked, the caller runs `work` itself.
pub fn outlive_parent<W: FnOnce()>(work: W, after_exit: std::time::Duration) -> Result<(), W> {
    if !single_threaded() {
        return Err(work);
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe() fills the two fds this function owns.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(work);
    }
    let (rd, wr) = (fds[0], fds[1]);
    let mut work = Some(work);
    let forked = spawn(|| {
        // SAFETY: plain syscalls on this child's own copies of the pipe fds.
        unsafe {
            libc::close(wr);
            if let Some(w) = work.take() {
                w();
            }
            let mut b = 0u8;
            // Returns 0 (EOF) once the parent, the last writer, has exited.
            while libc::read(rd, (&mut b as *mut u8).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            std::thread::sleep(after_exit);
        }
        0
    });
    // SAFETY: closing our own fds; the write end stays open (until exit) only if forked.
    unsafe {
        libc::close(rd);
        if forked.is_none() {
            libc::close(wr);
        }
    }
    match (forked, work) {
        (None, Some(w)) => Err(w),
        _ => Ok(()),
    }
}
