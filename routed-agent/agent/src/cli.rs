//! reef-agent's command line. It lives in the library so reef-docgen renders the man page and
//! completions from this one definition.

use crate::log::LogFormat;
use clap::{CommandFactory, Parser};
use reef_etcd::cli::EtcdArgs;

#[derive(Parser)]
#[command(
    name = "reef-agent",
    about = "Reef's per-host agent: routes between nodes, natOutgoing, liveness",
    long_about = "Reef's per-host agent. It registers this node in etcd (its underlay \
                  address is --iface's), keeps an etcd lease as its heartbeat, watches the \
                  cluster state and programs the host's kernel to match: routes to the other \
                  nodes' address blocks (mode routed) or the reef.vxlan overlay (vxlan, \
                  vxlan-crosssubnet), natOutgoing masquerade, services (virtual IPs and node \
                  ports) and network policy. It reconciles against the kernel every --resync \
                  seconds and publishes its problems and counts for `reefctl status`.\n\n\
                  It needs root, and runs until SIGTERM or SIGINT. `reefctl init` writes the \
                  cluster configuration it reads.",
    override_usage = "reef-agent --etcd URL[,URL...] --node NAME --iface UNDERLAY_IF [OPTIONS]",
    after_help = "--etcd (or $REEF_ETCD), --node (or $REEF_NODE) and --iface are required. \
                  Logs one line per event on stderr (levels from $RUST_LOG, default info). \
                  Serves /metrics (Prometheus) and /healthz on --metrics-addr.",
    version
)]
pub struct Cli {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// This node's name (the `nodeName` its CNI configs use).
    #[arg(long, env = "REEF_NODE", value_name = "NAME")]
    pub node: String,
    /// The underlay interface: its address is where other nodes send this node's pod traffic.
    #[arg(long, value_name = "UNDERLAY_IF")]
    pub iface: String,
    /// Seconds without a heartbeat after which the node reads as not alive.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=3600))]
    pub lease_ttl: i64,
    /// Seconds between full reconciliations against the kernel.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync: u64,
    /// Address of the /metrics and /healthz endpoint, or `off`. Loopback by default: expose
    /// it wider only on purpose.
    #[arg(
        long,
        env = "REEF_METRICS_ADDR",
        value_name = "ADDR:PORT|off",
        default_value = "127.0.0.1:9653",
        value_parser = metrics_addr
    )]
    pub metrics_addr: MetricsAddr,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Firewall driver for natOutgoing, services and policy: nftables, iptables (follows the
    /// host's iptables backend, nft or legacy) or auto (nftables when the kernel has it).
    /// Use the same as the host's CNI plugins (`"firewall"` in their config).
    #[arg(
        long,
        env = "REEF_FIREWALL_DRIVER",
        value_name = "nftables|iptables|auto",
        default_value = "nftables"
    )]
    pub firewall: reef_firewall::DriverKind,
}

/// `--metrics-addr`: where to serve, or nowhere.
#[derive(Clone, Copy, Debug)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

#[derive(Debug, thiserror::Error)]
#[error("{0} (expected ADDR:PORT, like 127.0.0.1:9653, or off)")]
pub struct BadMetricsAddr(std::net::AddrParseError);

fn metrics_addr(s: &str) -> Result<MetricsAddr, BadMetricsAddr> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(BadMetricsAddr)
}

/// The clap command, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}
