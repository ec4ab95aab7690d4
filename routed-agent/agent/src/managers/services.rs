//! Services: every service port with its live endpoints ([`desired::services`]), programmed
//! through a [`ServicesProgrammer`]. A full sync (start, re-list, resync) hands the whole
//! picture to the driver, which reads the kernel and changes only what differs; between
//! them, only the services a change touched are recomputed (found through the view's
//! endpoint index) and sent, so one endpoint change costs one small batch whatever the
//! number of services. Nothing here is on the CNI ADD/DEL path.
//!
//! The service CIDR is routed to the host (a `local` route in table local, protocol 201):
//! a VIP with no endpoint then reaches the firewall's input hook and is refused at once
//! instead of following the default route away.

use super::{Firewall, Manager, ManagerError, Outcome, SyncFuture};
use crate::desired::services as desired;
use crate::problem::Problem;
use crate::view::ClusterView;
use ipnetwork::IpNetwork;
use reef_firewall::{PortMapping, ServiceKey, ServiceLb, ServicesApplied};
use reef_netlink::{Netlink, RouteKind, RouteSpec};
use std::collections::BTreeMap;

/// Reef's route protocol number (the routes manager's too).
const PROTO_REEF: u8 = 201;
const TABLE_LOCAL: u32 = 255;

/// The kernel side of services, narrow so the manager's logic is testable without a kernel.
pub trait ServicesProgrammer {
    fn sync_all(&mut self, all: &[ServiceLb]) -> Result<ServicesApplied, reef_firewall::Error>;
    fn update(
        &mut self,
        changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied, reef_firewall::Error>;
    /// The host's port mappings (reef-portmap), to find node ports that clash with them.
    fn port_mappings(&mut self) -> Result<Vec<PortMapping>, reef_firewall::Error> {
        Ok(Vec::new())
    }
}

/// Services through the host's firewall driver.
impl ServicesProgrammer for Firewall {
    fn sync_all(&mut self, all: &[ServiceLb]) -> Result<ServicesApplied, reef_firewall::Error> {
        self.driver()?.sync_services(all)
    }

    fn update(
        &mut self,
        changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied, reef_firewall::Error> {
        self.driver()?.update_services(changed)
    }

    fn port_mappings(&mut self) -> Result<Vec<PortMapping>, reef_firewall::Error> {
        self.driver()?.port_mappings()
    }
}

pub struct ServicesManager<P> {
    me: String,
    programmer: P,
    nl: Option<Netlink>,
    /// Per service id, the ports last programmed; empty until the first full sync succeeds.
    programmed: BTreeMap<String, Vec<ServiceLb>>,
    synced: bool,
    /// The service CIDR routed locally.
    routed: Option<IpNetwork>,
    /// Node ports that a reef-portmap mapping on this host also claims (checked when node
    /// ports change), reported on every sync until they are gone.
    clashes: BTreeMap<String, Problem>,
    /// Service ports and endpoints in `programmed` (kept with it: reported on every sync).
    counts: (usize, usize),
}

/// (service ports, endpoints) of one service's entries.
fn counts(lbs: &[ServiceLb]) -> (usize, usize) {
    (lbs.len(), lbs.iter().map(|l| l.endpoints.len()).sum())
}

fn add(a: (usize, usize), b: (usize, usize)) -> (usize, usize) {
    (a.0 + b.0, a.1 + b.1)
}

impl<P: ServicesProgrammer> ServicesManager<P> {
    pub fn new(me: &str, programmer: P, nl: Option<Netlink>) -> ServicesManager<P> {
        ServicesManager {
            me: me.to_string(),
            programmer,
            nl,
            programmed: BTreeMap::new(),
            synced: false,
            routed: None,
            clashes: BTreeMap::new(),
            counts: (0, 0),
        }
    }

