//! Property test of the cluster store against a real etcd (Debian's etcd-server, in a network
//! namespace of its own, as the cluster tests run it): random ADD/DEL sequences of two nodes
//! on a pool of two /29 blocks (10 addresses, so blocks run out, nodes borrow from each
//! other and the pool fills), against a model of who holds what. After every step etcd
//! holds exactly the model (blocks' allocations, handles, borrowed records), no address
//! twice, none outside the pool or on a block's network, gateway or broadcast ordinal; ADD
//! succeeds (claiming or borrowing) while any address is free and is idempotent, DEL gives
//! back exactly the handle's addresses. Needs root and /usr/bin/etcd, like the cluster tests;
//! it says so and passes without them.

use ipnetwork::IpNetwork;
use netns_fixtures::Cluster;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reef_etcd::{Etcd, EtcdConfig};
use reef_ipam::cluster::{ClusterError, ClusterIpamConfig, ClusterStore};
use reef_schema::{decode, encode, Block, BorrowedRecord, ClusterConfig, HandleRecord, Mode, Pool};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

const POOL: &str = "10.9.0.0/28";
const CAPACITY: usize = 2 * 5;
const NODES: [&str; 2] = ["n1", "n2"];

#[derive(Debug, Clone)]
enum Op {
    Add(usize, u8),
    Del(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..8u8).prop_map(|(n, c)| Op::Add(n, c)),
        1 => (0..2usize, 0..8u8).prop_map(|(n, c)| Op::Del(n, c)),
    ]
}

/// Handle id -> addresses.
type Model = BTreeMap<String, Vec<IpAddr>>;

fn fail(what: &str, e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {e}"))
}

/// What etcd holds: every allocation (address -> handle id, checked on the way) and every
/// handle record.
async fn etcd_state(etcd: &mut Etcd) -> Result<Model, TestCaseError> {
    let pool: IpNetwork = POOL.parse().map_err(|e| fail("pool", e))?;
    let mut by_handle = Model::new();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut borrowed: BTreeMap<IpAddr, String> = BTreeMap::new();
    for kv in etcd
        .get_prefix("/reef/blocks/")
        .await
        .map_err(|e| fail("blocks", e))?
    {
        let b: Block = decode(kv.key(), kv.value()).map_err(|e| fail("block", e))?;
        prop_assert!(
            pool.contains(b.cidr.network()) && b.cidr.prefix() == 29,
            "{:?}",
            b
        );
        for (ord, a) in &b.allocations {
            prop_assert!(
                !b.is_reserved(u128::from(*ord)),
                "reserved ordinal: {:?}",
                b
            );
            let ip = b.ip_at(u128::from(*ord)).expect("ordinal inside the block");
            prop_assert!(seen.insert(ip, a.handle.clone()).is_none(), "{} twice", ip);
            by_handle.entry(a.handle.clone()).or_default().push(ip);
            if let Some(by) = &a.borrowed_by {
                prop_assert_ne!(by, &b.node, "borrowed from itself: {:?}", b);
                borrowed.insert(ip, by.clone());
            }
        }
    }
    let mut records: BTreeMap<IpAddr, String> = BTreeMap::new();
    for kv in etcd
        .get_prefix("/reef/borrowed/")
        .await
        .map_err(|e| fail("borrowed", e))?
    {
        let r: BorrowedRecord = decode(kv.key(), kv.value()).map_err(|e| fail("borrowed", e))?;
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let ip: IpAddr = key["/reef/borrowed/".len()..]
            .parse()
            .map_err(|e| fail(&key, e))?;
        records.insert(ip, r.node);
    }
    prop_assert_eq!(&records, &borrowed, "borrowed records and blocks disagree");
    let mut handles = Model::new();
    for kv in etcd
        .get_prefix("/reef/handles/")
        .await
        .map_err(|e| fail("handles", e))?
    {
        let h: HandleRecord = decode(kv.key(), kv.value()).map_err(|e| fail("handle", e))?;
        let id = format!("{}/{}/{}", h.node, h.container_id, h.ifname);
        handles.insert(id, h.ips.iter().map(|i| i.ip).collect());
    }
    for ips in by_handle.values_mut().chain(handles.values_mut()) {
        ips.sort();
    }
    prop_assert_eq!(&by_handle, &handles, "blocks and handles disagree");
    Ok(by_handle)
}

