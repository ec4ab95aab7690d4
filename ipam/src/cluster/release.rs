//! DEL and GC: release by handle, freeing only allocations that name the handle, so a retried
//! DEL with a stale `prevResult` can never free someone else's address.

use super::cache::{CachedBlock, CachedHandle};
use super::error::{ClusterError, Result};
use super::{ClusterStore, MAX_ATTEMPTS};
use reef_etcd::{Compare, CompareOp, Etcd, Txn, TxnOp, TxnOpResponse};
use reef_schema::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

impl ClusterStore {
    /// DEL: releases what the handle holds. Idempotent. Normally one round trip: the node's
    /// cache knows the handle's revision and addresses (it wrote them at ADD); otherwise the
    /// handle is read first. `prevResult` is deliberately not trusted for what to free.
    pub async fn release(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let id = handle_id(&self.node, container_id, ifname);
        self.release_id(&id, None).await
    }

    /// `known`: the handle's (revision, addresses) when the caller just read them.
    async fn release_id(&mut self, id: &str, known: Option<CachedHandle>) -> Result<Vec<IpAddr>> {
        let hkey = handle_key(id);
        let mut handle = match known.or_else(|| self.cache.handles.get(id).cloned()) {
            Some(h) => h,
            None => {
                let Some(kv) = self.etcd.get(&hkey).await? else {
                    return Ok(Vec::new());
                };
                let rec: HandleRecord = decode(kv.key(), kv.value())?;
                CachedHandle {
                    rev: kv.mod_revision(),
                    ips: rec.ips,
                }
            }
        };
        self.fetch_blocks(&handle.ips).await?;
        for _ in 0..MAX_ATTEMPTS {
            let mut when = vec![Compare::mod_revision(
                hkey.as_str(),
                CompareOp::Equal,
                handle.rev,
            )];
            // Cached revisions (handle, blocks) mean something only in the cluster they were
            // read from: bind them to it, as ADD does.
            let bound = self.cluster_compares();
            let check_cluster = bound.is_some();
            when.extend(bound.into_iter().flatten());
            let mut ops = vec![
                TxnOp::delete(hkey.as_str(), None),
                TxnOp::delete(workload_key(id), None),
            ];
            let mut reads = vec![TxnOp::get(hkey.as_str(), None)];
            if check_cluster {
                reads.push(TxnOp::get(CONFIG_KEY, None));
            }
            let mut updated: BTreeMap<String, Block> = BTreeMap::new();
            let mut freed = Vec::new();
            for hip in &handle.ips {
                let ip = &hip.ip;
                // The block recorded with the address: the pools may have changed since.
                let key = block_key(&hip.block);
                let Some(cached) = self.cache.blocks.get(&key) else {
                    continue;
                };
                let block = updated
                    .entry(key.clone())
                    .or_insert_with(|| cached.block.clone());
                let Some(ord) = block.ordinal_of(*ip) else {
                    continue;
                };
                // Only our own allocation: never free an address someone else now holds.
                if block.allocations.get(&ord).is_some_and(|a| a.handle == id) {
                    if block
                        .allocations
                        .get(&ord)
                        .is_some_and(|a| a.borrowed_by.is_some())
                    {
                        ops.push(TxnOp::delete(borrowed_key(ip), None));
                    }
                    block.allocations.remove(&ord);
                    freed.push(*ip);
                }
            }
            for (key, block) in &updated {
                let rev = self
                    .cache
                    .blocks
                    .get(key)
                    .map(|c| c.rev)
                    .unwrap_or_default();
                when.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, rev));
                ops.push(TxnOp::put(key.as_str(), encode(block), None));
                reads.push(TxnOp::get(key.as_str(), None));
            }
            let resp = self
                .etcd
                .txn(Txn::new().when(when).and_then(ops).or_else(reads))
                .await?;
            let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
            if resp.succeeded() {
                for (key, block) in updated {
                    self.cache.blocks.insert(key, CachedBlock { rev, block });
                }
                self.cache.handles.remove(id);
                self.save()?;
                return Ok(freed);
            }
            let mut responses = resp.op_responses().into_iter();
            let handle_read = responses.next();
            if check_cluster {
                if let Some(TxnOpResponse::Get(g)) = responses.next() {
                    // Another cluster's (or no) config drops the whole cache: the handle and
                    // blocks are then taken from this transaction's reads and etcd only.
                    self.learn_config(g.kvs().first())?;
                }
            }
            let handle_now = match handle_read {
                Some(TxnOpResponse::Get(g)) => g
                    .kvs()
                    .first()
                    .map(|kv| {
                        decode::<HandleRecord>(kv.key(), kv.value()).map(|rec| CachedHandle {
                            rev: kv.mod_revision(),
                            ips: rec.ips,
                        })
                    })
                    .transpose()?,
                _ => None,
            };
            for (key, r) in updated.keys().zip(responses) {
                if let TxnOpResponse::Get(g) = r {
                    match g.kvs().first() {
                        Some(kv) => {
                            let block: Block = decode(kv.key(), kv.value())?;
                            self.cache.blocks.insert(
                                key.clone(),
                                CachedBlock {
                                    rev: kv.mod_revision(),
                                    block,
                                },
                            );
                        }
                        None => {
                            self.cache.blocks.remove(key);
                        }
                    }
                }
            }
            match handle_now {
                None => {
                    self.cache.handles.remove(id);
                    self.save()?;
                    return Ok(Vec::new()); // already released
                }
                Some(h) => {
                    handle = h;
                    self.fetch_blocks(&handle.ips).await?;
                }
            }
        }
        Err(ClusterError::Conflict(format!(
            "gave up releasing {id} after {MAX_ATTEMPTS} concurrent conflicts"
        )))
    }

    /// Makes sure the blocks of a handle's addresses are in the cache (borrowed ones live on
    /// other nodes).
    async fn fetch_blocks(&mut self, ips: &[HandleIp]) -> Result<()> {
        for hip in ips {
            let key = block_key(&hip.block);
            if self.cache.blocks.contains_key(&key) {
                continue;
            }
            if let Some(kv) = self.etcd.get(&key).await? {
                let block: Block = decode(kv.key(), kv.value())?;
                let rev = kv.mod_revision();
                self.cache.blocks.insert(key, CachedBlock { rev, block });
            }
        }
        Ok(())
    }

    /// CNI GC for this node: releases every handle of the node not in `valid`.
    pub async fn gc(&mut self, valid: &HashSet<(String, String)>) -> Result<Vec<IpAddr>> {
        let prefix = format!("{HANDLES}{}/", self.node);
        let kvs = self.etcd.get_prefix(&prefix).await?;
        let mut released = Vec::new();
        for kv in kvs {
            let rec: HandleRecord = decode(kv.key(), kv.value())?;
            if valid.contains(&(rec.container_id.clone(), rec.ifname.clone())) {
                continue;
            }
            let id = handle_id(&rec.node, &rec.container_id, &rec.ifname);
            let known = CachedHandle {
                rev: kv.mod_revision(),
                ips: rec.ips.clone(),
            };
            released.extend(self.release_id(&id, Some(known)).await?);
        }
        Ok(released)
    }
}

