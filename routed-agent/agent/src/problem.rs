//! Why a node (or a concern) is not programmed as wanted. Published as text in the agent's
//! status (`reefctl node ls` shows it); the retry decision is made on the variant.

use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// Why a block or borrowed-address record is not routed: the agent programs only CIDRs that
/// IPAM could have written, so a forged or corrupt record cannot reach anyone else's routes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no readable cluster config (no pools to check it against)")]
    NoPools,
    #[error("host bits set")]
    HostBits,
    #[error("outside every configured pool")]
    OutsidePools,
    #[error("not the pool's block size /{0}")]
    WrongSize(u8),
    #[error("stored under another block's key")]
    KeyMismatch,
    #[error("overlaps {cidr} of node {node}")]
    Overlaps { cidr: IpNetwork, node: String },
    #[error("its block {0} is not a block of the pools containing it")]
    BadLender(IpNetwork),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("node is not registered (removed, or its blocks outlived it)")]
    NotRegistered,
    #[error("node has no underlay address yet (its reef-agent never ran)")]
    NoUnderlay,
    #[error("node's underlay address {0} is of the other family than its block")]
    FamilyMismatch(IpNetwork),
    #[error("node has no VTEP yet (no block yet, or its agent is not in a VXLAN mode)")]
    NoVtep,
    #[error("the overlay carries IPv4 only")]
    OverlayIpv4Only,
    /// The kernel refused a route (the explanation names the likely cause).
    #[error("{0}")]
    Route(String),
    #[error("natOutgoing: {0}")]
    Nat(String),
    #[error("services: {0}")]
    Services(String),
    #[error("network policy: {0}")]
    Policy(String),
    /// A node port that a reef-portmap mapping on the host also claims.
    #[error("node port {port}/{proto} of service {service} is also mapped by reef-portmap ({mapping}); which one a connection gets is undefined")]
    NodePortClash {
        port: u16,
        proto: String,
        service: String,
        mapping: String,
    },
    #[error("block {cidr} of node {node} ignored: {why}")]
    BadBlock {
        cidr: IpNetwork,
        node: String,
        why: Rejection,
    },
    #[error("borrowed address {ip} of node {node} ignored: {why}")]
    BadBorrowed {
        ip: IpAddr,
        node: String,
        why: Rejection,
    },
    /// A route to this destination exists and is not Reef's: it is never replaced.
    #[error("a route to {dst} that is not Reef's (protocol {protocol}) exists; left alone")]
    ForeignRoute { dst: IpNetwork, protocol: u8 },
}

impl Problem {
    /// Every value of [`Problem::kind`], so a metric can show a kind at zero.
    pub const KINDS: [&'static str; 13] = [
        "not_registered",
        "no_underlay",
        "family_mismatch",
        "no_vtep",
        "overlay_ipv4_only",
        "route",
        "nat",
        "services",
        "policy",
        "node_port_clash",
        "bad_block",
        "bad_borrowed",
        "foreign_route",
    ];

    /// The variant's name: a low-cardinality metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NotRegistered => "not_registered",
            Problem::NoUnderlay => "no_underlay",
            Problem::FamilyMismatch(_) => "family_mismatch",
            Problem::NoVtep => "no_vtep",
            Problem::OverlayIpv4Only => "overlay_ipv4_only",
            Problem::Route(_) => "route",
            Problem::Nat(_) => "nat",
            Problem::Services(_) => "services",
            Problem::Policy(_) => "policy",
            Problem::NodePortClash { .. } => "node_port_clash",
            Problem::BadBlock { .. } => "bad_block",
            Problem::BadBorrowed { .. } => "bad_borrowed",
            Problem::ForeignRoute { .. } => "foreign_route",
        }
    }

    /// Whether to try again soon. Problems with the cluster state (a node not registered yet,
    /// no VTEP yet, a family mismatch) are fixed by a change that arrives as a watch event;
    /// retrying them would only repeat the work. So are rejected records and routes owned by
    /// someone else: each is reported once and re-checked on the next change or resync.
    /// Kernel refusals may clear on their own.
    pub fn retry(&self) -> bool {
        matches!(
            self,
            Problem::Route(_) | Problem::Nat(_) | Problem::Services(_) | Problem::Policy(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kernel_refusals_are_retried() {
        assert!(Problem::Route("no route".into()).retry());
        assert!(Problem::Nat("nft missing".into()).retry());
        for p in [
            Problem::NotRegistered,
            Problem::NoUnderlay,
            Problem::NoVtep,
            Problem::OverlayIpv4Only,
            Problem::FamilyMismatch("198.18.1.2/24".parse().unwrap()),
            Problem::BadBlock {
                cidr: "10.244.0.64/25".parse().unwrap(),
                node: "n1".into(),
                why: Rejection::HostBits,
            },
            Problem::BadBorrowed {
                ip: "198.18.0.1".parse().unwrap(),
                node: "n1".into(),
                why: Rejection::OutsidePools,
            },
            Problem::ForeignRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                protocol: 3,
            },
        ] {
            assert!(!p.retry(), "{p}");
            assert!(Problem::KINDS.contains(&p.kind()), "{p}");
        }
    }
}
