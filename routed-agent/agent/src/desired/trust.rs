//! Which block and borrowed-address records the agent may route from. A record is cluster
//! state anyone with etcd access can write: only CIDRs IPAM could have written (inside a
//! configured pool, aligned, the pool's block size, stored under its own key, not overlapping
//! another node's block) become routes, so a forged or corrupt record can never reach the
//! host's default route, its underlay, or anybody else's routes. The rest are reported.

use crate::problem::{Problem, Rejection};
use crate::view::ClusterView;
use ipnetwork::IpNetwork;
use reef_schema::{block_key, borrowed_key, Block, BorrowedRecord, Pool};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The records fit to route, and a problem (keyed by the record's etcd key) for each other.
#[derive(Debug, Default)]
pub struct Trusted<'a> {
    pub blocks: Vec<&'a Block>,
    pub borrowed: Vec<(IpAddr, &'a BorrowedRecord)>,
    pub problems: BTreeMap<String, Problem>,
}

/// Checks `cidr` alone against the pools: a block IPAM could have cut.
fn check_cidr(pools: &[Pool], cidr: &IpNetwork) -> Result<(), Rejection> {
    if pools.is_empty() {
        return Err(Rejection::NoPools);
    }
    if cidr.ip() != cidr.network() {
        return Err(Rejection::HostBits);
    }
    let containing: Vec<&Pool> = pools
        .iter()
        .filter(|p| p.cidr.is_ipv4() == cidr.is_ipv4() && p.cidr.contains(cidr.network()))
        .collect();
    match containing.first() {
        None => Err(Rejection::OutsidePools),
        Some(_) if containing.iter().any(|p| p.block_prefix == cidr.prefix()) => Ok(()),
        Some(p) => Err(Rejection::WrongSize(p.block_prefix)),
    }
}

fn check_borrowed(pools: &[Pool], ip: IpAddr, rec: &BorrowedRecord) -> Result<(), Rejection> {
    if pools.is_empty() {
        return Err(Rejection::NoPools);
    }
    if !pools
        .iter()
        .any(|p| p.cidr.is_ipv4() == ip.is_ipv4() && p.cidr.contains(ip))
    {
        return Err(Rejection::OutsidePools);
    }
    if !rec.block.contains(ip) || check_cidr(pools, &rec.block).is_err() {
        return Err(Rejection::BadLender(rec.block));
    }
    Ok(())
}

pub fn trusted(view: &ClusterView) -> Trusted<'_> {
    let pools: &[Pool] = view.config.as_ref().map_or(&[], |c| c.pools.as_slice());
    let mut t = Trusted::default();
    let mut candidates: Vec<(&String, &Block)> = Vec::new();
    for (key, b) in &view.blocks {
        let checked = check_cidr(pools, &b.cidr).and_then(|()| {
            // Two records for one CIDR (or a key naming another block) would make ownership
            // depend on listing order.
            if *key == block_key(&b.cidr) {
                Ok(())
            } else {
                Err(Rejection::KeyMismatch)
            }
        });
        match checked {
            Ok(()) => candidates.push((key, b)),
            Err(why) => {
                t.problems.insert(key.clone(), bad_block(b, why));
            }
        }
    }
    // Overlapping pools could still give two nodes overlapping blocks: route neither, since
    // which one is right cannot be told from here.
    for (key, b) in &candidates {
        let other = candidates.iter().find(|(k, o)| {
            k != key
                && o.node != b.node
                && (o.cidr.contains(b.cidr.network()) || b.cidr.contains(o.cidr.network()))
        });
        match other {
            Some((_, o)) => {
                let why = Rejection::Overlaps {
                    cidr: o.cidr,
                    node: o.node.clone(),
                };
                t.problems.insert((*key).clone(), bad_block(b, why));
            }
            None => t.blocks.push(b),
        }
    }
    for (ip, rec) in &view.borrowed {
        match check_borrowed(pools, *ip, rec) {
            Ok(()) => t.borrowed.push((*ip, rec)),
            Err(why) => {
                t.problems.insert(
                    borrowed_key(ip),
                    Problem::BadBorrowed {
                        ip: *ip,
                        node: rec.node.clone(),
                        why,
                    },
                );
            }
        }
    }
    t
}

