//! reef-agent: `reef-agent --etcd URL[,URL] --node NAME --iface UNDERLAY_IF`.

use clap::Parser;
use reef_agent::agent::{self, Options};
use reef_agent::cli::Cli;
use std::process::ExitCode;
use std::time::Duration;

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
        firewall: cli.firewall.resolve(),
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
