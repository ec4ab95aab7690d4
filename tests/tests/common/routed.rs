//! Fixture for routed-mode clusters (`routed_cluster.rs`, and `benches/routed.rs`, which
//! includes this file by path).
//!
//! [`RoutedCluster`] is a netns-fixtures [`Cluster`] (hosts `h1`, `h2`, ... on the
//! 198.18.1.0/24 underlay plus a real etcd host) initialised with `reefctl init --mode routed`,
//! a `reef-agent` process per host that asks for one ([`Agent`]), and pods: one namespace per
//! pod, attached through libcni (`cnitool`, run inside the host namespace) with `reef-routed`
//! and the cluster `reef-ipam`. Everything is owned by the value and torn down on drop, also
//! when a test panics: agents first (SIGKILL by PID), then pods, the cluster (etcd, hosts,
//! underlay) and the directories.
//!
//! Traffic helpers never leave the simulated addresses: sockets are opened from a short-lived
//! thread that entered the pod's or host's namespace ([`in_netns`]) and then used from any
//! thread (a socket stays in the namespace it was created in). [`RouteMonitor`] listens to a
//! namespace's rtnetlink route notifications, so a test sees every route added or removed,
//! not just samples.
//!
//! Expected routes come from this fixture's own knowledge (the underlay address of each
//! host) and from etcd read with `etcdctl`, never from the agent or `reefctl`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reef_tests::fixtures::{Cluster, SimHost};
use reef_tests::{
    assert_success, cni_path, output_with_timeout, plugin, tempdir, write_conflist, ChildGuard,
    Cnitool, Netns, TempDir,
};
use serde_json::{json, Value};

/// Network name of the routed conflists.
pub const NET: &str = "routednet";
/// Interface name inside pods.
pub const IFNAME: &str = "eth0";
/// The pool every routed test initialises (each test has its own etcd, so they can share it).
pub const POOL: &str = "10.66.0.0/16";
pub const BLOCK_PREFIX: u8 = 26;
/// The route protocol the agent tags its routes with.
pub const PROTO: u8 = 201;
/// Generous bound for one plugin or CLI run (not a performance assertion).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous bound for an agent's first full reconcile (not a performance assertion).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `reef-agent` with its output collected (stdout and stderr, interleaved by line).
#[derive(Debug)]
pub struct Agent {
    pub node: String,
    pub spawned: Instant,
    child: ChildGuard,
    log: Arc<Mutex<String>>,
    ready: mpsc::Receiver<Instant>,
    ready_at: Option<Instant>,
}

