//! The firewall's rule types, independent of any driver: what a network, a pod or a node
//! needs, not how nftables or iptables express it.

use ipnetwork::IpNetwork;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Masquerade for one network: traffic from its pods to anywhere outside its subnets.
#[derive(Debug, Clone)]
pub struct Masquerade {
    /// The CNI network name.
    pub network: String,
    /// Every subnet of the network (from the pod's IPAM result); traffic to these is not NATed.
    pub subnets: Vec<IpNetwork>,
}

/// One address pool of the cluster, for the agent's natOutgoing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatPool {
    pub cidr: IpNetwork,
    /// Whether pod traffic from this pool leaving every pool is masqueraded to the node.
    pub nat_outgoing: bool,
}

/// nft's comment limit (bytes, without the NUL): bounds an owner tag.
pub(crate) const COMMENT_MAX: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DNAT: `host_ip:host_port/proto` (every local address without `host_ip`) to
/// `pod_ip:container_port`. `host_ip` and `pod_ip` are of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: Proto,
    pub pod_ip: IpAddr,
    pub container_port: u16,
}

impl PortMapping {
    /// `0.0.0.0` and `::` mean "every address of the family", like no address.
    pub fn normalized(mut self) -> PortMapping {
        if self.host_ip.is_some_and(|a| a.is_unspecified()) {
            self.host_ip = None;
        }
        self
    }

    /// The host side, as a person writes it: `198.18.0.1:8080/tcp`, `*:8080/udp`, `[fd00::1]:80/tcp`.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(IpAddr::V6(a)) => format!("[{a}]:{}/{}", self.host_port, self.proto),
            Some(a) => format!("{a}:{}/{}", self.host_port, self.proto),
            None if self.pod_ip.is_ipv6() => format!("[::]:{}/{}", self.host_port, self.proto),
            None => format!("*:{}/{}", self.host_port, self.proto),
        }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pod = match self.pod_ip {
            IpAddr::V6(a) => format!("[{a}]:{}", self.container_port),
            a => format!("{a}:{}", self.container_port),
        };
        write!(f, "{} -> {pod}", self.host_side())
    }
}

/// One load-balanced port of a service, as a node's data plane programs it: traffic to
/// `vip:port/proto` (and, with `node_port`, to any local address on that port) goes to one
/// of `endpoints`, chosen at random per connection (or per client with affinity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLb {
    pub vip: IpAddr,
    pub proto: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Live endpoints (no endpoint: connections are rejected at once).
    pub endpoints: Vec<LbEndpoint>,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy Local: node-port traffic goes to this node's endpoints only,
    /// keeping the client's address, and is rejected where there are none.
    pub node_port_local: bool,
}

/// An endpoint of a [`ServiceLb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbEndpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// On the node being programmed.
    pub local: bool,
}

impl ServiceLb {
    /// The identity of a service port in the data plane.
    pub fn key(&self) -> (IpAddr, Proto, u16) {
        (self.vip, self.proto, self.port)
    }
}

/// The endpoints of `old` that `now` (`None`: the service port is gone) no longer has, with
/// the port's key: whose UDP conntrack entries (and affinity) must go, in either driver.
pub(crate) fn removed_endpoints(
    key: (IpAddr, Proto, u16),
    old: &ServiceLb,
    now: Option<&ServiceLb>,
) -> Vec<((IpAddr, Proto, u16), LbEndpoint)> {
    old.endpoints
        .iter()
        .filter(|e| {
            now.is_none_or(|n| !n.endpoints.iter().any(|x| x.ip == e.ip && x.port == e.port))
        })
        .map(|e| (key, *e))
        .collect()
}

