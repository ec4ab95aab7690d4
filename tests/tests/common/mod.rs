//! Helpers shared by the integration test files (each file does `mod common;`).
//!
//! Everything here inspects or drives namespaces a test created: the "host" is always a
//! [`Netns`], plugins run inside it through the harness, and nothing looks at the root
//! namespace.

#![allow(dead_code)] // Each test file uses a different subset.

pub mod routed;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reef_tests::*;
use serde_json::{json, Value};

/// Spec versions the core scenarios run under, by the raw exec protocol.
pub const EXEC_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// A `reef-bridge` network config whose `reef-ipam` state lives in `data_dir`.
///
/// `range_sets` is the `ipam.ranges` value, e.g. `json!([[{"subnet": "10.1.0.0/24"}]])`;
/// `extra` (an object) is merged into the top level (`isGateway`, `ipMasq`, `mtu`, ...).
pub fn bridge_conf(
    version: &str,
    name: &str,
    bridge: &str,
    range_sets: Value,
    data_dir: &Path,
    extra: Value,
) -> Value {
    let mut conf = json!({
        "cniVersion": version,
        "name": name,
        "type": "reef-bridge",
        "bridge": bridge,
        "ipam": {
            "type": "reef-ipam",
            "ranges": range_sets,
            "dataDir": data_dir,
        },
    });
    merge(&mut conf, extra);
    conf
}

/// Shallow merge of the object `extra` into the object `into`.
pub fn merge(into: &mut Value, extra: Value) {
    if let (Some(dst), Value::Object(src)) = (into.as_object_mut(), extra) {
        dst.extend(src);
    }
}

/// `conf` with `prevResult` set, as a runtime sends it to CHECK and DEL.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// `conf` with another `cniVersion`.
pub fn at_version(conf: &Value, version: &str) -> Value {
    let mut c = conf.clone();
    c["cniVersion"] = json!(version);
    c
}

/// A `reef-bridge` call for one attachment (CNI_NETNS, CNI_CONTAINERID, CNI_IFNAME, CNI_PATH).
pub fn bridge_call(command: &str, pod: &Path, cid: &str, ifname: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-bridge")
        .command(command)
        .runtime(pod, cid, ifname)
        .path(&cni_path())
        .config(conf)
}

/// A `reef-bridge` call without an attachment (VERSION, GC, STATUS).
pub fn bridge_net_call(command: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-bridge")
        .command(command)
        .path(&cni_path())
        .config(conf)
}

/// Panics with `what` and the plugin's exit status, stdout and stderr unless it succeeded.
pub fn expect_ok<'a>(out: &'a CniOutput, what: &str) -> &'a CniOutput {
    assert!(out.ok(), "{what} failed:\n{out}");
    out
}

/// Asserts a failed call with CNI error `code`, a well-formed error object on stdout and a
/// non-zero exit status; returns the error message.
pub fn expect_error(out: &CniOutput, code: u64, what: &str) -> String {
    assert_ne!(
        out.code, 0,
        "{what}: expected failure with code {code}, got success:\n{out}"
    );
    let Some(err) = out.json.as_ref() else {
        panic!("{what}: expected a CNI error object on stdout:\n{out}");
    };
    assert_eq!(
        out.error_code(),
        Some(code),
        "{what}: wrong error code:\n{out}"
    );
    for key in ["cniVersion", "msg"] {
        assert!(
            err.get(key).and_then(Value::as_str).is_some(),
            "{what}: error object lacks string {key:?}:\n{out}"
        );
    }
    assert!(
        err.get("details").is_none_or(Value::is_string),
        "{what}: error details must be a string:\n{out}"
    );
    out.error_msg().unwrap_or_default().to_owned()
}

/// Asserts a failed call with any CNI error code and a well-formed error object on stdout;
/// returns (code, message).
pub fn expect_failure(out: &CniOutput, what: &str) -> (u64, String) {
    assert_ne!(out.code, 0, "{what}: expected failure, got success:\n{out}");
    let code = out
        .error_code()
        .unwrap_or_else(|| panic!("{what}: no CNI error object with a code on stdout:\n{out}"));
    (code, expect_error(out, code, what))
}

/// The `ips[].address` values of a result (CIDR form).
pub fn result_cidrs(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips list: {result}"))
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap_or_else(|| panic!("ip without address: {result}"))
                .to_owned()
        })
        .collect()
}

/// The address of the result's first IP of the given family (no prefix).
pub fn result_ip(result: &Value, v6: bool) -> String {
    result_cidrs(result)
        .iter()
        .map(|c| addr_of(c))
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| {
            panic!(
                "result has no IPv{} address: {result}",
                if v6 { 6 } else { 4 }
            )
        })
}

