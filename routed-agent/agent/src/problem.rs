//! Why a node (or a concern) is not programmed as wanted. Published as text in the agent's
//! status (`reefctl node ls` shows it); the retry decision is made on the variant.

use ipnetwork::IpNetwork;

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
}

impl Problem {
    /// Whether to try again soon. Problems with the cluster state (a node not registered yet,
    /// no VTEP yet, a family mismatch) are fixed by a change that arrives as a watch event;
    /// retrying them would only repeat the work. Kernel refusals may clear on their own.
    pub fn retry(&self) -> bool {
        matches!(self, Problem::Route(_) | Problem::Nat(_))
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
        ] {
            assert!(!p.retry(), "{p}");
        }
    }
}
