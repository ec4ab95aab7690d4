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
//! Revisions repeat across clusters (a re-created or replaced etcd counts from 1 again), so
//! every transaction that acts on the cache also compares /reef/config's exact value, which
//! carries the cluster id `reefctl init` generated: a cache from another cluster fails that
//! compare, is dropped, and the failed transaction's reads refill it (same round trip).
//!
//! One job per module: [`config`] (the `ipam` section), [`error`], [`allocate`] (ADD),
//! [`release`] (DEL, GC, and releasing any node's handle for reefctl), [`cache`].

mod allocate;
pub mod cache;
pub mod config;
pub mod error;
mod release;

pub use allocate::Assigned;
pub use config::{ClusterIpamConfig, DEFAULT_CACHE_DIR};
pub use error::ClusterError;
pub use release::release_handle;

use self::cache::{CacheFile, CachedBlock, NodeCache};
use error::Result;
use ipnetwork::IpNetwork;
use reef_etcd::{Compare, CompareOp, Etcd, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use reef_schema::*;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// How often one operation may lose a compare race before giving up (each loss means another
/// writer made progress, so this bounds only pathological contention).
const MAX_ATTEMPTS: usize = 32;

pub struct ClusterStore {
    etcd: Etcd,
    node: String,
    cache_file: CacheFile,
    cache: NodeCache,
    cache_path: String,
}

fn host_net(ip: IpAddr) -> IpNetwork {
    let p = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, p).unwrap_or_else(|_| IpNetwork::from(ip))
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
        let mut cache = cache_file.load();
        if cache.config_raw.is_empty() {
            // Not bound to a cluster (empty, or written before the binding existed): nothing
            // in it can be trusted.
            cache = NodeCache::default();
        }
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
                    config = self.adopt_config(Some(kv))?;
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
        if config.is_none() {
            return Err(ClusterError::NotInitialised(self.etcd.endpoints().into()));
        }
        self.cache.blocks = blocks;
        Ok(())
    }

    /// The compares that bind a transaction to the cluster (and config) the cache was filled
    /// from: /reef/config is the very write the cache read (revision) with the very bytes it
    /// read (they carry the cluster id; revisions alone repeat across clusters). None when
    /// the cache holds nothing about the cluster.
    fn cluster_compares(&self) -> Option<[Compare; 2]> {
        self.cache.config.as_ref()?;
        Some([
            Compare::mod_revision(CONFIG_KEY, CompareOp::Equal, self.cache.config_rev),
            Compare::value(
                CONFIG_KEY,
                CompareOp::Equal,
                self.cache.config_raw.as_bytes().to_vec(),
            ),
        ])
    }

    /// Learns /reef/config as a failed transaction read it (`None`: absent). Returns the
    /// current config; see [`Self::adopt_config`].
    fn learn_config(&mut self, kv: Option<&KeyValue>) -> Result<Option<ClusterConfig>> {
        let unchanged = kv.is_some_and(|kv| {
            kv.mod_revision() == self.cache.config_rev
                && kv.value() == self.cache.config_raw.as_bytes()
        });
        if unchanged && self.cache.config.is_some() {
            return Ok(self.cache.config.clone());
        }
        self.adopt_config(kv)
    }

    /// Makes `kv` the cached /reef/config. Unless it names the same cluster id as the cached
    /// one, everything cached is dropped first: blocks, handles and cursors of another
    /// cluster (or of one too old to tell) must never be written into this one.
    fn adopt_config(&mut self, kv: Option<&KeyValue>) -> Result<Option<ClusterConfig>> {
        let Some(kv) = kv else {
            self.cache = NodeCache::default();
            return Ok(None);
        };
        let config: ClusterConfig = decode(kv.key(), kv.value())?;
        let same_cluster = config.cluster_id.is_some()
            && self
                .cache
                .config
                .as_ref()
                .is_some_and(|c| c.cluster_id == config.cluster_id);
        if !same_cluster {
            self.cache = NodeCache::default();
        }
        self.cache.config = Some(config.clone());
        self.cache.config_rev = kv.mod_revision();
        // decode() accepted it, so it is UTF-8 and this is the exact value.
        self.cache.config_raw = String::from_utf8_lossy(kv.value()).into_owned();
        Ok(Some(config))
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

    /// STATUS: etcd answers and the cluster is initialised.
    pub async fn status(&mut self) -> Result<()> {
        match self.etcd.get(CONFIG_KEY).await? {
            Some(_) => Ok(()),
            None => Err(ClusterError::NotInitialised(self.etcd.endpoints().into())),
        }
    }
}
