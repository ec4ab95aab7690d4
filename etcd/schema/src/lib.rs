//! The cluster IPAM data model in etcd and its pure logic (no I/O): key layout, blocks,
//! handles, and address arithmetic. See the README's "Cluster state in etcd".
//!
//! ```text
//! /reef/config                        ClusterConfig: pools, block sizes, mode, VNI, cluster id
//! /reef/nodes/<node>                  node record (written by IPAM on its first block claim,
//!                                     enriched by reef-agent later)
//! /reef/blocks/<cidr with / as ->     Block: owner node + ordinal -> allocation
//! /reef/handles/<node>/<cid>/<ifname> HandleRecord: the addresses one attachment holds
//! /reef/borrowed/<ip>                 BorrowedRecord: an address used outside its block's node
//! /reef/workloads/<node>/<cid>/<ifname> WorkloadRecord: who holds the addresses (pod identity,
//!                                     labels, host interface), written with the handle
//! /reef/agents/<node>                 AgentStatus, attached to the agent's lease: present
//!                                     while the node's reef-agent is alive
//! /reef/services/<ns>/<name>          Service, with its claims under /reef/service-ips/ and
//!                                     /reef/node-ports/ (see `services`)
//! /reef/policies/<ns>/<name>          NetworkPolicy (see `policy`)
//! /reef/namespaces/<name>             Namespace: its labels
//! ```
//! Every change is one etcd transaction guarded by mod-revision compares, so concurrent
//! allocators on any number of hosts never hand out one address twice, and a crash can only
//! leave whole records (an allocation and its handle are written together).

mod codec;
pub mod policy;
pub mod services;

pub use codec::{decode, encode, DecodeError};
pub use policy::{Namespace, NetworkPolicy};
pub use services::{
    Endpoint, PortRange, Protocol, Service, ServicePort, ServiceType, TrafficPolicy,
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const PREFIX: &str = "/reef/";
pub const CONFIG_KEY: &str = "/reef/config";
pub const NODES: &str = "/reef/nodes/";
pub const BLOCKS: &str = "/reef/blocks/";
pub const HANDLES: &str = "/reef/handles/";
pub const BORROWED: &str = "/reef/borrowed/";
pub const WORKLOADS: &str = "/reef/workloads/";
pub const AGENTS: &str = "/reef/agents/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Routed,
    Vxlan,
    VxlanCrosssubnet,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "routed" => Some(Mode::Routed),
            "vxlan" => Some(Mode::Vxlan),
            "vxlan-crosssubnet" => Some(Mode::VxlanCrosssubnet),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Routed => "routed",
            Mode::Vxlan => "vxlan",
            Mode::VxlanCrosssubnet => "vxlan-crosssubnet",
        }
    }
}

/// One address pool, cut into blocks of `block_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub cidr: IpNetwork,
    pub block_prefix: u8,
    /// Masquerade pod traffic leaving the pool (used by the agent).
    #[serde(default = "yes")]
    pub nat_outgoing: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    pub pools: Vec<Pool>,
    pub mode: Mode,
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// Random id `reefctl init` generates once per cluster (a forced re-init keeps it, a
    /// re-created etcd gets a new one). etcd revisions are small integers that repeat across
    /// clusters, so this is what binds a host's cached view to one cluster. Absent in configs
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Where service VIPs come from (`None`: `services::DEFAULT_SERVICE_CIDR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<IpNetwork>,
    /// Node ports (`None`: `services::DEFAULT_NODE_PORTS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port_range: Option<PortRange>,
}

impl ClusterConfig {
    pub fn service_cidr(&self) -> IpNetwork {
        self.service_cidr
            .unwrap_or(IpNetwork::V4(services::DEFAULT_SERVICE_CIDR))
    }

    pub fn node_port_range(&self) -> PortRange {
        self.node_port_range.unwrap_or(services::DEFAULT_NODE_PORTS)
    }
}

fn default_vni() -> u32 {
    1
}

