//! Helpers for the cluster IPAM tests (`cluster_ipam*.rs` include this file with
//! `#[path = "common/cluster.rs"] mod cluster;` next to `mod common;`).
//!
//! [`Env`] is one simulated cluster (netns-fixtures [`Cluster`]: hosts `h1`, `h2`, ... on the
//! 198.18.1.0/24 underlay plus a real etcd host) and one node-cache directory per host, all
//! removed on drop. Plugins and `reefctl` always run inside a host's namespace and reach etcd
//! over the underlay. [`Dump`] is an independent reading of the etcd state (via `etcdctl`),
//! so the assertions do not depend on `reefctl` being right.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reef_tests::fixtures::{Cluster, SimHost};
use reef_tests::*;
use serde_json::{json, Value};

/// Network name used in every cluster test config.
pub const NET: &str = "clusternet";
pub const IFNAME: &str = "eth0";
/// Generous per-call bound for plugin and CLI runs (not a performance assertion).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One simulated cluster with etcd and a cache directory per host.
#[derive(Debug)]
pub struct Env {
    // Field order is drop order: the cluster (etcd, hosts, underlay) first, then directories.
    pub cluster: Cluster,
    pub caches: Vec<TempDir>,
    pub scratch: TempDir,
}

impl Env {
    /// `hosts` hosts and a plain-HTTP etcd.
    pub fn new(hosts: usize) -> Env {
        let cluster = Cluster::new(hosts, true).expect("build cluster with etcd");
        Self::wrap(cluster)
    }

    /// `hosts` hosts and an etcd that requires TLS client certificates.
    pub fn with_tls(hosts: usize) -> Env {
        let cluster = Cluster::with_tls_etcd(hosts).expect("build cluster with TLS etcd");
        Self::wrap(cluster)
    }

    fn wrap(cluster: Cluster) -> Env {
        let caches = cluster.hosts.iter().map(|_| tempdir()).collect();
        Env {
            cluster,
            caches,
            scratch: tempdir(),
        }
    }

    pub fn host(&self, i: usize) -> &SimHost {
        self.cluster.host(i)
    }

    pub fn node(&self, i: usize) -> String {
        self.host(i).name().to_owned()
    }

    pub fn endpoint(&self) -> String {
        self.cluster.etcd().endpoint()
    }

    /// The node cache directory (`dataDir`) of host `i`.
    pub fn cache_dir(&self, i: usize) -> PathBuf {
        self.caches[i].path().join("etcd-cache")
    }

    /// `{"ca", "cert", "key"}` of the etcd's client certificate, if it uses TLS.
    pub fn tls_section(&self) -> Option<Value> {
        self.cluster.etcd().tls().map(|t| {
            json!({
                "ca": t.ca.display().to_string(),
                "cert": t.cert.display().to_string(),
                "key": t.key.display().to_string(),
            })
        })
    }

    /// The `etcd` section of a config: endpoints (+ TLS with the client certificate).
    pub fn etcd_section(&self) -> Value {
        let mut e = json!({ "endpoints": [self.endpoint()] });
        if let Some(tls) = self.tls_section() {
            e["tls"] = tls;
        }
        e
    }

    /// The `ipam` section for host `i`: cluster store, node name, cache dir in a tempdir.
    pub fn ipam(&self, i: usize) -> Value {
        json!({
            "type": "reef-ipam",
            "etcd": self.etcd_section(),
            "nodeName": self.node(i),
            "dataDir": self.cache_dir(i).display().to_string(),
        })
    }

    /// A whole `reef-ipam` network config (cniVersion 1.1.0) for host `i`.
    pub fn ipam_conf(&self, i: usize) -> Value {
        ipam_conf_with(self.ipam(i))
    }

    /// A `reef-ipam` exec call on host `i` for attachment (`cid`, eth0).
    pub fn ipam_call(&self, command: &str, cid: &str, conf: &Value) -> CniCall {
        CniCall::plugin("reef-ipam")
            .command(command)
            .runtime(format!("/var/run/netns/cl-{cid}"), cid, IFNAME)
            .path(&cni_path())
            .config(conf)
            .timeout(CALL_TIMEOUT)
    }

