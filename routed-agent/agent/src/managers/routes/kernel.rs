//! Programs the desired routes into the kernel, tagged with Reef's route protocol number so the
//! agent can tell its own routes from everybody else's (the CNI plugin's pod routes, the
//! operator's, DHCP's) and never touches those.

use crate::desired::{Desired, Target};
use crate::managers::diff::diff;
use crate::managers::Outcome;
use crate::problem::Problem;
use ipnetwork::IpNetwork;
use reef_netlink::{Netlink, RouteKind, RouteSpec};
use std::collections::BTreeMap;

/// `rtm_protocol` of every route reef-agent programs (`ip route show proto 201`). Unassigned
/// in iproute2's rt_protos (BGP daemons use 186–192, Calico's BIRD 12).
pub const RTPROT_REEF: u8 = 201;

/// Metric of our blackholes (a node's own blocks): the last resort for their destination. The
/// kernel keeps routes to one destination at different metrics side by side and uses the
/// lowest; at the same metric as a connected route it keeps both and uses the first, so a
/// blackhole installed before reef-bridge puts a block's gateway on its bridge would shadow
/// the bridge's route to its pods. Behind every other route, it only drops what nothing on
/// this node serves.
pub const BLACKHOLE_METRIC: u32 = u32::MAX;

/// The metric a target's route carries (None: the kernel's default for its family).
fn metric(t: Target) -> Option<u32> {
    match t {
        Target::Blackhole => Some(BLACKHOLE_METRIC),
        Target::Via(_) | Target::Onlink { .. } => None,
    }
}

/// True when a route of ours read from the kernel sits at its target's metric.
fn at_its_metric(r: &reef_netlink::RouteInfo, t: Target) -> bool {
    metric(t).is_none_or(|m| r.priority == Some(m))
}

pub struct RouteProgrammer {
    nl: Netlink,
    /// What the kernel has, as far as we know: our routes only.
    programmed: BTreeMap<IpNetwork, Target>,
    /// Wanted routes left alone because someone else's route holds the destination, with that
    /// route's protocol: reported again without a kernel call until the wish or a resync changes.
    foreign: BTreeMap<IpNetwork, (Target, u8)>,
}

fn spec(dst: IpNetwork, t: Target) -> RouteSpec {
    let mut s = RouteSpec::new(dst, None);
    s.protocol = Some(RTPROT_REEF);
    match t {
        Target::Blackhole => {
            s.kind = RouteKind::Blackhole;
            s.priority = metric(t);
        }
        Target::Via(gw) => s.gw = Some(gw),
        Target::Onlink { via, dev } => {
            s.gw = Some(via);
            s.oif = Some(dev);
            s.onlink = true;
        }
    }
    s
}

fn explain(e: &reef_netlink::Error, t: Target) -> Problem {
    Problem::Route(match (e.errno(), t) {
        (Some(libc::ENETUNREACH), Target::Via(gw)) => format!(
            "next hop {gw} is not on a directly connected network: routed mode needs the nodes \
             on one L2 segment (use mode vxlan or vxlan-crosssubnet across subnets)"
        ),
        _ => e.to_string(),
    })
}

impl RouteProgrammer {
    pub fn new(nl: Netlink) -> RouteProgrammer {
        RouteProgrammer {
            nl,
            programmed: BTreeMap::new(),
            foreign: BTreeMap::new(),
        }
    }