/// The attachment a mapping belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// FNV-1a, 64 bits: a stable hash for over-long owner tags (no dependency, no std hasher
/// whose output may change between Rust releases).
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A separator no identifier byte can take, so ("ab","c") != ("a","bc").
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl Owner {
    /// The tags of `network`'s attachments in `valid` (containerID, ifname): what a GC keeps.
    pub(crate) fn tags_of(network: &str, valid: &[(String, String)]) -> Vec<String> {
        valid
            .iter()
            .map(|(cid, ifname)| {
                Owner {
                    network: network.to_string(),
                    container_id: cid.clone(),
                    ifname: ifname.clone(),
                }
                .tag()
            })
            .collect()
    }

    /// The element comment: `<network>/<containerID>/<ifname>` (none of the three may hold a
    /// `/`), or `#<hash of network>/<hash of containerID and ifname>` when that is too long.
    pub fn tag(&self) -> String {
        let plain = format!("{}/{}/{}", self.network, self.container_id, self.ifname);
        if plain.len() <= COMMENT_MAX {
            return plain;
        }
        format!(
            "#{:016x}/{:016x}",
            fnv64(&[&self.network]),
            fnv64(&[&self.container_id, &self.ifname])
        )
    }
}

/// Whether an element comment names an owner in `network`.
pub(crate) fn tag_in_network(tag: &str, network: &str) -> bool {
    if let Some(hashed) = tag.strip_prefix('#') {
        return hashed
            .split('/')
            .next()
            .is_some_and(|h| h == format!("{:016x}", fnv64(&[network])));
    }
    let mut parts = tag.split('/');
    parts.next() == Some(network) && parts.count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tags_fit_and_name_their_network() {
        let o = Owner {
            network: "net1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(o.tag(), "net1/abc/eth0");
        assert!(tag_in_network(&o.tag(), "net1"));
        assert!(!tag_in_network(&o.tag(), "net"));
        let long = Owner {
            container_id: "x".repeat(200),
            ..o.clone()
        };
        let t = long.tag();
        assert!(t.len() <= COMMENT_MAX && t.starts_with('#'), "{t}");
        assert!(tag_in_network(&t, "net1"));
        assert!(!tag_in_network(&t, "net2"));
        assert_ne!(
            t,
            Owner {
                container_id: "y".repeat(200),
                ..o
            }
            .tag()
        );
    }
}

/// One pod's guard: its host interface and addresses (anti-spoofing) and, for a bridge
/// pod, its bridge and whether that network is isolated from the host's other bridges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodGuard {
    pub iface: String,
    pub ips: Vec<IpAddr>,
    pub bridge: Option<BridgeIsolation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeIsolation {
    pub name: String,
    pub isolated: bool,
}

/// The node's network policy as nftables objects (built by reef-agent from the policies,
/// rendered by a driver): named peer sets, chains, counters and the dispatch maps from a
/// local pod's address to its chain (one pair of maps per address family).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRuleset {
    pub sets: BTreeMap<String, PeerSet>,
    pub chains: BTreeMap<String, Vec<PolicyRuleSpec>>,
    pub counters: BTreeSet<String>,
    /// Local pod address -> the chain judging traffic to it.
    pub ingress: BTreeMap<IpAddr, String>,
    /// Local pod address -> the chain judging traffic from it.
    pub egress: BTreeMap<IpAddr, String>,
    /// Namespaces that have at least one policy (new pods there are held until programmed).
    pub namespaces: BTreeSet<String>,
}

/// A peer set: disjoint inclusive ranges of one family, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSet {
    V4(Vec<(Ipv4Addr, Ipv4Addr)>),
    V6(Vec<(Ipv6Addr, Ipv6Addr)>),
}

/// One rule of a policy chain: every present condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRuleSpec {
    /// The remote address must be in this set (source for ingress, destination for egress).
    pub peers: Option<PeerMatch>,
    pub proto: Option<Proto>,
    /// Destination ports, inclusive (needs `proto`).
    pub ports: Option<(u16, u16)>,
    pub counter: Option<String>,
    pub verdict: PolicyVerdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerMatch {
    pub side: PeerSide,
    pub set: String,
    /// An IPv6 set (`ip6 saddr`), else IPv4.
    pub v6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerSide {
    Source,
    Destination,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyVerdict {
    Accept,
    Drop,
    Jump(String),
}
