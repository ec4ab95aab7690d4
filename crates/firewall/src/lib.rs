//! Host firewall rules for Reef, netavark style: plain rule types (`rules`), one driver
//! trait (`FirewallDriver`), and a factory (`driver`, `driver_from_env`) that picks the
//! implementation: nftables (over netlink, the default) or iptables (`iptables-restore`
//! and ipsets, for hosts whose firewall is iptables).
//!
//! Users: reef-bridge (per-network masquerade, `ipMasq`), reef-portmap (host port
//! mappings), reef-agent (natOutgoing for the pools).
//!
//! Shape of the data plane (see DESIGN.md "Data plane rules"): the rules that serve a whole
//! network are installed once, atomically, in one table per concern; a pod only adds or
//! removes its address in that table's sets, which is a single netlink message — no `nft`
//! process on the ADD/DEL hot path.

pub mod choice;
mod conntrack;
pub mod driver;
pub mod iptables;
mod nfnetlink;
pub mod nftables;
pub mod portmap;
pub mod rules;

/// The driver trait under its earlier name (the masquerade half of it).
pub use driver::FirewallDriver as Firewall;
pub use driver::{default_driver, driver, driver_from_env, DriverKind, FirewallDriver, DRIVER_ENV};
pub use nftables::services::{ServiceKey, ServicesApplied};
pub use rules::{
    BridgeIsolation, LbEndpoint, Masquerade, NatPool, Owner, PeerMatch, PeerSet, PeerSide,
    PodGuard, PolicyRuleSpec, PolicyRuleset, PolicyVerdict, PortMapping, Proto, ServiceLb,
};

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
    /// A firewall setting of the plugin's configuration is wrong (names the field).
    #[error("{0}")]
    Config(String),
    /// An external tool (iptables-restore, ipset, ...) refused its input.
    #[error("{tool} failed ({context}): {stderr}")]
    Tool {
        tool: String,
        context: String,
        stderr: String,
    },
    #[error("unknown firewall driver {0:?} (known: nftables, iptables, auto)")]
    UnknownDriver(String),
    #[error("unknown iptables backend {0:?} (known: nft, legacy)")]
    UnknownBackend(String),
}

pub type Result<T> = std::result::Result<T, Error>;
