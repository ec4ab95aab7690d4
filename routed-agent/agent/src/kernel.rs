//! Programs the desired routes into the kernel, tagged with Reef's route protocol number so the
//! agent can tell its own routes from everybody else's (the CNI plugin's pod routes, the
//! operator's, DHCP's) and never touches those.

use crate::desired::{Desired, Target};
use ipnetwork::IpNetwork;
use reef_netlink::{Netlink, RouteKind, RouteSpec};
use std::collections::BTreeMap;

/// `rtm_protocol` of every route reef-agent programs (`ip route show proto 201`). Unassigned
/// in iproute2's rt_protos (BGP daemons use 186–192, Calico's BIRD 12).
pub const RTPROT_REEF: u8 = 201;

/// What the last apply left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub added: usize,
    pub removed: usize,
    /// Routes programmed now.
    pub routes: usize,
    /// Nodes whose routes failed or cannot be computed, with why.
    pub problems: BTreeMap<String, String>,
    /// This node's VTEP (MAC, address) when an overlay backend runs: published in its record.
    pub vtep: Option<(String, std::net::IpAddr)>,
}

pub struct RouteProgrammer {
    nl: Netlink,
    /// What the kernel has, as far as we know: our routes only.
    programmed: BTreeMap<IpNetwork, Target>,
}

fn spec(dst: IpNetwork, t: Target) -> RouteSpec {
    let mut s = RouteSpec::new(dst, None);
    s.protocol = Some(RTPROT_REEF);
    match t {
        Target::Blackhole => s.kind = RouteKind::Blackhole,
        Target::Via(gw) => s.gw = Some(gw),
        Target::Onlink { via, dev } => {
            s.gw = Some(via);
            s.oif = Some(dev);
            s.onlink = true;
        }
    }
    s
}

fn explain(e: &reef_netlink::Error, t: Target) -> String {
    match (e.errno(), t) {
        (Some(libc::ENETUNREACH), Target::Via(gw)) => format!(
            "next hop {gw} is not on a directly connected network: routed mode needs the nodes \
             on one L2 segment (use mode vxlan or vxlan-crosssubnet across subnets)"
        ),
        _ => e.to_string(),
    }
}

impl RouteProgrammer {
    pub fn new(nl: Netlink) -> RouteProgrammer {
        RouteProgrammer {
            nl,
            programmed: BTreeMap::new(),
        }
    }

    /// Re-reads what the kernel holds with our protocol number (after a restart, or to undo
    /// someone else's edits), then applies the difference to `desired`.
    pub async fn full_sync(&mut self, desired: &Desired) -> reef_netlink::Result<Report> {
        let mut have = BTreeMap::new();
        for v6 in [false, true] {
            for r in self.nl.routes_by_protocol(v6, RTPROT_REEF).await? {
                let t = match (r.kind, r.gw) {
                    (RouteKind::Blackhole, _) => Target::Blackhole,
                    (RouteKind::Unicast, Some(gw)) if r.onlink => Target::Onlink {
                        via: gw,
                        dev: r.oif.unwrap_or_default(),
                    },
                    (RouteKind::Unicast, Some(gw)) => Target::Via(gw),
                    // A gateway-less route of ours cannot be described: replace it.
                    (RouteKind::Unicast, None) => Target::Blackhole,
                };
                have.insert(r.dst, t);
            }
        }
        self.programmed = have;
        Ok(self.apply(desired).await)
    }

    /// Changes only what differs between what we programmed and `desired`. A route that adds
    /// the same destination with another next hop is replaced in one request (no gap).
    pub async fn apply(&mut self, desired: &Desired) -> Report {
        let mut report = Report {
            problems: desired.problems.clone(),
            ..Report::default()
        };
        let stale: Vec<(IpNetwork, Target)> = self
            .programmed
            .iter()
            .filter(|(dst, _)| !desired.routes.contains_key(dst))
            .map(|(d, t)| (*d, *t))
            .collect();
        for (dst, t) in stale {
            match self.nl.delete_route(&spec(dst, t)).await {
                Ok(_) => {
                    self.programmed.remove(&dst);
                    report.removed += 1;
                    crate::info!("route removed", dst = dst, target = format!("{t:?}"));
                }
                Err(e) => crate::warn!("route removal failed", dst = dst, error = e),
            }
        }
        for (dst, w) in &desired.routes {
            if self.programmed.get(dst) == Some(&w.target) {
                continue;
            }
            match self.nl.replace_route(&spec(*dst, w.target)).await {
                Ok(()) => {
                    self.programmed.insert(*dst, w.target);
                    report.added += 1;
                    crate::info!(
                        "route programmed",
                        dst = dst,
                        target = format!("{:?}", w.target),
                        node = w.node
                    );
                }
                Err(e) => {
                    let why = explain(&e, w.target);
                    crate::warn!("route failed", dst = dst, node = w.node, error = why);
                    // Whatever we had for it may still be there (a failed replace leaves the
                    // old route); forget it so the next apply tries again.
                    self.programmed.remove(dst);
                    report.problems.insert(w.node.clone(), why);
                }
            }
        }
        report.routes = self.programmed.len();
        report
    }

    pub fn programmed(&self) -> usize {
        self.programmed.len()
    }
}
