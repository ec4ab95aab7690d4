//! Cluster IPAM on etcd together with `reefctl`: many hosts allocating at once, pool
//! exhaustion, borrowing, crash safety with GC, re-initialisation and node removal. Each test
//! builds its own simulated cluster (hosts + real etcd in network namespaces), initialises it
//! with `reefctl init`, and checks both what `reefctl` reports and, independently, what etcd
//! holds (`etcdctl get --prefix /reef/`).

use reef_tests::cluster::*;
use reef_tests::expect::{expect_error, result_ips, result_v4};
use reef_tests::store::*;
use reef_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected a JSON array, got {v}"))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("expected string field {key:?} in {v}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("expected number field {key:?} in {v}"))
}

/// `reefctl block ls` as block CIDR -> (node, used).
fn block_ls(env: &Env) -> BTreeMap<Cidr, (String, u64)> {
    let v = env.reefctl_json(0, &["block", "ls"]);
    arr(&v, "block ls")
        .iter()
        .map(|b| {
            (
                Cidr::parse(s(b, "cidr")),
                (s(b, "node").to_owned(), n(b, "used")),
            )
        })
        .collect()
}

/// Per node of `ipam show`: (node used, block CIDR -> block used).
fn show_nodes(show: &Value) -> BTreeMap<String, (u64, BTreeMap<Cidr, u64>)> {
    arr(&show["nodes"], "ipam show .nodes")
        .iter()
        .map(|node| {
            let blocks = arr(&node["blocks"], "ipam show .nodes[].blocks")
                .iter()
                .map(|b| (Cidr::parse(s(b, "cidr")), n(b, "used")))
                .collect();
            (s(node, "name").to_owned(), (n(node, "used"), blocks))
        })
        .collect()
}