    /// Re-reads what the kernel holds with our protocol number (after a restart, or to undo
    /// someone else's edits), then applies the difference to `desired`.
    pub async fn full_sync(&mut self, desired: &Desired) -> reef_netlink::Result<Outcome> {
        let mut have = BTreeMap::new();
        // Ours, but not at their target's metric (an older agent's blackhole at metric 0), or
        // a second route to one destination (a change between a blackhole and a next hop cut
        // short): removed once the wanted routes are in place.
        let mut misplaced = Vec::new();
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
                    // Not listed here (table local): the services manager's.
                    (RouteKind::Local, _) => continue,
                };
                if !at_its_metric(&r, t) || have.contains_key(&r.dst) {
                    misplaced.push((r, t));
                    continue;
                }
                have.insert(r.dst, t);
            }
        }
        self.programmed = have;
        self.foreign.clear();
        let outcome = self.apply(desired).await;
        for (r, t) in misplaced {
            if at_its_metric(&r, t) && self.programmed.get(&r.dst) == Some(&t) {
                continue; // apply made it the programmed one
            }
            match self.nl.delete_route(&r).await {
                Ok(_) => tracing::info!(dst = %r.dst, target = %format!("{t:?}"), "route removed"),
                Err(e) => tracing::warn!(dst = %r.dst, error = %e, "route removal failed"),
            }
        }
        Ok(outcome)
    }

    /// The protocol of a route in the main table to `dst` that is not ours and that a route
    /// to `target` would replace or shadow, if there is one. Only our own routes are ever
    /// replaced: anything else (the default route, the underlay's connected route, an
    /// operator's route) is left alone whatever the cluster state says. A blackhole shadows
    /// nothing (it sits behind every other metric): only a route at its own metric is in its way.
    async fn foreign_owner(
        &self,
        dst: IpNetwork,
        target: Target,
    ) -> reef_netlink::Result<Option<u8>> {
        let in_the_way = |r: &reef_netlink::RouteInfo| match target {
            Target::Blackhole => r.priority == Some(BLACKHOLE_METRIC),
            Target::Via(_) | Target::Onlink { .. } => true,
        };
        Ok(self
            .nl
            .main_table_routes(dst.is_ipv6())
            .await?
            .into_iter()
            .filter(|r| r.dst == dst && in_the_way(r))
            .map(|r| r.protocol.unwrap_or_default())
            .find(|p| *p != RTPROT_REEF))
    }

    /// Installs one wanted route in place of `old` (ours, if we had one): replaces it when it
    /// is at the same metric, adds it (exclusively) when the destination is free, and refuses
    /// when someone else's route holds it. A change between a blackhole and a next hop changes
    /// the metric, so it is an add like a new destination's (never a replace, which could take
    /// a foreign route at that metric), and the old route is removed after it.
    async fn install(
        &self,
        dst: IpNetwork,
        target: Target,
        old: Option<Target>,
    ) -> Result<(), Problem> {
        let ours = old.is_some_and(|o| metric(o) == metric(target));
        let res = self.install_at(dst, target, ours).await;
        if let Some(o) = old.filter(|_| !ours) {
            if let Err(e) = self.nl.delete_route(&spec(dst, o)).await {
                tracing::warn!(dst = %dst, error = %e, "route removal failed");
            }
        }
        res
    }

    async fn install_at(&self, dst: IpNetwork, target: Target, ours: bool) -> Result<(), Problem> {
        if !ours {
            match self.foreign_owner(dst, target).await {
                Ok(Some(protocol)) => return Err(Problem::ForeignRoute { dst, protocol }),
                Ok(None) => {}
                Err(e) => return Err(explain(&e, target)),
            }
        }
        // Replace only when a route of ours may be there (ours, or forgotten after a failed
        // replace); otherwise an exclusive add, so a route appearing meanwhile is not replaced.
        let res = if ours {
            self.nl.replace_route(&spec(dst, target)).await
        } else {
            self.nl.add_route(&spec(dst, target)).await
        };
        match res {
            Err(e) if !ours && e.is_exists() => {
                // Ours after all (left from a failed replace): find out before replacing.
                match self.foreign_owner(dst, target).await {
                    Ok(Some(protocol)) => Err(Problem::ForeignRoute { dst, protocol }),
                    Ok(None) => self
                        .nl
                        .replace_route(&spec(dst, target))
                        .await
                        .map_err(|e| explain(&e, target)),
                    Err(e) => Err(explain(&e, target)),
                }
            }
            r => r.map_err(|e| explain(&e, target)),
        }
    }

    /// Changes only what differs between what we programmed and `desired`. A route that adds
    /// the same destination with another next hop is replaced in one request (no gap).
    pub async fn apply(&mut self, desired: &Desired) -> Outcome {
        let mut outcome = Outcome {
            problems: desired.problems.clone(),
            ..Outcome::default()
        };
        let want: BTreeMap<IpNetwork, Target> =
            desired.routes.iter().map(|(d, w)| (*d, w.target)).collect();
        let changes = diff(&self.programmed, &want);
        self.foreign.retain(|dst, _| want.contains_key(dst));
        for (dst, t) in changes.stale {
            match self.nl.delete_route(&spec(dst, t)).await {
                Ok(_) => {
                    self.programmed.remove(&dst);
                    tracing::info!(dst = %dst, target = %format!("{t:?}"), "route removed");
                }
                Err(e) => tracing::warn!(dst = %dst, error = %e, "route removal failed"),
            }
        }
        for (dst, target) in changes.set {
            let node = desired
                .routes
                .get(&dst)
                .map(|w| w.node.as_str())
                .unwrap_or_default();
            if let Some((t, protocol)) = self.foreign.get(&dst) {
                if *t == target {
                    // Already reported; re-checked at the next resync.
                    let p = Problem::ForeignRoute {
                        dst,
                        protocol: *protocol,
                    };
                    outcome.problems.insert(node.to_string(), p);
                    continue;
                }
            }
            self.foreign.remove(&dst);
            let old = self.programmed.get(&dst).copied();
            match self.install(dst, target, old).await {
                Ok(()) => {
                    self.programmed.insert(dst, target);
                    tracing::info!(dst = %dst, target = %format!("{target:?}"), node = %node, "route programmed");
                }
                Err(why) => {
                    tracing::warn!(dst = %dst, node = %node, error = %why, "route failed");
                    if let Problem::ForeignRoute { protocol, .. } = why {
                        self.foreign.insert(dst, (target, protocol));
                    }
                    // Whatever we had for it may still be there (a failed replace leaves the
                    // old route); forget it so the next apply tries again.
                    self.programmed.remove(&dst);
                    outcome.problems.insert(node.to_string(), why);
                }
            }
        }
        outcome.routes = self.programmed.len();
        outcome
    }

    pub fn programmed(&self) -> usize {
        self.programmed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_carry_reef_protocol_and_target() {
        let dst: IpNetwork = "10.0.0.0/26".parse().unwrap();
        let s = spec(dst, Target::Blackhole);
        assert_eq!(s.protocol, Some(RTPROT_REEF));
        assert!(matches!(s.kind, RouteKind::Blackhole));
        assert_eq!(
            s.priority,
            Some(BLACKHOLE_METRIC),
            "behind a bridge's connected route"
        );
        let via = "10.0.0.64".parse().unwrap();
        let s = spec(dst, Target::Onlink { via, dev: 7 });
        assert_eq!((s.gw, s.oif, s.onlink), (Some(via), Some(7), true));
    }

    #[test]
    fn unreachable_next_hops_are_explained() {
        let e = reef_netlink::Error::Io {
            context: "add route".into(),
            source: std::io::Error::from_raw_os_error(libc::ENETUNREACH),
        };
        let p = explain(&e, Target::Via("198.18.2.1".parse().unwrap()));
        assert!(
            p.to_string()
                .contains("not on a directly connected network"),
            "{p}"
        );
        assert!(p.retry());
    }
}
