//! The agent's in-memory copy of the cluster state it routes from: config, nodes, blocks,
//! borrowed addresses and live agents, built from one list and kept current by watch events.

use reef_schema::{
    AgentStatus, Block, BorrowedRecord, ClusterConfig, NodeRecord, AGENTS, BLOCKS, BORROWED,
    CONFIG_KEY, NODES,
};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub config: Option<ClusterConfig>,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Block key -> block.
    pub blocks: BTreeMap<String, Block>,
    pub borrowed: BTreeMap<IpAddr, BorrowedRecord>,
    /// Live agents (their lease-bound status keys).
    pub agents: BTreeMap<String, AgentStatus>,
}

/// What a change touched, so the caller recomputes only what depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    Config,
    Routing,
    Agents,
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
        if let Some(name) = key.strip_prefix(AGENTS) {
            set(
                &mut self.agents,
                name.to_string(),
                value.and_then(|v| decode(key, v)),
            );
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
            crate::warn!("ignoring undecodable record", key = key, error = e);
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
