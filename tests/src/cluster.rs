//! The cluster IPAM fixture (`cluster_ipam.rs`, `cluster_ipam_reefctl.rs`).
//!
//! [`Env`] is one simulated cluster (netns-fixtures [`Cluster`]: hosts `h1`, `h2`, ... on the
//! 198.18.1.0/24 underlay plus a real etcd host) and one node-cache directory per host, all
//! removed on drop. Plugins and `reefctl` always run inside a host's namespace and reach etcd
//! over the underlay. [`Dump`] is an independent reading of the etcd state (via `etcdctl`),
//! so the assertions do not depend on `reefctl` being right.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use netns_fixtures::{Cluster, SimHost};
use serde_json::{json, Value};

pub use crate::agent::CALL_TIMEOUT;
use crate::agent::{reefctl, reefctl_ok};
use crate::exec::{drain, exit_code};
use crate::expect::parse_stdout;
use crate::store::Dump;
use crate::{cni_path, plugin, tempdir, ChildGuard, CniCall, CniOutput, TempDir};

/// Network name used in every cluster test config.
pub const NET: &str = "clusternet";
pub const IFNAME: &str = "eth0";

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
    fn tls_section(&self) -> Option<Value> {
        self.cluster.etcd().tls().map(|t| {
            json!({
                "ca": t.ca.display().to_string(),
                "cert": t.cert.display().to_string(),
                "key": t.key.display().to_string(),
            })
        })
    }

    /// The `etcd` section of a config: endpoints (+ TLS with the client certificate).
    fn etcd_section(&self) -> Value {
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
    pub fn reefctl(&self, i: usize, args: &[&str]) -> Output {
        reefctl(self.host(i), self.cluster.etcd(), args)
    }

    /// The `reefctl ARGS` command for host `i`, to spawn (concurrency tests).
    pub fn reefctl_command(&self, i: usize, args: &[&str]) -> std::process::Command {
        crate::agent::reefctl_command(self.host(i), self.cluster.etcd(), args)
    }

    /// `reefctl ARGS` with `input` on stdin.
    pub fn reefctl_stdin(&self, i: usize, args: &[&str], input: &str) -> Output {
        crate::agent::reefctl_with_stdin(self.host(i), self.cluster.etcd(), args, input)
    }

    /// `reefctl ARGS` that must succeed.
    pub fn reefctl_ok(&self, i: usize, args: &[&str]) -> String {
        reefctl_ok(self.host(i), self.cluster.etcd(), args)
    }

    /// `reefctl --output json ARGS`, parsed; must succeed.
    pub fn reefctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        parse_stdout(&self.reefctl_ok(i, &full), &format!("reefctl {full:?}"))
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
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
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
        let code = exit_code(status);
        let json = serde_json::from_str(stdout.trim()).ok();
        CniOutput {
            code,
            stdout,
            stderr,
            json,
        }
    }
}

/// A small deterministic PRNG (xorshift64*), seeded from the PID so reruns vary; the seed is
/// printed by the tests that use it.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_pid(salt: u64) -> Rng {
        Rng((0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()) ^ salt) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`0` if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