    /// Node ports that clash with the host's port mappings: both are DNATs in prerouting, and
    /// which one a packet meets first is not defined.
    fn check_clashes(&mut self) {
        let node_ports: Vec<(reef_firewall::Proto, u16, String)> = self
            .programmed
            .iter()
            .flat_map(|(id, lbs)| {
                lbs.iter()
                    .filter_map(move |lb| lb.node_port.map(|np| (lb.proto, np, id.clone())))
            })
            .collect();
        self.clashes.clear();
        if node_ports.is_empty() {
            return;
        }
        let Ok(maps) = self.programmer.port_mappings() else {
            return;
        };
        for (proto, np, id) in node_ports {
            if let Some(m) = maps.iter().find(|m| m.proto == proto && m.host_port == np) {
                self.clashes.insert(
                    format!("{}/nodeport {np}/{proto}", self.me),
                    Problem::NodePortClash {
                        port: np,
                        proto: proto.to_string(),
                        service: id,
                        mapping: m.to_string(),
                    },
                );
            }
        }
    }

    fn outcome(&self, res: Result<ServicesApplied, reef_firewall::Error>) -> Outcome {
        let mut o = Outcome::default();
        match res {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "services failed");
                o.problems.insert(
                    format!("{}/services", self.me),
                    Problem::Services(e.to_string()),
                );
            }
        }
        o.problems
            .extend(self.clashes.iter().map(|(k, p)| (k.clone(), p.clone())));
        (o.services, o.endpoints) = self.counts;
        o
    }

    /// The kernel part that needs no netlink: the firewall table.
    pub fn apply(&mut self, view: &ClusterView, full: bool) -> Outcome {
        if full || !self.synced {
            let all = desired::all(view, &self.me);
            let flat: Vec<ServiceLb> = all.values().flatten().cloned().collect();
            let res = self.programmer.sync_all(&flat);
            if res.is_ok() {
                self.programmed = all;
                self.counts = self
                    .programmed
                    .values()
                    .map(|l| counts(l))
                    .fold((0, 0), add);
                self.synced = true;
                self.check_clashes();
            }
            if let Ok(a) = &res {
                if a.changes > 0 {
                    tracing::info!(
                        services = a.services,
                        changes = a.changes,
                        "services programmed"
                    );
                }
            }
            return self.outcome(res);
        }
        let mut changed: Vec<(ServiceKey, Option<ServiceLb>)> = Vec::new();
        let mut next: Vec<(String, Vec<ServiceLb>)> = Vec::new();
        let mut node_ports_changed = false;
        for id in view.changed.affected(view) {
            let new = view
                .services
                .get(&id)
                .map(|s| desired::lbs(view, s, &self.me))
                .unwrap_or_default();
            let old = self.programmed.get(&id).cloned().unwrap_or_default();
            let node_ports = |lbs: &[ServiceLb]| -> Vec<_> {
                lbs.iter()
                    .filter_map(|l| l.node_port.map(|p| (l.proto, p)))
                    .collect()
            };
            node_ports_changed |= node_ports(&old) != node_ports(&new);
            for o in &old {
                if !new.iter().any(|n| n.key() == o.key()) {
                    changed.push((o.key(), None));
                }
            }
            for n in &new {
                if old.iter().find(|o| o.key() == n.key()) != Some(n) {
                    changed.push((n.key(), Some(n.clone())));
                }
            }
            next.push((id, new));
        }
        if changed.is_empty() {
            return self.outcome(Ok(ServicesApplied::default()));
        }
        let res = self.programmer.update(&changed);
        match &res {
            Ok(_) => {
                for (id, lbs) in next {
                    let was = self
                        .programmed
                        .get(&id)
                        .map(|l| counts(l))
                        .unwrap_or((0, 0));
                    self.counts = add(self.counts, counts(&lbs));
                    self.counts = (self.counts.0 - was.0, self.counts.1 - was.1);
                    if lbs.is_empty() {
                        self.programmed.remove(&id);
                    } else {
                        self.programmed.insert(id, lbs);
                    }
                }
                if node_ports_changed {
                    self.check_clashes();
                }
            }
            // The next sync reads everything again.
            Err(_) => self.synced = false,
        }
        self.outcome(res)
    }