    pub fn add(&self, i: usize, cid: &str) -> CniOutput {
        self.ipam_call("ADD", cid, &self.ipam_conf(i))
            .run(self.host(i).ns())
    }

    /// ADD that must succeed; returns the result.
    pub fn add_ok(&self, i: usize, cid: &str) -> Value {
        let out = self.add(i, cid);
        assert!(out.ok(), "ADD {cid} on {} failed:\n{out}", self.node(i));
        out.result().clone()
    }

    /// DEL, with `prev` as prevResult when given.
    pub fn del(&self, i: usize, cid: &str, prev: Option<&Value>) -> CniOutput {
        let mut conf = self.ipam_conf(i);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        self.ipam_call("DEL", cid, &conf).run(self.host(i).ns())
    }

    pub fn del_ok(&self, i: usize, cid: &str, prev: Option<&Value>) {
        let out = self.del(i, cid, prev);
        assert!(out.ok(), "DEL {cid} on {} failed:\n{out}", self.node(i));
    }

    /// CNI STATUS (1.1.0) on host `i`.
    pub fn status(&self, i: usize) -> CniOutput {
        CniCall::plugin("reef-ipam")
            .command("STATUS")
            .path(&cni_path())
            .config(self.ipam_conf(i))
            .timeout(CALL_TIMEOUT)
            .run(self.host(i).ns())
    }

    /// CNI GC (1.1.0) on host `i`, keeping `valid` container ids (ifname eth0).
    pub fn gc(&self, i: usize, valid: &[String]) -> CniOutput {
        let mut conf = self.ipam_conf(i);
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|c| json!({"containerID": c, "ifname": IFNAME}))
            .collect();
        CniCall::plugin("reef-ipam")
            .command("GC")
            .path(&cni_path())
            .config(conf)
            .timeout(CALL_TIMEOUT)
            .run(self.host(i).ns())
    }

    /// `etcdctl ARGS` from host 0 (with the client certificate if TLS is on).
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.cluster
            .etcd()
            .ctl(self.host(0).ns(), args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// Writes `/reef/config` directly (the JSON `reefctl init` writes, per
    /// ipam/src/cluster/model.rs), so store tests do not depend on `reefctl`.
    pub fn put_config(&self, pools: &[(&str, u8)], mode: &str) {
        let pools: Vec<Value> = pools
            .iter()
            .map(|(cidr, p)| json!({"cidr": cidr, "blockPrefix": p, "natOutgoing": true}))
            .collect();
        let config = json!({"pools": pools, "mode": mode, "vni": 1}).to_string();
        self.etcdctl(&["put", "/reef/config", &config]);
    }

    /// Everything under /reef/, decoded.
    pub fn dump(&self) -> Dump {
        Dump::parse(&self.etcdctl(&["get", "--prefix", "/reef/"]))
    }

    /// etcd's current store revision (changes on every write).
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "/reef/config", "-w", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no header.revision: {out}"))
    }

    /// `reefctl --etcd EP [tls flags] ARGS` inside host `i`.
    pub fn reefctl_cmd(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = self.host(i).cmd(plugin("reefctl"));
        cmd.env_remove("REEF_ETCD")
            .arg("--etcd")
            .arg(self.endpoint());
        if let Some(t) = self.cluster.etcd().tls() {
            cmd.arg("--etcd-ca")
                .arg(&t.ca)
                .arg("--etcd-cert")
                .arg(&t.cert)
                .arg("--etcd-key")
                .arg(&t.key);
        }
        cmd.args(args);
        cmd
    }

    pub fn reefctl(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = self.reefctl_cmd(i, args);
        output_with_timeout(&mut cmd, None, CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("reefctl {args:?}: {e}"))
    }

    /// `reefctl ARGS` that must succeed.
    pub fn reefctl_ok(&self, i: usize, args: &[&str]) -> String {
        assert_success(&self.reefctl(i, args), &format!("reefctl {args:?}"))
    }

    /// `reefctl --output json ARGS`, parsed; must succeed.
    pub fn reefctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.reefctl_ok(i, &full);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("reefctl {full:?}: stdout is not JSON ({e}): {out}"))
    }

    /// `reefctl --etcd EP init ARGS` (no --output); must succeed.
    pub fn reefctl_init(&self, args: &[&str]) {
        let mut full = vec!["init"];
        full.extend_from_slice(args);
        self.reefctl_ok(0, &full);
    }

    /// Starts a `reef-ipam` process on host `i` without feeding it yet (see [`Running`]).
    pub fn start(&self, i: usize, command: &str, cid: &str, conf: &Value) -> Running {
        Running::start(self.host(i), command, cid, conf.to_string())
    }
}

