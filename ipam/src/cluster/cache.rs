//! The node's local view of its etcd state, kept between plugin runs so that the common ADD
//! and DEL need a single etcd round trip. It is only a hint: every write to etcd compares
//! the cached mod-revisions, and a mismatch refreshes the cache from the failed transaction.
//! An exclusive flock serialises the node's own plugin processes (fewer conflicts); a torn or
//! unreadable cache is simply refetched.

use reef_schema::{Block, ClusterConfig, HandleIp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedBlock {
    pub rev: i64,
    pub block: Block,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeCache {
    pub config: Option<ClusterConfig>,
    /// mod-revision of /reef/config when read: every ADD compares it, so a re-initialised
    /// cluster is noticed in the same round trip.
    #[serde(default)]
    pub config_rev: i64,
    /// /reef/config's value exactly as read. Transactions compare it too: it carries the
    /// cluster id, which revisions (repeating across clusters) cannot stand in for. Empty:
    /// the cache is bound to no cluster and is discarded on load.
    #[serde(default)]
    pub config_raw: String,
    /// Block key -> block and its mod-revision: the node's own blocks (and blocks it
    /// borrowed from, while it holds addresses there).
    pub blocks: BTreeMap<String, CachedBlock>,
    /// Block key -> last ordinal handed out (round-robin inside a block).
    pub cursor: BTreeMap<String, u32>,
    /// Handle id -> the handle record's mod-revision and addresses, as this node wrote
    /// them: DEL compares that exact revision, so a retried DEL of an earlier incarnation
    /// of the same attachment can never delete the current one.
    #[serde(default)]
    pub handles: BTreeMap<String, CachedHandle>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedHandle {
    pub rev: i64,
    /// Addresses with the block each came from (pools may change; the block does not).
    pub ips: Vec<HandleIp>,
}

/// The cache file, locked for the lifetime of this value.
pub struct CacheFile {
    file: File,
}

impl CacheFile {
    pub fn open_locked(dir: &Path, node: &str) -> std::io::Result<CacheFile> {
        std::fs::create_dir_all(dir)?;
        let file = reef_cni::file::open_store_file(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
            &dir.join(format!("{node}.json")),
        )?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(CacheFile { file })
    }

    pub fn load(&mut self) -> NodeCache {
        let mut s = String::new();
        let ok =
            self.file.seek(SeekFrom::Start(0)).is_ok() && self.file.read_to_string(&mut s).is_ok();
        if !ok || s.is_empty() {
            return NodeCache::default();
        }
        serde_json::from_str(&s).unwrap_or_default()
    }

    /// Rewritten in place (no rename: on ext4 a rename costs up to milliseconds, and a torn
    /// file just means a refetch).
    pub fn save(&mut self, cache: &NodeCache) -> std::io::Result<()> {
        let data = serde_json::to_vec(cache).map_err(std::io::Error::other)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&data)?;
        self.file.set_len(data.len() as u64)
    }
}
