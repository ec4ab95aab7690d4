//! Services' desired state on one node: each service port with its live endpoints, as the
//! firewall's [`ServiceLb`] rule type.
//!
//! Endpoints are the workloads of the service's namespace whose labels match its selector,
//! on nodes whose agent is alive (a node whose lease expired stops getting new
//! connections everywhere; back when it returns), found through the view's
//! [`EndpointIndex`](super::endpoints::EndpointIndex) without scanning every workload.

use crate::view::ClusterView;
use reef_firewall::{LbEndpoint, Proto, ServiceLb};
use reef_schema::{Protocol, Service, ServiceType, TrafficPolicy};
use std::collections::{BTreeMap, BTreeSet};

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

/// The data-plane entries of service `s` on node `me`: one per port (none without a VIP).
pub fn lbs(view: &ClusterView, s: &Service, me: &str) -> Vec<ServiceLb> {
    let Some(vip) = s.cluster_ip else {
        return Vec::new();
    };
    let mut pods: Vec<(std::net::IpAddr, bool)> = view
        .index
        .candidates(s, &view.names)
        .into_iter()
        .filter_map(|id| view.workloads.get(id))
        .filter(|w| w.selected_by(s))
        .filter(|w| view.agents.contains_key(&*w.node))
        .flat_map(|w| {
            let local = *w.node == *me;
            w.ips
                .iter()
                .filter(|ip| ip.is_ipv4() == vip.is_ipv4())
                .map(move |ip| (*ip, local))
        })
        .collect();
    // One entry per address; should two live records share one (a stale record), the local
    // copy wins, so the pod keeps its hairpin and Local-policy node ports.
    pods.sort_by_key(|(ip, local)| (*ip, !*local));
    pods.dedup_by(|a, b| a.0 == b.0);
    s.ports
        .iter()
        .map(|p| ServiceLb {
            vip,
            proto: proto(p.protocol),
            port: p.port,
            node_port: if s.kind == ServiceType::NodePort {
                p.node_port
            } else {
                None
            },
            endpoints: pods
                .iter()
                .map(|(ip, local)| LbEndpoint {
                    ip: *ip,
                    port: p.target_port,
                    local: *local,
                })
                .collect(),
            affinity_timeout: s.affinity_timeout,
            node_port_local: s.external_traffic_policy == TrafficPolicy::Local,
        })
        .collect()
}

/// Every service's entries on node `me`, by service id.
pub fn all(view: &ClusterView, me: &str) -> BTreeMap<String, Vec<ServiceLb>> {
    view.services
        .iter()
        .map(|(id, s)| (id.clone(), lbs(view, s, me)))
        .collect()
}

