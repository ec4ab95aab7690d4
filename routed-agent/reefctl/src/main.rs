//! reefctl: the operator CLI for a Reef cluster (state in etcd).

mod admin;

use admin::{GcReport, Snapshot};
use clap::{Parser, Subcommand, ValueEnum};
use ipnetwork::IpNetwork;
use reef_etcd::cli::EtcdArgs;
use reef_etcd::{Etcd, EtcdConfig};
use reef_schema::{ClusterConfig, Mode, Pool};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reefctl",
    about = "Operate a Reef cluster (state in etcd)",
    version
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the cluster configuration: pools, block size, mode.
    Init {
        /// IPv4 pool, e.g. 10.244.0.0/16.
        #[arg(long)]
        pool: Option<IpNetwork>,
        /// IPv6 pool, e.g. fd00:244::/48.
        #[arg(long)]
        pool6: Option<IpNetwork>,
        /// IPv4 block prefix length (26 = 64 addresses per block).
        #[arg(long, default_value_t = 26)]
        block_size: u8,
        /// IPv6 block prefix length.
        #[arg(long, default_value_t = 122)]
        block_size6: u8,
        #[arg(long, value_parser = ["routed", "vxlan", "vxlan-crosssubnet"])]
        mode: String,
        #[arg(long, default_value_t = 1)]
        vni: u32,
        /// Do not masquerade pod traffic leaving the pools.
        #[arg(long)]
        no_nat_outgoing: bool,
        /// Re-initialise even if it drops pools in use or switches mode.
        #[arg(long)]
        force: bool,
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
}

