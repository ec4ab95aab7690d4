//! Cluster IPAM on etcd, store behaviour that needs no `reefctl`: etcd outages (code 11
//! within 5 s, STATUS 50, no duplicate after recovery), TLS client certificates, idempotent
//! ADD/DEL and stale prevResults, an uninitialised cluster, and reef-bridge in bridge mode on
//! two hosts. Each test builds its own simulated cluster (hosts + real etcd in network
//! namespaces) and writes `/reef/config` itself with etcdctl; the etcd state is checked
//! independently of the product through `etcdctl get --prefix /reef/`.

use reef_tests::cluster::*;
use reef_tests::expect::{expect_error, expect_failure, result_ips, result_v4};
use reef_tests::netconf::bridge_call;
use reef_tests::traffic::reachable;
use reef_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The behavioural bound from the issue: with etcd unreachable a plugin fails within 5 s.
const FAIL_FAST: Duration = Duration::from_secs(5);

#[test]
fn etcd_stopped_add_fails_fast_with_code_11_status_50_then_recovers_without_duplicates() {
    let mut env = Env::new(1);
    env.put_config(&[("10.71.0.0/26", 29)], "routed");
    let endpoint = env.endpoint();

    let mut held: BTreeSet<IpAddr> = BTreeSet::new();
    let mut before = Vec::new();
    for i in 0..6 {
        let cid = format!("before-{i}");
        let r = env.add_ok(0, &cid);
        for ip in result_ips(&r) {
            assert!(held.insert(ip), "{ip} handed out twice before the outage");
        }
        before.push((cid, r));
    }
    let st = env.status(0);
    assert!(st.ok(), "STATUS with etcd up:\n{st}");

    env.cluster
        .etcd
        .as_mut()
        .expect("etcd")
        .stop()
        .expect("stop etcd");

    let t = Instant::now();
    let out = env.add(0, "during-1");
    let took = t.elapsed();
    let msg = expect_error(&out, 11, "ADD while etcd is stopped");
    assert!(
        took < FAIL_FAST,
        "ADD with etcd stopped took {took:?} (bound {FAIL_FAST:?}):\n{out}"
    );
    assert!(
        msg.contains(&endpoint),
        "the error must name the endpoint {endpoint}: {msg:?}"
    );

    let st = env.status(0);
    let msg = expect_error(&st, 50, "STATUS while etcd is stopped");
    assert!(
        msg.contains(&endpoint),
        "STATUS error names {endpoint}: {msg:?}"
    );

    // A DEL cannot release anything while etcd is down: "try again later", not success.
    let del = env.del(0, &before[0].0, Some(&before[0].1));
    expect_error(&del, 11, "DEL while etcd is stopped");

    env.cluster
        .etcd
        .as_mut()
        .expect("etcd")
        .start_again()
        .expect("start etcd again");

    let st = env.status(0);
    assert!(st.ok(), "STATUS after etcd is back:\n{st}");
    // The ADD that failed during the outage, retried, and more.
    for i in 0..6 {
        let cid = format!("during-{i}");
        let r = env.add_ok(0, &cid);
        for ip in result_ips(&r) {
            assert!(
                held.insert(ip),
                "{ip} handed to {cid} after the outage was already held: duplicate"
            );
        }
    }
    let dump = env.dump();
    dump.assert_consistent("after the outage");
    assert_eq!(
        dump.handles.len(),
        12,
        "12 live attachments:\n{}",
        dump.pretty()
    );
    let allocated: BTreeSet<IpAddr> = dump.allocations().iter().map(|a| a.ip).collect();
    assert_eq!(
        allocated, held,
        "etcd holds exactly the addresses handed out"
    );
}

#[test]
fn etcd_unreachable_without_answer_fails_within_5s_with_code_11() {
    // etcd keeps running but its host silently drops the client port: no RST, so only the
    // client's own timeouts can end the ADD (a hang here would stall a runtime's pod start).
    let env = Env::new(1);
    env.put_config(&[("10.72.0.0/26", 29)], "routed");
    let first = env.add_ok(0, "before");
    let etcd_host = env.cluster.etcd().host().ns();
    etcd_host.sh_ok(
        "nft 'add table inet reeftest; \
         add chain inet reeftest in { type filter hook input priority 0; policy accept; }; \
         add rule inet reeftest in tcp dport 2379 drop'",
    );
    let t = Instant::now();
    let out = env.add(0, "blackholed");
    let took = t.elapsed();
    let msg = expect_error(&out, 11, "ADD while etcd does not answer");
    assert!(
        took < FAIL_FAST,
        "ADD against a silent etcd took {took:?} (bound {FAIL_FAST:?}):\n{out}"
    );
    assert!(msg.contains(&env.endpoint()), "names the endpoint: {msg:?}");
    let st = env.status(0);
    expect_error(&st, 50, "STATUS while etcd does not answer");

    etcd_host.sh_ok("nft delete table inet reeftest");
    let again = env.add_ok(0, "blackholed");
    assert_ne!(result_ips(&again), result_ips(&first), "no duplicate");
    env.dump().assert_consistent("after the partition");
}

