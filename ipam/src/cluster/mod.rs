//! Cluster IPAM on etcd: per-node blocks (affinity), addresses inside them, borrowing when the
//! pool has no free block, release by handle, and GC. Calico's model, with one etcd round
//! trip for the common ADD and DEL:
//!
//! * the node's blocks and their mod-revisions are cached on disk (`cache`);
//! * ADD sends ONE transaction: "the handle does not exist and every block I touch is at the
//!   revision I know" → put the blocks with the new allocations and the handle record. When
//!   the compare fails, the same transaction returns the fresh handle and blocks, so a retry
//!   needs no extra read. If the handle exists, ADD was already done (a retry after a crash):
//!   its addresses are returned.
//! * DEL sends ONE transaction in the same way, removing only allocations that name this
//!   handle, so a retried DEL with a stale `prevResult` cannot free someone else's address.
//!
//! Correctness never depends on the cache or on the local lock: etcd's compares decide.

pub mod cache;

use self::cache::{CacheFile, CachedBlock, CachedHandle, NodeCache};
use ipnetwork::IpNetwork;
use reef_etcd::{Compare, CompareOp, Etcd, EtcdConfig, GetOptions, Txn, TxnOp, TxnOpResponse};
use reef_schema::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

/// How often one operation may lose a compare race before giving up (each loss means another
/// writer made progress, so this bounds only pathological contention).
const MAX_ATTEMPTS: usize = 32;

pub const DEFAULT_CACHE_DIR: &str = "/var/lib/reef/etcd-cache";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Etcd(#[from] reef_etcd::Error),
    #[error("cluster IPAM is not initialised in etcd ({0}): run `reefctl init`")]
    NotInitialised(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Config(String),
    #[error("local cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

impl ClusterError {
    /// The CNI error code: etcd unreachable is "try again later" (11).
    pub fn cni_code(&self) -> u32 {
        match self {
            ClusterError::Etcd(e) if e.is_unavailable() => 11,
            ClusterError::Etcd(_) => 5,
            ClusterError::NotInitialised(_) => reef_cni::codes::CLUSTER_NOT_INITIALISED,
            ClusterError::Exhausted(_) => 104,
            ClusterError::Config(_) => 7,
            ClusterError::Cache { .. } => 5,
            ClusterError::Conflict(_) => 11,
            ClusterError::NotFound(_) => 105,
        }
    }
}

type Result<T> = std::result::Result<T, ClusterError>;

/// The `ipam` section in cluster mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIpamConfig {
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub node_name: Option<String>,
    /// Where the node's cache lives (default /var/lib/reef/etcd-cache).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

impl ClusterIpamConfig {
    /// Some(..) when the section selects the etcd store (it has an `etcd` key).
    pub fn from_ipam_value(v: &serde_json::Value) -> Option<Result<ClusterIpamConfig>> {
        v.get("etcd")?;
        Some(
            serde_json::from_value(v.clone())
                .map_err(|e| ClusterError::Config(format!("invalid ipam.etcd section: {e}"))),
        )
    }

    pub fn node(&self) -> Result<String> {
        let node = match &self.node_name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| ClusterError::Config(format!("no nodeName and no hostname: {e}")))?
                .to_string_lossy()
                .into_owned(),
        };
        let ok = !node.is_empty()
            && node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(ClusterError::Config(format!("invalid nodeName \"{node}\"")));
        }
        Ok(node)
    }
}

/// One address handed to an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The address with its block's prefix (a borrowed address gets a host prefix).
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

pub struct ClusterStore {
    etcd: Etcd,
    node: String,
    cache_file: CacheFile,
    cache: NodeCache,
    cache_path: String,
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| {
        reef_etcd::Error::Decode {
            key: String::from_utf8_lossy(key).into_owned(),
            detail: e.to_string(),
        }
        .into()
    })
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    // Serialising our own plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn host_net(ip: IpAddr) -> IpNetwork {
    let p = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, p).unwrap_or_else(|_| IpNetwork::from(ip))
}

/// What one ADD intends to write.
struct Plan {
    /// Block key -> (expected revision: 0 = must not exist yet, new value).
    blocks: BTreeMap<String, (i64, Block)>,
    handle: HandleRecord,
    borrowed: Vec<(IpAddr, BorrowedRecord)>,
}

