//! The verb dispatcher: reads `CNI_*` and stdin, validates them, calls the plugin and prints
//! the result or the error JSON on stdout (where runtimes read it), exiting non-zero on error.

use crate::error::{codes, CniError};
use crate::types::{is_identifier, CniResult, NetConf};
use crate::version::Version;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// Everything a verb needs. For GC and STATUS, container id, netns and ifname are empty.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
    pub conf: NetConf,
}

impl CmdArgs {
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn raw_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// Kept as an alias: GC receives the same arguments (with `cni.dev/valid-attachments` in conf).
pub type GcArgs = CmdArgs;

pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError>;
    fn del(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn check(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn gc(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    fn status(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
}

/// The environment a plugin was called with, separated from `std::env` for tests.
pub struct Invocation {
    pub env: HashMap<String, String>,
    pub stdin: Vec<u8>,
}

impl Invocation {
    pub fn from_process() -> Result<Invocation, CniError> {
        let mut stdin = Vec::new();
        // VERSION may come with no stdin at all; an unreadable stdin is an I/O error.
        std::io::stdin()
            .read_to_end(&mut stdin)
            .map_err(|e| CniError::io("failed to read stdin", &e))?;
        Ok(Invocation {
            env: std::env::vars().collect(),
            stdin,
        })
    }
}

/// What the dispatcher decided to print.
#[derive(Debug)]
pub enum Outcome {
    /// Printed on stdout, exit 0 (None prints nothing).
    Ok(Option<serde_json::Value>),
    /// No CNI_COMMAND: print the about text on stderr, exit 0 (as libcni's skel does).
    About,
    Err(CniError, String),
}

/// Runs the plugin for one invocation and exits the process.
pub fn run<P: Plugin>(plugin: &P, about: &str) -> ! {
    std::panic::set_hook(Box::new(|info| {
        // A panic is a bug, but the runtime must still get an error object on stdout.
        let e = CniError::new(codes::INTERNAL, "internal error").with_details(info.to_string());
        println!("{}", e.to_json(Version::LATEST.as_str()));
        eprintln!("{info}");
    }));
    let outcome = match Invocation::from_process() {
        Ok(inv) => dispatch(plugin, &inv),
        Err(e) => Outcome::Err(e, Version::LATEST.as_str().into()),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match outcome {
        Outcome::Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Outcome::Ok(None) => 0,
        Outcome::About => {
            eprintln!("{about}");
            eprintln!("CNI protocol versions supported: {}", supported_list());
            0
        }
        Outcome::Err(e, version) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code)
}

fn supported_list() -> String {
    Version::ALL
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates the invocation and calls the plugin. Pure apart from what the plugin does.
pub fn dispatch<P: Plugin>(plugin: &P, inv: &Invocation) -> Outcome {
    let env = |k: &str| inv.env.get(k).filter(|v| !v.is_empty()).cloned();
    let Some(cmd_str) = env("CNI_COMMAND") else {
        return Outcome::About;
    };
    let Some(command) = Command::parse(&cmd_str) else {
        return Outcome::Err(
            CniError::invalid_env(format!("unknown CNI_COMMAND: {cmd_str}")),
            Version::LATEST.as_str().into(),
        );
    };
    if command == Command::Version {
        // The reply names the caller's version when it is one we speak, else the latest: an
        // unknown version echoed back would read as supported. VERSION itself never fails.
        let asked = serde_json::from_slice::<serde_json::Value>(&inv.stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str())
                    .and_then(|s| Version::parse(s).ok())
            })
            .unwrap_or(Version::LATEST)
            .as_str();
        let versions: Vec<&str> = Version::ALL.iter().map(|v| v.as_str()).collect();
        return Outcome::Ok(Some(
            json!({"cniVersion": asked, "supportedVersions": versions}),
        ));
    }
    // Required variables per verb, as in the spec's "Parameters" section.
    let required: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Gc | Command::Status => &["CNI_PATH"],
        Command::Version => &[],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| env(k).is_none())
        .collect();
    let fallback_version = Version::LATEST.as_str().to_string();
    if !missing.is_empty() {
        return Outcome::Err(
            CniError::invalid_env(format!(
                "required env variables [{}] missing",
                missing.join(",")
            )),
            fallback_version,
        );
    }
    let conf = match NetConf::parse(&inv.stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::Err(e, fallback_version),
    };
    let version = conf.cni_version.as_str().to_string();
    let fail = |e: CniError| Outcome::Err(e, version.clone());

    let container_id = env("CNI_CONTAINERID").unwrap_or_default();
    if matches!(command, Command::Add | Command::Del | Command::Check)
        && !is_identifier(&container_id)
    {
        return fail(
            CniError::invalid_env("invalid characters in containerID").with_details(container_id),
        );
    }
    let ifname = env("CNI_IFNAME").unwrap_or_default();
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        if let Err(e) = validate_ifname(&ifname) {
            return fail(e);
        }
    }
    let args = match parse_cni_args(&env("CNI_ARGS").unwrap_or_default()) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    match command {
        Command::Check if !conf.cni_version.has_check() => {
            return fail(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!("config version {version} does not allow CHECK"),
            ))
        }
        Command::Gc | Command::Status if !conf.cni_version.has_gc_status() => {
            return fail(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!(
                    "config version {version} does not allow {}",
                    command.as_str()
                ),
            ))
        }
        _ => {}
    }
    let cmd_args = CmdArgs {
        command,
        container_id,
        netns: env("CNI_NETNS"),
        ifname,
        args,
        path: env("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        stdin: inv.stdin.clone(),
        conf,
    };
    let v = cmd_args.conf.cni_version;
    let res = match command {
        Command::Add => plugin.add(&cmd_args).map(|r| Some(r.to_json(v))),
        Command::Del => plugin.del(&cmd_args).map(|_| None),
        Command::Check => plugin.check(&cmd_args).map(|_| None),
        Command::Gc => plugin.gc(&cmd_args).map(|_| None),
        Command::Status => plugin.status(&cmd_args).map(|_| None),
        Command::Version => unreachable!("handled above"),
    };
    match res {
        Ok(v) => Outcome::Ok(v),
        Err(e) => fail(e),
    }
}

/// Interface names: 1–15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(CniError::invalid_env(format!(
            "invalid interface name \"{name}\""
        )));
    }
    Ok(())
}

