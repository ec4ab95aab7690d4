//! IPAM state read independently of the plugins and of `reefctl`: the files of a local store
//! (`dataDir`) and the cluster store under `/reef/` in etcd ([`Dump`], read with `etcdctl`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The store directory of `network` under a reef-ipam (or host-local) `dataDir`.
pub fn store_dir(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network)
}

/// The reservation files (named after an IP address) in a network's store, sorted.
pub fn ip_files(data_dir: &Path, network: &str) -> Vec<String> {
    list_dir(&store_dir(data_dir, network))
        .into_iter()
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect()
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

/// A parsed CIDR (`10.0.0.16/28`, `fd00::40/122`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Cidr {
        let (ip, p) = s
            .split_once('/')
            .unwrap_or_else(|| panic!("not a CIDR: {s:?}"));
        Cidr {
            ip: ip
                .parse()
                .unwrap_or_else(|_| panic!("bad address in {s:?}")),
            prefix: p.parse().unwrap_or_else(|_| panic!("bad prefix in {s:?}")),
        }
    }

    fn width(&self) -> u32 {
        if self.ip.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn host_bits(&self) -> u32 {
        self.width() - u32::from(self.prefix)
    }

    fn network(&self) -> IpAddr {
        let hb = self.host_bits();
        let mask = if hb >= 128 { 0 } else { u128::MAX << hb };
        from_u128(to_u128(self.ip) & mask, self.ip.is_ipv4())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.ip.is_ipv4()
            && Cidr {
                ip,
                prefix: self.prefix,
            }
            .network()
                == self.network()
    }

    fn size(&self) -> u128 {
        let hb = self.host_bits();
        if hb >= 128 {
            u128::MAX
        } else {
            1 << hb
        }
    }

    /// The address `ordinal` above the network address.
    pub fn at(&self, ordinal: u128) -> IpAddr {
        from_u128(to_u128(self.network()) + ordinal, self.ip.is_ipv4())
    }

    fn ordinal_of(&self, ip: IpAddr) -> u128 {
        to_u128(ip) - to_u128(self.network())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// One allocation found in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alloc {
    pub ip: IpAddr,
    pub block: Cidr,
    pub block_node: String,
    pub handle: String,
    pub borrowed_by: Option<String>,
}

/// Everything under /reef/ in etcd, read with `etcdctl get --prefix /reef/` (key line, value
/// line; the store writes compact single-line JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    pub raw: BTreeMap<String, String>,
    pub config: Option<Value>,
    pub nodes: BTreeSet<String>,
    /// Block CIDR (from the value) -> block JSON.
    pub blocks: BTreeMap<Cidr, Value>,
    /// Handle id (`node/cid/ifname`) -> handle JSON.
    pub handles: BTreeMap<String, Value>,
    /// IP -> borrowed record JSON.
    pub borrowed: BTreeMap<IpAddr, Value>,
}

impl Dump {
    pub fn parse(text: &str) -> Dump {
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.len().is_multiple_of(2),
            "etcdctl get printed an odd number of lines:\n{text}"
        );
        let mut d = Dump {
            raw: BTreeMap::new(),
            config: None,
            nodes: BTreeSet::new(),
            blocks: BTreeMap::new(),
            handles: BTreeMap::new(),
            borrowed: BTreeMap::new(),
        };
        for kv in lines.chunks(2) {
            let (key, value) = (kv[0].to_owned(), kv[1].to_owned());
            let v: Value = serde_json::from_str(&value)
                .unwrap_or_else(|e| panic!("value of {key} is not JSON ({e}): {value}"));
            if key == "/reef/config" {
                d.config = Some(v);
            } else if let Some(n) = key.strip_prefix("/reef/nodes/") {
                d.nodes.insert(n.to_owned());
            } else if key.starts_with("/reef/blocks/") {
                let cidr = Cidr::parse(
                    v["cidr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("block {key} without cidr: {value}")),
                );
                let expect_key = format!("/reef/blocks/{}-{}", cidr.ip, cidr.prefix);
                assert_eq!(key, expect_key, "block key does not match its cidr");
                d.blocks.insert(cidr, v);
            } else if let Some(id) = key.strip_prefix("/reef/handles/") {
                d.handles.insert(id.to_owned(), v);
            } else if let Some(ip) = key.strip_prefix("/reef/borrowed/") {
                let ip: IpAddr = ip
                    .parse()
                    .unwrap_or_else(|_| panic!("bad borrowed key {key}"));
                d.borrowed.insert(ip, v);
            }
            d.raw.insert(key, value);
        }
        d
    }

