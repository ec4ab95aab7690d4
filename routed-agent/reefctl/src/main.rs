//! reefctl: the operator CLI for a Reef cluster (state in etcd).

mod admin;
mod objects;
mod policies;
mod policy_show;
mod service_show;
mod services;
mod show;
mod trace;

use clap::Parser;
use reef_etcd::{Etcd, EtcdConfig};
use reef_schema::{ClusterConfig, Mode, Pool};
use reefctl::cli::{
    BlockCmd, Cli, Cmd, IpamCmd, NamespaceCmd, NodeCmd, Output, PolicyCmd, ServiceCmd,
};
use serde_json::{json, Value};
use show::{gc_report, ipam_show, node_table, num};
use std::process::ExitCode;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("reefctl: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one verb that needs no cluster.
    if let Cmd::Completion { shell } = cli.command {
        use std::io::Write;
        let script = reefctl::cli::completion(shell);
        let mut out = std::io::stdout().lock();
        return match out.write_all(&script).and_then(|()| out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            // `reefctl completion bash | head`: a reader that left is no error worth a line.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::FAILURE,
            Err(e) => fail(format!("cannot write the completion script: {e}")),
        };
    }
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
            // A trace that ends in a drop exits 1, so scripts can assert on it.
            if matches!(cli.command, Cmd::Trace { .. })
                && value.get("allowed") != Some(&Value::Bool(true))
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        // Arguments that name nothing traceable are a usage error, as clap's own.
        Err(CtlError::Trace(e)) => {
            eprintln!("reefctl: {e}");
            ExitCode::from(2)
        }
        Err(e) => fail(describe(&cli, &e)),
    }
}

