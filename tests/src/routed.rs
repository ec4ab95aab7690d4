//! The routed-mode cluster fixture (`routed_cluster.rs`, `vxlan_cluster.rs` and the `routed`
//! and `vxlan` benches).
//!
//! [`RoutedCluster`] is a netns-fixtures [`Cluster`] (hosts `h1`, `h2`, ... on the
//! 198.18.1.0/24 underlay, or two subnets joined by a router, see [`Topology`], plus a real
//! etcd host) initialised with `reefctl init`, a `reef-agent` process per host that asks for
//! one ([`Agent`]), and pods: one namespace per pod, attached through libcni (`cnitool`, run
//! inside the host namespace) with `reef-routed` (or `reef-bridge`, see
//! [`RoutedCluster::with_plugin`]) and the cluster `reef-ipam`. Everything is
//! owned by the value and torn down on drop, also when a test panics: agents first (SIGKILL
//! by PID), then pods, the cluster (etcd, hosts, underlay) and the directories.
//!
//! Expected routes come from this fixture's own knowledge (the underlay address of each
//! host) and from etcd read with `etcdctl`, never from the agent or `reefctl`. The VXLAN
//! modes' expected state is in [`crate::overlay`]; traffic in [`crate::traffic`]; route and
//! neighbour notifications in [`crate::monitor`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use netns_fixtures::{Cluster, SimHost};
use serde_json::{json, Value};

use crate::agent::{reefctl, reefctl_ok, Agent};
pub use crate::agent::{CALL_TIMEOUT, PROTO, READY_TIMEOUT};
use crate::expect::parse_stdout;
use crate::monitor::proto_routes;
use crate::{assert_success, cni_path, tempdir, write_conflist, Cnitool, Netns, TempDir};

/// Network name of the routed conflists.
pub const NET: &str = "routednet";
/// Interface name inside pods.
pub const IFNAME: &str = "eth0";
/// The pool every routed test initialises (each test has its own etcd, so they can share it).
pub const POOL: &str = "10.66.0.0/16";
pub const BLOCK_PREFIX: u8 = 26;

/// The main plugin a [`RoutedCluster`]'s pods are attached with; both take the same cluster
/// `reef-ipam` section and the `labels` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plugin {
    /// reef-routed (the default).
    Routed,
    /// reef-bridge on a bridge of this name in every host (`isGateway`, `hairpinMode`).
    Bridge(String),
}

impl Plugin {
    fn conf(&self) -> Value {
        match self {
            Plugin::Routed => json!({"type": "reef-routed"}),
            Plugin::Bridge(name) => json!({
                "type": "reef-bridge",
                "bridge": name,
                "isGateway": true,
                "hairpinMode": true,
            }),
        }
    }
}

/// One pod attached with the cluster's [`Plugin`].
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub host: usize,
    pub cid: String,
    pub ip: Ipv4Addr,
    pub result: Value,
}

/// A routed-mode cluster: hosts, etcd, agents and pods (see the module documentation).
#[derive(Debug)]
pub struct RoutedCluster {
    // Field order is drop order: agents, pods, the cluster, then the directories.
    pub agents: Vec<Option<Agent>>,
    pub pods: Vec<Pod>,
    pub cluster: Cluster,
    dirs: Vec<TempDir>,
    next_pod: usize,
    plugin: Plugin,
}

impl RoutedCluster {
    /// `hosts` hosts and etcd; the cluster is initialised for [`POOL`] in routed mode. No
    /// agent runs yet.
    pub fn new(hosts: usize) -> RoutedCluster {
        RoutedCluster::with(Topology::OneSubnet(hosts), "routed")
    }

    /// Pods attach with `plugin` from now on (every host's conflist is rewritten): e.g.
    /// `RoutedCluster::new(3).with_plugin(Plugin::Bridge("rbr0".into()))`.
    pub fn with_plugin(mut self, plugin: Plugin) -> RoutedCluster {
        self.plugin = plugin;
        for i in 0..self.dirs.len() {
            self.write_conflist(i);
        }
        self
    }

    fn add_dir(&mut self) {
        let dir = tempdir();
        for sub in ["cni-cache", "ipam-cache"] {
            std::fs::create_dir_all(dir.path().join(sub))
                .unwrap_or_else(|e| panic!("create {sub}: {e}"));
        }
        self.dirs.push(dir);
        self.agents.push(None);
        self.write_conflist(self.dirs.len() - 1);
    }

