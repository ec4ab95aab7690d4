//! Cluster-wide views and repairs behind `reefctl` (snapshot, init, GC, node removal); none
//! of it is on a plugin's hot path. Releasing a handle's addresses is reef-ipam's own
//! operation ([`release_handle`]): the rules for freeing an address live in one place.

use ipnetwork::IpNetwork;
use reef_etcd::{Compare, CompareOp, Etcd, Txn, TxnOp};
use reef_ipam::cluster::{release_handle, ClusterError};
use reef_schema::*;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Etcd(#[from] reef_etcd::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Ipam(#[from] ClusterError),
    #[error("{0}")]
    InvalidPool(String),
    /// The change would break a live cluster (pools in use, mode switch) without --force.
    #[error("{0}")]
    Refused(String),
    #[error("cannot generate a cluster id from /dev/urandom: {0}")]
    ClusterId(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, AdminError>;

/// Everything IPAM keeps in etcd, decoded.
pub struct Snapshot {
    pub config: Option<ClusterConfig>,
    pub nodes: Vec<String>,
    /// Node records as the agents registered them (bare ones from IPAM have no address).
    pub node_records: BTreeMap<String, NodeRecord>,
    /// Live agents (lease-bound status keys).
    pub agents: BTreeMap<String, AgentStatus>,
    pub blocks: Vec<(String, i64, Block)>,
    pub handles: Vec<(String, HandleRecord)>,
    pub borrowed: Vec<(IpAddr, BorrowedRecord)>,
    /// Records that do not decode (left out of everything above), with their revision:
    /// `ipam gc` deletes them and `init --force` overwrites a bad config.
    pub unreadable: Vec<(DecodeError, i64)>,
}

pub async fn snapshot(etcd: &mut Etcd) -> Result<Snapshot> {
    let kvs = etcd.get_prefix(PREFIX).await?;
    let mut s = Snapshot {
        config: None,
        nodes: Vec::new(),
        node_records: BTreeMap::new(),
        agents: BTreeMap::new(),
        blocks: Vec::new(),
        handles: Vec::new(),
        borrowed: Vec::new(),
        unreadable: Vec::new(),
    };
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let rev = kv.mod_revision();
        // One undecodable record must not hide the rest, nor block the commands that repair
        // it: it is named in `unreadable` and left out of the view.
        let res = (|| -> std::result::Result<(), DecodeError> {
            if key == CONFIG_KEY {
                s.config = Some(decode(kv.key(), kv.value())?);
            } else if let Some(n) = key.strip_prefix(NODES) {
                s.nodes.push(n.to_string());
                if let Ok(rec) = serde_json::from_slice::<NodeRecord>(kv.value()) {
                    s.node_records.insert(n.to_string(), rec);
                }
            } else if let Some(n) = key.strip_prefix(AGENTS) {
                if let Ok(st) = serde_json::from_slice::<AgentStatus>(kv.value()) {
                    s.agents.insert(n.to_string(), st);
                }
            } else if key.starts_with(BLOCKS) {
                s.blocks
                    .push((key.clone(), rev, decode(kv.key(), kv.value())?));
            } else if let Some(id) = key.strip_prefix(HANDLES) {
                s.handles
                    .push((id.to_string(), decode(kv.key(), kv.value())?));
            } else if let Some(ip) = key.strip_prefix(BORROWED) {
                if let Ok(ip) = ip.parse() {
                    s.borrowed.push((ip, decode(kv.key(), kv.value())?));
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            s.unreadable.push((e, rev));
        }
    }
    Ok(s)
}

/// Deletes the unreadable records of `snap` (the config excepted: `init --force` rewrites
/// it), each only if unchanged since the snapshot. Returns the keys deleted.
async fn remove_unreadable(etcd: &mut Etcd, snap: &Snapshot) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (e, rev) in &snap.unreadable {
        if e.key == CONFIG_KEY {
            continue;
        }
        let key = e.key.as_str();
        let when = vec![Compare::mod_revision(key, CompareOp::Equal, *rev)];
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::delete(key, None)]);
        if etcd.txn(txn).await?.succeeded() {
            removed.push(e.key.clone());
        }
    }
    Ok(removed)
}

/// Writes the cluster config (and returns it as written). Refuses a change of pools while any
/// address is allocated from a pool that would disappear (or change block size), unless
/// `force`. The cluster id of an existing config is kept; a new cluster (or one initialised
/// before ids existed) gets a fresh random one.
pub async fn init(etcd: &mut Etcd, config: &ClusterConfig, force: bool) -> Result<ClusterConfig> {
    for p in &config.pools {
        p.validate().map_err(AdminError::InvalidPool)?;
    }
    let snap = snapshot(etcd).await?;
    if snap.unreadable.iter().any(|(e, _)| e.key == CONFIG_KEY) && !force {
        return Err(AdminError::Refused(format!(
            "refusing to re-initialise: the current {CONFIG_KEY} is unreadable, so the pools in \
             use cannot be checked; --force overwrites it"
        )));
    }
    if let Some(old) = &snap.config {
        let in_use: Vec<&Pool> = old
            .pools
            .iter()
            .filter(|p| !config.pools.contains(p))
            .filter(|p| {
                snap.blocks
                    .iter()
                    .any(|(_, _, b)| p.cidr.contains(b.cidr.network()) && !b.allocations.is_empty())
            })
            .collect();
        if !in_use.is_empty() && !force {
            let names: Vec<String> = in_use
                .iter()
                .map(|p| format!("{} (/{} blocks)", p.cidr, p.block_prefix))
                .collect();
            return Err(AdminError::Refused(format!(
                "refusing to re-initialise: pool {} still has allocated addresses; release them first (or --force)",
                names.join(", ")
            )));
        }
        if old.mode != config.mode && !force {
            return Err(AdminError::Refused(format!(
                "refusing to switch a live cluster from {} to {} mode without --force",
                old.mode.as_str(),
                config.mode.as_str()
            )));
        }
    }
    let mut config = config.clone();
    config.cluster_id = match snap.config.and_then(|c| c.cluster_id) {
        Some(id) => Some(id),
        None => Some(new_cluster_id()?),
    };
    etcd.put(CONFIG_KEY, encode(&config)).await?;
    Ok(config)
}

/// 128 random bits, hex: hosts compare it to tell this cluster from any other.
fn new_cluster_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(AdminError::ClusterId)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub struct GcReport {
    pub released_handles: Vec<String>,
    pub released_ips: Vec<IpAddr>,
    pub released_blocks: Vec<IpNetwork>,
    pub orphan_allocations: Vec<IpAddr>,
    /// Undecodable records deleted (their allocations are then freed as orphans).
    pub removed_records: Vec<String>,
}

/// Cluster GC: (1) handles of nodes that are gone (optionally only `node`'s handles not
/// in `valid`), (2) allocations whose handle record is missing, (3) empty blocks whose
/// node is gone; first of all, (0) records that do not decode, which nothing else can use
/// or release.
pub async fn gc(
    etcd: &mut Etcd,
    node: Option<&str>,
    valid: Option<&HashSet<String>>,
) -> Result<GcReport> {
    let first = snapshot(etcd).await?;
    let removed_records = remove_unreadable(etcd, &first).await?;
    let snap = if removed_records.is_empty() {
        first
    } else {
        snapshot(etcd).await?
    };
    let nodes: HashSet<&str> = snap.nodes.iter().map(String::as_str).collect();
    let mut report = GcReport {
        released_handles: Vec::new(),
        released_ips: Vec::new(),
        released_blocks: Vec::new(),
        orphan_allocations: Vec::new(),
        removed_records,
    };
    let in_scope = |n: &str| node.is_none_or(|only| only == n);
    for (id, rec) in &snap.handles {
        if !in_scope(&rec.node) {
            continue;
        }
        let gone = !nodes.contains(rec.node.as_str());
        let invalid = node == Some(rec.node.as_str()) && valid.is_some_and(|v| !v.contains(id));
        if gone || invalid {
            report.released_ips.extend(release_handle(etcd, id).await?);
            report.released_handles.push(id.clone());
        }
    }
    // Orphan allocations (an allocation naming a handle that does not exist).
    let snap = snapshot(etcd).await?;
    let handles: HashSet<&str> = snap.handles.iter().map(|(id, _)| id.as_str()).collect();
    for (key, rev, block) in &snap.blocks {
        if !in_scope(&block.node) {
            continue;
        }
        let orphans: Vec<u32> = block
            .allocations
            .iter()
            .filter(|(_, a)| !handles.contains(a.handle.as_str()))
            .map(|(o, _)| *o)
            .collect();
        let node_gone = !nodes.contains(block.node.as_str());
        let mut b = block.clone();
        for o in &orphans {
            if let Some(ip) = b.ip_at(u128::from(*o)) {
                report.orphan_allocations.push(ip);
            }
            b.allocations.remove(o);
        }
        let when = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)];
        // Empty blocks of removed nodes, and of pools dropped by a forced re-init.
        let outside_pools = snap.config.as_ref().is_some_and(|c| {
            !c.pools
                .iter()
                .any(|p| p.cidr.contains(block.cidr.network()))
        });
        if (node_gone || outside_pools) && b.allocations.is_empty() {
            if etcd
                .txn(
                    Txn::new()
                        .when(when)
                        .and_then(vec![TxnOp::delete(key.as_str(), None)]),
                )
                .await?
                .succeeded()
            {
                report.released_blocks.push(block.cidr);
            }
        } else if !orphans.is_empty() {
            etcd.txn(Txn::new().when(when).and_then(vec![TxnOp::put(
                key.as_str(),
                encode(&b),
                None,
            )]))
            .await?;
        }
    }
    Ok(report)
}

/// Removes a node: releases all its handles, deletes its blocks (now empty) and its record.
pub async fn node_rm(etcd: &mut Etcd, node: &str) -> Result<GcReport> {
    etcd.delete(&node_key(node)).await?;
    gc(etcd, None, None).await
}
