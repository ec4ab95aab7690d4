//! Crash safety of the local IPAM store with real processes: reef-ipam ADDs and DELs are
//! SIGKILLed at random instants (by their own PID), then the store must hold no half-written
//! record, no handle twice in one range set, and after GC no address at all. A retried ADD
//! of a killed attachment must succeed and be idempotent.

use reef_tests::{plugin, tempdir};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NET: &str = "crashnet";

fn conf(data_dir: &Path, extra: Value) -> String {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": NET,
        "type": "reef-ipam",
        "ipam": {
            "type": "reef-ipam",
            "dataDir": data_dir.display().to_string(),
            "ranges": [[{"subnet": "10.61.0.0/24"}], [{"subnet": "fd61::/120"}]],
        },
    });
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    c.to_string()
}

/// Runs reef-ipam; with `kill_after`, SIGKILLs it (by PID) after that long.
fn ipam(command: &str, cid: &str, stdin: &str, kill_after: Option<Duration>) -> (bool, String) {
    let mut child = Command::new(plugin("reef-ipam"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/nonexistent")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reef-ipam");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    if let Some(d) = kill_after {
        std::thread::sleep(d);
        // Kill only our own child, by its PID; it may already have exited.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let out = child.wait_with_output().expect("wait reef-ipam");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every record in the store must be complete and name a handle at most once per family.
fn assert_store_consistent(dir: &Path) -> HashMap<String, Vec<String>> {
    let mut by_handle: HashMap<String, Vec<String>> = HashMap::new();
    for e in std::fs::read_dir(dir).expect("read store") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "lock" || name.starts_with("last_reserved_ip") {
            continue;
        }
        let ip: std::net::IpAddr = name.parse().unwrap_or_else(|_| panic!("stray file {name}"));
        let content = std::fs::read_to_string(dir.join(&name)).expect("read record");
        let (cid, ifname) = content
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("half-written record {name}: {content:?}"));
        assert!(
            cid.starts_with("crash-") && ifname == "eth0",
            "bad record {name}: {content:?}"
        );
        let fam = if ip.is_ipv4() { "v4" } else { "v6" };
        by_handle
            .entry(format!("{cid}/{fam}"))
            .or_default()
            .push(name);
    }
    for (h, ips) in &by_handle {
        assert_eq!(
            ips.len(),
            1,
            "{h} holds several addresses of one family: {ips:?}"
        );
    }
    by_handle
}

#[test]
fn sigkill_at_random_instants_never_corrupts_or_leaks() {
    let data = tempdir();
    let store = data.path().join(NET);
    let add = conf(data.path(), json!({}));
    // xorshift: deterministic spread of kill delays from 0 to ~3 ms, no dependency.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rounds = 200;
    let mut live: HashSet<String> = HashSet::new();
    for i in 0..rounds {
        let cid = format!("crash-{}", i % 60);
        let delay = Duration::from_micros(next() % 3000);
        if live.contains(&cid) && next() % 2 == 0 {
            let (ok, _) = ipam("DEL", &cid, &add, Some(delay));
            if ok {
                live.remove(&cid);
            }
        } else {
            let (ok, _) = ipam("ADD", &cid, &add, Some(delay));
            if ok {
                live.insert(cid);
            }
        }
        if store.exists() {
            assert_store_consistent(&store);
        }
    }
    // Retrying ADD for every handle works and is idempotent (same addresses twice).
    for i in 0..60 {
        let cid = format!("crash-{i}");
        let (ok1, r1) = ipam("ADD", &cid, &add, None);
        let (ok2, r2) = ipam("ADD", &cid, &add, None);
        assert!(ok1 && ok2, "retried ADD of {cid} failed: {r1} / {r2}");
        let ips = |r: &str| serde_json::from_str::<Value>(r).expect("result")["ips"].clone();
        assert_eq!(ips(&r1), ips(&r2), "ADD of {cid} is not idempotent");
    }
    let held = assert_store_consistent(&store);
    assert_eq!(held.len(), 120, "60 handles x 2 families: {held:?}");
    // GC keeping nobody releases everything: zero leaked addresses and no orphan hints.
    let gc = conf(data.path(), json!({"cni.dev/valid-attachments": []}));
    let (ok, out) = ipam("GC", "", &gc, None);
    assert!(ok, "GC failed: {out}");
    assert!(
        assert_store_consistent(&store).is_empty(),
        "GC left addresses behind"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&store)
        .expect("read store")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".own-"))
        .collect();
    assert!(leftovers.is_empty(), "orphan owner hints: {leftovers:?}");
}