#[test]
fn tls_client_certificate_required() {
    let env = Env::with_tls(1);
    assert!(env.endpoint().starts_with("https://"), "{}", env.endpoint());
    env.put_config(&[("10.74.0.0/26", 29)], "routed");

    // With CA, certificate and key: works.
    let r = env.add_ok(0, "tls-ok");
    let (addr, gw) = result_v4(&r);
    assert_eq!(
        addr.prefix, 29,
        "bridge-mode result has the block prefix: {r}"
    );
    assert!(gw.is_some(), "own block address has a gateway: {r}");
    let st = env.status(0);
    assert!(st.ok(), "STATUS over TLS:\n{st}");

    // Only the CA (no client certificate): a clear error, quickly, and nothing written.
    let rev = env.revision();
    let tls = env.cluster.etcd().tls().expect("tls");
    let mut ipam = env.ipam(0);
    ipam["etcd"]["tls"] = json!({"ca": tls.ca.display().to_string()});
    let conf = ipam_conf_with(ipam);
    // Several attempts: how the refusal surfaces depends on timing (TLS 1.3 reports a
    // missing client certificate after the client's handshake is done), and every attempt
    // must read as a certificate problem.
    let mut bad = Vec::new();
    for attempt in 0..6 {
        let t = Instant::now();
        let out = env
            .ipam_call("ADD", "tls-nocert", &conf)
            .run(env.host(0).ns());
        let took = t.elapsed();
        let (code, msg) = expect_failure(&out, "ADD without a client certificate");
        println!("ADD without a client certificate #{attempt}: code {code}, {took:?}: {msg}");
        assert!(
            took < FAIL_FAST,
            "ADD without a client certificate took {took:?} (must not hang):\n{out}"
        );
        let lower = msg.to_lowercase();
        let clear = msg.contains(&env.endpoint())
            && ["certificate", "tls", "handshake"]
                .iter()
                .any(|w| lower.contains(w));
        // etcd/src/lib.rs: a refused client certificate must not read as "unavailable"
        // (11): retrying cannot fix it.
        if !clear || code == 11 {
            bad.push(format!("#{attempt}: code {code}: {msg}"));
        }
    }
    assert!(
        bad.is_empty(),
        "without a client certificate, ADD must fail with an error that names the endpoint, \
         says it is a TLS/certificate problem and is not code 11; these attempts did not:\n{}",
        bad.join("\n")
    );
    assert_eq!(env.revision(), rev, "the failed ADD wrote nothing");

    // No TLS section at all against an https endpoint: also a clear, fast failure.
    let mut ipam = env.ipam(0);
    ipam["etcd"]
        .as_object_mut()
        .expect("etcd obj")
        .remove("tls");
    let t = Instant::now();
    let out = env
        .ipam_call("ADD", "tls-none", &ipam_conf_with(ipam))
        .run(env.host(0).ns());
    expect_failure(&out, "ADD with no TLS section against TLS etcd");
    assert!(t.elapsed() < FAIL_FAST, "took {:?}:\n{out}", t.elapsed());

    let dump = env.dump();
    dump.assert_consistent("TLS test");
    assert_eq!(
        dump.handles.keys().cloned().collect::<Vec<_>>(),
        vec![format!("{}/tls-ok/{IFNAME}", env.node(0))]
    );
}

#[test]
fn add_and_del_are_idempotent() {
    let env = Env::new(1);
    env.put_config(&[("10.75.0.0/26", 29)], "routed");
    let a1 = env.add_ok(0, "idem-a");
    let a2 = env.add_ok(0, "idem-a");
    assert_eq!(a1["ips"], a2["ips"], "ADD twice returns the same addresses");
    let dump = env.dump();
    dump.assert_consistent("after two ADDs of one attachment");
    assert_eq!(dump.handles.len(), 1, "one handle:\n{}", dump.pretty());
    assert_eq!(
        dump.allocations().len(),
        1,
        "one allocation:\n{}",
        dump.pretty()
    );

    let mut check = env.ipam_conf(0);
    check["prevResult"] = a1.clone();
    let out = env
        .ipam_call("CHECK", "idem-a", &check)
        .run(env.host(0).ns());
    assert!(out.ok(), "CHECK of a live attachment:\n{out}");

    env.del_ok(0, "idem-a", Some(&a1));
    env.del_ok(0, "idem-a", Some(&a1));
    env.del_ok(0, "idem-a", None);
    let dump = env.dump();
    dump.assert_consistent("after DEL x3");
    assert!(
        dump.handles.is_empty(),
        "DEL released the handle:\n{}",
        dump.pretty()
    );
    assert!(
        dump.allocations().is_empty(),
        "DEL freed the address:\n{}",
        dump.pretty()
    );
    let mut check = env.ipam_conf(0);
    check["prevResult"] = a1.clone();
    let out = env
        .ipam_call("CHECK", "idem-a", &check)
        .run(env.host(0).ns());
    assert!(!out.ok(), "CHECK after DEL must fail:\n{out}");
}

