//! Services: stable virtual addresses for the pods a label selector picks (Kubernetes
//! `v1 Service` semantics, ClusterIP and NodePort types).
//!
//! ```text
//! /reef/services/<namespace>/<name>   Service (the spec with its allocations filled in)
//! /reef/service-ips/<ip>              Claim {"service": "<namespace>/<name>"}: the VIP's
//! /reef/node-ports/<port>             Claim: the node port's (one service holds a port
//!                                     number for TCP and UDP alike)
//! ```
//! A service and its claims are written in one etcd transaction, so two concurrent applies
//! never get the same VIP or node port.

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

pub const SERVICES: &str = "/reef/services/";
pub const SERVICE_IPS: &str = "/reef/service-ips/";
pub const NODE_PORTS: &str = "/reef/node-ports/";

/// Kubernetes' defaults, used when `/reef/config` does not name its own: 10.96.0.0/16.
pub const DEFAULT_SERVICE_CIDR: Ipv4Network =
    match Ipv4Network::new_checked(Ipv4Addr::new(10, 96, 0, 0), 16) {
        Some(n) => n,
        None => panic!("10.96.0.0/16 is a network"),
    };
pub const DEFAULT_NODE_PORTS: PortRange = PortRange {
    first: 30000,
    last: 32767,
};
/// `sessionAffinityConfig.clientIP.timeoutSeconds` default and maximum (Kubernetes': 3 h, 1 day).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;

/// An inclusive port range (`--node-port-range 30000-32767`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `A-B`, with 1 ≤ A ≤ B.
    pub fn parse(s: &str) -> Option<PortRange> {
        let (a, b) = s.split_once('-')?;
        let r = PortRange {
            first: a.trim().parse().ok()?,
            last: b.trim().parse().ok()?,
        };
        (r.first >= 1 && r.first <= r.last).then_some(r)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One `spec.ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
    /// NodePort services: requested in the manifest, or allocated at apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// A service. From a manifest, `cluster_ip` and node ports may be absent; in etcd they are
/// always filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ServiceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
    /// Pods whose labels include all of these are the endpoints (none: no endpoints).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// ClientIP affinity timeout in seconds; `None` is `sessionAffinity: None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
}

impl Service {
    /// `<namespace>/<name>`, the value of its claims.
    pub fn id(&self) -> String {
        service_id(&self.namespace, &self.name)
    }

    pub fn key(&self) -> String {
        service_key(&self.namespace, &self.name)
    }

    pub fn node_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().filter_map(|p| p.node_port)
    }

    /// Whether a pod with these labels is one of its endpoints (an empty selector selects
    /// nothing: such services have manually managed endpoints in Kubernetes, which Reef
    /// does not support).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// One endpoint of a service: a selected pod's address of the VIP's family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub ip: IpAddr,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Its node's agent holds its lease: only such endpoints get new connections.
    pub alive: bool,
}

/// The endpoints of `svc` among `workloads` (every workload record of the cluster), sorted
/// by address: pods in the service's namespace whose labels match its selector, one entry
/// per address of the VIP's family. `alive(node)` says whether a node's agent is alive.
pub fn endpoints<'a>(
    svc: &Service,
    workloads: impl IntoIterator<Item = &'a crate::WorkloadRecord>,
    alive: impl Fn(&str) -> bool,
) -> Vec<Endpoint> {
    let v4 = svc.cluster_ip.is_none_or(|ip| ip.is_ipv4());
    let mut out: Vec<Endpoint> = workloads
        .into_iter()
        .filter(|w| w.namespace.as_deref().unwrap_or("default") == svc.namespace)
        .filter(|w| svc.selects(&w.labels))
        .flat_map(|w| {
            let up = alive(&w.node);
            w.ips
                .iter()
                .filter(move |ip| ip.is_ipv4() == v4)
                .map(move |ip| Endpoint {
                    ip: *ip,
                    node: w.node.clone(),
                    pod: w.name.clone(),
                    alive: up,
                })
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.ip == b.ip);
    out
}

/// Who holds a VIP or a node port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// `<namespace>/<name>`.
    pub service: String,
}

