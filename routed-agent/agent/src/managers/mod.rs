//! One manager per data-plane concern, as Calico's Felix has: each pairs a pure desired-state
//! function ([`crate::desired`]) with a kernel programmer that remembers what it programmed
//! and changes only the difference. The reconcile loop ([`crate::reconcile`]) runs the list
//! [`for_node`] builds, in order, on every relevant change and on every resync:
//!
//! 1. [`nat::NatManager`]: natOutgoing (one nftables table, replaced when the pools change);
//! 2. [`routes::RoutesManager`]: routes between nodes, through the routed or a VXLAN backend;
//! 3. [`services::ServicesManager`]: virtual IPs and node ports to live endpoints;
//! 4. [`policy::PolicyManager`]: network policy for this node's pods, then the release of
//!    new pods held until their rules are in place.

pub mod diff;
pub mod nat;
pub mod policy;
pub mod routes;
pub mod services;

use crate::problem::Problem;
use crate::underlay::Underlay;
use crate::view::ClusterView;
use reef_netlink::Netlink;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// A failure that ends the etcd session (the loop reconnects and resyncs in full); a concern
/// that merely could not be programmed reports a [`Problem`] in its [`Outcome`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Netlink(#[from] reef_netlink::Error),
}

/// What one sync left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Per node (or this node, for a local concern): what could not be programmed.
    pub problems: BTreeMap<String, Problem>,
    /// Routes programmed now (the routes manager).
    pub routes: usize,
    /// VXLAN FDB and neighbour entries programmed now (the routes manager, VXLAN modes).
    pub fdb_entries: usize,
    pub neighbours: usize,
    /// This node's VTEP (MAC, address) when an overlay runs: published in its record.
    pub vtep: Option<(String, IpAddr)>,
    /// Service ports and endpoints programmed now (the services manager).
    pub services: usize,
    pub endpoints: usize,
    /// Policies in the cluster (the policy manager).
    pub policies: usize,
}

impl Outcome {
    /// Folds a later manager's outcome in (its problems win for the same node).
    pub fn merge(&mut self, other: Outcome) {
        self.problems.extend(other.problems);
        self.routes += other.routes;
        self.fdb_entries += other.fdb_entries;
        self.neighbours += other.neighbours;
        self.services += other.services;
        self.endpoints += other.endpoints;
        self.policies += other.policies;
        self.vtep = self.vtep.take().or(other.vtep);
    }
}

/// The host's firewall driver (`--firewall`), opened on first use and kept for the agent's
/// life: a driver holds its tables' pictures.
#[derive(Default)]
pub struct Firewall {
    kind: reef_firewall::DriverKind,
    driver: Option<Box<dyn reef_firewall::FirewallDriver>>,
}

impl Firewall {
    pub fn new(kind: reef_firewall::DriverKind) -> Firewall {
        Firewall { kind, driver: None }
    }

    pub fn driver(
        &mut self,
    ) -> Result<&mut Box<dyn reef_firewall::FirewallDriver>, reef_firewall::Error> {
        if self.driver.is_none() {
            self.driver = Some(reef_firewall::driver(self.kind));
        }
        self.driver
            .as_mut()
            .ok_or_else(|| reef_firewall::Error::Check("no firewall driver".into()))
    }
}

pub type SyncFuture<'a> = Pin<Box<dyn Future<Output = Result<Outcome, ManagerError>> + 'a>>;

/// One concern of the data plane.
pub trait Manager {
    fn name(&self) -> &'static str;

    /// Makes the kernel match `view` for this concern: `full` re-reads the kernel first
    /// (start, re-list, periodic resync); otherwise only the difference from the last call
    /// is applied.
    fn sync<'a>(&'a mut self, view: &'a ClusterView, full: bool) -> SyncFuture<'a>;

    /// Per policy, the packet counters of this node (the policy manager only).
    fn policy_counters(&mut self) -> Option<BTreeMap<String, reef_schema::PolicyCounters>> {
        None
    }
}

/// The managers of node `me`, in the order they run.
pub fn for_node(
    me: &str,
    nl: Netlink,
    underlay: Underlay,
    firewall: reef_firewall::DriverKind,
) -> Vec<Box<dyn Manager>> {
    vec![
        Box::new(nat::NatManager::new(me, nat::Firewall(firewall))),
        Box::new(routes::RoutesManager::new(me, nl.clone(), underlay)),
        Box::new(services::ServicesManager::new(
            me,
            Firewall::new(firewall),
            Some(nl),
        )),
        Box::new(policy::PolicyManager::new(me, Firewall::new(firewall))),
    ]
}

/// At start: removes what the other driver programmed here (natOutgoing, services, policy),
/// so switching a node's `--firewall` leaves nothing of the old one behind to shadow or
/// contradict the new rules. Errors are logged: the other driver may not even be installed.
pub fn forget_other_firewall(kind: reef_firewall::DriverKind) {
    use reef_firewall::DriverKind;
    let other = match kind.resolve() {
        DriverKind::Iptables => DriverKind::Nftables,
        _ => DriverKind::Iptables,
    };
    let mut fw = reef_firewall::driver(other);
    for (what, res) in [
        ("natOutgoing", fw.remove_nat_outgoing()),
        ("services", fw.remove_services()),
        ("policy", fw.remove_policy()),
    ] {
        if let Err(e) = res {
            tracing::debug!(driver = %other, what, error = %e, "nothing removed");
        }
    }
    fw.close_in_background();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_problems_win_and_counts_add_up() {
        let mut a = Outcome {
            problems: BTreeMap::from([("n".into(), Problem::Nat("x".into()))]),
            ..Outcome::default()
        };
        a.merge(Outcome {
            problems: BTreeMap::from([("n".into(), Problem::NoVtep)]),
            routes: 3,
            vtep: Some(("aa:bb:cc:dd:ee:ff".into(), "10.0.0.0".parse().unwrap())),
            ..Outcome::default()
        });
        assert_eq!(a.problems["n"], Problem::NoVtep);
        assert_eq!(a.routes, 3);
        assert!(a.vtep.is_some());
    }
}
