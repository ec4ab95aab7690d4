//! Cluster IPAM's errors and the CNI codes they map to.

use reef_schema::DecodeError;

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

/// A record that does not decode is reported as etcd's own decode error (same message and
/// CNI code as before the codec moved to reef-schema).
impl From<DecodeError> for ClusterError {
    fn from(e: DecodeError) -> ClusterError {
        ClusterError::Etcd(reef_etcd::Error::Decode {
            key: e.key,
            detail: e.detail,
        })
    }
}

pub type Result<T> = std::result::Result<T, ClusterError>;