impl Agent {
    /// Starts `reef-agent --etcd EP --node NAME --iface eth0 EXTRA...` inside `host`.
    pub fn spawn(host: &SimHost, endpoint: &str, extra: &[&str]) -> Agent {
        let mut cmd = host.cmd(plugin("reef-agent"));
        cmd.env_remove("REEF_ETCD")
            .args([
                "--etcd",
                endpoint,
                "--node",
                host.name(),
                "--iface",
                host.iface(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = ChildGuard::from(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn reef-agent on {}: {e}", host.name())),
        );
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, ready) = mpsc::channel();
        let out = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        for pipe in [out, err].into_iter().flatten() {
            let log = Arc::clone(&log);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("msg=\"ready\"") || line.contains("msg=ready") {
                        let _ = tx.send(Instant::now());
                    }
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Agent {
            node: host.name().to_owned(),
            spawned,
            child,
            log,
            ready,
            ready_at: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for `msg="ready"`; returns the time from spawn to ready. Panics (with the log)
    /// if the agent exits first or takes longer than `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        if let Some(at) = self.ready_at {
            return at - self.spawned;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.ready.recv_timeout(Duration::from_millis(50)) {
                Ok(at) => {
                    self.ready_at = Some(at);
                    return at - self.spawned;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!(
                        "reef-agent on {} closed its output without printing msg=\"ready\" \
                         (status {:?}); log:\n{}",
                        self.node,
                        self.child.try_wait(),
                        self.log()
                    );
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "reef-agent on {} exited ({status}) before it was ready; log:\n{}",
                    self.node,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "reef-agent on {} not ready after {timeout:?}; log:\n{}",
                    self.node,
                    self.log()
                );
            }
        }
    }

    /// `None` while running, the exit status once it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL (by its own PID) and reap.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill_and_wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit; `None` if it did not exit in time
    /// (it is then still running; drop kills it).
    pub fn sigterm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // Not reaped yet, so the PID is still our child's.
        let _ = kill(Pid::from_raw(self.child.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One pod attached with reef-routed.
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
}

impl RoutedCluster {
    /// `hosts` hosts and etcd; the cluster is initialised for [`POOL`] in routed mode. No
    /// agent runs yet.
    pub fn new(hosts: usize) -> RoutedCluster {
        let cluster = Cluster::new(hosts, true).expect("build a cluster with etcd");
        let mut rc = RoutedCluster {
            agents: Vec::new(),
            pods: Vec::new(),
            cluster,
            dirs: Vec::new(),
            next_pod: 0,
        };
        for _ in 0..hosts {
            rc.add_dir();
        }
        rc.reefctl_ok(
            0,
            &[
                "init",
                "--pool",
                POOL,
                "--block-size",
                &BLOCK_PREFIX.to_string(),
                "--mode",
                "routed",
            ],
        );
        rc
    }

    fn add_dir(&mut self) {
        let dir = tempdir();
        let i = self.dirs.len();
        let host = self.cluster.host(i);
        for sub in ["cni-cache", "ipam-cache"] {
            std::fs::create_dir_all(dir.path().join(sub))
                .unwrap_or_else(|e| panic!("create {sub}: {e}"));
        }
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": NET,
            "plugins": [{
                "type": "reef-routed",
                "ipam": {
                    "type": "reef-ipam",
                    "etcd": {"endpoints": [self.endpoint()]},
                    "nodeName": host.name(),
                    "dataDir": dir.path().join("ipam-cache").display().to_string(),
                },
            }],
        });
        write_conflist(dir.path(), &conf);
        self.dirs.push(dir);
        self.agents.push(None);
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

    pub fn conflist(&self, i: usize) -> PathBuf {
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

    /// Creates a pod on host `i` through libcni (reef-routed + cluster reef-ipam); returns its
    /// index in [`RoutedCluster::pods`] and the instant the ADD returned.
    pub fn add_pod_timed(&mut self, i: usize) -> (usize, Instant) {
        let ns = Netns::new("rpod").expect("create pod netns");
        let cid = format!("{}-p{}", self.node(i), self.next_pod);
        self.next_pod += 1;
        let cache = self.dirs[i].path().join("cni-cache");
        let out = Cnitool::new(self.host(i).ns(), cache)
            .cni_path(cni_path())
            .timeout(CALL_TIMEOUT)
            .add(&self.conflist(i), ns.path(), &cid, IFNAME);
        let done = Instant::now();
        let stdout = assert_success(&out, &format!("cnitool add {cid} on {}", self.node(i)));
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
        (self.pods.len() - 1, done)
    }

    pub fn add_pod(&mut self, i: usize) -> usize {
        self.add_pod_timed(i).0
    }

    /// `reefctl --etcd EP ARGS` inside host `i`.
    pub fn reefctl(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = self.host(i).cmd(plugin("reefctl"));
        cmd.env_remove("REEF_ETCD")
            .arg("--etcd")
            .arg(self.endpoint())
            .args(args);
        output_with_timeout(&mut cmd, None, CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("reefctl {args:?}: {e}"))
    }

    pub fn reefctl_ok(&self, i: usize, args: &[&str]) -> String {
        assert_success(&self.reefctl(i, args), &format!("reefctl {args:?}"))
    }

    /// `reefctl ARGS --output json` inside host `i`, parsed.
    pub fn reefctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["--output", "json"]);
        let out = self.reefctl_ok(i, &full);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("reefctl {full:?}: stdout is not JSON ({e}): {out}"))
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
        let out = self.etcdctl(
            from,
            &["get", "--prefix", "/reef/blocks/", "--print-value-only"],
        );
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("block value is not JSON ({e}): {l}"));
                (
                    v["cidr"].as_str().unwrap_or_default().to_owned(),
                    v["node"].as_str().unwrap_or_default().to_owned(),
                )
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
    pub fn expected_routes(&self, i: usize, nodes: &[usize]) -> BTreeSet<String> {
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

    /// Waits until each host in `hosts` has exactly [`RoutedCluster::expected_routes`]
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

/// `ip -j route show proto 201` inside `ns`, normalised (see [`RoutedCluster::routes`]).
pub fn proto_routes(ns: &Netns) -> BTreeSet<String> {
    let out = ns.sh_ok(&format!("ip -j -4 route show proto {PROTO}"));
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("ip -j route: not JSON ({e}): {out}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or_default();
            if r["type"] == "blackhole" {
                format!("blackhole {dst}")
            } else if let Some(gw) = r["gateway"].as_str() {
                format!("{dst} via {gw}")
            } else {
                r.to_string()
            }
        })
        .collect()
}

/// Runs `f` on a fresh thread that entered `ns` (network namespace only) and returns its
/// result. Sockets created inside `f` stay in `ns` and may be used from any thread.
pub fn in_netns<T, F>(ns: &Netns, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let file = ns.open()?;
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
}

/// A TCP listener on `ip` (ephemeral port) inside `ns`.
pub fn listen_in(ns: &Netns, ip: Ipv4Addr) -> TcpListener {
    in_netns(ns, move || TcpListener::bind((ip, 0)))
        .unwrap_or_else(|e| panic!("listen on {ip} in {}: {e}", ns.name()))
}

/// A TCP connection from inside `ns` to `to`.
pub fn connect_in(ns: &Netns, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect_timeout(&to, timeout))
}

/// Byte `i` of every test stream.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// What the receiving side of a [`Transfer`] saw.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// The client address as the server saw it.
    pub peer: SocketAddr,
    /// Bytes received intact.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Longest pause between two reads at the server.
    pub max_gap: Duration,
}

/// A TCP stream from a client in one namespace to a server in another (both run by the test
/// process): the client sends a byte pattern, the server checks every byte, then acks the
/// count. Sizes: fixed ([`Transfer::bytes`]) or paced until [`Transfer::finish`].
pub struct Transfer {
    stop: Arc<AtomicBool>,
    client: JoinHandle<Result<u64, String>>,
    server: JoinHandle<Result<TransferReport, String>>,
}

/// Bound on any single read or write (a broken path fails the transfer instead of hanging).
const IO_TIMEOUT: Duration = Duration::from_secs(15);

impl Transfer {
    fn start(
        src: &Netns,
        dst: &Netns,
        dst_ip: Ipv4Addr,
        total: Option<u64>,
        pace: Option<(usize, Duration)>,
    ) -> Transfer {
        let listener = listen_in(dst, dst_ip);
        let addr = listener.local_addr().expect("listener address");
        let server = std::thread::spawn(move || -> Result<TransferReport, String> {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + IO_TIMEOUT;
            let (mut s, peer) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(format!("no connection to {addr} within {IO_TIMEOUT:?}"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept on {addr}: {e}")),
                }
            };
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let start = Instant::now();
            let mut last = start;
            let mut max_gap = Duration::ZERO;
            let mut n: u64 = 0;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let r = s
                    .read(&mut buf)
                    .map_err(|e| format!("read from {peer} after {n} bytes: {e}"))?;
                let now = Instant::now();
                max_gap = max_gap.max(now - last);
                last = now;
                if r == 0 {
                    break;
                }
                for (k, b) in buf[..r].iter().enumerate() {
                    if *b != pattern(n + k as u64) {
                        return Err(format!("corrupt byte at offset {}", n + k as u64));
                    }
                }
                n += r as u64;
            }
            s.write_all(&n.to_be_bytes())
                .map_err(|e| format!("ack to {peer}: {e}"))?;
            Ok(TransferReport {
                peer,
                bytes: n,
                elapsed: start.elapsed(),
                max_gap,
            })
        });
        let stream = connect_in(src, addr, Duration::from_secs(5));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let client = std::thread::spawn(move || -> Result<u64, String> {
            let mut s = stream.map_err(|e| format!("connect to {addr}: {e}"))?;
            s.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let chunk = pace.map(|(c, _)| c).unwrap_or(64 * 1024);
            let mut sent: u64 = 0;
            let mut buf = vec![0u8; chunk];
            loop {
                let len = match total {
                    Some(t) if sent >= t => break,
                    Some(t) => (t - sent).min(chunk as u64) as usize,
                    None if stop2.load(Ordering::Relaxed) => break,
                    None => chunk,
                };
                for (k, b) in buf[..len].iter_mut().enumerate() {
                    *b = pattern(sent + k as u64);
                }
                s.write_all(&buf[..len])
                    .map_err(|e| format!("write to {addr} after {sent} bytes: {e}"))?;
                sent += len as u64;
                if let Some((_, every)) = pace {
                    std::thread::sleep(every);
                }
            }
            s.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)
                .map_err(|e| format!("read the ack from {addr}: {e}"))?;
            let got = u64::from_be_bytes(ack);
            if got != sent {
                return Err(format!("sent {sent} bytes, the server acked {got}"));
            }
            Ok(sent)
        });
        Transfer {
            stop,
            client,
            server,
        }
    }

    /// Sends `total` bytes as fast as TCP allows.
    pub fn bytes(src: &Netns, dst: &Netns, dst_ip: Ipv4Addr, total: u64) -> Transfer {
        Transfer::start(src, dst, dst_ip, Some(total), None)
    }

    /// Sends `chunk` bytes every `every` until [`Transfer::finish`].
    pub fn paced(
        src: &Netns,
        dst: &Netns,
        dst_ip: Ipv4Addr,
        chunk: usize,
        every: Duration,
    ) -> Transfer {
        Transfer::start(src, dst, dst_ip, None, Some((chunk, every)))
    }

    /// Stops a paced stream (no-op for a sized one) and waits for both ends.
    pub fn finish(self) -> Result<TransferReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        let client = self
            .client
            .join()
            .map_err(|_| "client thread panicked".to_owned())?;
        let server = self
            .server
            .join()
            .map_err(|_| "server thread panicked".to_owned())?;
        let sent = client?;
        let report = server?;
        if report.bytes != sent {
            return Err(format!(
                "client sent {sent} bytes, server got {}",
                report.bytes
            ));
        }
        Ok(report)
    }
}

