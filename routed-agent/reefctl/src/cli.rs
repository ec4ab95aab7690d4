//! reefctl's command line. It lives in the library so reef-docgen renders the man pages and
//! completions from the one definition the binary parses with (and `reefctl completion`
//! prints exactly what is installed).

use clap::{ArgGroup, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use ipnetwork::IpNetwork;
use reef_etcd::cli::EtcdArgs;
use reef_schema::policy::L4Protocol;
use reef_schema::PortRange;
use std::net::IpAddr;

#[derive(Parser)]
#[command(
    name = "reefctl",
    about = "Operate a Reef cluster (state in etcd)",
    version
)]
pub struct Cli {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format: text tables, or one JSON document on stdout (for scripts).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub output: Output,
    /// On failure, also print the full underlying error (e.g. etcd's gRPC status and
    /// transport error chain) after the one-line message.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Write the cluster configuration: pools, block size, mode. At least one of --pool and
    /// --pool6 is required.
    #[command(group(
        ArgGroup::new("pools").args(["pool", "pool6"]).required(true).multiple(true)
    ))]
    Init {
        /// IPv4 pool, e.g. 10.244.0.0/16 (this and/or --pool6 is required).
        #[arg(long, value_name = "CIDR")]
        pool: Option<IpNetwork>,
        /// IPv6 pool, e.g. fd00:244::/48 (this and/or --pool is required).
        #[arg(long, value_name = "CIDR")]
        pool6: Option<IpNetwork>,
        /// IPv4 block prefix length (26 = 64 addresses per block).
        #[arg(long, default_value_t = 26, value_name = "N")]
        block_size: u8,
        /// IPv6 block prefix length (122 = 64 addresses per block).
        #[arg(long, default_value_t = 122, value_name = "N")]
        block_size6: u8,
        /// Data plane: routed (plain L3 routes, hosts on one L2 segment), vxlan (overlay
        /// between all hosts), vxlan-crosssubnet (routes within a subnet, VXLAN across).
        #[arg(long, value_parser = ["routed", "vxlan", "vxlan-crosssubnet"])]
        mode: String,
        /// VXLAN network identifier of the overlay (vxlan modes; ignored by routed).
        #[arg(long, default_value_t = 1, value_name = "N")]
        vni: u32,
        /// Do not masquerade pod traffic leaving the pools.
        #[arg(long)]
        no_nat_outgoing: bool,
        /// Where service virtual IPs are allocated from.
        #[arg(long, default_value = "10.96.0.0/16", value_name = "CIDR")]
        service_cidr: IpNetwork,
        /// Ports NodePort services are allocated from (inclusive).
        #[arg(long, default_value = "30000-32767", value_name = "A-B", value_parser = parse_port_range)]
        node_port_range: PortRange,
        /// Re-initialise even if it drops pools in use or switches mode.
        #[arg(long)]
        force: bool,
    },
    /// Create or update the objects of Kubernetes manifests (YAML or JSON; several documents
    /// separated by `---`, or a `kind: List`): v1 Service, networking.k8s.io/v1
    /// NetworkPolicy, v1 Namespace (its labels, which a Namespace apply replaces). Every
    /// document is checked before anything is written.
    Apply {
        /// The manifest file, or `-` for stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
    },
    /// Delete the objects a manifest names (kind, namespace, name). Deleting a Namespace
    /// deletes only its record: the namespace keeps its policies (Kubernetes would delete
    /// them with it) and goes back to the one label every namespace has,
    /// kubernetes.io/metadata.name=<name>.
    Delete {
        /// The manifest file, or `-` for stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
    },
    /// Services: virtual IPs and node ports for the pods a selector picks.
    #[command(alias = "svc")]
    Service {
        #[command(subcommand)]
        command: ServiceCmd,
    },
    /// Network policies (Kubernetes NetworkPolicy semantics).
    #[command(alias = "netpol")]
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Namespaces: the labels policies' namespaceSelectors read.
    #[command(alias = "ns")]
    Namespace {
        #[command(subcommand)]
        command: NamespaceCmd,
    },
    /// Trace a flow through the cluster as it is now: source host, service translation
    /// (the endpoints it may choose), route or tunnel, destination host, and the verdict at
    /// each policy point (egress at a source pod, ingress at a destination pod). Exit
    /// status: 0 allowed, 1 dropped, 2 usage error (bad arguments, unknown pod).
    #[command(
        after_help = "SRC and DST are pods (NAMESPACE/NAME, or NAME in default) or \
        addresses (matched to the pod or node that holds them). PORT/PROTO is e.g. 80/tcp, \
        53/udp, 5000/sctp; without it the flow is ICMP. A flow to a service is judged on each \
        endpoint it may be translated to, and is allowed only if every endpoint allows it."
    )]
    Trace {
        #[arg(value_name = "SRC", value_parser = parse_end)]
        src: EndArg,
        #[arg(value_name = "DST", value_parser = parse_end)]
        dst: EndArg,
        #[arg(value_name = "PORT/PROTO", value_parser = parse_flow)]
        flow: Option<(L4Protocol, u16)>,
    },
    /// Address management.
    Ipam {
        #[command(subcommand)]
        command: IpamCmd,
    },
    /// Nodes.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// Blocks.
    Block {
        #[command(subcommand)]
        command: BlockCmd,
    },
    /// Cluster overview.
    Status,
    /// Print the completion script for a shell on stdout, as `kubectl completion`: e.g.
    /// `source <(reefctl completion bash)` in ~/.bashrc. Needs no etcd.
    #[command(after_help = r#"Per user:
  bash: reefctl completion bash > ~/.local/share/bash-completion/completions/reefctl
  zsh:  reefctl completion zsh > "${fpath[1]}/_reefctl"
  fish: reefctl completion fish > ~/.config/fish/completions/reefctl.fish
