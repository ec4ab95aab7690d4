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

/// Elements of the masquerade set for `network` holding addresses of `ip`'s family (the
/// nftables set, or the iptables driver's ipset, as the binary's driver is).
pub fn masq_set(host: &Netns, network: &str, v6: bool) -> Vec<String> {
    if netns_fixtures::firewall::is_iptables() {
        use reef_firewall::iptables::{masquerade_set, Family};
        let set = masquerade_set(network, if v6 { Family::V6 } else { Family::V4 });
        return ipset_members(host, &set)
            .unwrap_or_else(|| panic!("ipset {set} missing in {}", host.name()));
    }
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

/// Takes `ip` out of `network`'s masquerade set behind the plugin's back (drift).
pub fn remove_masq_member(host: &Netns, network: &str, ip: &str) {
    if netns_fixtures::firewall::is_iptables() {
        let v6 = ip.contains(':');
        let set = reef_firewall::iptables::masquerade_set(
            network,
            if v6 {
                reef_firewall::iptables::Family::V6
            } else {
                reef_firewall::iptables::Family::V4
            },
        );
        host.sh_ok(&format!("ipset del {set} {ip}"));
    } else {
        let set = if ip.contains(':') { "pods6" } else { "pods4" };
        host.sh_ok(&format!(
            "nft delete element inet reef-masq-{network} {set} {{ {ip} }}"
        ));
    }
}

/// The members of an ipset inside `host`, or `None` when it does not exist.
pub fn ipset_members(host: &Netns, set: &str) -> Option<Vec<String>> {
    let out = host.run("ipset", ["save", set]).expect("run ipset");
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("add "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
            .collect(),
    )
}

/// The iptables driver's port mappings (REEF-HOSTPORTS rules, both families) written as
/// `portmap_elements` prints the nftables ones, so the suites compare either alike.
fn iptables_portmap_elements(host: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for save in ["iptables-save -t nat", "ip6tables-save -t nat"] {
        let text =
            String::from_utf8_lossy(&host.sh(&format!("{save} 2>/dev/null")).stdout).into_owned();
        for rule in text
            .lines()
            .filter_map(|l| l.strip_prefix("-A REEF-HOSTPORTS "))
        {
            let w: Vec<&str> = rule.split(' ').collect();
            let after = |k: &str| {
                w.iter()
                    .position(|x| *x == k)
                    .and_then(|i| w.get(i + 1))
                    .copied()
            };
            let (Some(proto), Some(port), Some(to), Some(tag)) = (
                after("-p"),
                after("--dport"),
                after("--to-destination"),
                after("--comment"),
            ) else {
                continue;
            };
            let Some((ip, cport)) = to.rsplit_once(':') else {
                continue;
            };
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let host_ip = after("-d")
                .map(|d| format!("{} . ", d.split('/').next().unwrap_or(d)))
                .unwrap_or_default();
            out.push(format!(
                "{host_ip}{proto} . {port} comment {tag} : {ip} . {cport}"
            ));
        }
    }
    out
}

/// The elements of reef-portmap's maps in `host` as `nft list map` prints them, e.g.
/// `tcp . 8080 comment "net/cid/eth0" : 10.1.0.2 . 80` (empty when the table is absent);
/// with the iptables driver, its rules in that form.
pub fn portmap_elements(host: &Netns) -> Vec<String> {
    if netns_fixtures::firewall::is_iptables() {
        return iptables_portmap_elements(host);
    }
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