    /// Host `i`'s conflist: the cluster's plugin with the cluster reef-ipam.
    fn write_conflist(&self, i: usize) {
        let dir = self.dirs[i].path();
        let mut plugin = self.plugin.conf();
        plugin["capabilities"] = json!({"labels": true});
        plugin["ipam"] = json!({
            "type": "reef-ipam",
            "etcd": {"endpoints": [self.endpoint()]},
            "nodeName": self.host(i).name(),
            "dataDir": dir.join("ipam-cache").display().to_string(),
        });
        let conf = json!({"cniVersion": "1.0.0", "name": NET, "plugins": [plugin]});
        write_conflist(dir, &conf);
    }

    /// Adds a host (`h<N+1>`, next underlay address) with its directories; returns its index.
    /// No agent runs on it yet.
    pub fn add_host(&mut self) -> usize {
        self.cluster.add_host(0).expect("add a host");
        self.add_dir();
        self.cluster.hosts.len() - 1
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

    fn conflist(&self, i: usize) -> PathBuf {
        self.dirs[i].path().join(format!("{NET}.conflist"))
    }

    /// Starts the agent of host `i` (with `extra` flags) without waiting for it.
    pub fn spawn_agent(&mut self, i: usize, extra: &[&str]) {
        assert!(
            self.agents[i].is_none(),
            "agent of host {i} already running"
        );
        let agent = Agent::spawn(self.host(i), &self.endpoint(), extra);
        self.agents[i] = Some(agent);
    }

    /// Starts the agent of host `i` and waits until it is ready; returns spawn→ready.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) -> Duration {
        self.spawn_agent(i, extra);
        self.agent(i).wait_ready(READY_TIMEOUT)
    }

    /// Starts an agent on each of `hosts` (all spawned first, then waited for).
    pub fn start_agents(&mut self, hosts: &[usize], extra: &[&str]) {
        for &i in hosts {
            self.spawn_agent(i, extra);
        }
        for &i in hosts {
            self.agent(i).wait_ready(READY_TIMEOUT);
        }
    }

    /// The running agent of host `i` (panics if none).
    pub fn agent(&mut self, i: usize) -> &mut Agent {
        self.agents[i]
            .as_mut()
            .unwrap_or_else(|| panic!("no agent on host {i}"))
    }

    /// Removes the agent of host `i` from the cluster (the caller decides how it ends).
    pub fn take_agent(&mut self, i: usize) -> Agent {
        self.agents[i]
            .take()
            .unwrap_or_else(|| panic!("no agent on host {i}"))
    }

