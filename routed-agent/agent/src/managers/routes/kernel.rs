//! Programs the desired routes into the kernel, tagged with Reef's route protocol number so the
//! agent can tell its own routes from everybody else's (the CNI plugin's pod routes, the
//! operator's, DHCP's) and never touches those.

use crate::desired::{Desired, Target};
use crate::managers::diff::diff;
use crate::managers::Outcome;
use crate::problem::Problem;
use ipnetwork::IpNetwork;
use reef_netlink::{Netlink, RouteInfo, RouteKind, RouteSpec};
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

/// The metric the kernel gives a route added without one: IPv4 0 (dumped without a priority
/// attribute), IPv6 1024 (IP6_RT_PRIO_USER, dumped as such).
fn default_metric(dst: &IpNetwork) -> u32 {
    if dst.is_ipv4() {
        0
    } else {
        1024
    }
}

/// True when a route of ours read from the kernel sits at its target's metric. A next hop at
/// another metric than the default is misplaced too: a replace (sent at the default metric)
/// would add a second route beside it instead of changing it.
fn at_its_metric(r: &reef_netlink::RouteInfo, t: Target) -> bool {
    let want = metric(t).unwrap_or_else(|| default_metric(&r.dst));
    r.priority.unwrap_or(0) == want || (r.priority.is_none() && metric(t).is_none())
}

/// The routing table as the programmer uses it: the kernel through [`Netlink`] in the agent,
/// a model of the kernel's matching rules in the property test.
// Only ever used with concrete types, whose futures the agent needs no `Send` bound on.
#[allow(async_fn_in_trait)]
pub trait RouteTable {
    async fn routes_by_protocol(
        &self,
        v6: bool,
        protocol: u8,
    ) -> reef_netlink::Result<Vec<RouteInfo>>;
    async fn main_table_routes(&self, v6: bool) -> reef_netlink::Result<Vec<RouteInfo>>;
    async fn add_route(&self, r: &RouteSpec) -> reef_netlink::Result<()>;
    async fn replace_route(&self, r: &RouteSpec) -> reef_netlink::Result<()>;
    async fn delete_route(&self, r: &RouteSpec) -> reef_netlink::Result<bool>;
}

impl RouteTable for Netlink {
    async fn routes_by_protocol(
        &self,
        v6: bool,
        protocol: u8,
    ) -> reef_netlink::Result<Vec<RouteInfo>> {
        Netlink::routes_by_protocol(self, v6, protocol).await
    }
    async fn main_table_routes(&self, v6: bool) -> reef_netlink::Result<Vec<RouteInfo>> {
        Netlink::main_table_routes(self, v6).await
    }
    async fn add_route(&self, r: &RouteSpec) -> reef_netlink::Result<()> {
        Netlink::add_route(self, r).await
    }
    async fn replace_route(&self, r: &RouteSpec) -> reef_netlink::Result<()> {
        Netlink::replace_route(self, r).await
    }
    async fn delete_route(&self, r: &RouteSpec) -> reef_netlink::Result<bool> {
        Netlink::delete_route(self, r).await
    }
}

