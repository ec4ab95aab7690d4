//! reef-ipam: a `host-local`-compatible IPAM store for CNI plugins.
//!
//! * [`config`] parses the `ipam` object of a network config (host-local's format).
//! * [`LocalStore`] is the on-disk store of one network (see [`store`] for the layout and
//!   the crash-safety argument) with the CNI operations: allocate (ADD), release (DEL),
//!   check (CHECK), gc (GC) and status (STATUS).
//!
//! Correctness across concurrent plugin processes rests only on an exclusive `flock`
//! held for the whole of every operation, plus atomic create-if-absent of records.

mod allocator;
pub mod cluster;
pub mod config;
pub mod plugin;
pub mod store;

use std::net::IpAddr;

pub use config::{ConfigError, IpamConfig, Range, RangeSet, DEFAULT_DATA_DIR};
pub use store::LocalStore;

/// Who holds an address: a container's interface (CNI `containerID` + `ifname`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    pub container_id: String,
    pub ifname: String,
}

impl Handle {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Handle {
        Handle {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its subnet's prefix length (e.g. `10.1.0.5/24`).
    pub address: ipnetwork::IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index of the range set it came from.
    pub range_set: usize,
}

/// CNI error codes used by [`IpamError::cni_code`].
pub mod codes {
    /// CNI spec: I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// CNI spec: invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// CNI spec: plugin not available (STATUS).
    pub const UNAVAILABLE: u32 = 50;
    /// Plugin-specific: a range set has no free address.
    pub const EXHAUSTED: u32 = 104;
    /// Plugin-specific: CHECK found the allocation differs from what was expected.
    pub const NOT_FOUND: u32 = 105;
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free IP address: {what}")]
    Exhausted { what: String },
    #[error("IPAM store unavailable: {what}")]
    Unavailable { what: String },
    #[error("IPAM check failed: {what}")]
    NotFound { what: String },
}

impl IpamError {
    /// The CNI error code to report.
    pub fn cni_code(&self) -> u32 {
        match self {
            IpamError::Config(_) => codes::INVALID_CONFIG,
            IpamError::Io { .. } => codes::IO_FAILURE,
            IpamError::Exhausted { .. } => codes::EXHAUSTED,
            IpamError::Unavailable { .. } => codes::UNAVAILABLE,
            IpamError::NotFound { .. } => codes::NOT_FOUND,
        }
    }
}
