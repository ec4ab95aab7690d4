//! The agent's main loop: list, reconcile, watch, apply changes; re-list on any watch error.
//! The kernel keeps the last programmed state through etcd outages and agent restarts: the
//! agent only ever changes what differs, so established traffic never sees a gap.

pub use crate::error::{AgentError, SessionError};
use crate::managers::{self, Manager};
use crate::metrics::Metrics;
use crate::reconcile::reconcile;
use crate::view::{ClusterView, Touched};
use crate::{registry, serve, underlay};
use reef_etcd::{Etcd, EtcdConfig};
use reef_netlink::{sysctl, Netlink};
use reef_schema::policy::{NAMESPACES, POLICIES};
use reef_schema::services::SERVICES;
use reef_schema::{
    AgentStatus, NodeRecord, AGENTS, BLOCKS, BORROWED, CONFIG_KEY, NODES, PREFIX, WORKLOADS,
};
use std::net::SocketAddr;
use std::sync::Arc;
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
    /// Where `/metrics` and `/healthz` are served; `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The firewall driver for natOutgoing, services and policy (`auto` already decided).
    pub firewall: reef_firewall::DriverKind,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub(crate) struct State {
    pub(crate) opts: Options,
    pub(crate) record: NodeRecord,
    /// One per concern, run in order by every reconcile.
    pub(crate) managers: Vec<Box<dyn Manager>>,
    pub(crate) status: watch::Sender<AgentStatus>,
    alive: watch::Receiver<bool>,
    ready: bool,
    /// Something failed to program: retry soon rather than at the next resync.
    pub(crate) retry: bool,
    /// The data plane has reported this node's VTEP (or that it has none) at least once.
    pub(crate) vtep_known: bool,
    pub(crate) metrics: Arc<Metrics>,
}

pub async fn run(opts: Options) -> Result<(), AgentError> {
    let nl = Netlink::current()?;
    let underlay = underlay::detect(&nl, &opts.iface).await?;
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
    tracing::info!(node = %opts.node, iface = %opts.iface, address = %address, etcd = %opts.etcd.endpoints.join(","), "starting");
    let metrics = Metrics::new(&opts.node);
    if let Some(addr) = opts.metrics_addr {
        // The data plane matters more than its figures: a taken port is logged, not fatal.
        match serve::spawn(addr, metrics.clone()).await {
            Ok(bound) => tracing::info!(addr = %bound, "serving /metrics and /healthz"),
            Err(e) => tracing::warn!(addr = %addr, error = %e, "metrics endpoint not served"),
        }
    }
    managers::forget_other_firewall(opts.firewall);
    let started = now();
    let (status_tx, status_rx) = watch::channel(AgentStatus {
        node: opts.node.clone(),
        pid: std::process::id(),
        mode: "routed".into(),
        started,
        updated: started,
        routes: 0,
        services: 0,
        endpoints: 0,
        policies: 0,
        problems: Default::default(),
        policy_counters: Default::default(),
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
        metrics.clone(),
    ));
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut st = State {
        managers: managers::for_node(&opts.node, nl, underlay, opts.firewall),
        opts,
        record,
        status: status_tx,
        alive: alive_rx,
        ready: false,
        retry: false,
        vtep_known: false,
        metrics,
    };
    let mut backoff = Duration::from_millis(200);
    let mut sessions = 0u64;
    loop {
        if sessions > 0 {
            st.metrics.watch_restarts.inc();
        }
        sessions += 1;
        let started = Instant::now();
        let res = tokio::select! {
            r = session(&mut st) => r,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        st.metrics.etcd_connected.set(0);
        if let Err(e) = res {
            if let SessionError::Etcd(e) = &e {
                st.metrics.etcd_error(e);
            }
            // Keep every route as it is: the data plane outlives the control plane.
            tracing::warn!(error = %e, "etcd session ended, keeping programmed routes");
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
    tracing::info!("stopping; routes stay in place");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), hb).await;
    Ok(())
}

async fn session(st: &mut State) -> Result<(), SessionError> {
    let mut etcd = Etcd::connect_streaming(&st.opts.etcd).await?;
    if registry::register_node(&mut etcd, &st.record, !st.vtep_known).await? {
        tracing::info!(node = %st.record.name, "node registered");
    }
    let listing = Instant::now();
    let (mut view, rev) = list_view(&mut etcd).await?;
    let programming = Instant::now();
    reconcile(st, &mut etcd, &mut view, true).await?;
    tracing::info!(
        services = view.services.len(),
        workloads = view.workloads.len(),
        list_ms = (programming - listing).as_millis() as u64,
        program_ms = programming.elapsed().as_millis() as u64,
        "synced"
    );
    if !st.ready {
        // Ready means: routes reconciled and liveness visible to the cluster.
        let mut alive = st.alive.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|a| *a)).await;
        st.ready = true;
        tracing::info!(routes = st.backend_routes(), "ready");
    }
    st.metrics.mark_synced();
    let mut watch = etcd.watch_prefix(PREFIX, rev + 1).await?;
    st.metrics.etcd_connected.set(1);
    let mut resync = tokio::time::interval(st.opts.resync);
    resync.tick().await;
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    let mut counters = tokio::time::interval(COUNTERS_EVERY);
    loop {
        tokio::select! {
            events = watch.next() => {
                let mut routing = false;
                let events = events?;
                st.metrics.watch_events.inc_by(events.len() as u64);
                for ev in &events {
                    match view.apply(&ev.key, ev.value.as_deref()) {
                        Touched::Config | Touched::Routing => routing = true,
                        Touched::Services | Touched::Policy => routing = true,
                        Touched::Agents => routing |= !view.changed.agents.is_empty() && !view.services.is_empty(),
                        Touched::Nothing => {}
                    }
                }
                if routing {
                    reconcile(st, &mut etcd, &mut view, false).await?;
                }
            }
            _ = resync.tick() => {
                // Label values of pods long gone.
                view.names.prune();
                reconcile(st, &mut etcd, &mut view, true).await?
            }
            _ = retry.tick(), if st.retry => reconcile(st, &mut etcd, &mut view, false).await?,
            _ = counters.tick() => publish_counters(st),
        }
    }
}

