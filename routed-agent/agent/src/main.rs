//! reef-agent: `reef-agent --etcd URL[,URL] --node NAME --iface UNDERLAY_IF`.

use clap::Parser;
use reef_agent::agent::{self, Options};
use reef_agent::log::LogFormat;
use reef_etcd::cli::EtcdArgs;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "reef-agent",
    about = "Reef's per-host agent: routes between nodes, natOutgoing, liveness",
    override_usage = "reef-agent --etcd URL[,URL...] --node NAME --iface UNDERLAY_IF [OPTIONS]",
    after_help = "--etcd (or $REEF_ETCD), --node (or $REEF_NODE) and --iface are required. \
                  Logs one line per event on stderr (levels from $RUST_LOG, default info). \
                  Serves /metrics (Prometheus) and /healthz on --metrics-addr.",
    version
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// This node's name (the `nodeName` its CNI configs use).
    #[arg(long, env = "REEF_NODE", value_name = "NAME")]
    node: String,
    /// The underlay interface: its address is where other nodes send this node's pod traffic.
    #[arg(long, value_name = "UNDERLAY_IF")]
    iface: String,
    /// Seconds without a heartbeat after which the node reads as not alive.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=3600))]
    lease_ttl: i64,
    /// Seconds between full reconciliations against the kernel.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    resync: u64,
    /// Address of the /metrics and /healthz endpoint, or `off`. Loopback by default: expose
    /// it wider only on purpose.
    #[arg(long, env = "REEF_METRICS_ADDR", value_name = "ADDR:PORT|off", default_value = "127.0.0.1:9653", value_parser = metrics_addr)]
    metrics_addr: MetricsAddr,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug)]
struct MetricsAddr(Option<std::net::SocketAddr>);

#[derive(Debug, thiserror::Error)]
#[error("{0} (expected ADDR:PORT, like 127.0.0.1:9653, or off)")]
struct BadMetricsAddr(std::net::AddrParseError);

fn metrics_addr(s: &str) -> Result<MetricsAddr, BadMetricsAddr> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(BadMetricsAddr)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = reef_agent::log::init(cli.log_format) {
        eprintln!("reef-agent: {e}");
        return ExitCode::from(2);
    }
    let valid = !cli.node.is_empty()
        && cli
            .node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        eprintln!("reef-agent: invalid --node \"{}\"", cli.node);
        return ExitCode::from(2);
    }
    if cli.etcd.etcd.is_empty() {
        eprintln!("reef-agent: no etcd endpoint: use --etcd URL or set REEF_ETCD");
        return ExitCode::from(2);
    }
    let opts = Options {
        etcd: cli.etcd.config(),
        node: cli.node,
        iface: cli.iface,
        lease_ttl: cli.lease_ttl,
        resync: Duration::from_secs(cli.resync),
        metrics_addr: cli.metrics_addr.0,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reef-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::warn!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}