fn bad_block(b: &Block, why: Rejection) -> Problem {
    Problem::BadBlock {
        cidr: b.cidr,
        node: b.node.clone(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &[u8] =
        br#"{"pools":[{"cidr":"10.244.0.0/16","blockPrefix":26},{"cidr":"fd00:10::/48","blockPrefix":122}],"mode":"routed"}"#;

    fn why(t: &Trusted<'_>, key: &str) -> Rejection {
        match &t.problems[key] {
            Problem::BadBlock { why, .. } | Problem::BadBorrowed { why, .. } => why.clone(),
            p => panic!("{key}: {p}"),
        }
    }

    #[test]
    fn only_pool_blocks_under_their_own_key_are_trusted() {
        let v = ClusterView::from_kvs([
            ("/reef/config", CONFIG),
            (
                "/reef/blocks/10.244.0.0-26",
                &br#"{"cidr":"10.244.0.0/26","node":"n1"}"#[..],
            ),
            (
                "/reef/blocks/fd00:10::-122",
                &br#"{"cidr":"fd00:10::/122","node":"n2"}"#[..],
            ),
            (
                "/reef/blocks/x",
                &br#"{"cidr":"0.0.0.0/0","node":"n1"}"#[..],
            ),
            (
                "/reef/blocks/198.18.0.0-24",
                &br#"{"cidr":"198.18.0.0/24","node":"n2"}"#[..],
            ),
            (
                "/reef/blocks/10.244.0.64-25",
                &br#"{"cidr":"10.244.0.64/25","node":"n2"}"#[..],
            ),
            (
                "/reef/blocks/10.244.1.0-25",
                &br#"{"cidr":"10.244.1.0/25","node":"n2"}"#[..],
            ),
            (
                "/reef/blocks/y",
                &br#"{"cidr":"10.244.0.0/26","node":"n2"}"#[..],
            ),
        ]);
        let t = trusted(&v);
        let ok: Vec<String> = t.blocks.iter().map(|b| b.cidr.to_string()).collect();
        assert_eq!(ok, vec!["10.244.0.0/26", "fd00:10::/122"]);
        assert_eq!(why(&t, "/reef/blocks/x"), Rejection::OutsidePools);
        assert_eq!(
            why(&t, "/reef/blocks/198.18.0.0-24"),
            Rejection::OutsidePools
        );
        assert_eq!(why(&t, "/reef/blocks/10.244.0.64-25"), Rejection::HostBits);
        assert_eq!(
            why(&t, "/reef/blocks/10.244.1.0-25"),
            Rejection::WrongSize(26)
        );
        assert_eq!(why(&t, "/reef/blocks/y"), Rejection::KeyMismatch);
        assert!(t.problems.values().all(|p| !p.retry()));
    }

    #[test]
    fn nothing_is_trusted_without_pools() {
        let v = ClusterView::from_kvs([(
            "/reef/blocks/10.244.0.0-26",
            &br#"{"cidr":"10.244.0.0/26","node":"n1"}"#[..],
        )]);
        let t = trusted(&v);
        assert!(t.blocks.is_empty());
        assert_eq!(why(&t, "/reef/blocks/10.244.0.0-26"), Rejection::NoPools);
    }

    #[test]
    fn overlapping_blocks_of_two_nodes_are_both_rejected() {
        let v = ClusterView::from_kvs([
            (
                "/reef/config",
                &br#"{"pools":[{"cidr":"10.0.0.0/16","blockPrefix":24},{"cidr":"10.0.0.0/24","blockPrefix":26}],"mode":"routed"}"#[..],
            ),
            (
                "/reef/blocks/10.0.0.0-24",
                &br#"{"cidr":"10.0.0.0/24","node":"a"}"#[..],
            ),
            (
                "/reef/blocks/10.0.0.64-26",
                &br#"{"cidr":"10.0.0.64/26","node":"b"}"#[..],
            ),
            (
                "/reef/blocks/10.0.1.0-24",
                &br#"{"cidr":"10.0.1.0/24","node":"b"}"#[..],
            ),
        ]);
        let t = trusted(&v);
        let ok: Vec<String> = t.blocks.iter().map(|b| b.cidr.to_string()).collect();
        assert_eq!(ok, vec!["10.0.1.0/24"]);
        assert!(matches!(
            why(&t, "/reef/blocks/10.0.0.0-24"),
            Rejection::Overlaps { .. }
        ));
    }

    #[test]
    fn borrowed_addresses_must_lie_in_a_pool_block() {
        let v = ClusterView::from_kvs([
            ("/reef/config", CONFIG),
            (
                "/reef/borrowed/10.244.0.70",
                &br#"{"node":"a","block":"10.244.0.64/26"}"#[..],
            ),
            (
                "/reef/borrowed/198.18.0.1",
                &br#"{"node":"a","block":"198.18.0.0/24"}"#[..],
            ),
            (
                "/reef/borrowed/10.244.0.5",
                &br#"{"node":"a","block":"10.244.0.64/26"}"#[..],
            ),
        ]);
        let t = trusted(&v);
        let ok: Vec<String> = t.borrowed.iter().map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(ok, vec!["10.244.0.70"]);
        assert_eq!(
            why(&t, "/reef/borrowed/198.18.0.1"),
            Rejection::OutsidePools
        );
        assert!(matches!(
            why(&t, "/reef/borrowed/10.244.0.5"),
            Rejection::BadLender(_)
        ));
    }
}