    pub fn block_node(&self, block: &Cidr) -> String {
        self.blocks[block]["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Blocks owned by `node`.
    pub fn blocks_of(&self, node: &str) -> Vec<Cidr> {
        self.blocks
            .keys()
            .filter(|c| self.block_node(c) == node)
            .copied()
            .collect()
    }

    /// The block holding `ip`, if any.
    pub fn block_containing(&self, ip: IpAddr) -> Option<Cidr> {
        self.blocks.keys().find(|c| c.contains(ip)).copied()
    }

    /// Every allocation of every block.
    pub fn allocations(&self) -> Vec<Alloc> {
        let mut all = Vec::new();
        for (cidr, b) in &self.blocks {
            let node = self.block_node(cidr);
            if let Some(allocs) = b["allocations"].as_object() {
                for (ord, a) in allocs {
                    let ord: u128 = ord
                        .parse()
                        .unwrap_or_else(|_| panic!("block {cidr}: bad ordinal {ord}"));
                    all.push(Alloc {
                        ip: cidr.at(ord),
                        block: *cidr,
                        block_node: node.clone(),
                        handle: a["handle"].as_str().unwrap_or_default().to_owned(),
                        borrowed_by: a["borrowed_by"].as_str().map(str::to_owned),
                    });
                }
            }
        }
        all
    }

    pub fn allocation(&self, ip: IpAddr) -> Option<Alloc> {
        self.allocations().into_iter().find(|a| a.ip == ip)
    }

    /// The addresses a handle record lists.
    pub fn handle_ips(&self, id: &str) -> Vec<IpAddr> {
        self.handles
            .get(id)
            .and_then(|h| h["ips"].as_array())
            .into_iter()
            .flatten()
            .map(|e| {
                e["ip"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("handle {id}: bad ip entry {e}"))
            })
            .collect()
    }

    /// Handle ids of `node`.
    pub fn handles_of(&self, node: &str) -> Vec<String> {
        self.handles
            .keys()
            .filter(|id| id.split('/').next() == Some(node))
            .cloned()
            .collect()
    }

    /// Invariants of the store; every violation as a line (empty = consistent):
    /// allocations name existing handles that list them and vice versa, borrowed records
    /// match borrowed allocations, blocks are aligned and of their pool's block size, and
    /// reserved ordinals (network, gateway, broadcast) are never allocated.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let pools: Vec<(Cidr, u8)> = self
            .config
            .as_ref()
            .and_then(|c| c["pools"].as_array())
            .into_iter()
            .flatten()
            .map(|pool| {
                (
                    Cidr::parse(pool["cidr"].as_str().unwrap_or_default()),
                    pool["blockPrefix"].as_u64().unwrap_or_default() as u8,
                )
            })
            .collect();
        for cidr in self.blocks.keys() {
            if cidr.network() != cidr.ip {
                p.push(format!("block {cidr} is not aligned"));
            }
            // (A block in no pool is legal: `reefctl init --force` may drop a pool in use.)
            if let Some((pc, bp)) = pools.iter().find(|(pc, _)| pc.contains(cidr.ip)) {
                if *bp != cidr.prefix {
                    p.push(format!("block {cidr} in pool {pc} should be a /{bp}"));
                }
            }
        }
        let allocs = self.allocations();
        for a in &allocs {
            let ord = a.block.ordinal_of(a.ip);
            let last = a.block.size() - 1;
            if ord == 0 || ord == 1 || (a.ip.is_ipv4() && ord == last) {
                p.push(format!("{} allocated at reserved ordinal {ord}", a.ip));
            }
            match self.handles.get(&a.handle) {
                None => p.push(format!(
                    "{} in block {} is allocated to handle {} which does not exist (orphan allocation)",
                    a.ip, a.block, a.handle
                )),
                Some(_) => {
                    if !self.handle_ips(&a.handle).contains(&a.ip) {
                        p.push(format!(
                            "{} is allocated to {} but its handle record does not list it",
                            a.ip, a.handle
                        ));
                    }
                }
            }
            let handle_node = a.handle.split('/').next().unwrap_or_default();
            match &a.borrowed_by {
                Some(n) => {
                    if n != handle_node {
                        p.push(format!(
                            "{} borrowed_by {n} but handle is {}",
                            a.ip, a.handle
                        ));
                    }
                    match self.borrowed.get(&a.ip) {
                        None => p.push(format!(
                            "{} is borrowed but /reef/borrowed/{} is missing",
                            a.ip, a.ip
                        )),
                        Some(r)
                            if r["node"] != json!(n)
                                || r["block"] != json!(a.block.to_string()) =>
                        {
                            p.push(format!(
                                "/reef/borrowed/{} = {r} does not match allocation {a:?}",
                                a.ip
                            ))
                        }
                        _ => {}
                    }
                }
                None => {
                    if handle_node != a.block_node {
                        p.push(format!(
                            "{} in {}'s block {} is held by {} without a borrowed mark",
                            a.ip, a.block_node, a.block, a.handle
                        ));
                    }
                }
            }
        }
        for (ip, r) in &self.borrowed {
            if !allocs
                .iter()
                .any(|a| a.ip == *ip && a.borrowed_by.is_some())
            {
                p.push(format!("stale /reef/borrowed/{ip} = {r}"));
            }
        }
        for (id, h) in &self.handles {
            let want = format!(
                "{}/{}/{}",
                h["node"].as_str().unwrap_or_default(),
                h["containerId"].as_str().unwrap_or_default(),
                h["ifname"].as_str().unwrap_or_default()
            );
            if *id != want {
                p.push(format!("handle key {id} does not match its record {h}"));
            }
            for ip in self.handle_ips(id) {
                match allocs.iter().find(|a| a.ip == ip) {
                    Some(a) if a.handle == *id => {}
                    Some(a) => p.push(format!(
                        "handle {id} lists {ip}, which is allocated to {}",
                        a.handle
                    )),
                    None => p.push(format!(
                        "handle {id} lists {ip}, which is not allocated (dangling handle)"
                    )),
                }
            }
        }
        p
    }

    pub fn assert_consistent(&self, when: &str) {
        let problems = self.problems();
        assert!(
            problems.is_empty(),
            "{when}: etcd state is inconsistent:\n  {}\nstate:\n{}",
            problems.join("\n  "),
            self.pretty()
        );
    }

    pub fn pretty(&self) -> String {
        self.raw
            .iter()
            .map(|(k, v)| format!("  {k} = {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The names of the entries of `dir`, sorted (empty if it cannot be read).
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
