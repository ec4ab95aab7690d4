//! Hardening of the host veth's alias, on which GC relies: a host veth never exists without
//! it (long valid names included, a SIGKILL at any instant of ADD), and GC also collects the
//! unaliased Reef veths an older, two-request ADD could leave, and nothing else.

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::store::*;
use reef_tests::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

/// `host_veth_name` of reef-cni (FNV-1a 64 of "cid\0ifname", top 44 bits in hex).
fn host_veth_name(cid: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cid.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("reef{:011x}", h >> 20)
}

/// Names of the veths in `ns` named like Reef host veths.
fn reef_veths(ns: &Netns) -> Vec<String> {
    links_of_kind(ns, "veth")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .filter(|n| n.starts_with("reef"))
        .collect()
}

fn gc(conf: &Value, listed: Value, env: &HostWithPods) {
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] = listed;
    expect_ok(&bridge_net_call("GC", &c).run(&env.host), "GC");
}

#[test]
fn longest_valid_names_get_an_aliased_veth_that_gc_collects() {
    let env = HostWithPods::new(1);
    // Both valid; "reef:NET:CID:eth0" would be 270 bytes, over the kernel's 255.
    let net = format!("long{}", "n".repeat(196));
    let cid = "c".repeat(64);
    let conf = bridge_conf(
        "1.1.0",
        &net,
        "hvlong0",
        json!([[{"subnet": "10.65.0.0/24"}]]),
        &env.data_dir(),
        json!({}),
    );
    let out = bridge_call("ADD", env.pods[0].path(), &cid, "eth0", &conf).run(&env.host);
    expect_ok(
        &out,
        "ADD with a 200-character network name and a 64-character id",
    );
    let veth = result_host_veth(out.result());
    let alias = link(&env.host, &veth).expect("host veth")["ifalias"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        alias.starts_with("reef#") && alias.contains(&cid) && alias.len() <= 255,
        "alias {alias:?}"
    );
    // A listed attachment keeps its veth; once unlisted, GC finds it by its hashed alias.
    gc(&conf, json!([{"containerID": cid, "ifname": "eth0"}]), &env);
    assert!(has_link(&env.host, &veth), "GC removed a listed attachment");
    gc(&conf, json!([]), &env);
    assert_eq!(reef_veths(&env.host), Vec::<String>::new(), "after GC");
    assert_eq!(ip_files(&env.data_dir(), &net), Vec::<String>::new());
}

#[test]
fn gc_collects_unaliased_reef_veths_and_nothing_else() {
    let env = HostWithPods::new(1);
    let conf = bridge_conf(
        "1.1.0",
        "hvgc",
        "hvgc0",
        json!([[{"subnet": "10.66.0.0/24"}]]),
        &env.data_dir(),
        json!({}),
    );
    let listed = host_veth_name("listed", "eth0");
    // What a killed two-request ADD left: a reef veth without alias.
    let stray = host_veth_name("killed", "eth0");
    env.host.sh_ok(&format!(
        "ip link add {stray} type veth peer name hvp0 && \
         ip link add {listed} type veth peer name hvp1 && \
         ip link add hvnotreef type veth peer name hvp2 && \
         ip link add reef0000000000a type veth peer name hvp3 && \
         ip link set reef0000000000a alias reef:othernet:x:eth0"
    ));
    gc(
        &conf,
        json!([{"containerID": "listed", "ifname": "eth0"}]),
        &env,
    );
    assert!(
        !has_link(&env.host, &stray),
        "unaliased stray reef veth survived GC"
    );
    assert!(
        has_link(&env.host, &listed),
        "GC removed a listed attachment's veth"
    );
    assert!(
        has_link(&env.host, "hvnotreef"),
        "GC removed a foreign veth"
    );
    assert!(
        has_link(&env.host, "reef0000000000a"),
        "GC removed another network's veth"
    );
}

#[test]
fn sigkill_at_random_instants_of_add_leaves_no_veth_after_gc() {
    let env = HostWithPods::new(1);
    let conf = bridge_conf(
        "1.1.0",
        "hvkill",
        "hvkill0",
        json!([[{"subnet": "10.67.0.0/24"}]]),
        &env.data_dir(),
        json!({}),
    );
    let stdin = conf.to_string();
    // An unkilled ADD's duration bounds the kill delays.
    let t0 = std::time::Instant::now();
    let out = bridge_call("ADD", env.pods[0].path(), "probe", "probe0", &conf).run(&env.host);
    expect_ok(&out, "probe ADD");
    let span = t0.elapsed().as_micros().max(2000) as u64;
    // xorshift: deterministic spread of delays over the whole ADD, no dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..50 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut cmd = env.host.cmd(plugin("reef-bridge"));
        let mut child = cmd
            .env_clear()
            .envs(env.host.program_env())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("kill{i}"))
            .env("CNI_NETNS", env.pods[0].path())
            .env("CNI_IFNAME", format!("k{i}"))
            .env("CNI_PATH", cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn reef-bridge");
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(stdin.as_bytes());
        }
        std::thread::sleep(Duration::from_micros(x % span));
        // Only our own child, by its PID; it may have finished already.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
    }
    gc(
        &conf,
        json!([{"containerID": "probe", "ifname": "probe0"}]),
        &env,
    );
    assert_eq!(
        reef_veths(&env.host),
        vec![result_host_veth(out.result())],
        "host veths after GC of 50 killed ADDs"
    );
    assert_eq!(
        ip_files(&env.data_dir(), "hvkill").len(),
        1,
        "IPAM after GC"
    );
}