    /// Routes the service CIDR to this host (and un-routes an old one).
    async fn route(&mut self, view: &ClusterView) -> Result<(), ManagerError> {
        let Some(nl) = &self.nl else { return Ok(()) };
        let want = view.config.as_ref().map(|c| c.service_cidr());
        if want == self.routed {
            return Ok(());
        }
        let spec = |dst: IpNetwork| RouteSpec {
            oif: Some(1), // lo
            table: Some(TABLE_LOCAL),
            scope: Some(254), // host
            protocol: Some(PROTO_REEF),
            kind: RouteKind::Local,
            ..RouteSpec::new(dst, None)
        };
        if let Some(old) = self.routed.take() {
            nl.delete_route(&spec(old)).await?;
        }
        if let Some(cidr) = want {
            nl.replace_route(&spec(cidr)).await?;
            self.routed = Some(cidr);
        }
        Ok(())
    }
}

impl<P: ServicesProgrammer> Manager for ServicesManager<P> {
    fn name(&self) -> &'static str {
        "services"
    }

    fn sync<'a>(&'a mut self, view: &'a ClusterView, full: bool) -> SyncFuture<'a> {
        Box::pin(async move {
            if full {
                // A resync also restores the route if someone removed it.
                self.routed = None;
            }
            self.route(view).await?;
            Ok(self.apply(view, full))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Records what it was asked to program.
    #[derive(Default)]
    struct Fake {
        full: Vec<usize>,
        updates: Vec<Vec<(ServiceKey, bool)>>,
    }

    impl ServicesProgrammer for Fake {
        fn sync_all(&mut self, all: &[ServiceLb]) -> Result<ServicesApplied, reef_firewall::Error> {
            self.full.push(all.len());
            Ok(ServicesApplied::default())
        }

        fn update(
            &mut self,
            changed: &[(ServiceKey, Option<ServiceLb>)],
        ) -> Result<ServicesApplied, reef_firewall::Error> {
            self.updates
                .push(changed.iter().map(|(k, v)| (*k, v.is_some())).collect());
            Ok(ServicesApplied::default())
        }
    }

    fn put(v: &mut ClusterView, key: &str, value: serde_json::Value) {
        v.apply(key, Some(value.to_string().as_bytes()));
    }

    fn service(v: &mut ClusterView, name: &str, vip: &str) {
        put(
            v,
            &format!("/reef/services/default/{name}"),
            json!({"namespace": "default", "name": name, "type": "ClusterIP",
                   "clusterIp": vip, "selector": {"app": name},
                   "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080}]}),
        );
    }

    fn pod(v: &mut ClusterView, node: &str, cid: &str, app: &str, ip: &str) {
        put(
            v,
            &format!("/reef/workloads/{node}/{cid}/eth0"),
            json!({"node": node, "network": "n", "containerId": cid, "ifname": "eth0",
                   "ips": [ip], "namespace": "default", "labels": {"app": app}}),
        );
    }

    #[test]
    fn only_services_a_change_touches_are_sent() {
        let mut v = ClusterView::default();
        put(
            &mut v,
            "/reef/agents/n1",
            json!({"node": "n1", "pid": 1, "mode": "routed", "started": 0, "updated": 0, "routes": 0}),
        );
        for i in 0..100 {
            service(&mut v, &format!("s{i}"), &format!("10.96.0.{}", i + 10));
            pod(
                &mut v,
                "n1",
                &format!("p{i}"),
                &format!("s{i}"),
                &format!("10.1.0.{}", i + 2),
            );
        }
        let mut m = ServicesManager::new("n1", Fake::default(), None);
        let o = m.apply(&v, true);
        assert_eq!((o.services, o.endpoints), (100, 100));
        v.changed = Default::default();
        // One more pod for s7: one update with s7's port only.
        pod(&mut v, "n1", "extra", "s7", "10.1.1.2");
        m.apply(&v, false);
        v.changed = Default::default();
        let key: ServiceKey = ("10.96.0.17".parse().unwrap(), reef_firewall::Proto::Tcp, 80);
        assert_eq!(m.programmer.updates, vec![vec![(key, true)]]);
        assert_eq!(m.programmed["default/s7"][0].endpoints.len(), 2);
        // The service goes: its port is removed.
        v.apply("/reef/services/default/s7", None);
        m.apply(&v, false);
        assert_eq!(m.programmer.updates[1], vec![(key, false)]);
        assert!(!m.programmed.contains_key("default/s7"));
        assert_eq!(m.programmer.full, vec![100]);
    }
}