async fn case(endpoint: &str, n: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let etcd_cfg = EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        tls: None,
    };
    let mut etcd = Etcd::connect(&etcd_cfg)
        .await
        .map_err(|e| fail("connect", e))?;
    for kv in etcd
        .get_prefix("/reef/")
        .await
        .map_err(|e| fail("list", e))?
    {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        etcd.delete(&key).await.map_err(|e| fail("wipe", e))?;
    }
    let config = ClusterConfig {
        pools: vec![Pool {
            cidr: POOL.parse().map_err(|e| fail("pool", e))?,
            block_prefix: 29,
            nat_outgoing: true,
        }],
        mode: Mode::Routed,
        vni: 1,
        // A new cluster every case: no cache may carry over.
        cluster_id: Some(format!("prop-{}-{n}", std::process::id())),
        service_cidr: None,
        node_port_range: None,
    };
    etcd.put("/reef/config", encode(&config))
        .await
        .map_err(|e| fail("config", e))?;
    let dir = tempfile::tempdir().map_err(|e| fail("tempdir", e))?;
    let mut stores = Vec::new();
    for node in NODES {
        let cfg = ClusterIpamConfig {
            etcd: etcd_cfg.clone(),
            node_name: Some(node.to_string()),
            data_dir: Some(dir.path().to_path_buf()),
        };
        stores.push(
            ClusterStore::open(&cfg)
                .await
                .map_err(|e| fail("open", e))?,
        );
    }
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Add(n, c) => {
                let id = format!("{}/c{c}/eth0", NODES[n]);
                let held: usize = model.values().map(Vec::len).sum();
                match stores[n].allocate(&format!("c{c}"), "eth0").await {
                    Ok(got) => {
                        let mut ips: Vec<IpAddr> = got.iter().map(|a| a.address.ip()).collect();
                        ips.sort();
                        match model.get(&id) {
                            Some(mine) => prop_assert_eq!(&ips, mine, "a repeated ADD"),
                            None => {
                                prop_assert_eq!(ips.len(), 1);
                                prop_assert!(held < CAPACITY, "allocated from a full pool");
                                model.insert(id, ips);
                            }
                        }
                    }
                    Err(ClusterError::Exhausted(_)) => {
                        prop_assert!(
                            held == CAPACITY && !model.contains_key(&id),
                            "exhausted with {} of {} held",
                            held,
                            CAPACITY
                        );
                    }
                    Err(e) => return Err(fail("ADD", e)),
                }
            }
            Op::Del(n, c) => {
                let id = format!("{}/c{c}/eth0", NODES[n]);
                let mut got = stores[n]
                    .release(&format!("c{c}"), "eth0")
                    .await
                    .map_err(|e| fail("DEL", e))?;
                got.sort();
                prop_assert_eq!(&got, &model.remove(&id).unwrap_or_default(), "DEL {}", id);
            }
        }
        prop_assert_eq!(&etcd_state(&mut etcd).await?, &model, "after {:?}", op);
    }
    Ok(())
}

#[test]
fn cluster_allocations_stay_exact_in_etcd() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/etcd").exists() {
        eprintln!("prop_cluster: skipped (needs root and /usr/bin/etcd, as the cluster tests)");
        return;
    }
    let cluster = Cluster::new(0, true).expect("etcd in a network namespace");
    let ns = cluster.etcd().host().ns().open().expect("etcd's namespace");
    let endpoint = cluster.etcd().local_endpoint();
    // The client lives on a thread inside etcd's namespace, so it reaches 127.0.0.1 there;
    // the test's own thread and the host's namespace are never changed.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut runner = TestRunner::new(Config {
                cases: 12,
                failure_persistence: None,
                ..Config::default()
            });
            let n = std::cell::Cell::new(0);
            runner
                .run(&proptest::collection::vec(op(), 1..30), |ops| {
                    n.set(n.get() + 1);
                    rt.block_on(case(&endpoint, n.get(), ops))
                })
                .map_err(|e| e.to_string())
        })
        .join()
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("the test thread panicked"),
    }
}