/// Releases one handle of any node (reefctl's GC and `node rm`; no local cache involved),
/// freeing only the allocations that still name it, in one transaction per attempt.
pub async fn release_handle(etcd: &mut Etcd, id: &str) -> Result<Vec<IpAddr>> {
    for _ in 0..MAX_ATTEMPTS {
        let hkey = handle_key(id);
        let Some(hkv) = etcd.get(&hkey).await? else {
            return Ok(Vec::new());
        };
        let rec: HandleRecord = decode(hkv.key(), hkv.value())?;
        let mut when = vec![Compare::mod_revision(
            hkey.as_str(),
            CompareOp::Equal,
            hkv.mod_revision(),
        )];
        let mut ops = vec![
            TxnOp::delete(hkey.as_str(), None),
            TxnOp::delete(workload_key(id), None),
        ];
        let mut freed = Vec::new();
        let mut blocks: HashMap<String, (i64, Block)> = HashMap::new();
        for hip in &rec.ips {
            let key = block_key(&hip.block);
            if !blocks.contains_key(&key) {
                if let Some(kv) = etcd.get(&key).await? {
                    blocks.insert(
                        key.clone(),
                        (kv.mod_revision(), decode(kv.key(), kv.value())?),
                    );
                }
            }
            if let Some((_, b)) = blocks.get_mut(&key) {
                if let Some(o) = b.ordinal_of(hip.ip) {
                    if b.allocations.get(&o).is_some_and(|a| a.handle == id) {
                        if b.allocations
                            .get(&o)
                            .is_some_and(|a| a.borrowed_by.is_some())
                        {
                            ops.push(TxnOp::delete(borrowed_key(&hip.ip), None));
                        }
                        b.allocations.remove(&o);
                        freed.push(hip.ip);
                    }
                }
            }
        }
        for (key, (rev, b)) in &blocks {
            when.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev));
            ops.push(TxnOp::put(key.as_str(), encode(b), None));
        }
        if etcd
            .txn(Txn::new().when(when).and_then(ops))
            .await?
            .succeeded()
        {
            return Ok(freed);
        }
    }
    Err(ClusterError::Conflict(format!("gave up releasing {id}")))
}