    /// Logs of every agent (for failure messages).
    pub fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .flatten()
            .map(|a| format!("--- reef-agent {} ---\n{}", a.node, a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Creates a pod on host `i` through libcni (the cluster's plugin, cluster reef-ipam);
    /// returns its index in [`RoutedCluster::pods`] and the instant the ADD returned.
    pub fn add_pod_timed(&mut self, i: usize) -> (usize, Instant) {
        self.add_pod_with(i, None, None)
    }

    /// A pod on host `i` with Kubernetes `labels` (the `labels` capability) and, with
    /// `name`, `K8S_POD_NAMESPACE`/`K8S_POD_NAME` (`namespace/name`): a service endpoint.
    pub fn add_labelled_pod(&mut self, i: usize, name: &str, labels: &Value) -> usize {
        self.add_pod_with(i, Some(name), Some(labels)).0
    }

    fn add_pod_with(
        &mut self,
        i: usize,
        name: Option<&str>,
        labels: Option<&Value>,
    ) -> (usize, Instant) {
        match self.try_add_pod_with(i, name, labels) {
            Ok(added) => added,
            Err(out) => {
                assert_success(&out, &format!("cnitool add on {}", self.node(i)));
                unreachable!("a failed ADD panics above")
            }
        }
    }

    /// Creates a pod on host `i` like [`RoutedCluster::add_pod`]; a failed ADD (etcd down, in
    /// a chaos run) comes back as the driver's output, and nothing is added.
    pub fn try_add_pod(&mut self, i: usize) -> Result<usize, Output> {
        self.try_add_pod_with(i, None, None).map(|(p, _)| p)
    }

    fn try_add_pod_with(
        &mut self,
        i: usize,
        name: Option<&str>,
        labels: Option<&Value>,
    ) -> Result<(usize, Instant), Output> {
        let ns = Netns::new("rpod").expect("create pod netns");
        let cid = format!("{}-p{}", self.node(i), self.next_pod);
        self.next_pod += 1;
        let cache = self.dirs[i].path().join("cni-cache");
        let mut tool = Cnitool::new(self.host(i).ns(), cache)
            .cni_path(cni_path())
            .timeout(CALL_TIMEOUT);
        if let Some(l) = labels {
            tool = tool.cap_args(&json!({ "labels": l }));
        }
        if let Some(n) = name {
            let (ns_name, pod) = n.split_once('/').unwrap_or(("default", n));
            tool = tool.rt_args(&format!("K8S_POD_NAMESPACE={ns_name};K8S_POD_NAME={pod}"));
        }
        let out = tool.add(&self.conflist(i), ns.path(), &cid, IFNAME);
        let done = Instant::now();
        if !out.status.success() {
            return Err(out);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("ADD {cid}: result is not JSON ({e}): {stdout}"));
        let ip = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["address"].as_str())
            .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            .next()
            .unwrap_or_else(|| panic!("ADD {cid}: no IPv4 address in the result: {result}"));
        self.pods.push(Pod {
            ns,
            host: i,
            cid,
            ip,
            result,
        });
        Ok((self.pods.len() - 1, done))
    }

    pub fn add_pod(&mut self, i: usize) -> usize {
        self.add_pod_timed(i).0
    }

    /// Deletes pod `p` through libcni (its workload record goes with its addresses).
    pub fn del_pod(&self, p: usize) {
        if let Err(out) = self.try_del_pod(p) {
            assert_success(&out, &format!("cnitool del {}", self.pods[p].cid));
        }
    }

    /// DEL of pod `p` through libcni; the driver's output if it failed. The pod stays in
    /// [`RoutedCluster::pods`] either way.
    pub fn try_del_pod(&self, p: usize) -> Result<(), Output> {
        let pod = &self.pods[p];
        let cache = self.dirs[pod.host].path().join("cni-cache");
        let out = Cnitool::new(self.host(pod.host).ns(), cache)
            .cni_path(cni_path())
            .timeout(CALL_TIMEOUT)
            .del(&self.conflist(pod.host), pod.ns.path(), &pod.cid, IFNAME);
        if out.status.success() {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// `reefctl --etcd EP ARGS` inside host `i`.
    pub fn reefctl(&self, i: usize, args: &[&str]) -> Output {
        reefctl(self.host(i), self.cluster.etcd(), args)
    }

    pub fn reefctl_ok(&self, i: usize, args: &[&str]) -> String {
        reefctl_ok(self.host(i), self.cluster.etcd(), args)
    }

    /// `reefctl ARGS --output json` inside host `i`, parsed.
    pub fn reefctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["--output", "json"]);
        parse_stdout(&self.reefctl_ok(i, &full), &format!("reefctl {full:?}"))
    }

    /// `reefctl node ls --output json` from host `i`: node name → entry.
    pub fn node_ls(&self, i: usize) -> BTreeMap<String, Value> {
        let v = self.reefctl_json(i, &["node", "ls"]);
        v.as_array()
            .unwrap_or_else(|| panic!("node ls --output json is not an array: {v}"))
            .iter()
            .map(|n| {
                let name = n["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("node entry without a name: {n}"));
                (name.to_owned(), n.clone())
            })
            .collect()
    }

    /// `etcdctl ARGS` from host `from`.
    pub fn etcdctl(&self, from: usize, args: &[&str]) -> String {
        self.cluster
            .etcd()
            .ctl(self.host(from).ns(), args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// Every block in etcd: cidr → owning node (read with etcdctl from host `from`).
    pub fn blocks(&self, from: usize) -> BTreeMap<String, String> {
        self.values(from, "/reef/blocks/")
            .into_iter()
            .map(|v| {
                (
                    v["cidr"].as_str().unwrap_or_default().to_owned(),
                    v["node"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The JSON values of every key under `prefix` in etcd (etcdctl from host `from`).
    fn values(&self, from: usize, prefix: &str) -> Vec<Value> {
        let out = self.etcdctl(from, &["get", "--prefix", prefix, "--print-value-only"]);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("value under {prefix} is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Blocks of `node` (from etcd).
    pub fn blocks_of(&self, from: usize, node: &str) -> BTreeSet<String> {
        self.blocks(from)
            .into_iter()
            .filter(|(_, n)| n == node)
            .map(|(c, _)| c)
            .collect()
    }

    /// Host `i`'s routes of protocol 201, normalised: `blackhole CIDR` or `CIDR via GW`
    /// (anything else verbatim as JSON).
    pub fn routes(&self, i: usize) -> BTreeSet<String> {
        proto_routes(self.host(i).ns())
    }

    /// What host `i`'s agent should have programmed, from etcd's blocks and the underlay
    /// addresses this fixture gave the hosts in `nodes` (the nodes that still exist):
    /// `CIDR via ADDR` for their blocks, `blackhole CIDR` for its own.
    fn expected_routes(&self, i: usize, nodes: &[usize]) -> BTreeSet<String> {
        let me = self.node(i);
        let addrs: BTreeMap<String, Ipv4Addr> = nodes
            .iter()
            .map(|&n| (self.node(n), self.host(n).addr()))
            .collect();
        self.blocks(i)
            .into_iter()
            .filter_map(|(cidr, node)| {
                if node == me {
                    Some(format!("blackhole {cidr}"))
                } else {
                    addrs.get(&node).map(|a| format!("{cidr} via {a}"))
                }
            })
            .collect()
    }

    /// Waits until each host in `hosts` has exactly the expected routes
    /// (over the node set `nodes`); panics after `timeout` with what is missing or extra.
    pub fn wait_routes(&self, hosts: &[usize], nodes: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for &h in hosts {
            loop {
                let want = self.expected_routes(h, nodes);
                let have = self.routes(h);
                if want == have {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{}: proto {PROTO} routes did not converge within {timeout:?}\n\
                         want: {want:?}\nhave: {have:?}\nmissing: {:?}\nextra: {:?}\n{}",
                        self.node(h),
                        want.difference(&have).collect::<Vec<_>>(),
                        have.difference(&want).collect::<Vec<_>>(),
                        self.agent_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Where the hosts of a [`RoutedCluster::with`] sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `n` hosts on 198.18.1.0/24 (what [`RoutedCluster::new`] builds).
    OneSubnet(usize),
    /// `n` hosts on 198.18.1.0/24 (`hosts[..n]`) and `n` on 198.18.2.0/24 (`hosts[n..]`),
    /// joined by a router that knows the two subnets and nothing about pods. etcd sits on the
    /// first subnet.
    TwoSubnets(usize),
}

impl RoutedCluster {
    /// Like [`RoutedCluster::new`] on `topology`, initialised with `--mode MODE`.
    pub fn with(topology: Topology, mode: &str) -> RoutedCluster {
        RoutedCluster::with_init(topology, &["--mode", mode])
    }

    /// Builds `topology` with etcd and runs `reefctl init --pool POOL --block-size 26 INIT...`
    /// (INIT carries `--mode` and e.g. `--vni`). No agent runs yet.
    pub fn with_init(topology: Topology, init: &[&str]) -> RoutedCluster {
        let (cluster, hosts) = match topology {
            Topology::OneSubnet(n) => {
                (Cluster::new(n, true).expect("build a cluster with etcd"), n)
            }
            Topology::TwoSubnets(n) => {
                let mut c = Cluster::two_subnets(n).expect("build two routed subnets");
                c.start_etcd(false).expect("start etcd");
                (c, 2 * n)
            }
        };
        let mut rc = RoutedCluster {
            agents: Vec::new(),
            pods: Vec::new(),
            cluster,
            dirs: Vec::new(),
            next_pod: 0,
            plugin: Plugin::Routed,
        };
        for _ in 0..hosts {
            rc.add_dir();
        }
        let prefix = BLOCK_PREFIX.to_string();
        let mut args = vec!["init", "--pool", POOL, "--block-size", &prefix];
        args.extend_from_slice(init);
        rc.reefctl_ok(0, &args);
        rc
    }

    /// True if hosts `a` and `b` share an underlay subnet.
    pub fn same_subnet(&self, a: usize, b: usize) -> bool {
        self.host(a).subnet() == self.host(b).subnet()
    }

    /// `/reef/nodes/*` from etcd (read with etcdctl from host `from`): name → record.
    pub fn node_records(&self, from: usize) -> BTreeMap<String, Value> {
        self.values(from, "/reef/nodes/")
            .into_iter()
            .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v))
            .collect()
    }

    /// `/reef/config` from etcd.
    pub fn config(&self, from: usize) -> Value {
        let out = self.etcdctl(from, &["get", "/reef/config", "--print-value-only"]);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("/reef/config is not JSON ({e}): {out}"))
    }
}