pub struct RouteProgrammer<T = Netlink> {
    nl: T,
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

impl<T: RouteTable> RouteProgrammer<T> {
    pub fn new(nl: T) -> RouteProgrammer<T> {
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

    #[test]
    fn default_metrics_per_family() {
        let dst: IpNetwork = "10.0.0.0/26".parse().expect("dst");
        let via = Target::Via("198.18.1.2".parse().expect("gw"));
        let mut r = spec(dst, via);
        assert!(at_its_metric(&r, via));
        r.priority = Some(100);
        assert!(!at_its_metric(&r, via));
        let mut r6 = spec("fd00::/122".parse().expect("dst"), via);
        r6.priority = Some(1024);
        assert!(at_its_metric(&r6, via), "IPv6's default metric is 1024");
        r6.priority = Some(BLACKHOLE_METRIC);
        assert!(at_its_metric(&r6, Target::Blackhole) && !at_its_metric(&r6, via));
    }

    mod table {
        //! The programmer against a model of the kernel's routing table, from ANY starting
        //! table: other daemons' routes (kernel, boot, static, BGP) and routes of ours, stale,
        //! at the wrong metric or doubled. After a full sync or an incremental apply, the
        //! routes of ours are exactly the wanted ones (one per destination, its target, at its
        //! metric) except where another owner's route is in the way, which is reported, and
        //! no route of anyone else has changed.

        use super::*;
        use crate::desired::Wanted;
        use proptest::prelude::*;
        use std::cell::RefCell;
        use std::net::{IpAddr, Ipv4Addr};

        /// One IPv4 main table, (destination, metric) -> route, with the kernel's rules for the
        /// requests the programmer sends: an exclusive add fails with EEXIST on the same
        /// destination and metric, a replace overwrites that route (whoever's it is), a delete
        /// removes the first route (lowest metric) matching every attribute the request sets.
        #[derive(Default)]
        struct Kernel {
            routes: RefCell<BTreeMap<(IpNetwork, u32), RouteInfo>>,
        }

        fn kernel_metric(r: &RouteSpec) -> u32 {
            r.priority.unwrap_or(0)
        }

        /// A route as a dump shows it: no priority attribute at metric 0, and "static" (4)
        /// when the request named no protocol.
        fn stored(r: &RouteSpec) -> RouteInfo {
            let mut r = r.clone();
            r.protocol = Some(r.protocol.unwrap_or(4));
            r.priority = r.priority.filter(|p| *p != 0);
            r
        }

        impl Kernel {
            fn with(routes: Vec<RouteSpec>) -> Kernel {
                let k = Kernel::default();
                for r in routes {
                    k.routes
                        .borrow_mut()
                        .insert((r.dst, kernel_metric(&r)), stored(&r));
                }
                k
            }

            fn owned_by_others(&self) -> BTreeMap<(IpNetwork, u32), RouteInfo> {
                let t = self.routes.borrow();
                t.iter()
                    .filter(|(_, r)| r.protocol != Some(RTPROT_REEF))
                    .map(|(k, r)| (*k, r.clone()))
                    .collect()
            }
        }

        impl RouteTable for Kernel {
            async fn routes_by_protocol(
                &self,
                v6: bool,
                protocol: u8,
            ) -> reef_netlink::Result<Vec<RouteInfo>> {
                Ok(self
                    .main_table_routes(v6)
                    .await?
                    .into_iter()
                    .filter(|r| r.protocol == Some(protocol))
                    .filter(|r| matches!(r.kind, RouteKind::Unicast | RouteKind::Blackhole))
                    .collect())
            }

            async fn main_table_routes(&self, v6: bool) -> reef_netlink::Result<Vec<RouteInfo>> {
                let t = self.routes.borrow();
                Ok(t.values()
                    .filter(|r| r.dst.is_ipv6() == v6)
                    .cloned()
                    .collect())
            }

            async fn add_route(&self, r: &RouteSpec) -> reef_netlink::Result<()> {
                let mut t = self.routes.borrow_mut();
                let key = (r.dst, kernel_metric(r));
                if t.contains_key(&key) {
                    return Err(reef_netlink::Error::Io {
                        context: "add route".into(),
                        source: std::io::Error::from_raw_os_error(libc::EEXIST),
                    });
                }
                t.insert(key, stored(r));
                Ok(())
            }

            async fn replace_route(&self, r: &RouteSpec) -> reef_netlink::Result<()> {
                let mut t = self.routes.borrow_mut();
                t.insert((r.dst, kernel_metric(r)), stored(r));
                Ok(())
            }

            async fn delete_route(&self, r: &RouteSpec) -> reef_netlink::Result<bool> {
                let mut t = self.routes.borrow_mut();
                let found = t
                    .iter()
                    .find(|(_, have)| {
                        have.dst == r.dst
                            && have.kind == r.kind
                            && r.priority.is_none_or(|p| p == kernel_metric(have))
                            && r.protocol.is_none_or(|p| have.protocol == Some(p))
                            && r.gw.is_none_or(|g| have.gw == Some(g))
                            && r.oif.is_none_or(|o| have.oif == Some(o))
                    })
                    .map(|(k, _)| *k);
                Ok(found.and_then(|k| t.remove(&k)).is_some())
            }
        }

        const DSTS: [&str; 5] = [
            "10.0.0.0/26",
            "10.0.0.64/26",
            "10.0.0.5/32",
            "10.0.1.0/24",
            "0.0.0.0/0",
        ];

        fn dst(i: usize) -> IpNetwork {
            DSTS[i % DSTS.len()].parse().expect("dst")
        }

        fn target() -> impl Strategy<Value = Target> {
            let gw = (2u8..5).prop_map(|h| IpAddr::V4(Ipv4Addr::new(198, 18, 1, h)));
            prop_oneof![
                Just(Target::Blackhole),
                gw.clone().prop_map(Target::Via),
                gw.prop_map(|via| Target::Onlink { via, dev: 7 }),
            ]
        }

        /// Any route to a destination of the pool: ours (maybe at another metric) or another
        /// owner's (maybe a connected route, without gateway).
        fn kernel_route() -> impl Strategy<Value = RouteSpec> {
            (
                0..DSTS.len(),
                target(),
                prop_oneof![Just(None), Just(Some(100u32)), Just(Some(BLACKHOLE_METRIC))],
                prop_oneof![Just(RTPROT_REEF), Just(2u8), Just(3), Just(4), Just(186)],
                any::<bool>(),
            )
                .prop_map(|(d, t, metric, protocol, connected)| {
                    let mut r = spec(dst(d), t);
                    r.priority = metric;
                    r.protocol = Some(protocol);
                    if connected && protocol != RTPROT_REEF {
                        r = RouteSpec {
                            oif: Some(2),
                            protocol: Some(2),
                            ..RouteSpec::new(dst(d), None)
                        };
                    }
                    r
                })
        }

        fn desired() -> impl Strategy<Value = Desired> {
            proptest::collection::vec((0..DSTS.len(), target(), 0..3usize), 0..6).prop_map(
                |wants| Desired {
                    routes: wants
                        .into_iter()
                        .map(|(d, target, n)| {
                            let node = format!("n{n}");
                            (dst(d), Wanted { target, node })
                        })
                        .collect(),
                    problems: BTreeMap::new(),
                },
            )
        }

        fn target_of(r: &RouteInfo) -> Target {
            match (r.kind, r.gw) {
                (RouteKind::Blackhole, _) => Target::Blackhole,
                (_, Some(via)) if r.onlink => Target::Onlink {
                    via,
                    dev: r.oif.unwrap_or_default(),
                },
                (_, Some(gw)) => Target::Via(gw),
                (_, None) => Target::Blackhole,
            }
        }

        /// The table after a sync of `want` that started from a table whose other owners'
        /// routes were `others`.
        fn check(
            k: &Kernel,
            want: &Desired,
            out: &Outcome,
            others: &BTreeMap<(IpNetwork, u32), RouteInfo>,
        ) -> std::result::Result<(), TestCaseError> {
            prop_assert_eq!(
                &k.owned_by_others(),
                others,
                "another owner's route changed"
            );
            let t = k.routes.borrow();
            let ours: Vec<&RouteInfo> = t
                .values()
                .filter(|r| r.protocol == Some(RTPROT_REEF))
                .collect();
            prop_assert_eq!(out.routes, ours.len());
            for r in &ours {
                let w = want.routes.get(&r.dst);
                prop_assert!(w.is_some(), "unwanted route of ours: {:?}", r);
                let target = target_of(r);
                prop_assert_eq!(Some(target), w.map(|w| w.target), "{:?}", r);
                prop_assert!(at_its_metric(r, target), "at the wrong metric: {:?}", r);
                prop_assert_eq!(ours.iter().filter(|o| o.dst == r.dst).count(), 1, "{:?}", r);
            }
            for (dst, w) in &want.routes {
                if ours.iter().any(|r| r.dst == *dst) {
                    continue;
                }
                // Left out: only because another owner's route holds the destination.
                let in_the_way = others.values().any(|r| {
                    r.dst == *dst
                        && (w.target != Target::Blackhole || kernel_metric(r) == BLACKHOLE_METRIC)
                });
                prop_assert!(in_the_way, "{} {:?} missing", dst, w.target);
                prop_assert!(
                    matches!(
                        out.problems.get(&w.node),
                        Some(Problem::ForeignRoute { .. })
                    ),
                    "{} not reported: {:?}",
                    dst,
                    out.problems
                );
            }
            Ok(())
        }

        /// Found by the property test: a next hop of ours at metric 100 (an operator's `ip
        /// route change`, an older agent) was kept by the full sync, so the next change of
        /// gateway, a replace at the default metric, added a second route of ours beside it.
        #[test]
        fn a_next_hop_of_ours_at_another_metric_is_replaced() {
            let dst: IpNetwork = "10.0.0.0/26".parse().expect("dst");
            let want = |h: u8| Desired {
                routes: BTreeMap::from([(
                    dst,
                    Wanted {
                        target: Target::Via(IpAddr::V4(Ipv4Addr::new(198, 18, 1, h))),
                        node: "n0".into(),
                    },
                )]),
                problems: BTreeMap::new(),
            };
            let mut r = spec(dst, Target::Via("198.18.1.2".parse().expect("gw")));
            r.priority = Some(100);
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let mut p = RouteProgrammer::new(Kernel::with(vec![r]));
            let out = rt.block_on(p.full_sync(&want(2))).expect("full sync");
            check(&p.nl, &want(2), &out, &BTreeMap::new()).expect("first wish");
            let out = rt.block_on(p.apply(&want(3)));
            check(&p.nl, &want(3), &out, &BTreeMap::new()).expect("second wish");
            assert_eq!(p.nl.routes.borrow().len(), 1);
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn ours_become_exactly_the_wanted_routes_and_others_stay(
                table in proptest::collection::vec(kernel_route(), 0..8),
                first in desired(),
                second in desired(),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let k = Kernel::with(table);
                let others = k.owned_by_others();
                let mut p = RouteProgrammer::new(k);
                let out = rt
                    .block_on(p.full_sync(&first))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                check(&p.nl, &first, &out, &others)?;
                // The same wish again changes nothing.
                let before = p.nl.routes.borrow().clone();
                let again = rt.block_on(p.apply(&first));
                prop_assert_eq!(&*p.nl.routes.borrow(), &before);
                prop_assert_eq!(again.routes, out.routes);
                // Another wish, incrementally, then by a full sync.
                let out = rt.block_on(p.apply(&second));
                check(&p.nl, &second, &out, &others)?;
                let out = rt
                    .block_on(p.full_sync(&second))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                check(&p.nl, &second, &out, &others)?;
            }
        }
    }
}