/// `ping -c1 -W WAIT DST` inside `ns` (WAIT in seconds, fractions allowed).
pub fn ping1(ns: &Netns, dst: Ipv4Addr, wait: &str) -> bool {
    ns.cmd("ping")
        .args(["-c", "1", "-W", wait, "-n", "-q", &dst.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Pings until one answer or `timeout`.
pub fn ping_within(ns: &Netns, dst: Ipv4Addr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ping1(ns, dst, "0.5") {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A route notification seen by a [`RouteMonitor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEvent {
    pub at: Instant,
    /// RTM_NEWROUTE (true) or RTM_DELROUTE (false).
    pub new: bool,
    /// `CIDR` of the destination.
    pub dst: String,
    pub protocol: u8,
    /// RTN_* type (1 unicast, 6 blackhole).
    pub kind: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl std::fmt::Display for RouteEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}{}{} proto {}",
            if self.new { "NEW" } else { "DEL" },
            if self.kind == libc::RTN_BLACKHOLE {
                "blackhole "
            } else {
                ""
            },
            self.dst,
            self.gateway
                .map(|g| format!(" via {g}"))
                .unwrap_or_default(),
            self.protocol
        )
    }
}

/// Listens to the IPv4 route notifications of one namespace (an rtnetlink socket opened
/// inside it, group RTMGRP_IPV4_ROUTE) on its own thread, recording every event with the
/// time it was received. Stops on drop.
pub struct RouteMonitor {
    events: Arc<Mutex<Vec<RouteEvent>>>,
    overflow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    notify: Arc<(Mutex<()>, std::sync::Condvar)>,
}

fn netlink_socket() -> io::Result<OwnedFd> {
    netlink_socket_groups(libc::RTMGRP_IPV4_ROUTE as u32)
}

/// Parses the route messages of one netlink datagram.
fn parse_routes(buf: &[u8], at: Instant, out: &mut Vec<RouteEvent>) {
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
        if len < 16 || off + len > buf.len() {
            break;
        }
        let msg = &buf[off + 16..off + len];
        if (ty == libc::RTM_NEWROUTE || ty == libc::RTM_DELROUTE)
            && msg.len() >= 12
            && msg[0] == libc::AF_INET as u8
        {
            let (dst_len, protocol, kind) = (msg[1], msg[5], msg[7]);
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut a = 12usize;
            while a + 4 <= msg.len() {
                let alen = u16::from_ne_bytes([msg[a], msg[a + 1]]) as usize;
                let aty = u16::from_ne_bytes([msg[a + 2], msg[a + 3]]);
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                let data = &msg[a + 4..a + alen];
                if data.len() == 4 {
                    let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
                    if aty == libc::RTA_DST {
                        dst = ip;
                    } else if aty == libc::RTA_GATEWAY {
                        gateway = Some(ip);
                    }
                }
                a += (alen + 3) & !3;
            }
            out.push(RouteEvent {
                at,
                new: ty == libc::RTM_NEWROUTE,
                dst: format!("{dst}/{dst_len}"),
                protocol,
                kind,
                gateway,
            });
        }
        off += (len + 3) & !3;
    }
}

impl RouteMonitor {
    /// Subscribed when this returns: every later route change in `ns` is recorded.
    pub fn start(ns: &Netns) -> RouteMonitor {
        let file = ns
            .open()
            .unwrap_or_else(|e| panic!("open netns {}: {e}", ns.name()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let overflow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let notify = Arc::new((Mutex::new(()), std::sync::Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let (ev, ov, st, nt) = (
            Arc::clone(&events),
            Arc::clone(&overflow),
            Arc::clone(&stop),
            Arc::clone(&notify),
        );
        let thread = std::thread::spawn(move || {
            let fd = match setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|_| netlink_socket())
            {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 1 << 16];
            let mut batch = Vec::new();
            while !st.load(Ordering::Relaxed) {
                // SAFETY: reads into a buffer we own, on a descriptor we own.
                let r = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                let at = Instant::now();
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        ov.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                batch.clear();
                parse_routes(&buf[..r as usize], at, &mut batch);
                if !batch.is_empty() {
                    ev.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(batch.drain(..));
                    nt.1.notify_all();
                }
            }
        });
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("route monitor in {}: {e}", ns.name()),
            Err(_) => panic!("route monitor thread in {} died", ns.name()),
        }
        RouteMonitor {
            events,
            overflow,
            stop,
            thread: Some(thread),
            notify,
        }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<RouteEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Events of protocol 201.
    pub fn proto_events(&self) -> Vec<RouteEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.protocol == PROTO)
            .collect()
    }

    /// True if the kernel dropped notifications (ENOBUFS): the record is incomplete.
    pub fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Waits until an RTM_NEWROUTE of protocol 201 for `dst` arrives (or was recorded
    /// already); returns when it was received.
    pub fn wait_new(&self, dst: &str, deadline: Instant) -> Option<Instant> {
        let (lock, cv) = &*self.notify;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e.new && e.protocol == PROTO && e.dst == dst)
            {
                return Some(e.at);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            guard = cv
                .wait_timeout(guard, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Samples that missed a required route: (time since the sampler started, missing routes).
pub type Misses = Vec<(Duration, Vec<String>)>;

/// Samples `proto_routes(ns)` every `every` on a thread until stopped; for each sample,
/// records which of `must_have` were missing.
pub struct RouteSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, Misses)>>,
}

impl RouteSampler {
    pub fn start(ns: &Netns, must_have: BTreeSet<String>, every: Duration) -> RouteSampler {
        let name = ns.name().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = 0usize;
            let mut misses = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let out = Command::new("ip")
                    .args(["-n", &name, "-j", "-4", "route", "show", "proto"])
                    .arg(PROTO.to_string())
                    .stdin(Stdio::null())
                    .output();
                if let Ok(out) = out {
                    if out.status.success() {
                        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                        let have: BTreeSet<String> = v
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|r| {
                                let dst = r["dst"].as_str().unwrap_or_default();
                                if r["type"] == "blackhole" {
                                    format!("blackhole {dst}")
                                } else {
                                    format!("{dst} via {}", r["gateway"].as_str().unwrap_or(""))
                                }
                            })
                            .collect();
                        samples += 1;
                        let missing: Vec<String> = must_have.difference(&have).cloned().collect();
                        if !missing.is_empty() {
                            misses.push((start.elapsed(), missing));
                        }
                    }
                }
                std::thread::sleep(every);
            }
            (samples, misses)
        });
        RouteSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops; returns (number of samples, samples that missed a route: (time, missing)).
    pub fn finish(mut self) -> (usize, Misses) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RouteSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Two underlay subnets and the VXLAN modes (`vxlan_cluster.rs`, `benches/vxlan.rs`).
//
// The expected overlay state of a host is derived from what the fixture knows (each host's
// underlay address and subnet), from etcd's blocks (read with etcdctl) and from the other
// hosts' kernels (the MAC of their `reef.vxlan`), never from the agents' node records: the
// tests compare those records with the same facts separately.

/// The VXLAN device the agent creates in the vxlan modes.
pub const VXLAN_DEV: &str = "reef.vxlan";

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

/// A host's VXLAN forwarding state, normalised:
/// - `fdb`: `MAC dst IP STATE` (`bridge fdb show dev reef.vxlan`, entries with a remote);
/// - `neigh`: `IP lladdr MAC STATE` (`ip neigh show dev reef.vxlan`, IPv4);
/// - `routes`: protocol-201 routes, `CIDR via GW dev DEV[ onlink]` or `blackhole CIDR`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub fdb: BTreeSet<String>,
    pub neigh: BTreeSet<String>,
    pub routes: BTreeSet<String>,
}

/// A host's VXLAN tunnel endpoint as its kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// Interface counters (`ip -s -j link show DEV`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl LinkStats {
    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        LinkStats {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == LinkStats::default()
    }
}

fn json_of(ns: &Netns, script: &str) -> Value {
    let out = ns.sh_ok(script);
    let t = out.trim();
    if t.is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(t).unwrap_or_else(|e| panic!("`{script}`: not JSON ({e}): {out}"))
}

fn cidr_base(cidr: &str) -> Ipv4Addr {
    cidr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 CIDR: {cidr}"))
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

/// Counters of `dev` inside `ns`.
pub fn link_stats(ns: &Netns, dev: &str) -> LinkStats {
    let v = json_of(ns, &format!("ip -s -j link show dev {dev}"));
    let s = &v[0]["stats64"];
    let n = |dir: &str, k: &str| {
        s[dir][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats64.{dir}.{k} for {dev} in {}: {v}", ns.name()))
    };
    LinkStats {
        rx_bytes: n("rx", "bytes"),
        rx_packets: n("rx", "packets"),
        tx_bytes: n("tx", "bytes"),
        tx_packets: n("tx", "packets"),
    }
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

/// `bridge fdb show dev DEV` inside `ns`: the entries with a remote, as `MAC dst IP STATE`.
pub fn fdb_entries(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = json_of(ns, &format!("bridge -j fdb show dev {dev}"));
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(format!(
                "{} dst {} {}",
                e["mac"].as_str()?,
                e["dst"].as_str()?,
                e["state"].as_str().unwrap_or("")
            ))
        })
        .collect()
}

/// `ip -4 neigh show dev DEV` inside `ns`, as `IP lladdr MAC STATE` (states joined by `,`).
pub fn neigh_entries(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = json_of(ns, &format!("ip -4 -j neigh show dev {dev}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let state: Vec<&str> = e["state"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!(
                "{} lladdr {} {}",
                e["dst"].as_str().unwrap_or("?"),
                e["lladdr"].as_str().unwrap_or("-"),
                state.join(",")
            )
        })
        .collect()
}

/// Protocol-201 IPv4 routes inside `ns` with their device and flags: `blackhole CIDR`,
/// `CIDR via GW dev DEV`, `CIDR via GW dev DEV onlink`, `CIDR dev DEV` (anything else as JSON).
pub fn proto_routes_dev(ns: &Netns) -> BTreeSet<String> {
    let v = json_of(ns, &format!("ip -j -4 route show proto {PROTO}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or_default();
            let onlink = r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"));
            let dev = r["dev"].as_str();
            match (r["type"].as_str(), r["gateway"].as_str(), dev) {
                (Some("blackhole"), _, _) => format!("blackhole {dst}"),
                (_, Some(gw), Some(dev)) => format!(
                    "{dst} via {gw} dev {dev}{}",
                    if onlink { " onlink" } else { "" }
                ),
                (_, None, Some(dev)) => format!("{dst} dev {dev}"),
                _ => r.to_string(),
            }
        })
        .collect()
}

/// The routed-mode route to `block` via a host on the same underlay.
pub fn direct_route(block: &str, via: Ipv4Addr, iface: &str) -> String {
    format!("{block} via {via} dev {iface}")
}

/// The overlay route to `block` via a remote VTEP.
pub fn vxlan_route(block: &str, vtep: Ipv4Addr) -> String {
    format!("{block} via {vtep} dev {VXLAN_DEV} onlink")
}

pub fn fdb_entry(mac: &str, underlay: Ipv4Addr) -> String {
    format!("{mac} dst {underlay} permanent")
}

pub fn neigh_entry(vtep: Ipv4Addr, mac: &str) -> String {
    format!("{vtep} lladdr {mac} PERMANENT")
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
        let out = self.etcdctl(
            from,
            &["get", "--prefix", "/reef/nodes/", "--print-value-only"],
        );
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("node record is not JSON ({e}): {l}"));
                (v["name"].as_str().unwrap_or_default().to_owned(), v)
            })
            .collect()
    }

    /// `/reef/config` from etcd.
    pub fn config(&self, from: usize) -> Value {
        let out = self.etcdctl(from, &["get", "/reef/config", "--print-value-only"]);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("/reef/config is not JSON ({e}): {out}"))
    }

    /// Host `i`'s fdb, neighbours (on reef.vxlan) and protocol-201 routes.
    pub fn overlay(&self, i: usize) -> Overlay {
        let ns = self.host(i).ns();
        let has_dev = link_details(ns, VXLAN_DEV).is_some();
        Overlay {
            fdb: if has_dev {
                fdb_entries(ns, VXLAN_DEV)
            } else {
                BTreeSet::new()
            },
            neigh: if has_dev {
                neigh_entries(ns, VXLAN_DEV)
            } else {
                BTreeSet::new()
            },
            routes: proto_routes_dev(ns),
        }
    }

    /// Host `i`'s VTEP as its kernel shows it: reef.vxlan's MAC and its /32 address (`None`
    /// until the device exists and has exactly one).
    pub fn vtep(&self, i: usize) -> Option<Vtep> {
        let ns = self.host(i).ns();
        let link = link_details(ns, VXLAN_DEV)?;
        let mac = link["address"].as_str()?.to_owned();
        let addrs = link_addrs(ns, VXLAN_DEV);
        let mut it = addrs.iter();
        let (Some(a), None) = (it.next(), it.next()) else {
            return None;
        };
        let ip = a.strip_suffix("/32")?.parse().ok()?;
        Some(Vtep { mac, ip })
    }

    /// The VTEP address the contract gives host `i`: the network address of its lowest block
    /// (from etcd), if it owns one.
    pub fn expected_vtep_ip(&self, from: usize, i: usize) -> Option<Ipv4Addr> {
        self.blocks_of(from, &self.node(i))
            .iter()
            .map(|c| cidr_base(c))
            .min_by_key(|a| u32::from(*a))
    }

    /// What host `i` should hold, over the node set `nodes` (the nodes that still exist),
    /// for `mode` `vxlan` or `vxlan-crosssubnet`: for each other node with a VTEP (MAC from
    /// its kernel, address = its lowest block's first address), the fdb entry and the
    /// neighbour, and a route per block; in `vxlan-crosssubnet`, nodes on host `i`'s subnet
    /// get `via <underlay> dev <iface>` instead (and no fdb/neigh entry is required).
    /// Own blackholes are not part of it (see [`RoutedCluster::overlay_diff`]).
    pub fn expected_overlay(&self, i: usize, nodes: &[usize], mode: &str) -> Overlay {
        let blocks = self.blocks(i);
        let mut want = Overlay::default();
        for &n in nodes.iter().filter(|&&n| n != i) {
            let name = self.node(n);
            let theirs: Vec<&String> = blocks
                .iter()
                .filter(|(_, o)| **o == name)
                .map(|(c, _)| c)
                .collect();
            if mode == "vxlan-crosssubnet" && self.same_subnet(i, n) {
                for b in theirs {
                    want.routes
                        .insert(direct_route(b, self.host(n).addr(), self.host(i).iface()));
                }
                continue;
            }
            let Some(vip) = theirs
                .iter()
                .map(|c| cidr_base(c))
                .min_by_key(|a| u32::from(*a))
            else {
                continue;
            };
            let Some(mac) = link_details(self.host(n).ns(), VXLAN_DEV)
                .and_then(|l| l["address"].as_str().map(str::to_owned))
            else {
                continue;
            };
            want.fdb.insert(fdb_entry(&mac, self.host(n).addr()));
            want.neigh.insert(neigh_entry(vip, &mac));
            for b in theirs {
                want.routes.insert(vxlan_route(b, vip));
            }
        }
        want
    }

    /// Differences between host `i`'s overlay and [`RoutedCluster::expected_overlay`]; empty
    /// if it matches. Blackholes are accepted for host `i`'s own blocks only; in
    /// `vxlan-crosssubnet`, extra fdb/neigh entries are accepted if they are the correct
    /// entries of a same-subnet node.
    pub fn overlay_diff(&self, i: usize, nodes: &[usize], mode: &str) -> Vec<String> {
        let want = self.expected_overlay(i, nodes, mode);
        let have = self.overlay(i);
        let own: BTreeSet<String> = self
            .blocks_of(i, &self.node(i))
            .into_iter()
            .map(|b| format!("blackhole {b}"))
            .collect();
        // Correct entries for same-subnet nodes (tolerated in vxlan-crosssubnet).
        let mut optional = Overlay::default();
        if mode == "vxlan-crosssubnet" {
            for &n in nodes.iter().filter(|&&n| n != i && self.same_subnet(i, n)) {
                if let (Some(v), Some(vip)) = (
                    link_details(self.host(n).ns(), VXLAN_DEV),
                    self.expected_vtep_ip(i, n),
                ) {
                    let mac = v["address"].as_str().unwrap_or_default().to_owned();
                    optional.fdb.insert(fdb_entry(&mac, self.host(n).addr()));
                    optional.neigh.insert(neigh_entry(vip, &mac));
                }
            }
        }
        let mut diff = Vec::new();
        let mut cmp =
            |what: &str, w: &BTreeSet<String>, h: &BTreeSet<String>, ok: &BTreeSet<String>| {
                let missing: Vec<&String> = w.difference(h).collect();
                let extra: Vec<&String> = h.difference(w).filter(|e| !ok.contains(*e)).collect();
                if !missing.is_empty() {
                    diff.push(format!("{what} missing: {missing:?}"));
                }
                if !extra.is_empty() {
                    diff.push(format!("{what} extra: {extra:?}"));
                }
            };
        cmp("fdb", &want.fdb, &have.fdb, &optional.fdb);
        cmp("neigh", &want.neigh, &have.neigh, &optional.neigh);
        cmp("routes", &want.routes, &have.routes, &own);
        diff
    }

    /// Waits until every host in `hosts` matches [`RoutedCluster::overlay_diff`] over `nodes`;
    /// panics after `timeout` with the differences and the agents' logs.
    pub fn wait_overlay(&self, hosts: &[usize], nodes: &[usize], mode: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for &h in hosts {
            loop {
                let diff = self.overlay_diff(h, nodes, mode);
                if diff.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{}: overlay ({mode}) did not converge within {timeout:?}:\n  {}\n\
                         have: {:#?}\nwant: {:#?}\n{}",
                        self.node(h),
                        diff.join("\n  "),
                        self.overlay(h),
                        self.expected_overlay(h, nodes, mode),
                        self.agent_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until `reef.vxlan` exists on each of `hosts`; panics after `timeout`.
    pub fn wait_vxlan_dev(&self, hosts: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for &h in hosts {
            while link_details(self.host(h).ns(), VXLAN_DEV).is_none() {
                if Instant::now() >= deadline {
                    panic!(
                        "{}: no {VXLAN_DEV} device {timeout:?} after start\n{}",
                        self.node(h),
                        self.agent_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A neighbour or fdb notification seen by a [`NeighMonitor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEvent {
    pub at: Instant,
    /// RTM_NEWNEIGH (true) or RTM_DELNEIGH (false).
    pub new: bool,
    /// AF_INET (neighbour), AF_BRIDGE (fdb entry), ...
    pub family: u8,
    pub ifindex: u32,
    pub state: u16,
    /// NDA_DST: the neighbour's address, or an fdb entry's remote.
    pub dst: Option<std::net::IpAddr>,
    /// NDA_LLADDR, `aa:bb:..`.
    pub lladdr: Option<String>,
}

impl std::fmt::Display for NeighEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} if{} {}{} state {:#x}",
            if self.new { "NEW" } else { "DEL" },
            match self.family as i32 {
                libc::AF_INET => "inet",
                libc::AF_INET6 => "inet6",
                libc::AF_BRIDGE => "fdb",
                _ => "?",
            },
            self.ifindex,
            self.dst.map(|d| format!("{d} ")).unwrap_or_default(),
            self.lladdr.as_deref().unwrap_or("-"),
            self.state
        )
    }
}

fn parse_neighs(buf: &[u8], at: Instant, out: &mut Vec<NeighEvent>) {
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
        if len < 16 || off + len > buf.len() {
            break;
        }
        let msg = &buf[off + 16..off + len];
        if (ty == libc::RTM_NEWNEIGH || ty == libc::RTM_DELNEIGH) && msg.len() >= 12 {
            let family = msg[0];
            let ifindex = u32::from_ne_bytes(msg[4..8].try_into().unwrap_or_default());
            let state = u16::from_ne_bytes([msg[8], msg[9]]);
            let (mut dst, mut lladdr) = (None, None);
            let mut a = 12usize;
            while a + 4 <= msg.len() {
                let alen = u16::from_ne_bytes([msg[a], msg[a + 1]]) as usize;
                let aty = u16::from_ne_bytes([msg[a + 2], msg[a + 3]]);
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                let data = &msg[a + 4..a + alen];
                match (aty, data.len()) {
                    (1, 4) => dst = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]).into()),
                    (1, 16) => {
                        let b: [u8; 16] = data.try_into().unwrap_or_default();
                        dst = Some(std::net::Ipv6Addr::from(b).into());
                    }
                    (2, 6) => {
                        lladdr = Some(
                            data.iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<Vec<_>>()
                                .join(":"),
                        )
                    }
                    _ => {}
                }
                a += (alen + 3) & !3;
            }
            out.push(NeighEvent {
                at,
                new: ty == libc::RTM_NEWNEIGH,
                family,
                ifindex,
                state,
                dst,
                lladdr,
            });
        }
        off += (len + 3) & !3;
    }
}

