//! Property tests of the cluster allocator's pure core: the decisions `reef-ipam`'s cluster
//! store takes over its snapshot of etcd (which block to claim, which ordinal to hand out)
//! are these functions, so their guarantees are the allocator's: a claimed block is free
//! and inside the pool, a handed-out address is free, inside its block and never the
//! network, gateway or broadcast address, and nothing free is ever reported full.

use ipnetwork::IpNetwork;
use proptest::prelude::*;
use reef_schema::{block_of, Allocation, Block, Pool};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

/// A small block of either family with some ordinals allocated.
fn block() -> impl Strategy<Value = Block> {
    let cidr = prop_oneof![
        (24u8..=30).prop_map(|p| IpNetwork::new("10.0.0.0".parse().expect("ip"), p)),
        (120u8..=126).prop_map(|p| IpNetwork::new("fd00::".parse().expect("ip"), p)),
    ]
    .prop_map(|n| n.expect("prefix in range"));
    (cidr, proptest::collection::btree_set(0u32..256, 0..64)).prop_map(|(cidr, taken)| {
        let mut b = Block::new(cidr, "n1");
        let size = b.size();
        for o in taken {
            if u128::from(o) < size && !b.is_reserved(u128::from(o)) {
                b.allocations.insert(
                    o,
                    Allocation {
                        handle: format!("n1/c{o}/eth0"),
                        borrowed_by: None,
                    },
                );
            }
        }
        b
    })
}

fn pool() -> impl Strategy<Value = Pool> {
    prop_oneof![
        (16u8..=24, 0u8..=6).prop_map(|(p, extra)| ("10.0.0.0", p, p + extra)),
        (112u8..=120, 0u8..=6).prop_map(|(p, extra)| ("fd00::", p, p + extra)),
    ]
    .prop_map(|(ip, prefix, block_prefix)| Pool {
        cidr: IpNetwork::new(ip.parse().expect("ip"), prefix).expect("prefix"),
        block_prefix,
        nat_outgoing: true,
    })
}

fn usable(b: &Block, o: u128) -> bool {
    !b.is_reserved(o) && !b.allocations.contains_key(&(o as u32))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The next address of a block: free, inside, not reserved, the first such after the
    /// cursor (round robin), and None only when the block is full.
    #[test]
    fn next_free_hands_out_only_free_addresses(
        b in block(),
        after in prop_oneof![any::<u32>(), Just(u32::MAX)],
    ) {
        let size = b.size();
        let reserved = if b.cidr.is_ipv4() { 3 } else { 2 };
        prop_assert_eq!(b.capacity(), size - reserved);
        prop_assert_eq!(b.free(), b.capacity() - b.allocations.len() as u128);
        match b.next_free(after) {
            Some(o) => {
                let o128 = u128::from(o);
                prop_assert!(o128 < size && usable(&b, o128), "{} in {:?}", o, b);
                let ip = b.ip_at(o128).expect("inside");
                prop_assert!(b.cidr.contains(ip));
                prop_assert_eq!(b.ordinal_of(ip), Some(o));
                prop_assert_ne!(Some(ip), b.gateway());
                // Nothing usable was skipped between the cursor and the choice.
                let start = u128::from(after) % size;
                let mut i = (start + 1) % size;
                while i != o128 {
                    prop_assert!(!usable(&b, i), "skipped free ordinal {} before {}", i, o);
                    i = (i + 1) % size;
                }
            }
            None => {
                prop_assert_eq!(b.free(), 0);
                prop_assert!((0..size).all(|o| !usable(&b, o)));
            }
        }
    }

    /// The block a node claims: inside the pool, of the pool's block size, not taken; None
    /// only when every block of the pool is taken. Indices and blocks map both ways.
    #[test]
    fn first_free_block_claims_only_free_blocks(
        p in pool(),
        taken in proptest::collection::hash_set(0u128..80, 0..70),
        start in 0u128..100,
    ) {
        prop_assert!(p.validate().is_ok(), "{:?}", p);
        let count = p.block_count();
        match p.first_free_block(&taken, start) {
            Some(b) => {
                prop_assert_eq!(b.prefix(), p.block_prefix);
                prop_assert!(p.cidr.contains(b.network()) && p.cidr.contains(b.broadcast()));
                let i = p.block_index(&b).expect("index");
                prop_assert!(i < count && !taken.contains(&i), "{} taken", i);
                prop_assert_eq!(p.block_at(i), Some(b));
            }
            None => prop_assert!((0..count).all(|i| taken.contains(&i))),
        }
        for i in (0..count).take(70) {
            let b = p.block_at(i).expect("block");
            prop_assert_eq!(p.block_index(&b), Some(i));
            let ip = b.ip();
            prop_assert_eq!(block_of(std::slice::from_ref(&p), ip), Some(b));
        }
        prop_assert_eq!(p.block_at(count), None);
    }

    /// Allocating a block's addresses one after another (as ADDs do, cursor = the last
    /// ordinal) hands out each usable address exactly once, then reports the block full.
    #[test]
    fn a_block_fills_without_duplicates(
        b in block(),
        cursor in prop_oneof![any::<u32>(), Just(u32::MAX)],
    ) {
        let mut b = b;
        let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
        let free = b.free();
        let mut cursor = cursor;
        while let Some(o) = b.next_free(cursor) {
            let ip = b.ip_at(u128::from(o)).expect("inside");
            prop_assert!(seen.insert(ip), "{} twice", ip);
            b.allocations.insert(o, Allocation { handle: "h".into(), borrowed_by: None });
            cursor = o;
        }
        prop_assert_eq!(seen.len() as u128, free);
        prop_assert_eq!(b.free(), 0);
        let all: HashSet<u32> = b.allocations.keys().copied().collect();
        prop_assert!(all.iter().all(|o| !b.is_reserved(u128::from(*o))));
    }
}