/// One allocated address inside a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Handle key suffix: `<node>/<cid>/<ifname>`.
    pub handle: String,
    /// Set when the address was borrowed by a node other than the block's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrowed_by: Option<String>,
}

/// A block: a fixed-size slice of a pool owned (affinity) by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub cidr: IpNetwork,
    pub node: String,
    /// Ordinal (offset from the block's first address) -> allocation.
    #[serde(default)]
    pub allocations: BTreeMap<u32, Allocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleIp {
    pub ip: IpAddr,
    pub block: IpNetwork,
    /// The block belongs to another node (the address was borrowed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandleRecord {
    pub node: String,
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<HandleIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowedRecord {
    pub node: String,
    pub block: IpNetwork,
}

/// A node as the agent registers it. IPAM creates a bare one (`name` only) on a node's first
/// allocation; the agent fills in how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// The node's underlay address with its subnet's prefix (198.18.1.2/24): the next hop
    /// for its blocks, and (prefix) whether another node shares its subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// VXLAN tunnel endpoint (vxlan modes): the device's MAC and address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<IpAddr>,
}

/// What a live agent reports about itself (deleted with its lease).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub node: String,
    pub pid: u32,
    pub mode: String,
    /// Unix seconds.
    pub started: u64,
    pub updated: u64,
    /// Routes the agent has programmed (remote blocks, borrowed /32s, own blackholes).
    pub routes: usize,
    /// Service ports and their endpoints programmed (absent from older agents).
    #[serde(default)]
    pub services: usize,
    #[serde(default)]
    pub endpoints: usize,
    /// Remote nodes whose routes the kernel refused, with why (e.g. another subnet in routed
    /// mode: the next hop is not on-link).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, String>,
    /// Network policies the agent has applied (all of the cluster's; it renders those that
    /// select a pod of its node).
    #[serde(default)]
    pub policies: usize,
    /// Per policy (`<namespace>/<name>`): packets its rules let in or out on this node, and
    /// packets dropped at the pods it isolates here (a pod isolated by two policies counts
    /// its drops in both).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_counters: BTreeMap<String, PolicyCounters>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounters {
    pub allowed: u64,
    pub dropped: u64,
}

/// One attachment's identity, for services and policies (Kubernetes conventions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRecord {
    pub node: String,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
}

pub fn workload_key(handle_id: &str) -> String {
    format!("{WORKLOADS}{handle_id}")
}

pub fn agent_key(node: &str) -> String {
    format!("{AGENTS}{node}")
}

pub fn block_key(cidr: &IpNetwork) -> String {
    format!("{BLOCKS}{}-{}", cidr.network(), cidr.prefix())
}

pub fn handle_id(node: &str, container_id: &str, ifname: &str) -> String {
    format!("{node}/{container_id}/{ifname}")
}

pub fn handle_key(id: &str) -> String {
    format!("{HANDLES}{id}")
}

pub fn node_key(node: &str) -> String {
    format!("{NODES}{node}")
}

