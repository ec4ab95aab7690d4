//! The agent's in-memory copy of the cluster state it programs from: config, nodes, blocks,
//! borrowed addresses, live agents, services and workloads (their endpoints), built from one
//! list and kept current by watch events.

use crate::desired::endpoints::{EndpointIndex, Interner, Name, Workload};
use crate::desired::services::Changed;
use reef_schema::policy::{Namespace, NetworkPolicy, NAMESPACES, POLICIES};
use reef_schema::services::SERVICES;
use reef_schema::{
    AgentStatus, Block, BorrowedRecord, ClusterConfig, NodeRecord, Service, AGENTS, BLOCKS,
    BORROWED, CONFIG_KEY, NODES, WORKLOADS,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub config: Option<ClusterConfig>,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Block key -> block.
    pub blocks: BTreeMap<String, Block>,
    pub borrowed: BTreeMap<IpAddr, BorrowedRecord>,
    /// Live agents (their lease-bound status keys).
    pub agents: BTreeMap<String, AgentStatus>,
    /// Service key (`<namespace>/<name>`) -> service.
    pub services: BTreeMap<String, Service>,
    /// Workload key (`<node>/<cid>/<ifname>`) -> what services need of it: the
    /// candidates for endpoints.
    pub workloads: HashMap<Name, Workload>,
    /// The strings of `workloads` and of services' selectors, one copy each.
    pub names: Interner,
    /// Workloads by label and node, services by selector term (kept with the two above).
    pub index: EndpointIndex,
    /// What changed for services since the loop last cleared it (after each reconcile).
    pub changed: Changed,
    /// Policy key (`<namespace>/<name>`) -> policy.
    pub policies: BTreeMap<String, NetworkPolicy>,
    /// Namespaces someone applied (the others have only their name label).
    pub namespaces: BTreeMap<String, Namespace>,
}

/// What a change touched, so the caller recomputes only what depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    Config,
    Routing,
    Agents,
    /// Services or workloads (endpoints).
    Services,
    /// Policies or namespaces.
    Policy,
    Nothing,
}

impl ClusterView {
    pub fn from_kvs<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> ClusterView {
        let mut v = ClusterView::default();
        for (k, val) in kvs {
            v.apply(k, Some(val));
        }
        v
    }

    /// Applies one put (`Some(value)`) or delete (`None`). A value that does not decode is
    /// logged and treated as absent: one bad record must not stop routing for the rest.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Touched {
        if key == CONFIG_KEY {
            // A corrupt config keeps the last readable one: the pools are what every block is
            // checked against, and losing them would withdraw every route.
            match value {
                None => self.config = None,
                Some(v) => {
                    if let Some(c) = decode(key, v) {
                        self.config = Some(c);
                    }
                }
            }
            return Touched::Config;
        }
        if let Some(name) = key.strip_prefix(NODES) {
            set(
                &mut self.nodes,
                name.to_string(),
                value.and_then(|v| decode(key, v)),
            );
            return Touched::Routing;
        }
        if key.starts_with(BLOCKS) {
            let new: Option<Block> = value.and_then(|v| decode(key, v));
            let old = self.blocks.get(key);
            // An ADD rewrites its block with one more allocation: routing only cares about
            // which node owns which CIDR.
            let same = match (&new, old) {
                (Some(n), Some(o)) => n.cidr == o.cidr && n.node == o.node,
                (None, None) => true,
                _ => false,
            };
            set(&mut self.blocks, key.to_string(), new);
            return if same {
                Touched::Nothing
            } else {
                Touched::Routing
            };
        }
        if let Some(ip) = key.strip_prefix(BORROWED) {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                return Touched::Nothing;
            };
            set(&mut self.borrowed, ip, value.and_then(|v| decode(key, v)));
            return Touched::Routing;
        }
        if let Some(id) = key.strip_prefix(SERVICES) {
            let new: Option<Service> = value.and_then(|v| decode(key, v));
            let old = self.services.get(id);
            if old == new.as_ref() {
                return Touched::Nothing;
            }
            self.index
                .service_changed(id, old, new.as_ref(), &mut self.names);
            self.changed.services.insert(id.to_string());
            set(&mut self.services, id.to_string(), new);
            return Touched::Services;
        }
        if let Some(id) = key.strip_prefix(WORKLOADS) {
            let new = value.and_then(|v| match Workload::decode(v, &mut self.names) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "ignoring undecodable record");
                    None
                }
            });
            let (id, old) = match self.workloads.get_key_value(id) {
                Some((k, w)) => (Arc::clone(k), Some(w)),
                None => (Name::from(id), None),
            };
            if old == new.as_ref() {
                return Touched::Nothing;
            }
            // The services that selected it before and those that select it now.
            for w in old.into_iter().chain(new.as_ref()) {
                let ids = self.index.services_selecting(w);
                self.changed.selecting.extend(ids);
            }
            self.index.workload_changed(&id, old, new.as_ref());
            match new {
                Some(w) => {
                    self.workloads.insert(id, w);
                }
                None => {
                    self.workloads.remove(&id);
                }
            }
            return Touched::Services;
        }
        if let Some(id) = key.strip_prefix(POLICIES) {
            let new: Option<NetworkPolicy> = value.and_then(|v| decode(key, v));
            if self.policies.get(id) == new.as_ref() {
                return Touched::Nothing;
            }
            set(&mut self.policies, id.to_string(), new);
            return Touched::Policy;
        }
        if let Some(name) = key.strip_prefix(NAMESPACES) {
            let new: Option<Namespace> = value.and_then(|v| decode(key, v));
            if self.namespaces.get(name) == new.as_ref() {
                return Touched::Nothing;
            }
            set(&mut self.namespaces, name.to_string(), new);
            return Touched::Policy;
        }
        if let Some(name) = key.strip_prefix(AGENTS) {
            let new: Option<AgentStatus> = value.and_then(|v| decode(key, v));
            // A heartbeat rewrites the status: only coming and going matter to services.
            if self.agents.contains_key(name) != new.is_some() {
                self.changed.agents.insert(name.to_string());
            }
            set(&mut self.agents, name.to_string(), new);
            return Touched::Agents;
        }
        Touched::Nothing
    }
}

fn set<K: Ord, V>(map: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
    match v {
        Some(v) => {
            map.insert(k, v);
        }
        None => {
            map.remove(&k);
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "ignoring undecodable record");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_allocation_changes_do_not_touch_routing() {
        let mut v = ClusterView::default();
        let k = "/reef/blocks/10.0.0.0-26";
        let b = br#"{"cidr":"10.0.0.0/26","node":"a","allocations":{}}"#;
        assert_eq!(v.apply(k, Some(b)), Touched::Routing);
        let b2 = br#"{"cidr":"10.0.0.0/26","node":"a","allocations":{"2":{"handle":"a/c/eth0"}}}"#;
        assert_eq!(v.apply(k, Some(b2)), Touched::Nothing);
        assert_eq!(v.apply(k, None), Touched::Routing);
        assert!(v.blocks.is_empty());
    }

    #[test]
    fn bad_records_are_skipped() {
        let v = ClusterView::from_kvs([
            (
                "/reef/nodes/a",
                &b"{\"name\":\"a\",\"address\":\"198.18.1.2/24\"}"[..],
            ),
            ("/reef/nodes/b", &b"not json"[..]),
            ("/reef/handles/a/c/eth0", &b"{}"[..]),
        ]);
        assert_eq!(v.nodes.len(), 1);
        assert_eq!(v.nodes["a"].address.unwrap().to_string(), "198.18.1.2/24");
    }
}
