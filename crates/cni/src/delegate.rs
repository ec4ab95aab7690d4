//! Calling another plugin (IPAM, or a delegate) over the exec protocol, as libcni would.

use crate::error::{codes, CniError};
use crate::skel::{CmdArgs, Command};
use crate::types::CniResult;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

/// Environment variable carrying how many delegations deep this process runs (unset: 0).
/// Every exec'd delegate gets ours plus one, so a loop through any chain of plugins (not only
/// a plugin naming itself) ends at [`MAX_DELEGATION_DEPTH`] instead of forking forever.
pub const DELEGATION_DEPTH_ENV: &str = "REEF_DELEGATION_DEPTH";

/// Deepest delegation allowed: a main plugin, its IPAM, and headroom for a delegate's own
/// delegate. Legitimate chains are one or two deep.
pub const MAX_DELEGATION_DEPTH: u32 = 4;

/// This process's delegation depth. A value that does not parse counts as the maximum: a
/// corrupted counter must not reset the bound.
fn current_depth() -> u32 {
    match std::env::var(DELEGATION_DEPTH_ENV) {
        Err(_) => 0,
        Ok(v) => v.trim().parse().unwrap_or(MAX_DELEGATION_DEPTH),
    }
}

/// True when `bin` is the very file this process runs from (a plugin named under another
/// name or through a symlink still resolves to the same inode).
fn is_own_binary(bin: &Path) -> bool {
    let (Ok(exe), Ok(target)) = (std::fs::metadata("/proc/self/exe"), std::fs::metadata(bin))
    else {
        return false;
    };
    (exe.dev(), exe.ino()) == (target.dev(), target.ino())
}

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(CniError::invalid_config(format!(
            "invalid plugin type \"{plugin}\""
        )));
    }
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                codes::DELEGATE,
                format!("failed to find plugin \"{plugin}\" in path {path:?}"),
            )
        })
}

/// Runs `plugin` with `command` and the caller's CNI environment, `stdin` as its config.
/// Returns the parsed stdout (None when the plugin printed nothing) or its error object.
pub fn exec(
    plugin: &str,
    command: Command,
    args: &CmdArgs,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let bin = find_plugin(plugin, &args.path)?;
    exec_path(&bin, command, args, stdin)
}

pub fn exec_path(
    bin: &Path,
    command: Command,
    args: &CmdArgs,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let name = bin.display().to_string();
    // A plugin delegating to itself re-runs the same config and delegates again: a fork bomb.
    if is_own_binary(bin) {
        return Err(CniError::invalid_config(format!(
            "refusing to delegate to {name}: it is this plugin itself"
        )));
    }
    let depth = current_depth();
    if depth >= MAX_DELEGATION_DEPTH {
        return Err(CniError::new(
            codes::DELEGATE,
            format!("refusing to run {name}: delegation depth limit {MAX_DELEGATION_DEPTH} reached (a delegation loop?)"),
        ));
    }
    let path = std::env::join_paths(&args.path).unwrap_or_default();
    let mut cmd = Process::new(bin);
    cmd.env(DELEGATION_DEPTH_ENV, (depth + 1).to_string())
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &args.container_id)
        .env("CNI_IFNAME", &args.ifname)
        .env("CNI_ARGS", args.raw_args())
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match &args.netns {
        Some(ns) => cmd.env("CNI_NETNS", ns),
        None => cmd.env_remove("CNI_NETNS"),
    };
    let mut child = cmd.spawn().map_err(|e| {
        CniError::new(codes::DELEGATE, format!("failed to run {name}")).with_details(e.to_string())
    })?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe: not our error.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(codes::DELEGATE, format!("failed to wait for {name}"))
            .with_details(e.to_string())
    })?;
    let parsed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::new(codes::DECODE, format!("{name} printed invalid JSON"))
                .with_details(format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
        })?)
    };
    if out.status.success() {
        return Ok(parsed);
    }
    // Pass the delegate's own error object through unchanged: its code means something.
    if let Some(e) = parsed.as_ref().and_then(CniError::from_json) {
        return Err(e);
    }
    Err(
        CniError::new(codes::DELEGATE, format!("{name} failed ({})", out.status))
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    )
}

/// IPAM helpers: the `ipam.type` plugin, called with the caller's own stdin.
pub struct Ipam<'a> {
    pub plugin: &'a str,
    pub args: &'a CmdArgs,
}

impl<'a> Ipam<'a> {
    pub fn from_args(args: &'a CmdArgs) -> Result<Ipam<'a>, CniError> {
        let plugin = args
            .conf
            .ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::invalid_config("ipam.type is required"))?;
        if plugin == args.conf.plugin_type {
            return Err(CniError::invalid_config(format!(
                "ipam.type \"{plugin}\" is the plugin's own type: a plugin cannot be its own IPAM"
            )));
        }
        Ok(Ipam { plugin, args })
    }

    pub fn add(&self) -> Result<CniResult, CniError> {
        let v = exec(self.plugin, Command::Add, self.args, &self.args.stdin)?.ok_or_else(|| {
            CniError::new(
                codes::DELEGATE,
                format!("IPAM plugin {} returned no result", self.plugin),
            )
        })?;
        CniResult::from_json(&v)
            .map_err(|e| e.context(format!("IPAM plugin {} result", self.plugin)))
    }

    pub fn run(&self, command: Command) -> Result<(), CniError> {
        exec(self.plugin, command, self.args, &self.args.stdin).map(|_| ())
    }
}