#[test]
fn add_retry_of_an_existing_attachment_in_a_full_pool_returns_its_addresses() {
    // The pool's only address is held by idem-full; a retried ADD of that same attachment
    // (e.g. the runtime timed out after the first ADD had committed) must return it, not
    // report the pool as exhausted.
    let env = Env::new(1);
    env.put_config(&[("10.78.0.0/30", 30)], "routed");
    let a1 = env.add_ok(0, "idem-full");
    let again = env.add(0, "idem-full");
    assert!(
        again.ok(),
        "retried ADD of idem-full (which holds {:?}) in a full pool failed:\n{again}",
        result_ips(&a1)
    );
    assert_eq!(a1["ips"], again.result()["ips"], "same addresses");
    env.dump().assert_consistent("after the retried ADD");
}

#[test]
fn stale_prev_result_does_not_free_the_new_owners_address() {
    // A /30 pool cut into /30 blocks: exactly one usable address, so it is reused at once.
    let env = Env::new(1);
    env.put_config(&[("10.75.0.0/30", 30)], "routed");
    let node = env.node(0);
    let a1 = env.add_ok(0, "stale-a");
    let ip = result_ips(&a1)[0];
    assert_eq!(ip.to_string(), "10.75.0.2", "the pool's only address: {a1}");
    env.del_ok(0, "stale-a", Some(&a1));

    // The address goes to someone else; a late DEL of the old owner with its stale
    // prevResult must not free it.
    let b = env.add_ok(0, "stale-b");
    assert_eq!(result_ips(&b), vec![ip], "the only address is reused: {b}");
    env.del_ok(0, "stale-a", Some(&a1));
    let dump = env.dump();
    dump.assert_consistent("after the stale DEL");
    let alloc = dump.allocation(ip).unwrap_or_else(|| {
        panic!(
            "stale DEL of stale-a freed stale-b's {ip}:\n{}",
            dump.pretty()
        )
    });
    assert_eq!(alloc.handle, format!("{node}/stale-b/{IFNAME}"));
    let mut check = env.ipam_conf(0);
    check["prevResult"] = b.clone();
    let out = env
        .ipam_call("CHECK", "stale-b", &check)
        .run(env.host(0).ns());
    assert!(out.ok(), "stale-b still holds its address:\n{out}");
    let msg = expect_error(&env.add(0, "stale-c"), 104, "ADD into a full pool");
    assert!(msg.contains("10.75.0.0/30"), "names the pool: {msg:?}");
    env.del_ok(0, "stale-b", Some(&b));
    assert!(env.dump().allocations().is_empty());
}

#[test]
fn stale_prev_result_of_a_readded_attachment_leaks_nothing() {
    // Two /30 blocks of one address each, both this node's. X gets block 0's address, is
    // deleted, Y takes that address, X is added again (block 1). Then a late DEL of X arrives
    // with X's first prevResult (naming Y's address now). It must release X's *current*
    // address and leave Y's alone: nothing freed that is someone else's, nothing leaked.
    let env = Env::new(1);
    env.put_config(&[("10.76.0.0/29", 30)], "routed");
    let node = env.node(0);
    let x1 = env.add_ok(0, "re-x");
    let old = result_ips(&x1)[0];
    env.del_ok(0, "re-x", Some(&x1));
    let y = env.add_ok(0, "re-y");
    let x2 = env.add_ok(0, "re-x");
    let now = result_ips(&x2)[0];
    assert_eq!(
        result_ips(&y),
        vec![old],
        "precondition: re-y reuses re-x's first address (x1 {x1}, y {y}, x2 {x2})"
    );
    assert_ne!(now, old);

    // The stale DEL.
    env.del_ok(0, "re-x", Some(&x1));
    let dump = env.dump();
    let y_alloc = dump.allocation(old);
    assert_eq!(
        y_alloc.map(|a| a.handle),
        Some(format!("{node}/re-y/{IFNAME}")),
        "re-y keeps {old}:\n{}",
        dump.pretty()
    );
    dump.assert_consistent(&format!(
        "after DEL re-x with a stale prevResult naming {old} while re-x held {now}"
    ));
    assert!(
        dump.allocation(now).is_none(),
        "re-x's current address {now} must be released by its DEL:\n{}",
        dump.pretty()
    );
}