/// Listens to one namespace's neighbour notifications (RTMGRP_NEIGH: ARP/ND entries and the
/// fdb entries of bridges and VXLAN devices) on its own thread and records every event.
/// Stops on drop.
pub struct NeighMonitor {
    events: Arc<Mutex<Vec<NeighEvent>>>,
    overflow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn netlink_socket_groups(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let size: libc::c_int = 8 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = groups;
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

impl NeighMonitor {
    /// Subscribed when this returns.
    pub fn start(ns: &Netns) -> NeighMonitor {
        let file = ns
            .open()
            .unwrap_or_else(|e| panic!("open netns {}: {e}", ns.name()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let overflow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (ev, ov, st) = (
            Arc::clone(&events),
            Arc::clone(&overflow),
            Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            let fd = match setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|_| netlink_socket_groups(libc::RTMGRP_NEIGH as u32))
            {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 1 << 16];
            let mut batch = Vec::new();
            while !st.load(Ordering::Relaxed) {
                // SAFETY: reads into a buffer we own, on a descriptor we own.
                let r = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                let at = Instant::now();
                if r < 0 {
                    if io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                        ov.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                batch.clear();
                parse_neighs(&buf[..r as usize], at, &mut batch);
                if !batch.is_empty() {
                    ev.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(batch.drain(..));
                }
            }
        });
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("neighbour monitor in {}: {e}", ns.name()),
            Err(_) => panic!("neighbour monitor thread in {} died", ns.name()),
        }
        NeighMonitor {
            events,
            overflow,
            stop,
            thread: Some(thread),
        }
    }

    pub fn events(&self) -> Vec<NeighEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Relaxed)
    }
}

impl Drop for NeighMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The ifindex of `dev` inside `ns`.
pub fn ifindex(ns: &Netns, dev: &str) -> u32 {
    link_details(ns, dev)
        .and_then(|l| l["ifindex"].as_u64())
        .unwrap_or_else(|| panic!("no device {dev} in {}", ns.name())) as u32
}
