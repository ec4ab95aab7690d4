use std::ops::{Deref, DerefMut};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Netns;

/// Owns a spawned child process: on drop it is killed with SIGKILL (by its own PID only,
/// never by name or process group) and reaped.
///
/// Dereferences to the [`Child`], so `guard.id()`, `guard.try_wait()`, `guard.stdout.take()`
/// and so on work as usual.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard(child)
    }

    /// PID of the child.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kill (SIGKILL) and reap the child now; returns its exit status.
    /// A child that has already been reaped is not signalled again.
    pub fn kill_and_wait(&mut self) -> std::io::Result<ExitStatus> {
        // `Child::kill` is a no-op for an already-reaped child, so a recycled PID is never hit.
        let _ = self.0.kill();
        self.0.wait()
    }
}

impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        ChildGuard(child)
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill_and_wait();
    }
}

/// `ping -c COUNT -W 1 -i 0.2 DST` inside `ns`; true if it exited successfully (at least one
/// reply). Works for IPv4 and IPv6 destinations.
pub fn ping(ns: &Netns, dst: &str, count: u32) -> bool {
    ns.cmd("ping")
        .args(["-c", &count.max(1).to_string(), "-W", "1", "-i", "0.2", dst])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Polls `cond` every 50 ms until it returns true (→ true) or `timeout` has passed (→ false).
/// `cond` is always evaluated at least once, and once more at the deadline.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(deadline - now));
    }
}