#[test]
fn uninitialised_cluster_add_107_status_50() {
    let env = Env::new(1);
    let out = env.add(0, "noinit");
    let msg = expect_error(&out, 107, "ADD before reefctl init");
    assert!(msg.contains("reefctl init"), "tells what to do: {msg:?}");
    expect_error(&env.status(0), 50, "STATUS before reefctl init");
    let dump = env.dump();
    assert!(dump.raw.is_empty(), "nothing written:\n{}", dump.pretty());
}

#[test]
fn reef_bridge_with_cluster_ipam_on_two_hosts() {
    const BRIDGE: &str = "reefcl0";
    let env = Env::new(2);
    env.put_config(&[("10.77.0.0/24", 28)], "routed");
    let conf = |i: usize| -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": NET,
            "type": "reef-bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipam": env.ipam(i),
        })
    };
    let pods: Vec<Vec<Netns>> = (0..2)
        .map(|_| {
            (0..2)
                .map(|_| Netns::new("clpod").expect("pod netns"))
                .collect()
        })
        .collect();
    let mut results = Vec::new();
    for (h, host_pods) in pods.iter().enumerate() {
        for (p, pod) in host_pods.iter().enumerate() {
            let cid = format!("br-{h}-{p}");
            let out = bridge_call("ADD", pod.path(), &cid, IFNAME, &conf(h)).run(env.host(h).ns());
            let r = out.result().clone();
            results.push((h, cid, r));
        }
    }
    let dump = env.dump();
    dump.assert_consistent("after the bridge ADDs");
    let mut seen = BTreeSet::new();
    for (h, cid, r) in &results {
        let node = env.node(*h);
        let (addr, gw) = result_v4(r);
        assert!(seen.insert(addr.ip), "{} handed out twice", addr.ip);
        let block = dump
            .block_containing(addr.ip)
            .unwrap_or_else(|| panic!("{addr} of {cid} is in no block:\n{}", dump.pretty()));
        assert_eq!(
            dump.block_node(&block),
            node,
            "{cid} on {node} got {addr} from block {block} of another node"
        );
        assert_eq!(
            addr.prefix, block.prefix,
            "address carries the block prefix: {r}"
        );
        assert_eq!(
            gw,
            Some(block.at(1)),
            "gateway is the block's 2nd address: {r}"
        );
        let pod = &pods[*h][cid.rsplit('-').next().unwrap().parse::<usize>().unwrap()];
        let live = reef_tests::inspect::addresses(pod, IFNAME);
        assert!(
            live.contains(&addr.to_string()),
            "{addr} on the pod (has {live:?})"
        );
        let on_bridge = reef_tests::inspect::addresses(env.host(*h).ns(), BRIDGE);
        assert!(
            on_bridge.contains(&format!("{}/{}", block.at(1), block.prefix)),
            "gateway {} on {BRIDGE} of {node} (has {on_bridge:?})",
            block.at(1)
        );
        assert!(
            reachable(pod, &block.at(1).to_string()),
            "{cid} cannot ping its gateway {}",
            block.at(1)
        );
        assert_eq!(
            dump.handle_ips(&format!("{node}/{cid}/{IFNAME}")),
            vec![addr.ip],
            "handle record of {cid}"
        );
    }
    // The two hosts never share a block.
    let b1: BTreeSet<_> = dump.blocks_of(&env.node(0)).into_iter().collect();
    let b2: BTreeSet<_> = dump.blocks_of(&env.node(1)).into_iter().collect();
    assert!(!b1.is_empty() && !b2.is_empty() && b1.is_disjoint(&b2));

    for (h, cid, r) in &results {
        let pod = &pods[*h][cid.rsplit('-').next().unwrap().parse::<usize>().unwrap()];
        let mut c = conf(*h);
        c["prevResult"] = r.clone();
        let del = bridge_call("DEL", pod.path(), cid, IFNAME, &c).run(env.host(*h).ns());
        assert!(del.ok(), "DEL {cid}:\n{del}");
        let again = bridge_call("DEL", pod.path(), cid, IFNAME, &c).run(env.host(*h).ns());
        assert!(again.ok(), "second DEL {cid}:\n{again}");
    }
    let dump = env.dump();
    dump.assert_consistent("after the bridge DELs");
    assert!(
        dump.handles.is_empty(),
        "DEL released every handle:\n{}",
        dump.pretty()
    );
    assert!(
        dump.allocations().is_empty(),
        "DEL released every address:\n{}",
        dump.pretty()
    );
}
