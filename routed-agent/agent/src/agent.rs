//! The agent's main loop: list, reconcile, watch, apply changes; re-list on any watch error.
//! The kernel keeps the last programmed state through etcd outages and agent restarts: the
//! agent only ever changes what differs, so established traffic never sees a gap.

use crate::backend::{AnyBackend, Backend, Underlay};
use crate::view::{ClusterView, Touched};
use crate::{info, nat, registry, warn};
use reef_etcd::{Etcd, EtcdConfig};
use reef_netlink::{sysctl, Netlink};
use reef_schema::{AgentStatus, Mode, NodeRecord, Pool, PREFIX};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Options {
    pub etcd: EtcdConfig,
    pub node: String,
    pub iface: String,
    pub lease_ttl: i64,
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("underlay interface {iface}: {detail}")]
    Underlay { iface: String, detail: String },
    #[error(transparent)]
    Netlink(#[from] reef_netlink::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The underlay address (first global IPv4, else IPv6, with its prefix), index and MTU of
/// `iface`.
async fn underlay(nl: &Netlink, iface: &str) -> Result<Underlay, AgentError> {
    let err = |detail: String| AgentError::Underlay {
        iface: iface.to_string(),
        detail,
    };
    let link = nl
        .link_by_name(iface)
        .await?
        .ok_or_else(|| err("no such interface".into()))?;
    let addrs = nl.addresses(link.index).await?;
    let global = |a: &&reef_netlink::AddrInfo| match a.address.ip() {
        std::net::IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_loopback(),
    };
    let addr = addrs
        .iter()
        .filter(global)
        .find(|a| a.address.is_ipv4())
        .or_else(|| addrs.iter().find(global))
        .ok_or_else(|| err("has no usable address".into()))?;
    Ok(Underlay {
        address: addr.address,
        index: link.index,
        mtu: link.mtu.unwrap_or(1500),
    })
}

struct State {
    opts: Options,
    record: NodeRecord,
    nl: Netlink,
    underlay: Underlay,
    backend: AnyBackend,
    nat_pools: Option<Vec<Pool>>,
    status: watch::Sender<AgentStatus>,
    alive: watch::Receiver<bool>,
    ready: bool,
    /// Something failed to program: retry soon rather than at the next resync.
    retry: bool,
    /// The data plane has reported this node's VTEP (or that it has none) at least once.
    vtep_known: bool,
}

pub async fn run(opts: Options) -> Result<(), AgentError> {
    let nl = Netlink::current()?;
    let underlay = underlay(&nl, &opts.iface).await?;
    let address = underlay.address;
    sysctl::set("net/ipv4/ip_forward", "1")?;
    let _ = sysctl::set("net/ipv6/conf/all/forwarding", "1");
    let record = NodeRecord {
        name: opts.node.clone(),
        address: Some(address),
        interface: Some(opts.iface.clone()),
        mtu: Some(underlay.mtu),
        vtep_mac: None,
        vtep_ip: None,
    };
    info!(
        "starting",
        node = opts.node,
        iface = opts.iface,
        address = address,
        etcd = opts.etcd.endpoints.join(",")
    );
    let started = now();
    let (status_tx, status_rx) = watch::channel(AgentStatus {
        node: opts.node.clone(),
        pid: std::process::id(),
        mode: "routed".into(),
        started,
        updated: started,
        routes: 0,
        problems: Default::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, alive_rx) = watch::channel(false);
    let hb = tokio::spawn(registry::heartbeat(
        opts.etcd.clone(),
        opts.node.clone(),
        opts.lease_ttl,
        status_rx,
        stop_rx,
        alive_tx,
    ));
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut st = State {
        backend: AnyBackend::for_mode(Mode::Routed, &opts.node, nl.clone(), underlay.clone()),
        nl,
        underlay,
        opts,
        record,
        nat_pools: None,
        status: status_tx,
        alive: alive_rx,
        ready: false,
        retry: false,
        vtep_known: false,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let res = tokio::select! {
            r = session(&mut st) => r,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        if let Err(e) = res {
            // Keep every route as it is: the data plane outlives the control plane.
            warn!("etcd session ended, keeping programmed routes", error = e);
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    info!("stopping; routes stay in place");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), hb).await;
    Ok(())
}

async fn session(st: &mut State) -> Result<(), String> {
    let mut etcd = Etcd::connect_streaming(&st.opts.etcd)
        .await
        .map_err(|e| e.to_string())?;
    if registry::register_node(&mut etcd, &st.record, !st.vtep_known)
        .await
        .map_err(|e| e.to_string())?
    {
        info!("node registered", node = st.record.name);
    }
    let (kvs, rev) = etcd.list_prefix(PREFIX).await.map_err(|e| e.to_string())?;
    let mut view = ClusterView::from_kvs(kvs.iter().map(|kv| {
        (
            std::str::from_utf8(kv.key()).unwrap_or_default(),
            kv.value(),
        )
    }));
    reconcile(st, &mut etcd, &view, true).await?;
    if !st.ready {
        // Ready means: routes reconciled and liveness visible to the cluster.
        let mut alive = st.alive.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|a| *a)).await;
        st.ready = true;
        info!("ready", routes = st.backend_routes());
    }
    let mut watch = etcd
        .watch_prefix(PREFIX, rev + 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut resync = tokio::time::interval(st.opts.resync);
    resync.tick().await;
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            events = watch.next() => {
                let events = events.map_err(|e| e.to_string())?;
                let mut routing = false;
                for ev in &events {
                    match view.apply(&ev.key, ev.value.as_deref()) {
                        Touched::Config | Touched::Routing => routing = true,
                        Touched::Agents | Touched::Nothing => {}
                    }
                }
                if routing {
                    reconcile(st, &mut etcd, &view, false).await?;
                }
            }
            _ = resync.tick() => reconcile(st, &mut etcd, &view, true).await?,
            _ = retry.tick(), if st.retry => reconcile(st, &mut etcd, &view, false).await?,
        }
    }
}

