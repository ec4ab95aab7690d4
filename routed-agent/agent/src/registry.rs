//! The node's presence in etcd: its record (`/reef/nodes/<node>`: how to reach it) and its
//! liveness (`/reef/agents/<node>`, attached to a lease the agent keeps alive; it disappears
//! on its own when the agent dies, and at once when it stops cleanly).

use crate::metrics::Metrics;
use reef_etcd::{Etcd, EtcdConfig};
use reef_schema::{agent_key, node_key, AgentStatus, NodeRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Writes or updates the node record (the agent owns every field but the name IPAM may have
/// created it with).
///
/// `keep_vtep`: leave the recorded VTEP as it is (at start, before the data plane has been
/// looked at: clearing it would make every other node tear down its tunnel entries for us).
pub async fn register_node(
    etcd: &mut Etcd,
    wanted: &NodeRecord,
    keep_vtep: bool,
) -> reef_etcd::Result<bool> {
    let key = node_key(&wanted.name);
    let current: Option<NodeRecord> = etcd
        .get(&key)
        .await?
        .and_then(|kv| serde_json::from_slice(kv.value()).ok());
    let mut rec = current.clone().unwrap_or_default();
    rec.name = wanted.name.clone();
    rec.address = wanted.address;
    rec.interface = wanted.interface.clone();
    rec.mtu = wanted.mtu;
    if !keep_vtep {
        rec.vtep_mac = wanted.vtep_mac.clone();
        rec.vtep_ip = wanted.vtep_ip;
    }
    if current.as_ref() == Some(&rec) {
        return Ok(false);
    }
    etcd.put(&key, serde_json::to_vec(&rec).unwrap_or_default())
        .await?;
    Ok(true)
}

/// Keeps the agent's status key alive until `stop` turns true, then revokes the lease so the
/// node reads as stopped at once. Survives etcd outages: a lost lease is granted again.
pub async fn heartbeat(
    cfg: EtcdConfig,
    node: String,
    ttl: i64,
    mut status: watch::Receiver<AgentStatus>,
    mut stop: watch::Receiver<bool>,
    alive: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    loop {
        let ended = session(&cfg, &node, ttl, &mut status, &mut stop, &alive, &metrics).await;
        metrics.lease_alive.set(0);
        match ended {
            Ok(()) => return,
            Err(e) => {
                metrics.etcd_error(&e);
                let _ = alive.send(false);
                tracing::warn!(error = %e, "heartbeat interrupted");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn session(
    cfg: &EtcdConfig,
    node: &str,
    ttl: i64,
    status: &mut watch::Receiver<AgentStatus>,
    stop: &mut watch::Receiver<bool>,
    alive: &watch::Sender<bool>,
    metrics: &Metrics,
) -> reef_etcd::Result<()> {
    let mut etcd = Etcd::connect_streaming(cfg).await?;
    let lease = etcd.lease_grant(ttl).await?;
    let key = agent_key(node);
    let body = |s: &AgentStatus| serde_json::to_vec(s).unwrap_or_default();
    let first = status.borrow_and_update().clone();
    etcd.put_with_lease(&key, body(&first), lease).await?;
    let mut keep = etcd.keep_alive(lease).await?;
    let _ = alive.send(true);
    metrics.lease_alive.set(1);
    tracing::info!(lease, ttl, "lease granted");
    let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    // One timer for the whole session: status writes must not postpone the renewal (a
    // status that changed more often than every ttl/3 once let the lease expire).
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = renew.tick() => {
                let left = keep.refresh().await?;
                if left <= 0 {
                    return Err(reef_etcd::Error::Unavailable {
                        endpoints: etcd.endpoints().to_string(),
                        detail: format!("lease {lease} expired"),
                    });
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let s = status.borrow_and_update().clone();
                etcd.put_with_lease(&key, body(&s), lease).await?;
            }
            _ = stop.changed() => {
                if let Err(e) = etcd.lease_revoke(lease).await {
                    tracing::warn!(error = %e, "lease revoke failed");
                }
                let _ = alive.send(false);
                return Ok(());
            }
        }
    }
}