/// What changed in the view since the last sync, as far as services care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Services whose own record changed (`<namespace>/<name>`).
    pub services: BTreeSet<String>,
    /// Services that select (or selected) a workload that changed.
    pub selecting: BTreeSet<String>,
    /// Nodes whose agent came or went.
    pub agents: BTreeSet<String>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.selecting.is_empty() && self.agents.is_empty()
    }

    /// The services to recompute.
    pub fn affected(&self, view: &ClusterView) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.services.union(&self.selecting).cloned().collect();
        for node in &self.agents {
            for id in view.index.workloads_on(node) {
                if let Some(w) = view.workloads.get(id) {
                    out.extend(view.index.services_selecting(w));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(v: &mut ClusterView, key: &str, value: serde_json::Value) {
        v.apply(key, Some(value.to_string().as_bytes()));
    }

    fn agent(v: &mut ClusterView, n: &str) {
        put(
            v,
            &format!("/reef/agents/{n}"),
            json!({"node": n, "pid": 1, "mode": "routed", "started": 0, "updated": 0, "routes": 0}),
        );
    }

    fn world() -> ClusterView {
        let mut v = ClusterView::default();
        for (node, cid, ns, app, ip) in [
            ("n1", "a", "default", "web", "10.0.0.2"),
            ("n2", "b", "default", "web", "10.0.1.2"),
            ("n3", "c", "default", "web", "10.0.2.2"),
            ("n1", "d", "shop", "web", "10.0.0.3"),
            ("n1", "e", "default", "db", "10.0.0.4"),
        ] {
            put(
                &mut v,
                &format!("/reef/workloads/{node}/{cid}/eth0"),
                json!({"node": node, "network": "n", "containerId": cid, "ifname": "eth0",
                       "ips": [ip, "fd00::1"], "namespace": ns, "name": cid,
                       "labels": {"app": app, "pod": cid}}),
            );
        }
        agent(&mut v, "n1");
        agent(&mut v, "n2");
        put(
            &mut v,
            "/reef/services/default/web",
            json!({"namespace": "default", "name": "web", "type": "NodePort",
                   "clusterIp": "10.96.0.10", "selector": {"app": "web"},
                   "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080},
                             {"protocol": "UDP", "port": 53, "targetPort": 5353}],
                   "externalTrafficPolicy": "Local"}),
        );
        v.changed = Changed::default();
        v
    }

    fn ips(lb: &ServiceLb) -> Vec<(String, bool)> {
        lb.endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.local))
            .collect()
    }

    #[test]
    fn endpoints_are_selected_pods_of_the_namespace_on_live_nodes() {
        let v = world();
        let lbs = lbs(&v, &v.services["default/web"], "n1");
        assert_eq!(lbs.len(), 2);
        // c is on n3, whose agent is not alive; d is in another namespace; e is a db.
        assert_eq!(
            ips(&lbs[0]),
            [
                ("10.0.0.2".to_string(), true),
                ("10.0.1.2".to_string(), false)
            ]
        );
        assert_eq!((lbs[0].port, lbs[0].node_port), (80, Some(30080)));
        assert_eq!(lbs[0].endpoints[0].port, 8080);
        assert!(lbs[0].node_port_local);
        assert_eq!((lbs[1].proto, lbs[1].node_port), (Proto::Udp, None));
    }

    #[test]
    fn changes_name_the_services_they_affect() {
        let mut v = world();
        agent(&mut v, "n3");
        assert_eq!(v.changed.agents, BTreeSet::from(["n3".to_string()]));
        assert_eq!(
            v.changed.affected(&v),
            BTreeSet::from(["default/web".to_string()])
        );
        let svc = v.services["default/web"].clone();
        assert_eq!(lbs(&v, &svc, "n1")[0].endpoints.len(), 3);
        // A heartbeat of a live agent is not a change.
        v.changed = Changed::default();
        agent(&mut v, "n3");
        assert!(v.changed.is_empty());
        // b relabelled: it leaves the service, and the change names the service.
        put(
            &mut v,
            "/reef/workloads/n2/b/eth0",
            json!({"node": "n2", "network": "n", "containerId": "b", "ifname": "eth0",
                   "ips": ["10.0.1.2"], "namespace": "default", "labels": {"app": "other"}}),
        );
        assert!(v.changed.selecting.contains("default/web"));
        assert_eq!(lbs(&v, &svc, "n1")[0].endpoints.len(), 2);
        v.apply("/reef/workloads/n1/a/eth0", None);
        assert_eq!(
            ips(&lbs(&v, &svc, "n1")[0]),
            [("10.0.2.2".to_string(), false)]
        );
    }

    #[test]
    fn an_empty_or_unmatched_selector_has_no_endpoints() {
        let mut v = world();
        for (name, ip, selector) in [
            ("none", "10.96.0.11", json!({})),
            ("nobody", "10.96.0.12", json!({"app": "ghost"})),
        ] {
            put(
                &mut v,
                &format!("/reef/services/default/{name}"),
                json!({"namespace": "default", "name": name, "type": "ClusterIP",
                       "clusterIp": ip, "selector": selector,
                       "ports": [{"protocol": "TCP", "port": 80, "targetPort": 80}]}),
            );
        }
        let all = all(&v, "n1");
        assert!(all["default/none"][0].endpoints.is_empty());
        assert!(all["default/nobody"][0].endpoints.is_empty());
        assert_eq!(all["default/web"][0].endpoints.len(), 2);
    }
}
