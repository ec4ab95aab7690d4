//! ADD: one address per address family, from the node's own blocks, a newly claimed block, or
//! borrowed from another node's block, written in one compare-guarded transaction.

use super::cache::{CachedBlock, CachedHandle};
use super::error::{ClusterError, Result};
use super::{host_net, ClusterStore, MAX_ATTEMPTS};
use ipnetwork::IpNetwork;
use reef_etcd::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use reef_schema::*;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

/// One address handed to an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The address with its block's prefix (a borrowed address gets a host prefix).
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

/// What one ADD intends to write.
struct Plan {
    /// Block key -> (expected revision: 0 = must not exist yet, new value).
    blocks: BTreeMap<String, (i64, Block)>,
    handle: HandleRecord,
    borrowed: Vec<(IpAddr, BorrowedRecord)>,
}

impl ClusterStore {
    /// ADD: one address per address family of the pools. Idempotent per handle.
    pub async fn allocate(&mut self, container_id: &str, ifname: &str) -> Result<Vec<Assigned>> {
        self.allocate_for(container_id, ifname, None).await
    }

    /// ADD that also records the workload (pod identity, labels, host interface) in the same
    /// transaction; its `ips` are filled in here.
    pub async fn allocate_for(
        &mut self,
        container_id: &str,
        ifname: &str,
        workload: Option<WorkloadRecord>,
    ) -> Result<Vec<Assigned>> {
        let mut config = self.config().await?;
        let id = handle_id(&self.node, container_id, ifname);
        let hkey = handle_key(&id);
        for _ in 0..MAX_ATTEMPTS {
            let plan = match self.plan(&config, &id, container_id, ifname).await {
                Ok(p) => p,
                // A retried ADD of an attachment that already holds its addresses must
                // succeed even in a full pool: look the handle up on this error path only.
                Err(ClusterError::Exhausted(msg)) => match self.etcd.get(&hkey).await? {
                    Some(kv) => return self.adopt_existing(&id, &kv),
                    None => return Err(ClusterError::Exhausted(msg)),
                },
                Err(e) => return Err(e),
            };
            // The compares: handle absent, config unchanged and of the same cluster (a re-init
            // or another etcd is noticed here, at no extra round trip), every touched block at
            // the revision the plan was made from.
            let mut when = vec![Compare::create_revision(hkey.as_str(), CompareOp::Equal, 0)];
            when.extend(self.cluster_compares().into_iter().flatten());
            let mut ops = Vec::new();
            let mut reads = vec![
                TxnOp::get(hkey.as_str(), None),
                TxnOp::get(CONFIG_KEY, None),
            ];
            for (key, (rev, block)) in &plan.blocks {
                let cmp = if *rev == 0 {
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
                } else {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)
                };
                when.push(cmp);
                ops.push(TxnOp::put(key.as_str(), encode(block), None));
                reads.push(TxnOp::get(key.as_str(), None));
            }
            ops.push(TxnOp::put(hkey.as_str(), encode(&plan.handle), None));
            if let Some(w) = &workload {
                let mut w = w.clone();
                w.node = self.node.clone();
                w.ips = plan.handle.ips.iter().map(|h| h.ip).collect();
                ops.push(TxnOp::put(workload_key(&id), encode(&w), None));
            }
            for (ip, rec) in &plan.borrowed {
                ops.push(TxnOp::put(borrowed_key(ip), encode(rec), None));
            }
            // Register the node (put-if-absent, so what the agent wrote there stays): a node
            // holding addresses must never look "gone" to GC, even if it only borrowed.
            let nkey = node_key(&self.node);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::create_revision(
                        nkey.as_str(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(
                        nkey.as_str(),
                        encode(&serde_json::json!({ "name": self.node })),
                        None,
                    )]),
            ));
            let resp = self
                .etcd
                .txn(Txn::new().when(when).and_then(ops).or_else(reads))
                .await?;
            let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
            if resp.succeeded() {
                for (key, (_, block)) in plan.blocks {
                    self.cache.blocks.insert(key, CachedBlock { rev, block });
                }
                let ips = plan.handle.ips.clone();
                self.cache
                    .handles
                    .insert(id.clone(), CachedHandle { rev, ips });
                self.save()?;
                return Ok(assigned(&plan.handle));
            }
            // Lost a compare: learn from the reads and try again. The config first: if it is
            // another cluster's, the cache is dropped before anything is learnt into it.
            let mut responses = resp.op_responses().into_iter();
            let handle_read = responses.next();
            if let Some(TxnOpResponse::Get(g)) = responses.next() {
                config = self
                    .learn_config(g.kvs().first())?
                    .ok_or_else(|| ClusterError::NotInitialised(self.etcd.endpoints().into()))?;
            }
            if let Some(TxnOpResponse::Get(g)) = handle_read {
                if let Some(kv) = g.kvs().first() {
                    return self.adopt_existing(&id, kv);
                }
            }
            for (key, r) in plan.blocks.keys().zip(responses) {
                let TxnOpResponse::Get(g) = r else { continue };
                match g.kvs().first() {
                    Some(kv) => {
                        let block: Block = decode(kv.key(), kv.value())?;
                        if block.node == self.node || self.cache.blocks.contains_key(key) {
                            let rev = kv.mod_revision();
                            self.cache
                                .blocks
                                .insert(key.clone(), CachedBlock { rev, block });
                        }
                    }
                    None => {
                        self.cache.blocks.remove(key);
                    }
                }
            }
        }
        Err(ClusterError::Conflict(format!(
            "gave up allocating for {id} after {MAX_ATTEMPTS} concurrent conflicts"
        )))
    }

    /// ADD found the handle already there (a retry): return what it holds, remember it.
    fn adopt_existing(&mut self, id: &str, kv: &reef_etcd::KeyValue) -> Result<Vec<Assigned>> {
        let existing: HandleRecord = decode(kv.key(), kv.value())?;
        let cached = CachedHandle {
            rev: kv.mod_revision(),
            ips: existing.ips.clone(),
        };
        self.cache.handles.insert(id.to_string(), cached);
        self.save()?;
        Ok(assigned(&existing))
    }

    /// Chooses one address per family: own cached blocks first, then a newly claimed block,
    /// then borrowing from another node's block.
    async fn plan(
        &mut self,
        config: &ClusterConfig,
        id: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Plan> {
        let mut plan = Plan {
            blocks: BTreeMap::new(),
            handle: HandleRecord {
                node: self.node.clone(),
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
                ips: Vec::new(),
            },
            borrowed: Vec::new(),
        };
        let mut families_done: HashSet<bool> = HashSet::new();
        let mut all: Option<Vec<(String, i64, Block)>> = None;
        for pool in &config.pools {
            let v4 = pool.cidr.is_ipv4();
            if families_done.contains(&v4) {
                continue;
            }
            // 1. A cached block of ours in this pool with room.
            let own = self
                .cache
                .blocks
                .iter()
                .filter(|(_, c)| {
                    c.block.node == self.node && pool.cidr.contains(c.block.cidr.network())
                })
                .find(|(_, c)| c.block.free() > 0)
                .map(|(k, c)| (k.clone(), c.rev, c.block.clone()));
            let chosen = match own {
                Some(found) => Some((found, false)),
                None => {
                    // 2./3. Slow path: look at every block once.
                    if all.is_none() {
                        all = Some(self.all_blocks().await?);
                    }
                    let blocks = all.as_deref().unwrap_or_default();
                    // Our blocks the cache did not know (another process claimed them).
                    for (k, rev, b) in blocks {
                        if b.node == self.node {
                            self.cache.blocks.insert(
                                k.clone(),
                                CachedBlock {
                                    rev: *rev,
                                    block: b.clone(),
                                },
                            );
                        }
                    }
                    if let Some((k, rev, b)) = blocks.iter().find(|(_, _, b)| {
                        b.node == self.node && pool.cidr.contains(b.cidr.network()) && b.free() > 0
                    }) {
                        Some(((k.clone(), *rev, b.clone()), false))
                    } else {
                        let taken: HashSet<u128> = blocks
                            .iter()
                            .filter_map(|(_, _, b)| pool.block_index(&b.cidr))
                            .collect();
                        // Start the search at a node-specific spot so nodes claiming at the
                        // same moment rarely collide.
                        let start = fnv(&self.node) % pool.block_count().max(1);
                        if let Some(cidr) = pool.first_free_block(&taken, start) {
                            Some(((block_key(&cidr), 0, Block::new(cidr, &self.node)), false))
                        } else {
                            blocks
                                .iter()
                                .filter(|(_, _, b)| {
                                    pool.cidr.contains(b.cidr.network()) && b.free() > 0
                                })
                                .max_by_key(|(_, _, b)| b.free())
                                .map(|(k, rev, b)| ((k.clone(), *rev, b.clone()), true))
                        }
                    }
                }
            };
            let Some(((key, rev, mut block), borrowed)) = chosen else {
                continue; // try the next pool of this family, if any
            };
            // Reuse the planned copy if two pools' choices hit the same block.
            if let Some((_, b)) = plan.blocks.get(&key) {
                block = b.clone();
            }
            let cursor = self.cache.cursor.get(&key).copied().unwrap_or(1);
            let Some(ordinal) = block.next_free(cursor) else {
                continue;
            };
            let Some(ip) = block.ip_at(u128::from(ordinal)) else {
                continue;
            };
            block.allocations.insert(
                ordinal,
                Allocation {
                    handle: id.to_string(),
                    borrowed_by: borrowed.then(|| self.node.clone()),
                },
            );
            if borrowed {
                plan.borrowed.push((
                    ip,
                    BorrowedRecord {
                        node: self.node.clone(),
                        block: block.cidr,
                    },
                ));
            }
            self.cache.cursor.insert(key.clone(), ordinal);
            plan.handle.ips.push(HandleIp {
                ip,
                block: block.cidr,
                borrowed,
            });
            plan.blocks.insert(key, (rev, block));
            families_done.insert(v4);
        }
        let wanted: HashSet<bool> = config.pools.iter().map(|p| p.cidr.is_ipv4()).collect();
        if families_done != wanted {
            let missing: Vec<String> = config
                .pools
                .iter()
                .filter(|p| !families_done.contains(&p.cidr.is_ipv4()))
                .map(|p| p.cidr.to_string())
                .collect();
            return Err(ClusterError::Exhausted(format!(
                "no free address in pool {}: every block is claimed and full",
                missing.join(", ")
            )));
        }
        Ok(plan)
    }
}

/// Results for a handle: `ip/<block prefix>` with the block's gateway for an address of one
/// of the node's own blocks, a host route without gateway for a borrowed one.
fn assigned(h: &HandleRecord) -> Vec<Assigned> {
    h.ips
        .iter()
        .map(|hip| {
            if hip.borrowed {
                Assigned {
                    address: host_net(hip.ip),
                    gateway: None,
                }
            } else {
                Assigned {
                    address: IpNetwork::new(hip.ip, hip.block.prefix())
                        .unwrap_or_else(|_| host_net(hip.ip)),
                    gateway: Block::new(hip.block, "").gateway(),
                }
            }
        })
        .collect()
}

fn fnv(s: &str) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u128::from(h)
}
