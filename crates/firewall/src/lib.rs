//! Firewall rules the plugins need, behind traits so an iptables driver can sit beside the
//! nftables one. Today: per-network masquerade (`ipMasq`, the `Firewall` trait) and host
//! port mappings (reef-portmap, `portmap::PortMapper`).
//!
//! Shape of the data plane (see DESIGN.md "Data plane rules"): the rules that serve a whole
//! network are installed once, atomically, in one table per network; a pod only adds or
//! removes its address in that table's sets, which is a single netlink message — no `nft`
//! process on the ADD/DEL hot path.

mod conntrack;
mod nfnetlink;
pub mod nftables;
pub mod portmap;

use ipnetwork::IpNetwork;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed ({context}): {stderr}")]
    Nft { context: String, stderr: String },
    #[error("{0}")]
    Check(String),
    /// A host port is already mapped by another attachment (nothing was changed).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Masquerade for one network: traffic from its pods to anywhere outside its subnets.
#[derive(Debug, Clone)]
pub struct Masquerade {
    /// The CNI network name.
    pub network: String,
    /// Every subnet of the network (from the pod's IPAM result); traffic to these is not NATed.
    pub subnets: Vec<IpNetwork>,
}

/// A driver keeps its kernel connection for its own lifetime: callers decide when it closes,
/// because closing an nf_tables socket right after a commit waits for an RCU grace period
/// (the kernel flushes the transaction-destroy work), which a caller can overlap with other
/// slow work such as a veth deletion.
pub trait Firewall {
    /// Makes sure the network's rules exist, then adds the pod's addresses to them.
    fn add_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()>;
    /// Removes the pod's addresses (idempotent; the network's rules stay, like the bridge).
    fn del_masquerade(&mut self, network: &str, pod_ips: &[IpAddr]) -> Result<()>;
    /// Verifies the network's rules exist and hold the pod's addresses.
    fn check_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()>;
}
