//! Command line: `reef-run [OPTIONS] -- CMD ARGS...`, `reef-run ps`, `reef-run rm NAME`.
//!
//! Only syntax is checked here; what depends on the machine (does the rootfs exist, is the
//! name free) is checked by the commands themselves.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "reef-run",
    version,
    about = "Reef's minimal container runtime: runs CMD in new net, uts, pid, mount and ipc \
             namespaces, attached to a CNI network",
    after_help = "\
Side effects: the default network works in the current network namespace: it creates the \
bridge reef0 (10.88.0.1), the nftables table inet reef-masq-reef (masquerade) and, with \
-p, inet reef-portmap (port mappings), and turns on IPv4 forwarding; they stay for the \
next container. Run it inside a throwaway namespace (`ip netns exec NS reef-run ...`) to keep a \
host's own network untouched.

Plugins are searched in $CNI_PATH, then next to the reef-run binary, then in /opt/cni/bin.

Environment:
  REEF_STATE_DIR       container state (default /run/reef)
  REEF_CNI_CACHE_DIR   libcni-format result cache (default /var/lib/cni)
  REEF_IPAM_DATA_DIR   dataDir of the default network's reef-ipam (default /var/lib/reef/networks)
  CNI_PATH             plugin directories, searched first
  REEF_RUN_DEBUG=1     one line per step of a run, with timings, on stderr",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Sub>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// The clap command, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// List containers (running, and dead ones that still hold network state).
    Ps {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Clean up containers whose reef-run was killed: kill leftover processes, run CNI DEL,
    /// remove the network namespace mount and the state.
    Rm {
        /// Container names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Also stop a running container (SIGKILL to its command) and wait for its reef-run
        /// to clean up.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// CNI network configuration list (.conflist). Default: the embedded `reef` network
    /// (reef-bridge `reef0`, reef-ipam 10.88.0.0/16, masquerade, reef-portmap).
    #[arg(long, value_name = "FILE.conflist")]
    pub net: Option<PathBuf>,

    /// Container name (default: the short container ID). Names are unique per state directory.
    #[arg(long)]
    pub name: Option<String>,

    /// Hostname inside the container (default: the name).
    #[arg(long)]
    pub hostname: Option<String>,

    /// Label passed to plugins declaring the `labels` capability (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Publish a container port on the host (repeatable): [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp].
    #[arg(short = 'p', long = "publish", value_name = "HOST:CTR[/PROTO]", value_parser = parse_port)]
    pub ports: Vec<PortMapping>,

    /// Run CMD with this directory as its root filesystem.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,

    /// Run in the network namespace of the running container NAME (a pod): no CNI ADD or DEL.
    #[arg(long, value_name = "NAME", conflicts_with = "net")]
    pub join: Option<String>,

    /// Seconds the command may take to exit after reef-run forwarded it SIGINT, SIGTERM,
    /// SIGHUP or SIGQUIT, before it gets SIGKILL (as PID 1 it ignores signals it has no
    /// handler for).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub stop_timeout: u64,

    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD", value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

/// One `-p`: serialised exactly as the `portMappings` capability (the reference portmap's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none", default)]
    pub host_ip: Option<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_port_number(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what} must be 1-65535, got {s:?}")),
    }
}

/// `[HOST_IP:]HOST:CTR[/tcp|udp]`; an IPv6 host address goes in brackets: `[::1]:8080:80`.
pub fn parse_port(s: &str) -> Result<PortMapping, String> {
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto.to_ascii_lowercase()),
        None => (s, "tcp".to_owned()),
    };
    if protocol != "tcp" && protocol != "udp" {
        return Err(format!("protocol must be tcp or udp, got {protocol:?}"));
    }
    let (host_ip, rest) = split_host_ip(spec)?;
    let Some((host, ctr)) = rest.split_once(':') else {
        return Err(format!(
            "expected HOST_PORT:CONTAINER_PORT[/PROTO], got {s:?}"
        ));
    };
    Ok(PortMapping {
        host_port: parse_port_number(host, "host port")?,
        container_port: parse_port_number(ctr, "container port")?,
        protocol,
        host_ip,
    })
}

