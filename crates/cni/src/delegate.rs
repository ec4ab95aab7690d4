//! Calling another plugin (IPAM, or a delegate) over the exec protocol, as libcni would.

use crate::error::{codes, CniError};
use crate::skel::{CmdArgs, Command};
use crate::types::CniResult;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

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
    let path = std::env::join_paths(&args.path).unwrap_or_default();
    let mut cmd = Process::new(bin);
    cmd.env("CNI_COMMAND", command.as_str())
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
    let name = bin.display().to_string();
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
