//! One plugin invocation over the CNI exec protocol: environment, config on stdin, result or
//! error object on stdout.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use reef_cni::CniError;
use serde_json::Value;

/// The `CNI_*` environment of one call. The rest of reef-run's environment is inherited, as
/// libcni does.
pub struct CallEnv<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub path: &'a str,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The plugin's own error object.
    Cni(CniError),
    /// It could not be started, or failed without an error object.
    Other(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Cni(e) => write!(f, "{e}"),
            CallError::Other(m) => f.write_str(m),
        }
    }
}

/// Starts `bin`; [`finish`] collects it. Split so VERSION can run every plugin at once.
pub fn start(bin: &Path, env: &CallEnv, stdin: &[u8]) -> Result<Child, CallError> {
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", env.command)
        .env("CNI_CONTAINERID", env.container_id)
        .env("CNI_NETNS", env.netns)
        .env("CNI_IFNAME", env.ifname)
        .env("CNI_ARGS", env.args)
        .env("CNI_PATH", env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CallError::Other(format!("cannot run {}: {e}", bin.display())))?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin may exit without reading its config (EPIPE): its exit status tells.
        match pipe.write_all(stdin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CallError::Other(format!(
                    "writing the config to {}: {e}",
                    bin.display()
                )));
            }
        }
    }
    Ok(child)
}

/// Waits for a plugin started by [`start`]. Its stderr is passed on to ours (where libcni
/// sends it), and folded into the error when it printed no error object.
pub fn finish(bin: &Path, child: Child) -> Result<Option<Value>, CallError> {
    let out = child
        .wait_with_output()
        .map_err(|e| CallError::Other(format!("waiting for {}: {e}", bin.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    let parsed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(&out.stdout).ok()
    };
    if out.status.success() {
        if !stderr.is_empty() {
            eprintln!("{stderr}");
        }
        return match parsed {
            Some(v) => Ok(Some(v)),
            None if out.stdout.iter().all(u8::is_ascii_whitespace) => Ok(None),
            None => Err(CallError::Other(format!(
                "printed invalid JSON: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ))),
        };
    }
    if let Some(e) = parsed.as_ref().and_then(CniError::from_json) {
        if !stderr.is_empty() {
            eprintln!("{stderr}");
        }
        return Err(CallError::Cni(e));
    }
    let mut msg = format!("exited with {}", out.status);
    for (what, text) in [
        (
            "stdout",
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ),
        ("stderr", stderr.to_owned()),
    ] {
        if !text.is_empty() {
            msg.push_str(&format!("; {what}: {text}"));
        }
    }
    Err(CallError::Other(msg))
}

/// [`start`] + [`finish`].
pub fn call(bin: &Path, env: &CallEnv, stdin: &[u8]) -> Result<Option<Value>, CallError> {
    let child = start(bin, env, stdin)?;
    finish(bin, child)
}