/// Splits an optional leading host IP off `ip:host:ctr` (or `[v6]:host:ctr`).
fn split_host_ip(spec: &str) -> Result<(Option<String>, &str), String> {
    if let Some(rest) = spec.strip_prefix('[') {
        let (ip, rest) = rest
            .split_once("]:")
            .ok_or_else(|| format!("bad bracketed host IP in {spec:?}"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("bad host IP {ip:?}"))?;
        return Ok((Some(ip.to_string()), rest));
    }
    if spec.matches(':').count() == 2 {
        let (ip, rest) = spec.split_once(':').unwrap_or(("", spec));
        let ip: IpAddr = ip.parse().map_err(|_| format!("bad host IP {ip:?}"))?;
        return Ok((Some(ip.to_string()), rest));
    }
    Ok((None, spec))
}

/// Container names: they become a directory name, `K8S_POD_NAME` and the default hostname.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid container name {name:?}: use 1-63 ASCII letters, digits, '-', '_', '.', \
             starting with a letter or digit"
        ))
    }
}

/// Hostnames: what sethostname(2) accepts (1-64 bytes), restricted to printable ASCII
/// without whitespace so /etc/hosts stays well-formed.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid hostname {h:?}: 1-64 printable ASCII characters, no spaces"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(h: u16, c: u16, p: &str, ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: h,
            container_port: c,
            protocol: p.into(),
            host_ip: ip.map(str::to_owned),
        }
    }

    #[test]
    fn ports_parse() {
        assert_eq!(parse_port("8080:80").unwrap(), pm(8080, 80, "tcp", None));
        assert_eq!(parse_port("53:53/udp").unwrap(), pm(53, 53, "udp", None));
        assert_eq!(parse_port("53:53/TCP").unwrap(), pm(53, 53, "tcp", None));
        assert_eq!(
            parse_port("127.0.0.1:8080:80").unwrap(),
            pm(8080, 80, "tcp", Some("127.0.0.1"))
        );
        assert_eq!(
            parse_port("[::1]:8080:80/udp").unwrap(),
            pm(8080, 80, "udp", Some("::1"))
        );
        for bad in [
            "80",
            "0:80",
            "80:0",
            "70000:80",
            "a:b",
            "8080:80/sctp",
            "x:1:2",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_json_is_portmap_capability() {
        let v = serde_json::to_value(pm(8080, 80, "tcp", None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
        );
        let v = serde_json::to_value(pm(1, 2, "udp", Some("10.0.0.1"))).unwrap();
        assert_eq!(v["hostIP"], "10.0.0.1");
    }

    #[test]
    fn labels_and_names() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", "-a", "a/b", "a b", ".", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_hostname("box").is_ok());
        assert!(validate_hostname("a b").is_err());
    }

    #[test]
    fn command_line_shapes() {
        let c = Cli::try_parse_from(["reef-run", "--name", "a", "--", "sh", "-c", "x"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.run.command, ["sh", "-c", "x"]);
        let c = Cli::try_parse_from(["reef-run", "ps"]).unwrap();
        assert!(matches!(c.command, Some(Sub::Ps { .. })));
        let c = Cli::try_parse_from(["reef-run", "rm", "-f", "a", "b"]).unwrap();
        assert!(matches!(c.command, Some(Sub::Rm { force: true, ref names }) if names.len() == 2));
        let c = Cli::try_parse_from(["reef-run", "--", "ps"]).unwrap();
        assert!(c.command.is_none());
        assert!(Cli::try_parse_from(["reef-run"]).is_err());
        assert!(Cli::try_parse_from(["reef-run", "--join", "a", "--net", "f", "--", "x"]).is_err());
        let c =
            Cli::try_parse_from(["reef-run", "-p", "1:2", "-p", "3:4/udp", "--", "true"]).unwrap();
        assert_eq!(c.run.ports.len(), 2);
    }
}