/// The one-line message; with `--verbose`, the full underlying etcd error on the next line.
fn describe(cli: &Cli, e: &CtlError) -> String {
    match e.etcd().and_then(reef_etcd::Error::detail) {
        Some(detail) if cli.verbose => format!("{e}\n  detail: {detail}"),
        _ => e.to_string(),
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
    #[error(transparent)]
    Service(#[from] services::ServiceError),
    #[error(transparent)]
    Policy(#[from] policies::PolicyError),
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    #[error("{0}: {1}")]
    Manifest(String, #[source] Box<reef_manifest::ManifestError>),
    #[error("cannot read {0}: {1}")]
    Read(String, #[source] std::io::Error),
}

impl CtlError {
    /// The etcd error underneath, wherever it surfaced.
    fn etcd(&self) -> Option<&reef_etcd::Error> {
        match self {
            CtlError::Etcd(e)
            | CtlError::Admin(admin::AdminError::Etcd(e))
            | CtlError::Service(services::ServiceError::Etcd(e))
            | CtlError::Policy(policies::PolicyError::Etcd(e)) => Some(e),
            CtlError::Admin(admin::AdminError::Ipam(reef_ipam::cluster::ClusterError::Etcd(e))) => {
                Some(e)
            }
            _ => None,
        }
    }
}

type Res = Result<(String, Value), CtlError>;

/// The manifest's text: the file, or stdin for `-`.
fn read_manifest(file: &str) -> Result<String, CtlError> {
    use std::io::Read;
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Read("stdin".into(), e))?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).map_err(|e| CtlError::Read(file.into(), e))
    }
}

/// What `apply -f` / `delete -f` will do, decided before etcd is contacted: a manifest that
/// does not parse or uses an unsupported field changes nothing.
enum Manifest {
    Apply(Vec<reef_manifest::Object>),
    Delete(Vec<reef_manifest::ObjectRef>),
}

fn parse_manifest(cmd: &Cmd) -> Result<Option<Manifest>, CtlError> {
    match cmd {
        Cmd::Apply { file } => {
            let text = read_manifest(file)?;
            let objects = reef_manifest::parse_objects(&text)
                .map_err(|e| CtlError::Manifest(file.clone(), Box::new(e)))?;
            Ok(Some(Manifest::Apply(objects)))
        }
        Cmd::Delete { file } => {
            let text = read_manifest(file)?;
            let refs = reef_manifest::parse_refs(&text)
                .map_err(|e| CtlError::Manifest(file.clone(), Box::new(e)))?;
            Ok(Some(Manifest::Delete(refs)))
        }
        _ => Ok(None),
    }
}

async fn run(cli: &Cli, cfg: &EtcdConfig) -> Res {
    let manifest = parse_manifest(&cli.command)?;
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
            service_cidr,
            node_port_range,
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
                cluster_id: None,
                service_cidr: Some(*service_cidr),
                node_port_range: Some(*node_port_range),
            };
            let config = admin::init(&mut etcd, &config, *force).await?;
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
        Cmd::Apply { .. } | Cmd::Delete { .. } => match manifest {
            Some(Manifest::Apply(objects)) => objects::apply(&mut etcd, &objects).await,
            Some(Manifest::Delete(refs)) => objects::delete(&mut etcd, &refs).await,
            None => Err(CtlError::Usage("no manifest".into())),
        },
        Cmd::Policy {
            command:
                PolicyCmd::Ls {
                    namespace,
                    all_namespaces,
                },
        } => {
            let state = load_state(&mut etcd).await?;
            let ns = (!*all_namespaces).then_some(namespace.as_str());
            Ok(policy_show::policy_list(&state, ns))
        }
        Cmd::Policy {
            command: PolicyCmd::Show(reefctl::cli::Named { name, namespace }),
        } => {
            let state = load_state(&mut etcd).await?;
            let p = state
                .policy(namespace, name)
                .ok_or_else(|| policies::PolicyError::NotFound(format!("{namespace}/{name}")))?;
            Ok(policy_show::policy_show(&state, p))
        }
        Cmd::Policy {
            command: PolicyCmd::Rm(reefctl::cli::Named { name, namespace }),
        } => {
            policies::delete_policy(&mut etcd, namespace, name).await?;
            Ok(policy_show::policy_deleted(namespace, name))
        }
        Cmd::Trace { src, dst, flow } => {
            let state = load_state(&mut etcd).await?;
            let t = trace::trace(&state, src, dst, *flow)?;
            Ok(trace::render(&t))
        }
        Cmd::Namespace {
            command: NamespaceCmd::Ls,
        } => {
            let state = load_state(&mut etcd).await?;
            Ok(policy_show::namespace_list(&state))
        }
        Cmd::Namespace {
            command: NamespaceCmd::Label { namespace, labels },
        } => {
            let changes = labels
                .iter()
                .map(|l| policies::parse_label_change(l))
                .collect::<Result<Vec<_>, _>>()?;
            let (ns, changed) = policies::label_namespace(&mut etcd, namespace, &changes).await?;
            Ok(policy_show::labeled(&ns, changed))
        }
        Cmd::Service {
            command:
                ServiceCmd::Ls {
                    namespace,
                    all_namespaces,
                },
        } => {
            let ns = (!*all_namespaces).then_some(namespace.as_str());
            let view = services::ServiceView::load(&mut etcd, ns).await?;
            for e in &view.unreadable {
                eprintln!("reefctl: skipped {e}");
            }
            Ok(service_show::list(&view, *all_namespaces))
        }
        Cmd::Service {
            command: ServiceCmd::Show(reefctl::cli::Named { name, namespace }),
        } => {
            let view = services::ServiceView::load(&mut etcd, Some(namespace)).await?;
            let svc = view
                .services
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| {
                    services::ServiceError::NotFound(reef_schema::services::service_id(
                        namespace, name,
                    ))
                })?;
            Ok(service_show::show(&view, svc))
        }
        Cmd::Service {
            command: ServiceCmd::Rm(reefctl::cli::Named { name, namespace }),
        } => {
            let done = services::delete(&mut etcd, &[(namespace.clone(), name.clone())]).await?;
            Ok(service_show::deleted(&done))
        }
        Cmd::Ipam {
            command: IpamCmd::Show,
        } => {
            let snap = admin::snapshot(&mut etcd).await?;
            warn_unreadable(&snap);
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
            warn_unreadable(&snap);
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
            warn_unreadable(&snap);
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
        // main prints it before anything connects.
        Cmd::Completion { .. } => Err(CtlError::Usage("completion needs no etcd".into())),
        Cmd::Status => {
            let snap = match admin::snapshot(&mut etcd).await {
                Ok(s) => s,
                Err(e) => return Err(unreachable_status(cli, cfg, e.into())),
            };
            warn_unreadable(&snap);
            let value = json!({
                "etcd": "ok",
                "endpoints": etcd.endpoints(),
                "initialised": snap.config.is_some(),
                "mode": snap.config.as_ref().map(|c| c.mode.as_str()),
                "pools": snap.config.as_ref().map(|c| c.pools.iter().map(|p| p.cidr.to_string()).collect::<Vec<_>>()),
                "nodes": node_table(&snap).1,
                "blocks": snap.blocks.len(),
                "handles": snap.handles.len(),
                "unreadable": snap.unreadable.iter().map(|(e, _)| e.key.clone()).collect::<Vec<_>>(),
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
            for (e, _) in &snap.unreadable {
                text.push_str(&format!("unreadable record {}: {}\n", e.key, e.detail));
            }
            Ok((text, value))
        }
    }
}

/// The cluster as policy and trace read it; records that do not decode are named on stderr.
async fn load_state(etcd: &mut Etcd) -> Result<policies::ClusterState, CtlError> {
    let state = policies::ClusterState::load(etcd).await?;
    for e in &state.unreadable {
        eprintln!("reefctl: skipped {e}");
    }
    Ok(state)
}

/// Names every record the snapshot had to leave out, on stderr (stdout stays the document
/// asked for), with the commands that repair them.
fn warn_unreadable(snap: &admin::Snapshot) {
    for (e, _) in &snap.unreadable {
        eprintln!("reefctl: skipped {e} (`reefctl ipam gc` deletes it; `reefctl init --force` rewrites a config)");
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
