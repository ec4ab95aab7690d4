//! What reefctl prints: each view of a snapshot as (text table, JSON document).

use crate::admin::{GcReport, Snapshot};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A count as a JSON number when it fits (IPv6 pools can exceed u64).
pub fn num(n: u128) -> Value {
    u64::try_from(n)
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(n.to_string()))
}

/// Every node: underlay address, whether its agent is alive (lease), the routes the agent
/// reports having programmed, its blocks, and any routing problem agents report about it.
pub fn node_table(snap: &Snapshot) -> (String, Value) {
    let mut text = format!(
        "{:<20} {:<20} {:<6} {:>6} {:>9} {:>13}  BLOCKS\n",
        "NODE", "ADDRESS", "ALIVE", "ROUTES", "ADDRESSES", "SERVICES/EPS"
    );
    let mut rows = Vec::new();
    let mut problems_text = String::new();
    for n in &snap.nodes {
        let blocks: Vec<String> = snap
            .blocks
            .iter()
            .filter(|(_, _, b)| &b.node == n)
            .map(|(_, _, b)| b.cidr.to_string())
            .collect();
        let addrs = snap
            .handles
            .iter()
            .filter(|(_, h)| &h.node == n)
            .map(|(_, h)| h.ips.len())
            .sum::<usize>();
        let address = snap.node_records.get(n).and_then(|r| r.address);
        let agent = snap.agents.get(n);
        // Problems any live agent reports about this node (e.g. unreachable next hop), and
        // this node's own agent's problems.
        let mut problems = serde_json::Map::new();
        for (reporter, st) in &snap.agents {
            for (about, why) in &st.problems {
                if about == n || reporter == n {
                    let k = if reporter == n {
                        about.clone()
                    } else {
                        format!("seen from {reporter}")
                    };
                    problems_text.push_str(&format!("  {n}: {k}: {why}\n"));
                    problems.insert(k, Value::from(why.clone()));
                }
            }
        }
        text.push_str(&format!(
            "{n:<20} {:<20} {:<6} {:>6} {addrs:>9} {:>13}  {}\n",
            address.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            if agent.is_some() { "yes" } else { "no" },
            agent
                .map(|a| a.routes.to_string())
                .unwrap_or_else(|| "-".into()),
            agent
                .map(|a| format!("{}/{}", a.services, a.endpoints))
                .unwrap_or_else(|| "-".into()),
            blocks.join(",")
        ));
        rows.push(json!({
            "name": n,
            "address": address.map(|a| a.to_string()),
            "alive": agent.is_some(),
            "routes": agent.map(|a| a.routes),
            "services": agent.map(|a| a.services),
            "endpoints": agent.map(|a| a.endpoints),
            "mode": agent.map(|a| a.mode.clone()),
            "blocks": blocks,
            "addresses": addrs,
            "problems": problems,
        }));
    }
    if !problems_text.is_empty() {
        text.push_str("PROBLEMS\n");
        text.push_str(&problems_text);
    }
    (text, Value::Array(rows))
}

pub fn ipam_show(snap: &Snapshot) -> (String, Value) {
    let mut text = String::new();
    let mut pools = Vec::new();
    if let Some(c) = &snap.config {
        text.push_str("POOLS\n");
        for p in &c.pools {
            let blocks: Vec<_> = snap
                .blocks
                .iter()
                .filter(|(_, _, b)| p.cidr.contains(b.cidr.network()))
                .collect();
            let capacity: u128 = blocks.iter().map(|(_, _, b)| b.capacity()).sum();
            let used: usize = blocks.iter().map(|(_, _, b)| b.allocations.len()).sum();
            text.push_str(&format!(
                "  {:<24} /{} blocks: {} claimed of {}, {used} of {capacity} addresses in claimed blocks used\n",
                p.cidr.to_string(),
                p.block_prefix,
                blocks.len(),
                p.block_count()
            ));
            pools.push(json!({"cidr": p.cidr.to_string(), "blockPrefix": p.block_prefix, "blocks": blocks.len(),
                              "capacity": num(capacity), "used": used}));
        }
    } else {
        text.push_str("cluster not initialised (run reefctl init)\n");
    }
    let mut by_node: BTreeMap<&str, Vec<&reef_schema::Block>> = BTreeMap::new();
    for n in &snap.nodes {
        by_node.entry(n.as_str()).or_default();
    }
    for (_, _, b) in &snap.blocks {
        by_node.entry(b.node.as_str()).or_default().push(b);
    }
    let mut nodes = Vec::new();
    text.push_str("NODES\n");
    for (node, blocks) in &by_node {
        let used: usize = snap
            .handles
            .iter()
            .filter(|(_, h)| h.node == *node)
            .map(|(_, h)| h.ips.len())
            .sum();
        text.push_str(&format!("  {node}: {used} addresses\n"));
        let mut rows = Vec::new();
        for b in blocks {
            let lent = b
                .allocations
                .values()
                .filter(|a| a.borrowed_by.is_some())
                .count();
            text.push_str(&format!(
                "    {:<28} {:>4}/{:<4} used{}\n",
                b.cidr.to_string(),
                b.allocations.len(),
                b.capacity(),
                if lent > 0 {
                    format!(" ({lent} borrowed by other nodes)")
                } else {
                    String::new()
                }
            ));
            rows.push(
                json!({"cidr": b.cidr.to_string(), "capacity": num(b.capacity()),
                             "used": b.allocations.len(), "borrowedOut": lent}),
            );
        }
        nodes.push(json!({"name": node, "blocks": rows, "used": used}));
    }
    let mut borrowed = Vec::new();
    if !snap.borrowed.is_empty() {
        text.push_str("BORROWED\n");
    }
    for (ip, rec) in &snap.borrowed {
        let owner = snap
            .blocks
            .iter()
            .find(|(_, _, b)| b.cidr == rec.block)
            .map(|(_, _, b)| b.node.clone())
            .unwrap_or_default();
        text.push_str(&format!(
            "  {ip} used by {} from block {} of {owner}\n",
            rec.node, rec.block
        ));
        borrowed.push(json!({"ip": ip.to_string(), "node": rec.node, "block": rec.block.to_string(), "blockNode": owner}));
    }
    let value = json!({"pools": pools, "nodes": nodes, "borrowed": borrowed, "handles": snap.handles.len()});
    (text, value)
}

pub fn gc_report(r: &GcReport) -> (String, Value) {
    let mut text = format!(
        "released {} handles ({} addresses), {} orphan allocations, {} empty blocks\n",
        r.released_handles.len(),
        r.released_ips.len(),
        r.orphan_allocations.len(),
        r.released_blocks.len()
    );
    for k in &r.removed_records {
        text.push_str(&format!("removed unreadable record {k}\n"));
    }
    let value = json!({
        "releasedHandles": r.released_handles,
        "releasedIps": r.released_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "releasedBlocks": r.released_blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        "orphanAllocations": r.orphan_allocations.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "removedRecords": r.removed_records,
    });
    (text, value)
}