pub fn borrowed_key(ip: &IpAddr) -> String {
    format!("{BORROWED}{ip}")
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> Option<IpAddr> {
    if v4 {
        u32::try_from(v).ok().map(|x| IpAddr::V4(x.into()))
    } else {
        Some(IpAddr::V6(v.into()))
    }
}

fn host_bits(net: &IpNetwork) -> u32 {
    let width = if net.is_ipv4() { 32 } else { 128 };
    width - u32::from(net.prefix())
}

impl Pool {
    pub fn validate(&self) -> Result<(), String> {
        let width: u8 = if self.cidr.is_ipv4() { 32 } else { 128 };
        if self.cidr.ip() != self.cidr.network() {
            return Err(format!("pool {} has host bits set", self.cidr));
        }
        if self.block_prefix < self.cidr.prefix() || self.block_prefix > width {
            return Err(format!(
                "block size /{} does not fit pool {}",
                self.block_prefix, self.cidr
            ));
        }
        if self.cidr.is_ipv4() && self.block_prefix > 30 {
            return Err("IPv4 blocks must be /30 or larger (network, gateway, broadcast)".into());
        }
        if !self.cidr.is_ipv4() && self.block_prefix > 126 {
            return Err("IPv6 blocks must be /126 or larger".into());
        }
        Ok(())
    }

    /// Number of blocks in the pool (saturating: an IPv6 pool can have 2^100 of them).
    pub fn block_count(&self) -> u128 {
        let bits = u32::from(self.block_prefix - self.cidr.prefix());
        if bits >= 128 {
            u128::MAX
        } else {
            1u128 << bits
        }
    }

    /// The `index`-th block of the pool.
    pub fn block_at(&self, index: u128) -> Option<IpNetwork> {
        if index >= self.block_count() {
            return None;
        }
        let size_bits = host_bits(&IpNetwork::new(self.cidr.ip(), self.block_prefix).ok()?);
        let base = to_u128(self.cidr.network()).checked_add(index.checked_shl(size_bits)?)?;
        IpNetwork::new(from_u128(base, self.cidr.is_ipv4())?, self.block_prefix).ok()
    }

    pub fn block_index(&self, block: &IpNetwork) -> Option<u128> {
        if !self.cidr.contains(block.network()) || block.prefix() != self.block_prefix {
            return None;
        }
        let off = to_u128(block.network()) - to_u128(self.cidr.network());
        Some(off >> host_bits(block))
    }

    /// The first block of the pool not in `taken` (indices), scanning from `start` with
    /// wrap-around; never enumerates more than `taken.len() + 1` candidates.
    pub fn first_free_block(
        &self,
        taken: &std::collections::HashSet<u128>,
        start: u128,
    ) -> Option<IpNetwork> {
        let count = self.block_count();
        let mut i = start % count.max(1);
        for _ in 0..=taken.len() {
            if !taken.contains(&i) {
                return self.block_at(i);
            }
            i = (i + 1) % count.max(1);
        }
        None
    }
}

impl Block {
    pub fn new(cidr: IpNetwork, node: &str) -> Block {
        Block {
            cidr,
            node: node.to_string(),
            allocations: BTreeMap::new(),
        }
    }

    pub fn size(&self) -> u128 {
        let b = host_bits(&self.cidr);
        if b >= 128 {
            u128::MAX
        } else {
            1u128 << b
        }
    }

    /// Ordinals never handed out: the block's first address (network), the second (the
    /// node's gateway on this block, used by bridge mode), and for IPv4 the last (broadcast).
    pub fn is_reserved(&self, ordinal: u128) -> bool {
        ordinal == 0 || ordinal == 1 || (self.cidr.is_ipv4() && ordinal == self.size() - 1)
    }

    /// Saturating: a block record from etcd may be a /31 or /32 (no allocator writes one, but
    /// a hand-written record must not overflow its readers).
    pub fn capacity(&self) -> u128 {
        self.size()
            .saturating_sub(if self.cidr.is_ipv4() { 3 } else { 2 })
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.ip_at(1)
    }

    pub fn ip_at(&self, ordinal: u128) -> Option<IpAddr> {
        if ordinal >= self.size() {
            return None;
        }
        from_u128(to_u128(self.cidr.network()) + ordinal, self.cidr.is_ipv4())
    }

    pub fn ordinal_of(&self, ip: IpAddr) -> Option<u32> {
        if !self.cidr.contains(ip) {
            return None;
        }
        u32::try_from(to_u128(ip) - to_u128(self.cidr.network())).ok()
    }

    /// Saturating, like [`Block::capacity`]: a record may list more allocations than fit.
    pub fn free(&self) -> u128 {
        self.capacity()
            .saturating_sub(self.allocations.len() as u128)
    }

    /// The next free ordinal after `after` (round-robin inside the block), if any.
    pub fn next_free(&self, after: u32) -> Option<u32> {
        let size = u32::try_from(self.size().min(u128::from(u32::MAX))).ok()?;
        let mut o = after;
        for _ in 0..size {
            // The cursor comes from the node's cache file: u32::MAX must wrap, not overflow.
            o = o.wrapping_add(1) % size;
            if !self.is_reserved(u128::from(o)) && !self.allocations.contains_key(&o) {
                return Some(o);
            }
        }
        None
    }
}

/// The block an address belongs to, given the pools.
pub fn block_of(pools: &[Pool], ip: IpAddr) -> Option<IpNetwork> {
    let pool = pools.iter().find(|p| p.cidr.contains(ip))?;
    IpNetwork::new(ip, pool.block_prefix)
        .ok()
        .and_then(|n| IpNetwork::new(n.network(), pool.block_prefix).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(c: &str, p: u8) -> Pool {
        Pool {
            cidr: c.parse().unwrap(),
            block_prefix: p,
            nat_outgoing: true,
        }
    }

    #[test]
    fn block_math_v4() {
        let p = pool("10.0.0.0/16", 26);
        assert_eq!(p.block_count(), 1024);
        assert_eq!(p.block_at(0).unwrap().to_string(), "10.0.0.0/26");
        assert_eq!(p.block_at(5).unwrap().to_string(), "10.0.1.64/26");
        assert_eq!(p.block_at(1024), None);
        assert_eq!(p.block_index(&"10.0.1.64/26".parse().unwrap()), Some(5));
        let taken: HashSet<u128> = [0, 1, 2].into_iter().collect();
        assert_eq!(
            p.first_free_block(&taken, 0).unwrap().to_string(),
            "10.0.0.192/26"
        );
        assert_eq!(
            block_of(&[p], "10.0.1.70".parse().unwrap())
                .unwrap()
                .to_string(),
            "10.0.1.64/26"
        );
    }

    #[test]
    fn block_math_v6_never_enumerates() {
        let p = pool("fd00::/48", 122);
        assert_eq!(p.block_count(), 1u128 << 74);
        let taken: HashSet<u128> = [0].into_iter().collect();
        assert_eq!(
            p.first_free_block(&taken, 0).unwrap().to_string(),
            "fd00::40/122"
        );
    }

    #[test]
    fn reserved_and_round_robin() {
        let mut b = Block::new("10.0.0.0/29".parse().unwrap(), "n1");
        assert_eq!(b.capacity(), 5);
        assert_eq!(b.gateway().unwrap().to_string(), "10.0.0.1");
        assert_eq!(b.next_free(0), Some(2));
        b.allocations.insert(
            2,
            Allocation {
                handle: "h".into(),
                borrowed_by: None,
            },
        );
        assert_eq!(b.next_free(2), Some(3));
        assert_eq!(
            b.next_free(6),
            Some(3),
            "wraps around, skipping reserved 7, 0, 1"
        );
        for o in 3..7 {
            b.allocations.insert(
                o,
                Allocation {
                    handle: "h".into(),
                    borrowed_by: None,
                },
            );
        }
        assert_eq!(b.next_free(0), None);
        assert_eq!(b.free(), 0);
        let v6 = Block::new("fd00::/126".parse().unwrap(), "n1");
        assert_eq!(v6.capacity(), 2);
        assert_eq!(v6.next_free(1), Some(2));
    }

    #[test]
    fn odd_records_do_not_overflow() {
        // Blocks no allocator writes, as a hand-edited etcd may hold them.
        let mut b = Block::new("10.0.0.0/31".parse().unwrap(), "n1");
        assert_eq!((b.capacity(), b.free()), (0, 0));
        assert_eq!(b.next_free(u32::MAX), None);
        b.allocations.insert(
            1,
            Allocation {
                handle: "h".into(),
                borrowed_by: None,
            },
        );
        assert_eq!(b.free(), 0);
        let b = Block::new("10.0.0.0/29".parse().unwrap(), "n1");
        assert_eq!(b.next_free(u32::MAX), Some(2), "the cursor wraps");
    }

    #[test]
    fn validation() {
        assert!(pool("10.0.0.0/16", 26).validate().is_ok());
        assert!(pool("10.0.0.1/16", 26).validate().is_err());
        assert!(pool("10.0.0.0/16", 12).validate().is_err());
        assert!(pool("10.0.0.0/16", 31).validate().is_err());
    }
}
