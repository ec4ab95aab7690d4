use std::io::{self, Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use netns_fixtures::ChildGuard;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

/// How long a plugin or cnitool invocation may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// After the child exited, how long to wait for its stdout/stderr to reach EOF (a descendant
/// that inherited the pipes could keep them open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Runs `cmd` to completion like [`Command::output`], feeding it `input` on stdin (or
/// /dev/null), but kills it (SIGKILL, by its own PID) if it runs longer than `timeout`; that
/// case returns an [`io::ErrorKind::TimedOut`] error carrying what it printed so far.
pub fn output_with_timeout(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // The guard kills and reaps the child if anything below panics.
    let mut child = ChildGuard::from(cmd.spawn()?);

    if let Some(mut pipe) = child.stdin.take() {
        let data = input.unwrap_or_default().to_vec();
        // Not joined: it ends on its own (EPIPE) once the child is gone.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let stdout_rx = drain(child.stdout.take());
    let stderr_rx = drain(child.stderr.take());

    // Wait for the exit without reaping (WNOWAIT): until `child.wait()` below reaps it, the PID
    // stays ours, so a kill on timeout can never hit a recycled PID.
    let pid = Pid::from_raw(child.pid() as i32);
    let (exit_tx, exit_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let _ = exit_tx.send(());
    });
    let timed_out = exit_rx.recv_timeout(timeout).is_err();
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait()?;

    let deadline = Instant::now() + DRAIN_GRACE;
    let stdout = collect(&stdout_rx, deadline);
    let stderr = collect(&stderr_rx, deadline);
    if timed_out {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "killed after {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        ));
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

pub(crate) fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

fn collect(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Vec<u8> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

/// Panics with `what`, the exit status, stdout and stderr unless `out` succeeded; returns
/// stdout as a string.
pub fn assert_success(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{what} failed ({})\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

/// Exit code as a shell reports it: the status, or 128 + signal number.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Removes inherited variables that would change a plugin's or cnitool's behaviour, so only
/// what the test sets is seen.
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CNI_") || k == "CAP_ARGS" || k == "RT_ARGS" {
            cmd.env_remove(&key);
        }
    }
}
