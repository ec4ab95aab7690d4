use std::path::{Path, PathBuf};
use std::time::Duration;

use netns_fixtures::Netns;
use serde_json::Value;

use crate::exec::{exit_code, output_with_timeout, scrub_env, DEFAULT_TIMEOUT};

/// One invocation of a plugin binary by the raw CNI exec protocol, as a runtime makes it:
/// `CNI_*` environment variables plus the network configuration on stdin.
///
/// Each variable is set only if its setter was called (inherited `CNI_*` variables are
/// removed), so a test can leave one out to check validation. The builder is `Clone`, so a
/// base call can be reused for ADD, CHECK and DEL:
///
/// ```no_run
/// # use reef_tests::*;
/// let host = Netns::new("host").expect("host netns");
/// let pod = Netns::new("pod").expect("pod netns");
/// let base = CniCall::plugin("reef-bridge")
///     .runtime(pod.path(), "c1", "eth0")
///     .path(&cni_path())
///     .config(r#"{"cniVersion":"1.0.0","name":"n","type":"reef-bridge"}"#);
/// let add = base.clone().command("ADD").run(&host);
/// add.assert_ok();
/// base.command("DEL").run(&host).assert_ok();
/// ```
#[derive(Clone, Debug)]
pub struct CniCall {
    binary: PathBuf,
    command: Option<String>,
    container_id: Option<String>,
    netns: Option<PathBuf>,
    ifname: Option<String>,
    args: Option<String>,
    path: Option<String>,
    config: String,
    envs: Vec<(String, String)>,
    timeout: Duration,
    sysfs: bool,
}

impl CniCall {
    /// A call of the plugin binary at `binary`, with no variables set and empty stdin.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        CniCall {
            binary: binary.into(),
            command: None,
            container_id: None,
            netns: None,
            ifname: None,
            args: None,
            path: None,
            config: String::new(),
            envs: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            sysfs: false,
        }
    }

    /// A call of one of Reef's built plugins: `CniCall::new(plugin_dir().join(name))`.
    pub fn plugin(name: &str) -> Self {
        Self::new(crate::plugin(name))
    }

    /// `CNI_COMMAND` (ADD, DEL, CHECK, GC, STATUS, VERSION, ...).
    pub fn command(mut self, command: &str) -> Self {
        self.command = Some(command.to_owned());
        self
    }

    /// `CNI_CONTAINERID`.
    pub fn container_id(mut self, id: &str) -> Self {
        self.container_id = Some(id.to_owned());
        self
    }

    /// `CNI_NETNS` (usually a pod's [`Netns::path`]).
    pub fn netns(mut self, path: impl AsRef<Path>) -> Self {
        self.netns = Some(path.as_ref().to_path_buf());
        self
    }

    /// `CNI_IFNAME`.
    pub fn ifname(mut self, name: &str) -> Self {
        self.ifname = Some(name.to_owned());
        self
    }

    /// `CNI_NETNS`, `CNI_CONTAINERID` and `CNI_IFNAME` at once.
    pub fn runtime(self, netns: impl AsRef<Path>, container_id: &str, ifname: &str) -> Self {
        self.netns(netns).container_id(container_id).ifname(ifname)
    }

    /// `CNI_ARGS` (`K=V;K=V`).
    pub fn args(mut self, args: &str) -> Self {
        self.args = Some(args.to_owned());
        self
    }

    /// `CNI_PATH` (colon-separated; see [`crate::cni_path`]).
    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }

    /// The network configuration fed on stdin: a JSON string, or a [`Value`].
    pub fn config(mut self, config: impl ConfigInput) -> Self {
        self.config = config.into_config();
        self
    }

    /// Any other environment variable for the plugin.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Kill the plugin (and panic) if it runs longer than this; default [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Also give the plugin a private `/sys` showing the host namespace
    /// (see [`Netns::cmd_with_sysfs`]). Off by default.
    pub fn with_sysfs(mut self, on: bool) -> Self {
        self.sysfs = on;
        self
    }

    /// Executes the plugin inside `host` and waits for it. Panics only if it cannot be started
    /// or exceeds its timeout; its failure is reported in the [`CniOutput`].
    pub fn run(&self, host: &Netns) -> CniOutput {
        let mut cmd = if self.sysfs {
            host.cmd_with_sysfs(&self.binary)
        } else {
            host.cmd(&self.binary)
        };
        scrub_env(&mut cmd);
        let vars = [
            ("CNI_COMMAND", self.command.as_deref()),
            ("CNI_CONTAINERID", self.container_id.as_deref()),
            ("CNI_IFNAME", self.ifname.as_deref()),
            ("CNI_ARGS", self.args.as_deref()),
            ("CNI_PATH", self.path.as_deref()),
        ];
        for (key, value) in vars {
            if let Some(value) = value {
                cmd.env(key, value);
            }
        }
        if let Some(netns) = &self.netns {
            cmd.env("CNI_NETNS", netns);
        }
        for (key, value) in &self.envs {
            cmd.env(key, value);
        }
        let out = output_with_timeout(&mut cmd, Some(self.config.as_bytes()), self.timeout)
            .unwrap_or_else(|e| {
                panic!(
                    "{} {} in netns {}: {e}",
                    self.binary.display(),
                    self.command.as_deref().unwrap_or("(no CNI_COMMAND)"),
                    host.name()
                )
            });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = serde_json::from_str(stdout.trim()).ok();
        CniOutput {
            code: exit_code(out.status),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        }
    }
}

/// What [`CniCall::config`] accepts.
pub trait ConfigInput {
    fn into_config(self) -> String;
}

impl ConfigInput for &str {
    fn into_config(self) -> String {
        self.to_owned()
    }
}

impl ConfigInput for String {
    fn into_config(self) -> String {
        self
    }
}

impl ConfigInput for &String {
    fn into_config(self) -> String {
        self.clone()
    }
}

impl ConfigInput for &Value {
    fn into_config(self) -> String {
        self.to_string()
    }
}

impl ConfigInput for Value {
    fn into_config(self) -> String {
        self.to_string()
    }
}

/// The result of a [`CniCall`].
#[derive(Clone, Debug)]
pub struct CniOutput {
    /// Exit status (128 + signal if the plugin was killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, if it is JSON (the result on success, the error object on
    /// failure; `None` for an empty stdout, e.g. after DEL).
    pub json: Option<Value>,
}

impl CniOutput {
    /// Exit status 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The `code` field of the CNI error object on stdout.
    pub fn error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// The `msg` field of the CNI error object on stdout.
    pub fn error_msg(&self) -> Option<&str> {
        self.json.as_ref()?.get("msg")?.as_str()
    }

    /// Panics with exit status, stdout and stderr unless the call succeeded.
    pub fn assert_ok(&self) -> &Self {
        if !self.ok() {
            panic!("plugin call failed: {self}");
        }
        self
    }

    /// The JSON result of a successful call; panics if it failed or printed no JSON.
    pub fn result(&self) -> &Value {
        self.assert_ok();
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("plugin printed no JSON: {self}"))
    }
}

impl std::fmt::Display for CniOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}