/// The gateway of the result's first IP of the given family.
pub fn result_gateway(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ip| ip["address"].as_str().unwrap_or_default().contains(':') == v6)
        .and_then(|ip| ip["gateway"].as_str())
        .unwrap_or_else(|| {
            panic!(
                "result has no IPv{} gateway: {result}",
                if v6 { 6 } else { 4 }
            )
        })
        .to_owned()
}

/// The host-side veth named in a reef-bridge result (`interfaces[1]`).
pub fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no interfaces[1].name: {result}"))
        .to_owned()
}

/// `10.1.0.5/24` → `10.1.0.5`.
pub fn addr_of(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_owned()
}

/// `ip -j [-d] link show` inside `ns`, parsed.
pub fn links(ns: &Netns) -> Vec<Value> {
    let out = ns.sh_ok("ip -j -d link show");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link: {e}: {out}"))
}

/// The names of every link in `ns`, sorted.
pub fn link_names(ns: &Netns) -> Vec<String> {
    let mut names: Vec<String> = links(ns)
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// `ip -j -d link show dev NAME` inside `ns`, or `None` if there is no such link.
pub fn link(ns: &Netns, name: &str) -> Option<Value> {
    links(ns).into_iter().find(|l| l["ifname"] == name)
}

pub fn has_link(ns: &Netns, name: &str) -> bool {
    link(ns, name).is_some()
}

/// Links of kind `kind` (`bridge`, `veth`, ...) in `ns`.
pub fn links_of_kind(ns: &Netns, kind: &str) -> Vec<Value> {
    links(ns)
        .into_iter()
        .filter(|l| l["linkinfo"]["info_kind"] == kind)
        .collect()
}

/// Names of the links whose controller is `bridge`.
pub fn bridge_ports(ns: &Netns, bridge: &str) -> Vec<String> {
    links(ns)
        .iter()
        .filter(|l| l["master"] == bridge)
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

/// Addresses (CIDR form, link-local ones excluded) on `ifname` inside `ns`.
pub fn addresses(ns: &Netns, ifname: &str) -> Vec<String> {
    let out = ns.sh_ok(&format!("ip -j addr show dev {ifname}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j addr: {e}: {out}"));
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link")
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect()
}

/// The elements of an nftables set in table `inet <table>`, or `None` if the set (or the
/// table) does not exist. Runs `nft -j list set` inside `host`.
pub fn nft_set(host: &Netns, table: &str, set: &str) -> Option<Vec<String>> {
    let out = host
        .run("nft", ["-j", "list", "set", "inet", table, set])
        .expect("run nft");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
    let elems = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o.get("set"))
        .map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    Some(
        elems
            .iter()
            .map(|e| {
                e.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string())
            })
            .collect(),
    )
}

/// Elements of the masquerade set for `network` holding addresses of `ip`'s family.
pub fn masq_set(host: &Netns, network: &str, v6: bool) -> Vec<String> {
    let table = format!("reef-masq-{network}");
    let set = if v6 { "pods6" } else { "pods4" };
    nft_set(host, &table, set).unwrap_or_else(|| {
        panic!(
            "table inet {table} / set {set} missing in {}:\n{}",
            host.name(),
            nft_table_text(host, &table)
        )
    })
}

/// `nft list table inet <table>` inside `host` (for messages).
pub fn nft_table_text(host: &Netns, table: &str) -> String {
    let out = host.sh(&format!("nft list table inet {table} 2>&1"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The store directory of `network` under a reef-ipam (or host-local) `dataDir`.
pub fn store_dir(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network)
}

/// The reservation files (named after an IP address) in a network's store, sorted.
pub fn ip_files(data_dir: &Path, network: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(store_dir(data_dir, network)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect();
    names.sort();
    names
}

/// Every file under `dir` (recursively, dotfiles included) with its bytes: a byte-exact
/// picture of a data directory.
pub fn dir_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
            if p.is_dir() {
                found.insert(format!("{rel}/"), Vec::new());
                stack.push(p);
            } else {
                found.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    found
}

/// Whether `ns` reaches `dst` by ping within a generous readiness window (a freshly
/// attached port may need a moment; this is not a performance assertion).
pub fn reachable(ns: &Netns, dst: &str) -> bool {
    wait_until(Duration::from_secs(20), || ping(ns, dst, 1))
}

/// Parses the JSON a cnitool command printed.
pub fn parse_stdout(stdout: &str, what: &str) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout}"))
}