/// `CNI_ARGS`: `K=V;K2=V2`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::invalid_env(format!(
                "invalid CNI_ARGS pair \"{p}\""
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, _a: &CmdArgs) -> Result<CniResult, CniError> {
            Ok(CniResult::default())
        }
        fn del(&self, _a: &CmdArgs) -> Result<(), CniError> {
            Ok(())
        }
        fn check(&self, _a: &CmdArgs) -> Result<(), CniError> {
            Ok(())
        }
    }

    fn inv(cmd: &str, extra: &[(&str, &str)], stdin: &str) -> Invocation {
        let mut env: HashMap<String, String> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        Invocation {
            env,
            stdin: stdin.as_bytes().to_vec(),
        }
    }

    fn err_code(o: Outcome) -> u32 {
        match o {
            Outcome::Err(e, _) => e.code,
            other => panic!("expected error, got {other:?}"),
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"net","type":"echo"}"#;

    /// (CNI_COMMAND, env overrides, stdin, expected error code or 0 for success)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, u32);

    #[test]
    fn table_of_invocations() {
        let cases: &[Case] = &[
            ("ADD", &[], CONF, 0),
            ("ADD", &[("CNI_NETNS", "")], CONF, codes::INVALID_ENV),
            ("DEL", &[("CNI_NETNS", "")], CONF, 0),
            ("ADD", &[], "{not json", codes::DECODE),
            (
                "ADD",
                &[],
                r#"{"cniVersion":"7.0.0","name":"n"}"#,
                codes::INCOMPATIBLE_VERSION,
            ),
            (
                "ADD",
                &[("CNI_CONTAINERID", "bad id")],
                CONF,
                codes::INVALID_ENV,
            ),
            (
                "ADD",
                &[("CNI_IFNAME", "waytoolonginterfacename")],
                CONF,
                codes::INVALID_ENV,
            ),
            ("ADD", &[("CNI_ARGS", "novalue")], CONF, codes::INVALID_ENV),
            ("FROB", &[], CONF, codes::INVALID_ENV),
            (
                "CHECK",
                &[],
                r#"{"cniVersion":"0.3.1","name":"n"}"#,
                codes::INCOMPATIBLE_VERSION,
            ),
            ("GC", &[], CONF, codes::INCOMPATIBLE_VERSION),
            ("GC", &[], r#"{"cniVersion":"1.1.0","name":"n"}"#, 0),
            (
                "STATUS",
                &[("CNI_CONTAINERID", "")],
                r#"{"cniVersion":"1.1.0","name":"n"}"#,
                0,
            ),
        ];
        for (cmd, extra, stdin, want) in cases {
            let o = dispatch(&Echo, &inv(cmd, extra, stdin));
            if *want == 0 {
                assert!(matches!(o, Outcome::Ok(_)), "{cmd} {extra:?}: {o:?}");
            } else {
                assert_eq!(err_code(o), *want, "{cmd} {extra:?} {stdin}");
            }
        }
    }

    #[test]
    fn version_lists_all() {
        match dispatch(&Echo, &inv("VERSION", &[], "")) {
            Outcome::Ok(Some(v)) => {
                let list = v["supportedVersions"].as_array().unwrap();
                for want in ["0.4.0", "1.0.0", "1.1.0"] {
                    assert!(list.iter().any(|x| x == want));
                }
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn version_answers_only_versions_it_speaks() {
        for (stdin, want) in [
            (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
            (r#"{"cniVersion":"9.9.9"}"#, "1.1.0"),
            (r#"{"cniVersion":"banana"}"#, "1.1.0"),
            (r#"{"cniVersion":3}"#, "1.1.0"),
            ("", "1.1.0"),
        ] {
            match dispatch(&Echo, &inv("VERSION", &[], stdin)) {
                Outcome::Ok(Some(v)) => {
                    assert_eq!(v["cniVersion"], want, "{stdin}");
                    assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(5));
                }
                o => panic!("{stdin}: {o:?}"),
            }
        }
    }

    #[test]
    fn no_command_prints_about() {
        let mut i = inv("", &[], "");
        i.env.remove("CNI_COMMAND");
        assert!(matches!(dispatch(&Echo, &i), Outcome::About));
    }
}
