//! Read-only views of a namespace the test created: its links and addresses (`ip -j`) and
//! its nftables sets.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::Netns;

/// `ip -j [-d] link show` inside `ns`, parsed.
pub fn links(ns: &Netns) -> Vec<Value> {
    match json_of(ns, "ip -j -d link show") {
        Value::Array(links) => links,
        other => panic!("ip -j link: not a list: {other}"),
    }
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
    json_of(ns, &format!("ip -j addr show dev {ifname}"))
        .as_array()
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

/// The JSON `script` (an `ip -j ...` or `bridge -j ...` command) prints inside `ns`; an empty
/// output is an empty list.
pub(crate) fn json_of(ns: &Netns, script: &str) -> Value {
    let out = ns.sh_ok(script);
    let t = out.trim();
    if t.is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(t).unwrap_or_else(|e| panic!("`{script}`: not JSON ({e}): {out}"))
}

/// `ip -d -j link show DEV` inside `ns`: the link object, or `None` if there is no such device.
pub fn link_details(ns: &Netns, dev: &str) -> Option<Value> {
    let out = ns.sh(&format!("ip -d -j link show dev {dev}"));
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.first().cloned()
}

/// The MTU of `dev` inside `ns` (panics if there is no such device).
pub fn link_mtu(ns: &Netns, dev: &str) -> u64 {
    link_details(ns, dev)
        .and_then(|l| l["mtu"].as_u64())
        .unwrap_or_else(|| panic!("no device {dev} (or no mtu) in {}", ns.name()))
}

/// IPv4 addresses (`IP/PREFIX`) on `dev` inside `ns`.
pub fn link_addrs(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = json_of(ns, &format!("ip -4 -j addr show dev {dev}"));
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

/// The ifindex of `dev` inside `ns`.
pub fn ifindex(ns: &Netns, dev: &str) -> u32 {
    link_details(ns, dev)
        .and_then(|l| l["ifindex"].as_u64())
        .unwrap_or_else(|| panic!("no device {dev} in {}", ns.name())) as u32
}

/// The elements of reef-portmap's maps in `host` as `nft list map` prints them, e.g.
/// `tcp . 8080 comment "net/cid/eth0" : 10.1.0.2 . 80` (empty when the table is absent).
pub fn portmap_elements(host: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for m in ["hostip4", "any4", "hostip6", "any6"] {
        let text = host
            .sh(&format!("nft list map inet reef-portmap {m} 2>/dev/null"))
            .stdout;
        let text = String::from_utf8_lossy(&text).replace('\n', " ");
        let Some(start) = text.find("elements = {") else {
            continue;
        };
        let body = &text[start + "elements = {".len()..];
        let body = &body[..body.find('}').unwrap_or(body.len())];
        out.extend(
            body.split(',')
                .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|e| !e.is_empty()),
        );
    }
    out
}