impl State {
    fn backend_routes(&self) -> usize {
        self.status.borrow().routes
    }
}

/// Brings NAT and the data plane in line with `view`, publishes the outcome, and records a
/// changed VTEP in the node's record.
async fn reconcile(
    st: &mut State,
    etcd: &mut Etcd,
    view: &ClusterView,
    full: bool,
) -> Result<(), String> {
    let mut problems = std::collections::BTreeMap::new();
    let mode = view.config.as_ref().map(|c| c.mode);
    let mut full = full;
    if let Some(m) = mode {
        if m != st.backend.mode() {
            info!(
                "data-plane mode",
                from = st.backend.mode().as_str(),
                to = m.as_str()
            );
            st.backend = AnyBackend::for_mode(m, &st.opts.node, st.nl.clone(), st.underlay.clone());
            full = true;
        }
    }
    let pools = view
        .config
        .as_ref()
        .map(|c| c.pools.clone())
        .unwrap_or_default();
    if st.nat_pools.as_ref() != Some(&pools) {
        match nat::apply(&pools) {
            Ok(()) => {
                info!("natOutgoing programmed", pools = pools.len());
                st.nat_pools = Some(pools);
            }
            Err(e) => {
                warn!("natOutgoing failed", error = e);
                problems.insert(st.opts.node.clone(), format!("natOutgoing: {e}"));
            }
        }
    }
    let report = st
        .backend
        .sync(view, full)
        .await
        .map_err(|e| e.to_string())?;
    let vtep_mac = report.vtep.as_ref().map(|(m, _)| m.clone());
    let vtep_ip = report.vtep.as_ref().map(|(_, ip)| *ip);
    if !st.vtep_known || st.record.vtep_mac != vtep_mac || st.record.vtep_ip != vtep_ip {
        st.vtep_known = true;
        st.record.vtep_mac = vtep_mac;
        st.record.vtep_ip = vtep_ip;
        let changed = registry::register_node(etcd, &st.record, false)
            .await
            .map_err(|e| e.to_string())?;
        if changed {
            let vtep = st.record.vtep_ip.map(|i| i.to_string());
            info!(
                "node record updated",
                vtep = vtep.unwrap_or_else(|| "none".into())
            );
        }
    }
    st.retry = report
        .problems
        .values()
        .any(|p| !p.starts_with("node is not") && !p.starts_with("node has no"));
    problems.extend(report.problems.clone());
    let routes = report.routes;
    st.status.send_if_modified(|s| {
        let mode = mode
            .map(|m| m.as_str())
            .unwrap_or("uninitialised")
            .to_string();
        if s.routes == routes && s.problems == problems && s.mode == mode {
            return false;
        }
        s.routes = routes;
        s.problems = problems;
        s.mode = mode;
        s.updated = now();
        true
    });
    Ok(())
}