/// The cluster view from one list of what it needs under `/reef/`. Pages are decoded on a
/// thread of their own while the next one is read (at 10,000 services, reading and decoding
/// take about as long as each other), and each page's raw records are dropped once decoded.
/// The view comes back through a oneshot: waiting for it must not block the runtime, which
/// also runs the lease keep-alive.
async fn list_view(etcd: &mut Etcd) -> Result<(ClusterView, i64), SessionError> {
    let (pages, decode) = std::sync::mpsc::channel::<Vec<reef_etcd::KeyValue>>();
    let (done, built) = tokio::sync::oneshot::channel::<ClusterView>();
    std::thread::Builder::new()
        .name("view".into())
        .spawn(move || {
            let mut view = ClusterView::default();
            for page in decode {
                for kv in &page {
                    view.apply(
                        std::str::from_utf8(kv.key()).unwrap_or_default(),
                        Some(kv.value()),
                    );
                }
            }
            let _ = done.send(view);
        })
        .map_err(SessionError::Thread)?;
    let listed = async {
        let mut rev = 0;
        for prefix in LISTED {
            rev = etcd
                .list_prefix_pages_at(prefix, rev, |page| {
                    // A send fails only if the thread is gone, which `built` reports.
                    let _ = pages.send(page);
                })
                .await?;
        }
        Ok::<i64, reef_etcd::Error>(rev)
    }
    .await;
    drop(pages);
    let view = built.await.map_err(|_| SessionError::ViewPanicked)?;
    Ok((view, listed?))
}

/// What the view is built from, in key order, read at one revision. Not IPAM's handles
/// nor reefctl's VIP and node-port claims: in a cluster they are as many keys again as the
/// workloads and services, and the view has no use for them.
const LISTED: [&str; 9] = [
    AGENTS, BLOCKS, BORROWED, CONFIG_KEY, NAMESPACES, NODES, POLICIES, SERVICES, WORKLOADS,
];

/// How often the policy counters are read (one `nft` process, only on a node whose pods a
/// policy selects) and, when they moved, published.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// The policy counters into the agent's status (the heartbeat writes it when it changed).
fn publish_counters(st: &mut State) {
    let mut all = std::collections::BTreeMap::new();
    for m in &mut st.managers {
        if let Some(c) = m.policy_counters() {
            all.extend(c);
        }
    }
    st.status.send_if_modified(|s| {
        if s.policy_counters == all {
            return false;
        }
        s.policy_counters = all;
        true
    });
}

impl State {
    fn backend_routes(&self) -> usize {
        self.status.borrow().routes
    }
}