/// A `reef-ipam` network config around an `ipam` section.
pub fn ipam_conf_with(ipam: Value) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NET,
        "type": "reef-ipam",
        "ipam": ipam,
    })
}

/// A `reef-ipam` process spawned inside a host, blocked on stdin until [`Running::feed`]:
/// spawning many first and feeding them afterwards starts them all at (nearly) once.
pub struct Running {
    child: ChildGuard,
    stdin: Option<String>,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut p) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

impl Running {
    pub fn start(host: &SimHost, command: &str, cid: &str, conf: String) -> Running {
        let mut cmd = host.cmd(plugin("reef-ipam"));
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", format!("/var/run/netns/cl-{cid}"))
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::from(cmd.spawn().expect("spawn reef-ipam"));
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        Running {
            child,
            stdin: Some(conf),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Writes the config and closes stdin: the plugin starts working now.
    pub fn feed(&mut self) {
        if let (Some(conf), Some(mut pipe)) = (self.stdin.take(), self.child.stdin.take()) {
            let _ = pipe.write_all(conf.as_bytes());
        }
    }

    /// SIGKILL to this child's own PID (not yet reaped, so the PID is still ours).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the exit (bounded by [`CALL_TIMEOUT`], then killed) and collects the output.
    pub fn finish(mut self) -> CniOutput {
        self.feed();
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill_and_wait();
                panic!(
                    "reef-ipam pid {} ran longer than {CALL_TIMEOUT:?}",
                    self.pid()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let grace = Duration::from_secs(5);
        let stdout = String::from_utf8_lossy(&self.stdout.recv_timeout(grace).unwrap_or_default())
            .into_owned();
        let stderr = String::from_utf8_lossy(&self.stderr.recv_timeout(grace).unwrap_or_default())
            .into_owned();
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        let json = serde_json::from_str(stdout.trim()).ok();
        CniOutput {
            code,
            stdout,
            stderr,
            json,
        }
    }
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

    pub fn network(&self) -> IpAddr {
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

    pub fn size(&self) -> u128 {
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

    pub fn ordinal_of(&self, ip: IpAddr) -> u128 {
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
    pub fn problems(&self) -> Vec<String> {
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

/// The addresses (no prefix) of a CNI result.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips: {result}"))
        .iter()
        .map(|i| {
            Cidr::parse(
                i["address"]
                    .as_str()
                    .unwrap_or_else(|| panic!("ip without address: {result}")),
            )
            .ip
        })
        .collect()
}

/// The only IPv4 entry of a result: (address CIDR, gateway).
pub fn result_v4(result: &Value) -> (Cidr, Option<IpAddr>) {
    let ips: Vec<&Value> = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips: {result}"))
        .iter()
        .filter(|i| !i["address"].as_str().unwrap_or_default().contains(':'))
        .collect();
    assert_eq!(ips.len(), 1, "one IPv4 address expected: {result}");
    (
        Cidr::parse(ips[0]["address"].as_str().unwrap_or_default()),
        ips[0]["gateway"]
            .as_str()
            .map(|g| g.parse().expect("gateway")),
    )
}

/// A small deterministic PRNG (xorshift64*), seeded from the PID so reruns vary; the seed is
/// printed by the tests that use it.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_pid(salt: u64) -> Rng {
        Rng((0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()) ^ salt) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
