//! The `ipam` section of a network config in cluster mode (`etcd` + `nodeName`).

use super::error::{ClusterError, Result};
use reef_etcd::EtcdConfig;
use serde::Deserialize;
use std::path::PathBuf;

pub const DEFAULT_CACHE_DIR: &str = "/var/lib/reef/etcd-cache";

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