#[derive(Subcommand)]
enum IpamCmd {
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
enum NodeCmd {
    Ls,
    /// Remove a node: release its addresses, delete its blocks and its record.
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
enum BlockCmd {
    Ls,
}

/// A count as a JSON number when it fits (IPv6 pools can exceed u64).
fn num(n: u128) -> Value {
    u64::try_from(n)
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(n.to_string()))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("reefctl: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.etcd.etcd.is_empty() {
        return fail("no etcd endpoint: use --etcd URL or set REEF_ETCD");
    }
    let cfg = cli.etcd.config();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start runtime: {e}")),
    };
    match rt.block_on(run(&cli, &cfg)) {
        Ok((text, value)) => {
            match cli.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                ),
                Output::Text => print!("{text}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error(transparent)]
    Etcd(#[from] reef_etcd::Error),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// Flags that do not make a cluster config.
    #[error("{0}")]
    Usage(String),
}

type Res = Result<(String, Value), CtlError>;

async fn run(cli: &Cli, cfg: &EtcdConfig) -> Res {
    let mut etcd = match Etcd::connect(cfg).await {
        Ok(etcd) => etcd,
        Err(e) if matches!(cli.command, Cmd::Status) => {
            return Err(unreachable_status(cli, cfg, e.into()))
        }
        Err(e) => return Err(e.into()),
    };
    match &cli.command {
        Cmd::Init {
            pool,
            pool6,
            block_size,
            block_size6,
            mode,
            vni,
            no_nat_outgoing,
            force,
        } => {
            let mut pools = Vec::new();
            if let Some(p) = pool {
                if !p.is_ipv4() {
                    return Err(CtlError::Usage(format!(
                        "--pool {p} is not IPv4 (use --pool6)"
                    )));
                }
                pools.push(Pool {
                    cidr: *p,
                    block_prefix: *block_size,
                    nat_outgoing: !no_nat_outgoing,
                });
            }
            if let Some(p) = pool6 {
                if p.is_ipv4() {
                    return Err(CtlError::Usage(format!("--pool6 {p} is not IPv6")));
                }
                pools.push(Pool {
                    cidr: *p,
                    block_prefix: *block_size6,
                    nat_outgoing: !no_nat_outgoing,
                });
            }
            if pools.is_empty() {
                return Err(CtlError::Usage("init needs --pool and/or --pool6".into()));
            }
            let mode =
                Mode::parse(mode).ok_or_else(|| CtlError::Usage(format!("unknown mode {mode}")))?;
            let config = ClusterConfig {
                pools,
                mode,
                vni: *vni,
            };
            admin::init(&mut etcd, &config, *force).await?;
            let text = format!(
                "initialised: mode {}, pools {}\n",
                mode.as_str(),
                config
                    .pools
                    .iter()
                    .map(|p| format!("{} (/{} blocks)", p.cidr, p.block_prefix))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok((text, serde_json::to_value(&config).unwrap_or_default()))
        }
        Cmd::Ipam {
            command: IpamCmd::Show,
        } => {
            let snap = admin::snapshot(&mut etcd).await?;
            Ok(ipam_show(&snap))
        }
        Cmd::Ipam {
            command: IpamCmd::Gc { node },
        } => {
            let report = admin::gc(&mut etcd, node.as_deref(), None).await?;
            Ok(gc_report(&report))
        }
        Cmd::Node {
            command: NodeCmd::Ls,
        } => {
            let snap = admin::snapshot(&mut etcd).await?;
            Ok(node_table(&snap))
        }
        Cmd::Node {
            command: NodeCmd::Rm { name },
        } => {
            let report = admin::node_rm(&mut etcd, name).await?;
            let (text, value) = gc_report(&report);
            Ok((format!("node {name} removed\n{text}"), value))
        }
        Cmd::Block {
            command: BlockCmd::Ls,
        } => {
            let snap = admin::snapshot(&mut etcd).await?;
            let mut text = format!(
                "{:<28} {:<20} {:>6} {:>9}\n",
                "BLOCK", "NODE", "USED", "CAPACITY"
            );
            let mut rows = Vec::new();
            for (_, _, b) in &snap.blocks {
                text.push_str(&format!(
                    "{:<28} {:<20} {:>6} {:>9}\n",
                    b.cidr.to_string(),
                    b.node,
                    b.allocations.len(),
                    b.capacity()
                ));
                rows.push(json!({"cidr": b.cidr.to_string(), "node": b.node, "used": b.allocations.len(), "capacity": num(b.capacity())}));
            }
            Ok((text, Value::Array(rows)))
        }
        Cmd::Status => {
            let snap = match admin::snapshot(&mut etcd).await {
                Ok(s) => s,
                Err(e) => return Err(unreachable_status(cli, cfg, e.into())),
            };
            let value = json!({
                "etcd": "ok",
                "endpoints": etcd.endpoints(),
                "initialised": snap.config.is_some(),
                "mode": snap.config.as_ref().map(|c| c.mode.as_str()),
                "pools": snap.config.as_ref().map(|c| c.pools.iter().map(|p| p.cidr.to_string()).collect::<Vec<_>>()),
                "nodes": node_table(&snap).1,
                "blocks": snap.blocks.len(),
                "handles": snap.handles.len(),
            });
            let mut text = match &snap.config {
                None => format!("etcd {}: ok\ncluster: not initialised (run reefctl init)\n", etcd.endpoints()),
                Some(c) => format!(
                    "etcd {}: ok\nmode: {}\npools: {}\nnodes: {} ({} alive)  blocks: {}  allocated handles: {}\n",
                    etcd.endpoints(),
                    c.mode.as_str(),
                    c.pools.iter().map(|p| p.cidr.to_string()).collect::<Vec<_>>().join(", "),
                    snap.nodes.len(),
                    snap.nodes.iter().filter(|n| snap.agents.contains_key(*n)).count(),
                    snap.blocks.len(),
                    snap.handles.len()
                ),
            };
            if snap.config.is_some() {
                text.push_str(&node_table(&snap).0);
            }
            Ok((text, value))
        }
    }
}

/// `status` must still report when etcd is down: print the JSON document (with the error)
/// for `--output json`, and fail.
fn unreachable_status(cli: &Cli, cfg: &EtcdConfig, e: CtlError) -> CtlError {
    if cli.output == Output::Json {
        let doc = json!({"etcd": e.to_string(), "endpoints": cfg.endpoints.join(","),
                         "initialised": Value::Null});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    e
}

/// Every node: underlay address, whether its agent is alive (lease), the routes the agent
/// reports having programmed, its blocks, and any routing problem agents report about it.
fn node_table(snap: &Snapshot) -> (String, Value) {
    let mut text = format!(
        "{:<20} {:<20} {:<6} {:>6} {:>9}  BLOCKS\n",
        "NODE", "ADDRESS", "ALIVE", "ROUTES", "ADDRESSES"
    );
    let mut rows = Vec::new();
    let mut problems_text = String::new();
    for n in &snap.nodes {
        let blocks: Vec<String> = snap
            .blocks
            .iter()
            .filter(|(_, _, b)| &b.node == n)
            .map(|(_, _, b)| b.cidr.to_string())
            .collect();
        let addrs = snap
            .handles
            .iter()
            .filter(|(_, h)| &h.node == n)
            .map(|(_, h)| h.ips.len())
            .sum::<usize>();
        let address = snap.node_records.get(n).and_then(|r| r.address);
        let agent = snap.agents.get(n);
        // Problems any live agent reports about this node (e.g. unreachable next hop), and
        // this node's own agent's problems.
        let mut problems = serde_json::Map::new();
        for (reporter, st) in &snap.agents {
            for (about, why) in &st.problems {
                if about == n || reporter == n {
                    let k = if reporter == n {
                        about.clone()
                    } else {
                        format!("seen from {reporter}")
                    };
                    problems_text.push_str(&format!("  {n}: {k}: {why}\n"));
                    problems.insert(k, Value::from(why.clone()));
                }
            }
        }
        text.push_str(&format!(
            "{n:<20} {:<20} {:<6} {:>6} {addrs:>9}  {}\n",
            address.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            if agent.is_some() { "yes" } else { "no" },
            agent
                .map(|a| a.routes.to_string())
                .unwrap_or_else(|| "-".into()),
            blocks.join(",")
        ));
        rows.push(json!({
            "name": n,
            "address": address.map(|a| a.to_string()),
            "alive": agent.is_some(),
            "routes": agent.map(|a| a.routes),
            "mode": agent.map(|a| a.mode.clone()),
            "blocks": blocks,
            "addresses": addrs,
            "problems": problems,
        }));
    }
    if !problems_text.is_empty() {
        text.push_str("PROBLEMS\n");
        text.push_str(&problems_text);
    }
    (text, Value::Array(rows))
}

fn ipam_show(snap: &Snapshot) -> (String, Value) {
    let mut text = String::new();
    let mut pools = Vec::new();
    if let Some(c) = &snap.config {
        text.push_str("POOLS\n");
        for p in &c.pools {
            let blocks: Vec<_> = snap
                .blocks
                .iter()
                .filter(|(_, _, b)| p.cidr.contains(b.cidr.network()))
                .collect();
            let capacity: u128 = blocks.iter().map(|(_, _, b)| b.capacity()).sum();
            let used: usize = blocks.iter().map(|(_, _, b)| b.allocations.len()).sum();
            text.push_str(&format!(
                "  {:<24} /{} blocks: {} claimed of {}, {used} of {capacity} addresses in claimed blocks used\n",
                p.cidr.to_string(),
                p.block_prefix,
                blocks.len(),
                p.block_count()
            ));
            pools.push(json!({"cidr": p.cidr.to_string(), "blockPrefix": p.block_prefix, "blocks": blocks.len(),
                              "capacity": num(capacity), "used": used}));
        }
    } else {
        text.push_str("cluster not initialised (run reefctl init)\n");
    }
    let mut by_node: BTreeMap<&str, Vec<&reef_schema::Block>> = BTreeMap::new();
    for n in &snap.nodes {
        by_node.entry(n.as_str()).or_default();
    }
    for (_, _, b) in &snap.blocks {
        by_node.entry(b.node.as_str()).or_default().push(b);
    }
    let mut nodes = Vec::new();
    text.push_str("NODES\n");
    for (node, blocks) in &by_node {
        let used: usize = snap
            .handles
            .iter()
            .filter(|(_, h)| h.node == *node)
            .map(|(_, h)| h.ips.len())
            .sum();
        text.push_str(&format!("  {node}: {used} addresses\n"));
        let mut rows = Vec::new();
        for b in blocks {
            let lent = b
                .allocations
                .values()
                .filter(|a| a.borrowed_by.is_some())
                .count();
            text.push_str(&format!(
                "    {:<28} {:>4}/{:<4} used{}\n",
                b.cidr.to_string(),
                b.allocations.len(),
                b.capacity(),
                if lent > 0 {
                    format!(" ({lent} borrowed by other nodes)")
                } else {
                    String::new()
                }
            ));
            rows.push(
                json!({"cidr": b.cidr.to_string(), "capacity": num(b.capacity()),
                             "used": b.allocations.len(), "borrowedOut": lent}),
            );
        }
        nodes.push(json!({"name": node, "blocks": rows, "used": used}));
    }
    let mut borrowed = Vec::new();
    if !snap.borrowed.is_empty() {
        text.push_str("BORROWED\n");
    }
    for (ip, rec) in &snap.borrowed {
        let owner = snap
            .blocks
            .iter()
            .find(|(_, _, b)| b.cidr == rec.block)
            .map(|(_, _, b)| b.node.clone())
            .unwrap_or_default();
        text.push_str(&format!(
            "  {ip} used by {} from block {} of {owner}\n",
            rec.node, rec.block
        ));
        borrowed.push(json!({"ip": ip.to_string(), "node": rec.node, "block": rec.block.to_string(), "blockNode": owner}));
    }
    let value = json!({"pools": pools, "nodes": nodes, "borrowed": borrowed, "handles": snap.handles.len()});
    (text, value)
}

fn gc_report(r: &GcReport) -> (String, Value) {
    let text = format!(
        "released {} handles ({} addresses), {} orphan allocations, {} empty blocks\n",
        r.released_handles.len(),
        r.released_ips.len(),
        r.orphan_allocations.len(),
        r.released_blocks.len()
    );
    let value = json!({
        "releasedHandles": r.released_handles,
        "releasedIps": r.released_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "releasedBlocks": r.released_blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        "orphanAllocations": r.orphan_allocations.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
    });
    (text, value)
}