#[test]
fn hundred_concurrent_adds_on_four_hosts() {
    let env = Env::new(4);
    // 16 blocks of 13 usable addresses: 25 ADDs per host need 2 blocks each, claimed while
    // the other hosts claim theirs.
    env.reefctl_init(&[
        "--pool",
        "10.81.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);

    let mut running = Vec::new();
    for h in 0..4 {
        let conf = env.ipam_conf(h);
        for k in 0..25 {
            let cid = format!("conc-{h}-{k}");
            let r = env.start(h, "ADD", &cid, &conf);
            running.push((h, cid, r));
        }
    }
    // All 100 processes exist; now let them go.
    for (_, _, r) in running.iter_mut() {
        r.feed();
    }
    let results: Vec<(usize, String, CniOutput)> = running
        .into_iter()
        .map(|(h, cid, r)| (h, cid, r.finish()))
        .collect();
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, _, o)| !o.ok())
        .map(|(h, cid, o)| format!("h{} {cid}: {o}", h + 1))
        .collect();
    assert!(
        failed.is_empty(),
        "{} ADDs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let dump = env.dump();
    dump.assert_consistent("after 100 concurrent ADDs");
    let mut by_ip: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (h, cid, out) in &results {
        let (addr, gw) = result_v4(out.result());
        if let Some(other) = by_ip.insert(addr.ip, cid.clone()) {
            panic!("{} handed to both {other} and {cid}", addr.ip);
        }
        let block = dump
            .block_containing(addr.ip)
            .unwrap_or_else(|| panic!("{addr} of {cid} is in no block"));
        assert_eq!(
            dump.block_node(&block),
            env.node(*h),
            "{cid} (on {}) got {addr} from block {block} of {}",
            env.node(*h),
            dump.block_node(&block)
        );
        assert_eq!(
            addr.prefix, 28,
            "own-block address carries the block prefix"
        );
        assert_eq!(gw, Some(block.at(1)), "gateway = block's 2nd address");
        assert_eq!(
            dump.handle_ips(&format!("{}/{cid}/{IFNAME}", env.node(*h))),
            vec![addr.ip]
        );
    }
    assert_eq!(by_ip.len(), 100);
    for h in 0..4 {
        assert!(
            dump.blocks_of(&env.node(h)).len() >= 2,
            "{} needs two /28s for 25 addresses:\n{}",
            env.node(h),
            dump.pretty()
        );
    }

    // reefctl's views agree with etcd.
    let blocks = block_ls(&env);
    let want: BTreeMap<Cidr, String> = dump
        .blocks
        .keys()
        .map(|c| (*c, dump.block_node(c)))
        .collect();
    let got: BTreeMap<Cidr, String> = blocks.iter().map(|(c, (n, _))| (*c, n.clone())).collect();
    assert_eq!(got, want, "reefctl block ls: block -> node");
    assert_eq!(
        blocks.values().map(|(_, u)| u).sum::<u64>(),
        100,
        "block ls used counts: {blocks:?}"
    );
    for (h, cid, out) in &results {
        let ip = result_v4(out.result()).0.ip;
        let (c, (node, _)) = blocks
            .iter()
            .find(|(c, _)| c.contains(ip))
            .unwrap_or_else(|| panic!("block ls has no block for {ip}"));
        assert_eq!(*node, env.node(*h), "block ls: {c} holding {cid}'s {ip}");
    }

    let show = env.reefctl_json(0, &["ipam", "show"]);
    let nodes = show_nodes(&show);
    assert_eq!(
        nodes.keys().cloned().collect::<Vec<_>>(),
        (0..4).map(|h| env.node(h)).collect::<Vec<_>>(),
        "ipam show nodes: {show}"
    );
    let mut total = 0;
    for h in 0..4 {
        let (used, nblocks) = &nodes[&env.node(h)];
        assert_eq!(*used, 25, "ipam show: {} used: {show}", env.node(h));
        assert_eq!(
            nblocks.values().sum::<u64>(),
            25,
            "per-block used of {}: {show}",
            env.node(h)
        );
        let want: BTreeSet<Cidr> = dump.blocks_of(&env.node(h)).into_iter().collect();
        assert_eq!(nblocks.keys().copied().collect::<BTreeSet<_>>(), want);
        total += used;
    }
    assert_eq!(total, 100);
    let pools = arr(&show["pools"], "ipam show .pools");
    assert_eq!(pools.len(), 1, "{show}");
    assert_eq!(s(&pools[0], "cidr"), "10.81.0.0/24");
    assert_eq!(n(&pools[0], "blockPrefix"), 28);
    assert_eq!(n(&pools[0], "used"), 100, "pool utilisation: {show}");
    assert_eq!(n(&show, "handles"), 100, "{show}");
    assert!(arr(&show["borrowed"], "borrowed").is_empty(), "{show}");

    let status = env.reefctl_json(0, &["status"]);
    assert_eq!(status["etcd"], "ok", "{status}");
    assert_eq!(status["initialised"], true, "{status}");
    assert_eq!(status["mode"], "routed", "{status}");
    assert_eq!(arr(&status["nodes"], "status .nodes").len(), 4, "{status}");
    assert_eq!(n(&status, "blocks"), dump.blocks.len() as u64, "{status}");
    assert_eq!(n(&status, "handles"), 100, "{status}");

    let ls = env.reefctl_json(0, &["node", "ls"]);
    for node in arr(&ls, "node ls") {
        assert_eq!(n(node, "addresses"), 25, "{ls}");
        assert_eq!(
            arr(&node["blocks"], "node ls .blocks").len(),
            dump.blocks_of(s(node, "name")).len(),
            "{ls}"
        );
    }
    assert_eq!(arr(&ls, "node ls").len(), 4, "{ls}");
}

#[test]
fn pool_exhaustion_is_a_clear_104_and_writes_nothing() {
    let env = Env::new(3);
    // Two /29 blocks of 5 addresses: h1 and h2 fill one each; h3 has none.
    env.reefctl_init(&[
        "--pool",
        "10.82.0.0/28",
        "--block-size",
        "29",
        "--mode",
        "routed",
    ]);
    let mut held = BTreeMap::new();
    for h in 0..2 {
        for k in 0..5 {
            let cid = format!("ex-{h}-{k}");
            held.insert(cid.clone(), env.add_ok(h, &cid));
        }
    }
    let show_before = env.reefctl_json(0, &["ipam", "show"]);
    let dump_before = env.dump();
    let rev_before = env.revision();
    dump_before.assert_consistent("full pool");
    assert_eq!(dump_before.allocations().len(), 10);

    for h in 0..3 {
        let out = env.add(h, &format!("ex-more-{h}"));
        let msg = expect_error(
            &out,
            104,
            &format!("ADD on {} into a full pool", env.node(h)),
        );
        assert!(
            msg.contains("10.82.0.0/28"),
            "the message names the pool: {msg:?}"
        );
    }
    assert_eq!(
        env.revision(),
        rev_before,
        "a failed ADD must not write to etcd"
    );
    assert_eq!(env.dump(), dump_before, "etcd unchanged");
    assert_eq!(
        env.reefctl_json(0, &["ipam", "show"]),
        show_before,
        "ipam show unchanged"
    );
    let pools = arr(&show_before["pools"], "pools");
    assert_eq!(n(&pools[0], "used"), 10, "{show_before}");

    // Releasing one address makes room again (borrowed by whoever needs it).
    let r = &held["ex-1-0"];
    env.del_ok(1, "ex-1-0", Some(r));
    let again = env.add_ok(2, "ex-more-2");
    assert_eq!(
        result_ips(&again),
        result_ips(r),
        "the freed address is reused"
    );
    env.dump().assert_consistent("after reuse");
}

#[test]
fn borrowing_from_another_node_when_every_block_is_claimed() {
    let env = Env::new(4);
    // Four /29 blocks of 5: each host claims one with its first ADD.
    env.reefctl_init(&[
        "--pool",
        "10.83.0.0/27",
        "--block-size",
        "29",
        "--mode",
        "routed",
    ]);
    let mut own = Vec::new();
    for h in 0..4 {
        let r = env.add_ok(h, &format!("own-{h}"));
        own.push(result_v4(&r).0);
    }
    let dump = env.dump();
    for (h, addr) in own.iter().enumerate() {
        let b = dump.block_containing(addr.ip).expect("block");
        assert_eq!(dump.block_node(&b), env.node(h), "{}", dump.pretty());
    }
    assert_eq!(
        dump.blocks.len(),
        4,
        "every block claimed:\n{}",
        dump.pretty()
    );
    let h1_block = dump.block_containing(own[0].ip).expect("h1 block");

    // h1 fills its block...
    for k in 0..4 {
        let r = env.add_ok(0, &format!("fill-{k}"));
        let ip = result_v4(&r).0.ip;
        assert!(
            h1_block.contains(ip),
            "fill-{k} got {ip}, not from h1's {h1_block}"
        );
    }
    // ...and then borrows.
    let r = env.add_ok(0, "borrower");
    let (addr, gw) = result_v4(&r);
    assert!(
        !h1_block.contains(addr.ip),
        "{addr} should be borrowed: {r}"
    );
    assert_eq!(addr.prefix, 32, "a borrowed address is a /32: {r}");
    assert_eq!(gw, None, "a borrowed address has no gateway: {r}");
    let dump = env.dump();
    dump.assert_consistent("after borrowing");
    let block = dump.block_containing(addr.ip).expect("borrowed block");
    let owner = dump.block_node(&block);
    assert_ne!(owner, env.node(0));
    let alloc = dump.allocation(addr.ip).expect("allocation");
    assert_eq!(alloc.borrowed_by.as_deref(), Some(env.node(0).as_str()));
    assert_eq!(alloc.handle, format!("{}/borrower/{IFNAME}", env.node(0)));

    let rec = env.etcdctl(&[
        "get",
        "--print-value-only",
        &format!("/reef/borrowed/{}", addr.ip),
    ]);
    let rec: Value = serde_json::from_str(rec.trim()).unwrap_or_else(|e| {
        panic!(
            "/reef/borrowed/{} missing or not JSON ({e}): {rec:?}",
            addr.ip
        )
    });
    assert_eq!(rec["node"], env.node(0), "{rec}");
    assert_eq!(rec["block"], block.to_string(), "{rec}");

    let show = env.reefctl_json(0, &["ipam", "show"]);
    let borrowed = arr(&show["borrowed"], "ipam show .borrowed");
    assert_eq!(borrowed.len(), 1, "{show}");
    assert_eq!(s(&borrowed[0], "ip"), addr.ip.to_string(), "{show}");
    assert_eq!(s(&borrowed[0], "node"), env.node(0), "{show}");
    assert_eq!(Cidr::parse(s(&borrowed[0], "block")), block, "{show}");
    assert_eq!(s(&borrowed[0], "blockNode"), owner, "{show}");
    let owner_entry = arr(&show["nodes"], "nodes")
        .iter()
        .find(|x| x["name"] == owner.as_str())
        .unwrap_or_else(|| panic!("no node {owner} in {show}"));
    let b = arr(&owner_entry["blocks"], "blocks")
        .iter()
        .find(|b| Cidr::parse(s(b, "cidr")) == block)
        .unwrap_or_else(|| panic!("no block {block} under {owner}: {show}"));
    match &b["borrowedOut"] {
        Value::Number(x) => assert_eq!(x.as_u64(), Some(1), "{show}"),
        Value::Array(a) => assert_eq!(a.len(), 1, "{show}"),
        other => panic!("borrowedOut of {block}: {other} in {show}"),
    }
    let pools = arr(&show["pools"], "pools");
    assert_eq!(
        n(&pools[0], "used"),
        9,
        "4 own + 4 fill + 1 borrowed: {show}"
    );

    // Releasing the borrowed address clears the borrowed record.
    env.del_ok(0, "borrower", Some(&r));
    let rec = env.etcdctl(&["get", &format!("/reef/borrowed/{}", addr.ip)]);
    assert!(rec.trim().is_empty(), "borrowed record left behind: {rec}");
    let dump = env.dump();
    dump.assert_consistent("after releasing the borrowed address");
    assert!(dump.allocation(addr.ip).is_none(), "{}", dump.pretty());
    let show = env.reefctl_json(0, &["ipam", "show"]);
    assert!(arr(&show["borrowed"], "borrowed").is_empty(), "{show}");
}

#[test]
fn reefctl_gc_keeps_the_addresses_of_a_node_that_only_borrowed() {
    // h1 and h2 claim the pool's two blocks; h3 arrives later, finds no free block and
    // borrows. h3 is alive and its pod holds the address: `ipam gc` must not treat h3 as a
    // gone node (which would free the address for reuse while the pod still uses it).
    let env = Env::new(3);
    env.reefctl_init(&[
        "--pool",
        "10.88.0.0/28",
        "--block-size",
        "29",
        "--mode",
        "routed",
    ]);
    env.add_ok(0, "gcb-1");
    env.add_ok(1, "gcb-2");
    let r = env.add_ok(2, "gcb-3");
    let ip = result_v4(&r).0.ip;
    let before = env.dump();
    before.assert_consistent("after h3 borrowed");
    assert!(
        before.allocation(ip).and_then(|a| a.borrowed_by).is_some(),
        "precondition: h3's address is borrowed:\n{}",
        before.pretty()
    );

    let report = env.reefctl_json(0, &["ipam", "gc"]);
    let after = env.dump();
    assert!(
        after
            .handles
            .contains_key(&format!("{}/gcb-3/{IFNAME}", env.node(2)))
            && after.allocation(ip).is_some(),
        "reefctl ipam gc released the live borrowed address {ip} of {} (report {report}):\n{}",
        env.node(2),
        after.pretty()
    );
    assert_eq!(
        after, before,
        "gc of a healthy cluster changes nothing (report {report})"
    );
}

#[test]
fn random_sigkills_mid_add_then_gc_leave_no_leak_and_no_orphan() {
    let env = Env::new(2);
    env.reefctl_init(&[
        "--pool",
        "10.84.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    let mut rng = Rng::from_pid(0x3c);
    println!("seed {:#x}", rng.0);
    let confs: Vec<Value> = (0..2).map(|h| env.ipam_conf(h)).collect();
    // What the runtime believes: attachments whose ADD succeeded and that were not DELed.
    let mut live: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new(), BTreeMap::new()];
    let (mut killed, mut completed, mut dels) = (0, 0, 0);
    for _ in 0..200 {
        let h = rng.below(2) as usize;
        let cid = format!("kill-{h}-{}", rng.below(20));
        if live[h].contains_key(&cid) && rng.below(2) == 0 {
            let prev = live[h].remove(&cid);
            env.del_ok(h, &cid, prev.as_ref());
            dels += 1;
            continue;
        }
        let mut p = env.start(h, "ADD", &cid, &confs[h]);
        p.feed();
        std::thread::sleep(Duration::from_micros(rng.below(15_001)));
        p.kill();
        let out = p.finish();
        if out.code == 128 + 9 {
            killed += 1;
            // The runtime saw the ADD fail: not alive (its record, if any, is for GC).
            live[h].remove(&cid);
            continue;
        }
        assert!(
            out.ok(),
            "ADD {cid} on h{} failed without being killed:\n{out}",
            h + 1
        );
        completed += 1;
        let r = out.result().clone();
        if let Some(old) = live[h].get(&cid) {
            assert_eq!(old["ips"], r["ips"], "re-ADD of live {cid} is idempotent");
        }
        live[h].insert(cid, r);
    }
    println!("ADDs killed {killed}, completed {completed}; DELs {dels}");
    assert!(
        killed > 0 && completed > 0,
        "the kills must land both before and after completion"
    );

    // Live attachments never share an address.
    let mut seen = BTreeMap::new();
    for (h, m) in live.iter().enumerate() {
        for (cid, r) in m {
            for ip in result_ips(r) {
                if let Some(other) = seen.insert(ip, format!("h{} {cid}", h + 1)) {
                    panic!("{ip} is held by both {other} and h{} {cid}", h + 1);
                }
            }
        }
    }

    // Records that killed ADDs committed before dying (the runtime thinks they failed).
    let pre = env.dump();
    pre.assert_consistent("after the rounds, before GC (kills never leave half-written records)");
    let leftover = pre
        .handles
        .keys()
        .filter(|id| {
            let mut p = id.split('/');
            let (node, cid) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            let h: usize = node.trim_start_matches('h').parse().unwrap_or(0);
            h == 0 || !live[h - 1].contains_key(cid)
        })
        .count();
    println!("handles left by killed ADDs (for GC): {leftover}");

    // CNI GC on each host with the attachments the runtime believes alive.
    for (h, attachments) in live.iter().enumerate() {
        let valid: Vec<String> = attachments.keys().cloned().collect();
        let out = env.gc(h, &valid);
        assert!(out.ok(), "CNI GC on h{}:\n{out}", h + 1);
    }
    let gc = env.reefctl_json(0, &["ipam", "gc"]);
    println!("reefctl ipam gc: {gc}");

    let dump = env.dump();
    dump.assert_consistent("after 200 rounds with SIGKILLs, CNI GC and reefctl ipam gc");
    let want_handles: BTreeSet<String> = live
        .iter()
        .enumerate()
        .flat_map(|(h, m)| {
            m.keys()
                .map(move |cid| format!("h{}/{cid}/{IFNAME}", h + 1))
        })
        .collect();
    let got_handles: BTreeSet<String> = dump.handles.keys().cloned().collect();
    assert_eq!(
        got_handles, want_handles,
        "handles in etcd = the valid attachments"
    );
    let want_ips: BTreeSet<IpAddr> = seen.keys().copied().collect();
    let got_ips: BTreeSet<IpAddr> = dump.allocations().iter().map(|a| a.ip).collect();
    assert_eq!(
        got_ips, want_ips,
        "allocated addresses = those of the live attachments"
    );
    for (h, m) in live.iter().enumerate() {
        for (cid, r) in m {
            let id = format!("h{}/{cid}/{IFNAME}", h + 1);
            assert_eq!(
                dump.handle_ips(&id),
                result_ips(r),
                "{id} holds what ADD returned"
            );
        }
    }

    let show = env.reefctl_json(0, &["ipam", "show"]);
    let used: u64 = show_nodes(&show).values().map(|(u, _)| u).sum();
    assert_eq!(
        used as usize,
        want_handles.len(),
        "ipam show used == live handles: {show}"
    );
    assert_eq!(n(&show, "handles") as usize, want_handles.len(), "{show}");
    let pools = arr(&show["pools"], "pools");
    assert_eq!(n(&pools[0], "used") as usize, want_handles.len(), "{show}");

    // A second reefctl gc finds nothing to do.
    let gc2 = env.reefctl_json(0, &["ipam", "gc"]);
    for key in [
        "releasedHandles",
        "releasedIps",
        "releasedBlocks",
        "orphanAllocations",
    ] {
        assert!(
            arr(&gc2[key], key).is_empty(),
            "second gc still found {key}: {gc2}"
        );
    }
}

#[test]
fn reefctl_init_refuses_to_change_a_pool_in_use_unless_forced() {
    let env = Env::new(1);
    env.reefctl_init(&[
        "--pool",
        "10.85.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    let status = env.reefctl_json(0, &["status"]);
    assert_eq!(status["initialised"], true, "{status}");
    assert_eq!(status["mode"], "routed", "{status}");
    assert!(
        status["pools"].to_string().contains("10.85.0.0/24"),
        "{status}"
    );
    let a = env.add_ok(0, "init-a");
    let config = env.dump().config;

    let refused = |args: &[&str], what: &str, names: &str| {
        let mut full = vec!["init"];
        full.extend_from_slice(args);
        let out = env.reefctl(0, &full);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "reefctl {full:?} ({what}) must be refused with exit 1: {text}"
        );
        assert!(
            text.contains(names),
            "reefctl {full:?} ({what}): the message should name {names:?}: {text}"
        );
        assert_eq!(env.dump().config, config, "{what}: /reef/config unchanged");
    };
    refused(
        &[
            "--pool",
            "10.86.0.0/24",
            "--block-size",
            "28",
            "--mode",
            "routed",
        ],
        "dropping the pool in use",
        "10.85.0.0/24",
    );
    refused(
        &[
            "--pool",
            "10.85.0.0/24",
            "--block-size",
            "27",
            "--mode",
            "routed",
        ],
        "changing the block size of the pool in use",
        "10.85.0.0/24",
    );
    refused(
        &[
            "--pool",
            "10.85.0.0/24",
            "--block-size",
            "28",
            "--mode",
            "vxlan",
        ],
        "switching the mode",
        "vxlan",
    );

    // Same config again: fine. Adding an IPv6 pool keeps the IPv4 one: fine.
    env.reefctl_init(&[
        "--pool",
        "10.85.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    assert_eq!(env.dump().config, config, "identical re-init");
    env.reefctl_init(&[
        "--pool",
        "10.85.0.0/24",
        "--pool6",
        "fd85::/64",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    let pools = env.dump().config.expect("config")["pools"].clone();
    assert_eq!(arr(&pools, "pools").len(), 2, "{pools}");
    let six = arr(&pools, "pools")
        .iter()
        .find(|p| p["cidr"] == "fd85::/64")
        .unwrap_or_else(|| panic!("no IPv6 pool: {pools}"));
    assert_eq!(six["blockPrefix"], 122, "default --block-size6: {pools}");

    // --force replaces it (pool and mode).
    env.reefctl_init(&[
        "--pool",
        "10.86.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "vxlan",
        "--force",
    ]);
    let cfg = env.dump().config.expect("config");
    assert_eq!(cfg["mode"], "vxlan", "{cfg}");
    let pools = arr(&cfg["pools"], "pools");
    assert_eq!(pools.len(), 1, "{cfg}");
    assert_eq!(pools[0]["cidr"], "10.86.0.0/24", "{cfg}");
    assert_eq!(pools[0]["blockPrefix"], 28, "{cfg}");
    let status = env.reefctl_json(0, &["status"]);
    assert_eq!(status["mode"], "vxlan", "{status}");

    // Once nothing is allocated from a pool any more, re-init may drop it without --force.
    env.del_ok(0, "init-a", Some(&a));
    env.reefctl_ok(0, &["ipam", "gc"]);
    env.reefctl_init(&[
        "--pool",
        "10.87.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "vxlan",
    ]);
    let cfg = env.dump().config.expect("config");
    assert_eq!(cfg["pools"][0]["cidr"], "10.87.0.0/24", "{cfg}");
}

#[test]
fn allocations_follow_a_reinit_of_the_pools() {
    // A node that has allocated before keeps working after `reefctl init` changed the pools:
    // an added IPv6 pool gives new attachments an IPv6 address too, and after a forced
    // switch to another pool new attachments get addresses from the new pool.
    let env = Env::new(1);
    env.reefctl_init(&[
        "--pool",
        "10.90.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    let a = env.add_ok(0, "re-a");
    assert!(
        Cidr::parse("10.90.0.0/24").contains(result_ips(&a)[0]),
        "{a}"
    );

    env.reefctl_init(&[
        "--pool",
        "10.90.0.0/24",
        "--pool6",
        "fd90::/64",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    let b = env.add_ok(0, "re-b");
    let ips = result_ips(&b);
    assert!(
        ips.len() == 2 && ips.iter().any(|ip| Cidr::parse("fd90::/64").contains(*ip)),
        "after adding --pool6 fd90::/64, a new attachment on a node that allocated before \
         gets no IPv6 address: {b}\nstate:\n{}",
        env.dump().pretty()
    );
    assert_eq!(
        result_ips(&env.add_ok(0, "re-a")),
        result_ips(&a),
        "re-a untouched"
    );

    env.reefctl_init(&[
        "--pool",
        "10.91.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
        "--force",
    ]);
    let c = env.add_ok(0, "re-c");
    let ip = result_v4(&c).0.ip;
    assert!(
        Cidr::parse("10.91.0.0/24").contains(ip),
        "after a forced re-init to 10.91.0.0/24 the node still allocates from the old pool: {c}"
    );

    // Pods still in the dropped pool are deleted later: their DEL must not leave their
    // allocations behind.
    env.del_ok(0, "re-a", Some(&a));
    env.del_ok(0, "re-b", Some(&b));
    env.del_ok(0, "re-c", Some(&c));
    env.dump()
        .assert_consistent("after DEL of attachments whose pool a forced re-init dropped");
}

#[test]
fn reefctl_node_rm_releases_everything_of_the_node() {
    let env = Env::new(3);
    // Four /29 blocks of 5 addresses.
    env.reefctl_init(&[
        "--pool",
        "10.89.0.0/27",
        "--block-size",
        "29",
        "--mode",
        "routed",
    ]);
    env.add_ok(0, "rm-h1-0"); // h1 claims one block
    env.add_ok(2, "rm-h3-0"); // h3 claims one block
    let mut h2 = Vec::new();
    for k in 0..10 {
        h2.push(env.add_ok(1, &format!("rm-h2-{k}"))); // h2 claims the other two
    }
    let borrowed = env.add_ok(1, "rm-h2-borrow"); // ...and borrows from h1's or h3's block
    let bip = result_v4(&borrowed).0.ip;
    let before = env.dump();
    before.assert_consistent("before node rm");
    assert_eq!(before.blocks_of("h2").len(), 2, "{}", before.pretty());
    assert!(
        before.allocation(bip).and_then(|a| a.borrowed_by).is_some(),
        "precondition: h2 borrowed {bip}:\n{}",
        before.pretty()
    );
    let show = env.reefctl_json(0, &["ipam", "show"]);
    assert_eq!(show_nodes(&show)["h2"].0, 11, "{show}");

    env.reefctl_ok(0, &["node", "rm", "h2"]);

    let after = env.dump();
    after.assert_consistent("after node rm h2");
    assert!(
        after.handles_of("h2").is_empty(),
        "h2's handles released:\n{}",
        after.pretty()
    );
    assert!(
        after.blocks_of("h2").is_empty(),
        "h2's blocks deleted:\n{}",
        after.pretty()
    );
    assert!(
        !after.nodes.contains("h2"),
        "node record removed:\n{}",
        after.pretty()
    );
    assert!(
        after.borrowed.is_empty(),
        "h2's borrowed record cleared:\n{}",
        after.pretty()
    );
    assert!(after.allocation(bip).is_none(), "borrowed {bip} released");
    let mut want_rest = before.handles.clone();
    want_rest.retain(|id, _| !id.starts_with("h2/"));
    assert_eq!(after.handles, want_rest, "h1's and h3's handles untouched");
    for node in ["h1", "h3"] {
        assert_eq!(
            after.blocks_of(node),
            before.blocks_of(node),
            "{node}'s blocks kept"
        );
    }

    let show = env.reefctl_json(0, &["ipam", "show"]);
    let nodes = show_nodes(&show);
    assert!(
        !nodes.contains_key("h2"),
        "ipam show still lists h2: {show}"
    );
    assert!(
        !show.to_string().contains("\"h2\""),
        "ipam show still mentions h2: {show}"
    );
    for c in before.blocks_of("h2") {
        assert!(
            nodes.values().all(|(_, b)| !b.contains_key(&c)),
            "ipam show still lists h2's block {c}: {show}"
        );
    }
    assert_eq!(n(&show, "handles"), 2, "{show}");
    assert_eq!(n(&arr(&show["pools"], "pools")[0], "used"), 2, "{show}");
    let ls = env.reefctl_json(0, &["node", "ls"]);
    assert!(
        arr(&ls, "node ls").iter().all(|x| x["name"] != "h2"),
        "node ls: {ls}"
    );
    assert!(
        block_ls(&env).values().all(|(node, _)| node != "h2"),
        "block ls still has h2's blocks"
    );
    // The freed blocks are claimable again.
    for k in 0..8 {
        env.add_ok(0, &format!("rm-h1-more-{k}"));
    }
    env.dump().assert_consistent("after reusing h2's blocks");
}

#[test]
fn reefctl_status_before_init_and_with_etcd_down() {
    let mut env = Env::new(1);
    let status = env.reefctl_json(0, &["status"]);
    assert_eq!(status["etcd"], "ok", "{status}");
    assert_eq!(status["initialised"], false, "{status}");

    env.cluster
        .etcd
        .as_mut()
        .expect("etcd")
        .stop()
        .expect("stop etcd");
    let endpoint = env.endpoint();
    let out = env.reefctl(0, &["--output", "json", "status"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // The spec: status json {"etcd": "ok" | error, ...}: the error is reported in the
    // document, naming the endpoint.
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "reefctl --output json status with etcd down printed no JSON ({e}; exit {:?})\n\
             stdout: {stdout}\nstderr: {stderr}",
            out.status.code()
        )
    });
    let etcd = v["etcd"].as_str().unwrap_or_default();
    assert!(
        etcd != "ok" && etcd.contains(&endpoint),
        "status .etcd should carry the error naming {endpoint}: {v}"
    );
}

#[test]
fn reefctl_over_tls_with_client_certificate() {
    let env = Env::with_tls(1);
    env.reefctl_init(&[
        "--pool",
        "10.92.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    let r = env.add_ok(0, "tls-ctl");
    let show = env.reefctl_json(0, &["ipam", "show"]);
    assert_eq!(n(&show, "handles"), 1, "{show}");
    let status = env.reefctl_json(0, &["status"]);
    assert_eq!(status["etcd"], "ok", "{status}");
    assert_eq!(status["initialised"], true, "{status}");
    env.del_ok(0, "tls-ctl", Some(&r));
    // Without the client certificate reefctl fails with a message.
    let tls = env.cluster.etcd().tls().expect("tls");
    let mut cmd = env.host(0).cmd(plugin("reefctl"));
    cmd.env_remove("REEF_ETCD")
        .args(["--etcd", &env.endpoint(), "--etcd-ca"])
        .arg(&tls.ca)
        .args(["status"]);
    let out = output_with_timeout(&mut cmd, None, CALL_TIMEOUT).expect("run reefctl");
    assert!(
        !out.status.success(),
        "reefctl without a client certificate succeeded: {out:?}"
    );
    assert!(!out.stderr.is_empty(), "no message: {out:?}");
}

#[test]
fn del_after_a_forced_reinit_releases_the_dropped_pools_address_with_a_fresh_node_cache() {
    // After `init --force` dropped the pool an attachment's address came from, the
    // attachment's DEL must still release that address (its handle records the block). The
    // node cache is only a hint (ipam/src/cluster/cache.rs), so it is dropped here, as after a
    // reinstall or a torn cache file.
    let env = Env::new(1);
    env.reefctl_init(&[
        "--pool",
        "10.93.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
    ]);
    let a = env.add_ok(0, "fr-a");
    env.reefctl_init(&[
        "--pool",
        "10.94.0.0/24",
        "--block-size",
        "28",
        "--mode",
        "routed",
        "--force",
    ]);
    std::fs::remove_dir_all(env.cache_dir(0)).expect("remove the node cache");
    env.del_ok(0, "fr-a", Some(&a));
    let dump = env.dump();
    assert!(dump.handles.is_empty(), "{}", dump.pretty());
    dump.assert_consistent("after DEL of an attachment whose pool a forced re-init dropped");
}