scripts/install.sh installs the same scripts for every user."#)]
    Completion {
        #[arg(value_enum, value_name = "SHELL")]
        shell: Shell,
    },
}

#[derive(Subcommand)]
pub enum IpamCmd {
    /// Pools, blocks per node, utilisation, borrowed addresses.
    Show,
    /// Release leaked addresses: handles of removed nodes, allocations without a handle,
    /// empty blocks of removed nodes.
    Gc {
        /// Limit to one node's leaks (still cluster-consistent).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes: underlay address, alive (agent lease), routes, addresses, blocks, and
    /// any routing problem agents report.
    Ls,
    /// Remove a node: release its addresses, delete its blocks and its record.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// List services: type, VIP, ports (port:nodePort/protocol), endpoints.
    Ls {
        /// Namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// One service: VIP, ports, node ports, and its endpoints (pod, address, node, whether
    /// that node's agent is alive).
    Show(Named),
    /// Delete a service (and free its VIP and node ports).
    Rm(Named),
}

/// One namespaced object by name (`service show|rm`, `policy show|rm`).
#[derive(clap::Args)]
pub struct Named {
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// List policies: namespace, name, pod selector, policy types.
    Ls {
        /// Namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
    },
    /// One policy: the pods it selects now (node, addresses), each rule's peers as resolved
    /// now, its ports, and the packets it allowed and dropped (summed over the agents).
    Show(Named),
    /// Delete a policy.
    Rm(Named),
}

#[derive(Subcommand)]
pub enum NamespaceCmd {
    /// List namespaces: applied ones and those that exist implicitly (pods, services or
    /// policies in them), with their labels.
    Ls,
    /// Set (KEY=VALUE) or remove (KEY-) labels of a namespace, creating its record if it has
    /// none. kubernetes.io/metadata.name is always the namespace's name.
    Label {
        namespace: String,
        #[arg(
            value_name = "KEY=VALUE|KEY-",
            required = true,
            allow_hyphen_values = true
        )]
        labels: Vec<String>,
    },
}

pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    PortRange::parse(s)
        .ok_or_else(|| format!("{s:?} is not a port range A-B (1 <= A <= B <= 65535)"))
}

#[derive(Subcommand)]
pub enum BlockCmd {
    /// List blocks: owner node, addresses used, capacity.
    Ls,
}

/// One end as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndArg {
    /// `namespace/name` (or `name`, in `default`).
    Pod {
        namespace: String,
        name: String,
    },
    Addr(IpAddr),
}

impl std::fmt::Display for EndArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndArg::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            EndArg::Addr(ip) => write!(f, "{ip}"),
        }
    }
}

/// SRC / DST: an IP address, or a pod as `namespace/name` (`name` alone: namespace default).
pub fn parse_end(s: &str) -> Result<EndArg, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(EndArg::Addr(ip));
    }
    let (namespace, name) = match s.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("default", s),
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!(
            "{s:?} is neither an IP address nor a pod as NAMESPACE/NAME"
        ));
    }
    Ok(EndArg::Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// A flow: `PORT/PROTO` (`80/tcp`, `53/udp`, `5000/sctp`; a bare `PORT` is TCP).
pub fn parse_flow(s: &str) -> Result<(L4Protocol, u16), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = L4Protocol::parse(&proto.to_ascii_uppercase())
        .ok_or_else(|| format!("{proto:?} is not a protocol (tcp, udp or sctp)"))?;
    match port.parse::<u16>() {
        Ok(p) if p >= 1 => Ok((proto, p)),
        _ => Err(format!("{port:?} is not a port number (1-65535)")),
    }
}

/// The clap command, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// reefctl's completion script for `shell`: `reefctl completion` and reef-docgen both call
/// this, so what is installed is what the verb prints. Rendered into memory because
/// clap_complete panics on a failed write (a closed pipe); the caller reports that instead.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "reefctl", &mut script);
    script
}