pub fn service_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub fn service_key(namespace: &str, name: &str) -> String {
    format!("{SERVICES}{namespace}/{name}")
}

pub fn service_ip_key(ip: &IpAddr) -> String {
    format!("{SERVICE_IPS}{ip}")
}

pub fn node_port_key(port: u16) -> String {
    format!("{NODE_PORTS}{port}")
}

/// The addresses of `cidr` a VIP may take: not the network address, nor (IPv4) the
/// broadcast address. The first usable one is kept back, as Kubernetes keeps it for the
/// API server's `kubernetes` service.
pub fn vip_candidates(cidr: &IpNetwork) -> impl Iterator<Item = IpAddr> + '_ {
    cidr.iter().skip(2).filter(move |ip| match (cidr, ip) {
        (IpNetwork::V4(n), IpAddr::V4(a)) => *a != n.broadcast(),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(selector: &[(&str, &str)]) -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: ServiceType::ClusterIP,
            cluster_ip: None,
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
                node_port: None,
            }],
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    #[test]
    fn a_selector_needs_every_label_and_an_empty_one_selects_nothing() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(svc(&[("app", "web")]).selects(&labels));
        assert!(svc(&[("app", "web"), ("tier", "front")]).selects(&labels));
        assert!(!svc(&[("app", "web"), ("tier", "back")]).selects(&labels));
        assert!(!svc(&[]).selects(&labels));
    }

    #[test]
    fn endpoints_are_the_selected_pods_of_the_namespace_with_their_liveness() {
        let w = |node: &str, ns: Option<&str>, name: &str, app: &str, ips: &[&str]| {
            crate::WorkloadRecord {
                node: node.into(),
                network: "net".into(),
                container_id: name.into(),
                ifname: "eth0".into(),
                ips: ips.iter().map(|i| i.parse().expect("ip")).collect(),
                namespace: ns.map(Into::into),
                name: Some(name.into()),
                labels: [("app".to_string(), app.to_string())].into(),
                host_interface: None,
            }
        };
        let pods = [
            w("n1", None, "a", "web", &["10.0.0.2", "fd00::2"]),
            w("n2", Some("default"), "b", "web", &["10.0.1.2"]),
            w("n3", Some("other"), "c", "web", &["10.0.2.2"]),
            w("n1", None, "d", "db", &["10.0.0.3"]),
        ];
        let mut s = svc(&[("app", "web")]);
        s.cluster_ip = Some("10.96.0.10".parse().expect("ip"));
        let eps = endpoints(&s, &pods, |n| n == "n1");
        let got: Vec<(String, &str, bool)> = eps
            .iter()
            .map(|e| (e.ip.to_string(), e.node.as_str(), e.alive))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.2".to_string(), "n1", true),
                ("10.0.1.2".to_string(), "n2", false)
            ]
        );
    }

    #[test]
    fn port_ranges_parse_strictly() {
        assert_eq!(PortRange::parse("30000-32767"), Some(DEFAULT_NODE_PORTS));
        assert_eq!(PortRange::parse("5-5").map(|r| r.len()), Some(1));
        for bad in ["", "30000", "0-10", "10-5", "a-b", "1-65536"] {
            assert_eq!(PortRange::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn vips_skip_network_first_and_broadcast() {
        let net: IpNetwork = "10.96.0.0/30".parse().expect("net");
        let got: Vec<String> = vip_candidates(&net).map(|i| i.to_string()).collect();
        assert_eq!(got, ["10.96.0.2"]);
    }

    #[test]
    fn the_record_round_trips_in_camel_case() {
        let mut s = svc(&[("app", "web")]);
        s.cluster_ip = Some("10.96.0.10".parse().expect("ip"));
        let text = serde_json::to_string(&s).expect("json");
        assert!(
            text.contains("\"clusterIp\":\"10.96.0.10\"")
                && text.contains("\"type\":\"ClusterIP\""),
            "{text}"
        );
        assert!(
            text.contains("\"targetPort\":8080") && text.contains("\"protocol\":\"TCP\""),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Service>(&text).expect("back"), s);
    }
}