impl ClusterStore {
    pub async fn open(cfg: &ClusterIpamConfig) -> Result<ClusterStore> {
        let node = cfg.node()?;
        let dir = cfg
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
        let cache_path = dir.join(format!("{node}.json")).display().to_string();
        let mut cache_file =
            CacheFile::open_locked(&dir, &node).map_err(|source| ClusterError::Cache {
                path: cache_path.clone(),
                source,
            })?;
        let cache = cache_file.load();
        let etcd = Etcd::connect(&cfg.etcd).await?;
        Ok(ClusterStore {
            etcd,
            node,
            cache_file,
            cache,
            cache_path,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn save(&mut self) -> Result<()> {
        self.cache_file
            .save(&self.cache)
            .map_err(|source| ClusterError::Cache {
                path: self.cache_path.clone(),
                source,
            })
    }

    /// Loads the cluster config and this node's blocks in one round trip.
    async fn refresh(&mut self) -> Result<()> {
        let txn = Txn::new().and_then(vec![
            TxnOp::get(CONFIG_KEY, None),
            TxnOp::get(BLOCKS, Some(GetOptions::new().with_prefix())),
        ]);
        let resp = self.etcd.txn(txn).await?;
        let mut config = None;
        let mut blocks = BTreeMap::new();
        for (i, r) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = r else { continue };
            for kv in g.kvs() {
                if i == 0 {
                    config = Some(decode::<ClusterConfig>(kv.key(), kv.value())?);
                    self.cache.config_rev = kv.mod_revision();
                } else {
                    let block: Block = decode(kv.key(), kv.value())?;
                    if block.node == self.node {
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        blocks.insert(
                            key,
                            CachedBlock {
                                rev: kv.mod_revision(),
                                block,
                            },
                        );
                    }
                }
            }
        }
        let config =
            config.ok_or_else(|| ClusterError::NotInitialised(self.etcd.endpoints().into()))?;
        self.cache.config = Some(config);
        self.cache.blocks = blocks;
        Ok(())
    }

    async fn config(&mut self) -> Result<ClusterConfig> {
        if self.cache.config.is_none() {
            self.refresh().await?;
        }
        self.cache
            .config
            .clone()
            .ok_or_else(|| ClusterError::NotInitialised(self.etcd.endpoints().into()))
    }

    /// All blocks of the cluster with their revisions (the slow path: claiming or borrowing).
    async fn all_blocks(&mut self) -> Result<Vec<(String, i64, Block)>> {
        let kvs = self.etcd.get_prefix(BLOCKS).await?;
        kvs.iter()
            .map(|kv| {
                Ok((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                    decode::<Block>(kv.key(), kv.value())?,
                ))
            })
            .collect()
    }

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
            // The compares: handle absent, config unchanged (a re-init is noticed here, at no
            // extra round trip), every touched block at the revision the plan was made from.
            let mut when = vec![
                Compare::create_revision(hkey.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(CONFIG_KEY, CompareOp::Equal, self.cache.config_rev),
            ];
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
                ops.push(TxnOp::put(key.as_str(), json(block), None));
                reads.push(TxnOp::get(key.as_str(), None));
            }
            ops.push(TxnOp::put(hkey.as_str(), json(&plan.handle), None));
            if let Some(w) = &workload {
                let mut w = w.clone();
                w.node = self.node.clone();
                w.ips = plan.handle.ips.iter().map(|h| h.ip).collect();
                ops.push(TxnOp::put(workload_key(&id), json(&w), None));
            }
            for (ip, rec) in &plan.borrowed {
                ops.push(TxnOp::put(borrowed_key(ip), json(rec), None));
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
                        json(&serde_json::json!({ "name": self.node })),
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
            // Lost a compare: learn from the reads and try again.
            let mut responses = resp.op_responses().into_iter();
            if let Some(TxnOpResponse::Get(g)) = responses.next() {
                if let Some(kv) = g.kvs().first() {
                    return self.adopt_existing(&id, kv);
                }
            }
            if let Some(TxnOpResponse::Get(g)) = responses.next() {
                match g.kvs().first() {
                    Some(kv) if kv.mod_revision() != self.cache.config_rev => {
                        config = decode::<ClusterConfig>(kv.key(), kv.value())?;
                        self.cache.config = Some(config.clone());
                        self.cache.config_rev = kv.mod_revision();
                    }
                    Some(_) => {}
                    None => return Err(ClusterError::NotInitialised(self.etcd.endpoints().into())),
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
            let mut ops = vec![
                TxnOp::delete(hkey.as_str(), None),
                TxnOp::delete(workload_key(id), None),
            ];
            let mut reads = vec![TxnOp::get(hkey.as_str(), None)];
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
                ops.push(TxnOp::put(key.as_str(), json(block), None));
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
            let handle_now = match responses.next() {
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

    /// CHECK: the handle holds exactly `expected`.
    pub async fn check(
        &mut self,
        container_id: &str,
        ifname: &str,
        expected: &[IpAddr],
    ) -> Result<()> {
        let id = handle_id(&self.node, container_id, ifname);
        let Some(kv) = self.etcd.get(&handle_key(&id)).await? else {
            return Err(ClusterError::NotFound(format!("no allocation for {id}")));
        };
        let rec: HandleRecord = decode(kv.key(), kv.value())?;
        let mut have: Vec<IpAddr> = rec.ips.iter().map(|h| h.ip).collect();
        let mut want = expected.to_vec();
        have.sort();
        want.sort();
        if have != want {
            return Err(ClusterError::NotFound(format!(
                "{id} holds {have:?} in etcd, prevResult says {want:?}"
            )));
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

    /// STATUS: etcd answers and the cluster is initialised.
    pub async fn status(&mut self) -> Result<()> {
        match self.etcd.get(CONFIG_KEY).await? {
            Some(_) => Ok(()),
            None => Err(ClusterError::NotInitialised(self.etcd.endpoints().into())),
        }
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

/// Cluster-wide views and repairs used by `reefctl` (not on any plugin hot path).
pub mod admin {
    use super::*;

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
        };
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
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
                s.blocks.push((
                    key.clone(),
                    kv.mod_revision(),
                    decode(kv.key(), kv.value())?,
                ));
            } else if let Some(id) = key.strip_prefix(HANDLES) {
                s.handles
                    .push((id.to_string(), decode(kv.key(), kv.value())?));
            } else if let Some(ip) = key.strip_prefix(BORROWED) {
                if let Ok(ip) = ip.parse() {
                    s.borrowed.push((ip, decode(kv.key(), kv.value())?));
                }
            }
        }
        Ok(s)
    }

    /// Writes the cluster config. Refuses a change of pools while any address is allocated
    /// from a pool that would disappear (or change block size), unless `force`.
    pub async fn init(etcd: &mut Etcd, config: &ClusterConfig, force: bool) -> Result<()> {
        for p in &config.pools {
            p.validate().map_err(ClusterError::Config)?;
        }
        let snap = snapshot(etcd).await?;
        if let Some(old) = &snap.config {
            let in_use: Vec<&Pool> = old
                .pools
                .iter()
                .filter(|p| !config.pools.contains(p))
                .filter(|p| {
                    snap.blocks.iter().any(|(_, _, b)| {
                        p.cidr.contains(b.cidr.network()) && !b.allocations.is_empty()
                    })
                })
                .collect();
            if !in_use.is_empty() && !force {
                let names: Vec<String> = in_use
                    .iter()
                    .map(|p| format!("{} (/{} blocks)", p.cidr, p.block_prefix))
                    .collect();
                return Err(ClusterError::Config(format!(
                    "refusing to re-initialise: pool {} still has allocated addresses; release them first (or --force)",
                    names.join(", ")
                )));
            }
            if old.mode != config.mode && !force {
                return Err(ClusterError::Config(format!(
                    "refusing to switch a live cluster from {} to {} mode without --force",
                    old.mode.as_str(),
                    config.mode.as_str()
                )));
            }
        }
        etcd.put(CONFIG_KEY, json(config)).await?;
        Ok(())
    }

    /// Releases one handle (any node) in one transaction per attempt.
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
                ops.push(TxnOp::put(key.as_str(), json(b), None));
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

    pub struct GcReport {
        pub released_handles: Vec<String>,
        pub released_ips: Vec<IpAddr>,
        pub released_blocks: Vec<IpNetwork>,
        pub orphan_allocations: Vec<IpAddr>,
    }

    /// Cluster GC: (1) handles of nodes that are gone (optionally only `node`'s handles not
    /// in `valid`), (2) allocations whose handle record is missing, (3) empty blocks whose
    /// node is gone.
    pub async fn gc(
        etcd: &mut Etcd,
        node: Option<&str>,
        valid: Option<&HashSet<String>>,
    ) -> Result<GcReport> {
        let snap = snapshot(etcd).await?;
        let nodes: HashSet<&str> = snap.nodes.iter().map(String::as_str).collect();
        let mut report = GcReport {
            released_handles: Vec::new(),
            released_ips: Vec::new(),
            released_blocks: Vec::new(),
            orphan_allocations: Vec::new(),
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
                    json(&b),
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
}
