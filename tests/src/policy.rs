//! The network policy world of `policy_cluster.rs`: a [`RoutedCluster`] of two hosts with
//! agents, namespaces `x`, `y`, `z` (Namespace manifests labelled `ns=<name>`) × pods `a`,
//! `b`, `c` (labelled `pod=<name>`) spread over both hosts, each pod running one server
//! process that answers TCP 80, TCP 81 and UDP 80 with its own name, the port and the client
//! address it saw.
//!
//! - [`Model`] is the test's own ORACLE: it computes the verdict of every pair and port from
//!   the manifests the test applied (kept as the `serde_json` values that were rendered into
//!   the YAML given to `reefctl apply -f -`) and from the namespace and pod labels. It is
//!   written here, from the Kubernetes NetworkPolicy v1 semantics, independently of the
//!   `reef-policy` crate the agent and reefctl use, and it panics on anything it does not
//!   model rather than guess.
//! - The probe engine checks every ordered pair (source ≠ destination) on the three ports at
//!   once, one short-lived thread per probe that entered the source pod's namespace
//!   ([`PolicyWorld::observe`]): a full matrix costs one probe timeout, not minutes.
//! - [`PolicyWorld::converge`] polls with overlapping rounds until the observed matrix equals
//!   the oracle's; on failure it renders both matrices per port (rows = sources, columns =
//!   destinations) and lists every differing cell.
//! - Also: a new pod watched from its first millisecond ([`PolicyWorld::add_pod_watched`]),
//!   spoofed sources ([`PolicyWorld::spoof_check`]) and `reefctl trace` against the oracle
//!   ([`PolicyWorld::trace_all`]).
//!
//! Everything (agents, servers, pods, hosts, etcd) is owned by the world and removed on drop,
//! also when a test panics; only processes started here are killed, by their own PID.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

use crate::agent::{reefctl_with_stdin, CALL_TIMEOUT};
use crate::routed::{Plugin, RoutedCluster, IFNAME};
use crate::traffic::in_netns;
use crate::{output_with_timeout, tempdir, ChildGuard, Netns, TempDir};

/// The label every namespace carries (Kubernetes sets it; so does reefctl).
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The world's namespaces, each labelled `ns=<name>`.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of every namespace, each labelled `pod=<name>`.
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
/// How long a probe waits before it calls a destination dropped.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The convergence target after an apply is 1 s; the matrix may take this long.
pub const CONVERGE: Duration = Duration::from_secs(2);
/// A new round of probes starts this often while converging (rounds overlap).
const ROUND_EVERY: Duration = Duration::from_millis(200);
/// At most this many rounds in flight at once.
const MAX_ROUNDS: usize = 5;
/// First convergence after the world is built (routes between hosts, servers starting).
const SETUP_CONVERGE: Duration = Duration::from_secs(20);
/// The UDP port of [`PolicyWorld::spoof_check`]'s receivers.
const SPOOF_PORT: u16 = 9999;

// ---------------------------------------------------------------------------------------
// Ports

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The NetworkPolicy spelling: `TCP`, `UDP`, `SCTP`.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    fn parse(s: &str) -> Proto {
        match s {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            "SCTP" => Proto::Sctp,
            other => panic!("oracle: unknown protocol {other:?}"),
        }
    }
}

/// A probed destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub proto: Proto,
    pub port: u16,
}

pub const TCP80: Port = Port {
    proto: Proto::Tcp,
    port: 80,
};
pub const TCP81: Port = Port {
    proto: Proto::Tcp,
    port: 81,
};
pub const UDP80: Port = Port {
    proto: Proto::Udp,
    port: 80,
};
/// What every server answers and every matrix probes.
pub const PORTS: [Port; 3] = [TCP80, TCP81, UDP80];

impl Port {
    /// `reefctl trace`'s spelling: `80/tcp`.
    pub fn trace_arg(&self) -> String {
        format!("{}/{}", self.port, self.proto.name().to_lowercase())
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto.name(), self.port)
    }
}

// ---------------------------------------------------------------------------------------
// Manifests

/// A `v1 Namespace` manifest with `labels` (the name label is implied).
pub fn namespace_manifest(name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    })
}

/// A `networking.k8s.io/v1 NetworkPolicy` manifest `namespace/name` with `spec`.
pub fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// `docs` as one YAML stream (`---` between documents), block style, every string quoted.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| {
            let mut s = String::new();
            yaml_block(&mut s, d, 0);
            s
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn yaml_key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
    if plain {
        k.to_owned()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn yaml_block(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                if is_block(val) {
                    let _ = writeln!(out, "{pad}{}:", yaml_key(k));
                    yaml_block(out, val, indent + 2);
                } else {
                    let _ = writeln!(out, "{pad}{}: {}", yaml_key(k), yaml_scalar(val));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match item {
                    Value::Object(_) if is_block(item) => {
                        let mut inner = String::new();
                        yaml_block(&mut inner, item, indent + 2);
                        let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
                    }
                    Value::Array(_) if is_block(item) => {
                        let _ = writeln!(out, "{pad}-");
                        yaml_block(out, item, indent + 2);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", yaml_scalar(item));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", yaml_scalar(other));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The oracle

/// One pod as the oracle sees it.
#[derive(Debug, Clone)]
pub struct PodModel {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// Index of its host in the cluster.
    pub host: usize,
}

impl PodModel {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// The far end of a flow as seen from the pod being judged.
#[derive(Debug, Clone, Copy)]
pub struct Remote<'a> {
    pub ip: Ipv4Addr,
    pub pod: Option<&'a PodModel>,
}

/// Everything the oracle judges from: namespace labels, pods and the applied policies
/// (`namespace/name` → manifest).
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: Vec<PodModel>,
    pub policies: BTreeMap<String, Value>,
}

fn str_map(v: Option<&Value>, what: &str) -> BTreeMap<String, String> {
    match v {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("oracle: {what}: {k} is not a string: {v}"));
                (k.clone(), v.to_owned())
            })
            .collect(),
        Some(other) => panic!("oracle: {what} is not a map: {other}"),
    }
}

fn array<'a>(v: Option<&'a Value>, what: &str) -> &'a [Value] {
    match v {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(other) => panic!("oracle: {what} is not a list: {other}"),
    }
}

fn doc_key(doc: &Value) -> (String, String) {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("oracle: document without metadata.name: {doc}"))
        .to_owned();
    match kind.as_str() {
        "Namespace" => (kind, name),
        "NetworkPolicy" => {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            (kind, format!("{ns}/{name}"))
        }
        other => panic!("oracle: kind {other:?} is not modelled: {doc}"),
    }
}

/// A label selector (`matchLabels` AND every `matchExpressions` entry) against `labels`.
pub fn selector_matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    let obj = sel
        .as_object()
        .unwrap_or_else(|| panic!("oracle: selector is not a map: {sel}"));
    for k in obj.keys() {
        assert!(
            k == "matchLabels" || k == "matchExpressions",
            "oracle: selector field {k:?} is not modelled: {sel}"
        );
    }
    let want = str_map(obj.get("matchLabels"), "matchLabels");
    if !want.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    array(obj.get("matchExpressions"), "matchExpressions")
        .iter()
        .all(|e| {
            let key = e["key"]
                .as_str()
                .unwrap_or_else(|| panic!("oracle: expression without key: {e}"));
            let values: Vec<&str> = array(e.get("values"), "values")
                .iter()
                .map(|v| v.as_str().unwrap_or_default())
                .collect();
            let have = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap_or_default() {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => !have.is_some_and(|h| values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                other => panic!("oracle: operator {other:?} is not modelled: {e}"),
            }
        })
}

fn parse_cidr(s: &str) -> (Ipv4Addr, u8) {
    let (a, p) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("oracle: {s:?} is not a CIDR"));
    let a: Ipv4Addr = a
        .parse()
        .unwrap_or_else(|e| panic!("oracle: {s:?} is not an IPv4 CIDR: {e}"));
    let p: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .unwrap_or_else(|| panic!("oracle: bad prefix in {s:?}"));
    (a, p)
}

/// Whether `ip` is inside `cidr` (IPv4 only).
pub fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let (net, prefix) = parse_cidr(cidr);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(net) & mask == u32::from(ip) & mask
}

/// `ip`'s enclosing `/prefix` network, as a CIDR string.
pub fn network_of(ip: Ipv4Addr, prefix: u8) -> String {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    format!("{}/{prefix}", Ipv4Addr::from(u32::from(ip) & mask))
}

impl Model {
    /// The world's model with made-up addresses, for checking cases without a cluster: the
    /// namespaces and pods as [`PolicyWorld`] lays them out (pod `k` on host `k % 2`), host
    /// 0's pods in 10.66.0.0/26 and host 1's in 10.66.0.64/26.
    pub fn sample() -> Model {
        let mut m = Model::default();
        let mut k = 0u8;
        for ns in NAMESPACES {
            m.record(&namespace_manifest(ns, &[("ns", ns)]));
            for p in POD_NAMES {
                let host = usize::from(k % 2);
                m.pods.push(PodModel {
                    namespace: ns.to_owned(),
                    name: p.to_owned(),
                    labels: BTreeMap::from([("pod".to_owned(), p.to_owned())]),
                    ip: Ipv4Addr::new(10, 66, 0, 64 * (k % 2) + 2 + k / 2),
                    host,
                });
                k += 1;
            }
        }
        m
    }

    /// Every cell's expected verdict, in [`Model::pods`] order (self pairs left out).
    pub fn expected(&self) -> BTreeMap<(usize, usize, Port), bool> {
        let n = self.pods.len();
        let mut out = BTreeMap::new();
        for s in 0..n {
            for d in (0..n).filter(|&d| d != s) {
                for port in PORTS {
                    out.insert(
                        (s, d, port),
                        self.allowed(&self.pods[s], &self.pods[d], port),
                    );
                }
            }
        }
        out
    }

    /// Records an applied document (Namespace: its labels replace the old ones;
    /// NetworkPolicy: stored by `namespace/name`).
    pub fn record(&mut self, doc: &Value) {
        match doc_key(doc) {
            (k, name) if k == "Namespace" => {
                let labels = str_map(doc["metadata"].get("labels"), "metadata.labels");
                self.namespaces.insert(name, labels);
            }
            (_, key) => {
                self.policies.insert(key, doc.clone());
            }
        }
    }

    /// Forgets a deleted document.
    pub fn forget(&mut self, doc: &Value) {
        match doc_key(doc) {
            (k, name) if k == "Namespace" => {
                self.namespaces.remove(&name);
            }
            (_, key) => {
                self.policies.remove(&key);
            }
        }
    }

    /// A namespace's labels as selectors see them (the name label always set).
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(NAME_LABEL.to_owned(), ns.to_owned());
        l
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, id: &str) -> &PodModel {
        self.pods
            .iter()
            .find(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id} in the model"))
    }

    /// Index of pod `id` in [`Model::pods`].
    pub fn index(&self, id: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id} in the model"))
    }

    /// The expected verdict of a new connection from `src` to `dst` on `port`: `src`'s
    /// egress admits it and `dst`'s ingress admits it.
    pub fn allowed(&self, src: &PodModel, dst: &PodModel, port: Port) -> bool {
        self.egress_allows(
            src,
            Remote {
                ip: dst.ip,
                pod: Some(dst),
            },
            port,
        ) && self.ingress_allows(
            dst,
            Remote {
                ip: src.ip,
                pod: Some(src),
            },
            port,
        )
    }

    /// Whether `pod`'s ingress admits a connection from `remote` to `port`.
    pub fn ingress_allows(&self, pod: &PodModel, remote: Remote<'_>, port: Port) -> bool {
        self.admits(pod, Direction::Ingress, remote, port)
    }

    /// Whether `pod`'s egress admits a connection to `remote`'s `port`.
    pub fn egress_allows(&self, pod: &PodModel, remote: Remote<'_>, port: Port) -> bool {
        self.admits(pod, Direction::Egress, remote, port)
    }

    /// Policies of `pod`'s namespace that select it for `dir`; if none, not isolated
    /// (allowed). Otherwise allowed if a rule of any of them admits the flow.
    fn admits(&self, pod: &PodModel, dir: Direction, remote: Remote<'_>, port: Port) -> bool {
        let mut isolated = false;
        for doc in self.policies.values() {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            if ns != pod.namespace {
                continue;
            }
            let spec = &doc["spec"];
            let selector = spec
                .get("podSelector")
                .unwrap_or_else(|| panic!("oracle: policy without podSelector: {doc}"));
            if !selector_matches(selector, &pod.labels) {
                continue;
            }
            let (ingress, egress) = policy_types(spec);
            let (applies, rules_key, peers_key) = match dir {
                Direction::Ingress => (ingress, "ingress", "from"),
                Direction::Egress => (egress, "egress", "to"),
            };
            if !applies {
                continue;
            }
            isolated = true;
            for rule in array(spec.get(rules_key), rules_key) {
                if ports_admit(rule.get("ports"), port)
                    && self.peers_admit(ns, array(rule.get(peers_key), peers_key), remote)
                {
                    return true;
                }
            }
        }
        !isolated
    }

    /// An empty (or absent) peer list admits everyone; else any peer.
    fn peers_admit(&self, policy_ns: &str, peers: &[Value], remote: Remote<'_>) -> bool {
        peers.is_empty() || peers.iter().any(|p| self.peer_admits(policy_ns, p, remote))
    }

    fn peer_admits(&self, policy_ns: &str, peer: &Value, remote: Remote<'_>) -> bool {
        let obj = peer
            .as_object()
            .unwrap_or_else(|| panic!("oracle: peer is not a map: {peer}"));
        for k in obj.keys() {
            assert!(
                ["podSelector", "namespaceSelector", "ipBlock"].contains(&k.as_str()),
                "oracle: peer field {k:?} is not modelled: {peer}"
            );
        }
        assert!(!obj.is_empty(), "oracle: empty peer: {peer}");
        if let Some(block) = obj.get("ipBlock") {
            assert!(
                obj.len() == 1,
                "oracle: ipBlock with selectors is invalid: {peer}"
            );
            let cidr = block["cidr"]
                .as_str()
                .unwrap_or_else(|| panic!("oracle: ipBlock without cidr: {peer}"));
            return cidr_contains(cidr, remote.ip)
                && !array(block.get("except"), "except")
                    .iter()
                    .any(|e| cidr_contains(e.as_str().unwrap_or_default(), remote.ip));
        }
        // Selectors match pods only.
        let Some(pod) = remote.pod else {
            return false;
        };
        let ns_ok = match obj.get("namespaceSelector") {
            Some(sel) => selector_matches(sel, &self.namespace_labels(&pod.namespace)),
            None => pod.namespace == policy_ns,
        };
        let pod_ok = match obj.get("podSelector") {
            Some(sel) => selector_matches(sel, &pod.labels),
            None => true,
        };
        ns_ok && pod_ok
    }
}

/// (Ingress, Egress): `policyTypes` if given, else Ingress, plus Egress when the policy has
/// egress rules (the API server's defaulting).
fn policy_types(spec: &Value) -> (bool, bool) {
    let types = array(spec.get("policyTypes"), "policyTypes");
    if types.is_empty() {
        let egress = !array(spec.get("egress"), "egress").is_empty();
        return (true, egress);
    }
    let mut t = (false, false);
    for ty in types {
        match ty.as_str().unwrap_or_default() {
            "Ingress" => t.0 = true,
            "Egress" => t.1 = true,
            other => panic!("oracle: policy type {other:?}"),
        }
    }
    t
}

/// An empty (or absent) port list admits every port and protocol; else any entry: its
/// protocol (TCP by default) and its port, or `port..=endPort`, or every port.
fn ports_admit(ports: Option<&Value>, port: Port) -> bool {
    let ports = array(ports, "ports");
    ports.is_empty()
        || ports.iter().any(|p| {
            let proto = p
                .get("protocol")
                .and_then(Value::as_str)
                .map_or(Proto::Tcp, Proto::parse);
            if proto != port.proto {
                return false;
            }
            let Some(first) = p.get("port") else {
                assert!(p.get("endPort").is_none(), "oracle: endPort without port");
                return true;
            };
            let first = first
                .as_u64()
                .unwrap_or_else(|| panic!("oracle: named ports are not modelled: {p}"));
            let last = p.get("endPort").and_then(Value::as_u64).unwrap_or(first);
            (first..=last).contains(&u64::from(port.port))
        })
}

// ---------------------------------------------------------------------------------------
// Probes

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server's answer.
    Answer(String),
    /// TCP connected, but nothing was read before the timeout.
    Silent,
    /// TCP reset or ICMP port unreachable.
    Refused,
    /// Nothing came back in time (dropped).
    Timeout,
    /// ICMP host/network unreachable (or prohibited).
    Unreachable,
    /// Anything else.
    Failed(String),
}

impl Outcome {
    /// The destination's own stack answered (a connection accepted, reset or refused).
    pub fn reached(&self) -> bool {
        matches!(
            self,
            Outcome::Answer(_) | Outcome::Silent | Outcome::Refused
        )
    }

    /// One character for the matrix.
    pub fn symbol(&self) -> char {
        match self {
            Outcome::Answer(_) => '.',
            Outcome::Silent => 's',
            Outcome::Refused => 'R',
            Outcome::Timeout => 'X',
            Outcome::Unreachable => 'U',
            Outcome::Failed(_) => 'E',
        }
    }
}

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => Outcome::Unreachable,
            _ => Outcome::Failed(e.to_string()),
        },
    }
}

/// One probe from the calling thread's network namespace.
pub fn probe_here(dst: Ipv4Addr, port: Port, timeout: Duration) -> Outcome {
    let addr = SocketAddr::from((dst, port.port));
    let start = Instant::now();
    match port.proto {
        Proto::Tcp => match TcpStream::connect_timeout(&addr, timeout) {
            Err(e) => classify(&e),
            Ok(mut s) => {
                let left = timeout
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_millis(100));
                let _ = s.set_read_timeout(Some(left));
                let mut buf = Vec::new();
                match s.read_to_end(&mut buf) {
                    Ok(_) if !buf.is_empty() => {
                        Outcome::Answer(String::from_utf8_lossy(&buf).into_owned())
                    }
                    Err(_) if !buf.is_empty() => {
                        Outcome::Answer(String::from_utf8_lossy(&buf).into_owned())
                    }
                    _ => Outcome::Silent,
                }
            }
        },
        Proto::Udp => {
            let s = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
                Ok(s) => s,
                Err(e) => return Outcome::Failed(format!("bind: {e}")),
            };
            if let Err(e) = s.connect(addr) {
                return classify(&e);
            }
            // Three datagrams within the timeout, in case one is lost.
            let per = timeout / 3;
            let mut buf = [0u8; 512];
            for _ in 0..3 {
                if let Err(e) = s.send(b"?") {
                    return classify(&e);
                }
                let _ = s.set_read_timeout(Some(per));
                match s.recv(&mut buf) {
                    Ok(n) => return Outcome::Answer(String::from_utf8_lossy(&buf[..n]).into()),
                    Err(e) => match classify(&e) {
                        Outcome::Timeout => continue,
                        other => return other,
                    },
                }
            }
            Outcome::Timeout
        }
        Proto::Sctp => Outcome::Failed("SCTP is not probed".into()),
    }
}

/// Enters the network namespace of `netns` (on this thread only).
fn enter(netns: &File) -> io::Result<()> {
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// A probe from `netns` on a fresh thread.
pub fn spawn_probe(
    netns: Arc<File>,
    dst: Ipv4Addr,
    port: Port,
    timeout: Duration,
) -> JoinHandle<Outcome> {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || match enter(&netns) {
            Ok(()) => probe_here(dst, port, timeout),
            Err(e) => Outcome::Failed(format!("setns: {e}")),
        })
        .expect("spawn a probe thread")
}

/// One probe from inside `ns` (blocking).
pub fn probe(ns: &Netns, dst: Ipv4Addr, port: Port, timeout: Duration) -> Outcome {
    let file = Arc::new(ns.open().expect("open the netns"));
    spawn_probe(file, dst, port, timeout)
        .join()
        .unwrap_or_else(|_| Outcome::Failed("probe thread panicked".into()))
}

/// What the server of pod `id` answers a client at `client` on `port`.
pub fn answer_of(id: &str, port: Port, client: Ipv4Addr) -> String {
    format!(
        "{id} {} {} {client}",
        port.proto.name().to_lowercase(),
        port.port
    )
}

// ---------------------------------------------------------------------------------------
// Servers

/// `server.py NAME`: answers TCP 80, TCP 81 and UDP 80 with `NAME PROTO PORT CLIENT-ADDR`;
/// prints `ready` once every socket is bound.
pub const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def tcp_socket(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(512)
    return s
def tcp(s, port):
    while True:
        c, a = s.accept()
        try:
            c.sendall(("%s tcp %d %s" % (name, port, a[0])).encode())
        except OSError:
            pass
        finally:
            c.close()
def udp(s, port):
    while True:
        d, a = s.recvfrom(2048)
        try:
            s.sendto(("%s udp %d %s" % (name, port, a[0])).encode(), a)
        except OSError:
            pass
t80, t81 = tcp_socket(80), tcp_socket(81)
u80 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u80.bind(("0.0.0.0", 80))
threading.Thread(target=tcp, args=(t81, 81), daemon=True).start()
threading.Thread(target=udp, args=(u80, 80), daemon=True).start()
print("ready", flush=True)
tcp(t80, 80)
"#;

/// Writes [`SERVER`] into `dir`; returns its path.
pub fn write_server_script(dir: &Path) -> PathBuf {
    let path = dir.join("policy-server.py");
    std::fs::write(&path, SERVER).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Starts the server script in `ns` as `name` and waits (up to 10 s) for it to be listening.
pub fn start_server(ns: &Netns, name: &str, script: &Path) -> ChildGuard {
    let mut child = ChildGuard::from(
        ns.cmd("python3")
            .arg(script)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the server of {name}: {e}")),
    );
    let stdout = child.stdout.take().expect("server stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.trim() == "ready" => child,
        other => {
            let _ = child.kill_and_wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("server of {name} did not start ({other:?}): {err}")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Matrices

/// Observed outcomes: (source index, destination index, port) → outcome, indices into
/// [`Model::pods`].
pub type Observed = BTreeMap<(usize, usize, Port), Outcome>;

/// Whether an observation agrees with the oracle: allowed ⇔ the right server answered
/// (its name, the port, and the source's own address: no NAT between pods); blocked ⇔ no
/// answer (a drop, or a reject).
fn agrees(model: &Model, s: usize, d: usize, port: Port, seen: &Outcome) -> bool {
    let (src, dst) = (&model.pods[s], &model.pods[d]);
    if model.allowed(src, dst, port) {
        *seen == Outcome::Answer(answer_of(&dst.id(), port, src.ip))
    } else {
        !matches!(seen, Outcome::Answer(_) | Outcome::Silent)
    }
}

/// Renders a grid per port: expected (left) and observed (right), rows = sources, columns =
/// destinations; `cell(s, d, port)` gives (expected allowed, observed symbol, agrees).
pub fn render_grid(
    ids: &[String],
    title: &str,
    legend: &str,
    cell: impl Fn(usize, usize, Port) -> (bool, char, bool),
) -> String {
    let w = ids.iter().map(String::len).max().unwrap_or(3) + 1;
    let rw = w.max("src\\dst".len());
    let mut out = format!("{title}\n{legend}\n");
    for port in PORTS {
        let header: String = ids.iter().map(|id| format!("{id:^w$}")).collect();
        let _ = writeln!(
            out,
            "{:rw$} {:<width$}   observed",
            port.to_string(),
            "expected",
            width = header.len()
        );
        let _ = writeln!(out, "{:rw$} {header}   {header}", "src\\dst");
        for (s, sid) in ids.iter().enumerate() {
            let mut exp = String::new();
            let mut obs = String::new();
            for d in 0..ids.len() {
                if s == d {
                    exp.push_str(&format!("{:^w$}", "-"));
                    obs.push_str(&format!("{:^w$}", "-"));
                    continue;
                }
                let (allowed, sym, ok) = cell(s, d, port);
                let e = if allowed { "." } else { "X" };
                exp.push_str(&format!("{e:^w$}"));
                let o = if ok {
                    sym.to_string()
                } else {
                    format!("{sym}!")
                };
                obs.push_str(&format!("{o:^w$}"));
            }
            let _ = writeln!(out, "{sid:rw$} {exp}   {obs}");
        }
    }
    out
}

const LEGEND: &str = "legend: . answered  X timeout  R refused  U unreachable  s silent  \
                      E error  - self; `!` marks a cell that differs from the oracle";

/// The matrices and the list of cells where `observed` differs from the oracle.
pub fn render_matrix(model: &Model, observed: &Observed, title: &str) -> String {
    let ids: Vec<String> = model.pods.iter().map(PodModel::id).collect();
    let mut out = render_grid(&ids, title, LEGEND, |s, d, port| {
        let seen = &observed[&(s, d, port)];
        let allowed = model.allowed(&model.pods[s], &model.pods[d], port);
        (allowed, seen.symbol(), agrees(model, s, d, port, seen))
    });
    let bad = mismatches(model, observed);
    let _ = writeln!(out, "{} cells differ:", bad.len());
    for line in bad {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// One line per cell where `observed` differs from the oracle.
pub fn mismatches(model: &Model, observed: &Observed) -> Vec<String> {
    observed
        .iter()
        .filter(|((s, d, port), seen)| !agrees(model, *s, *d, *port, seen))
        .map(|((s, d, port), seen)| {
            let (src, dst) = (&model.pods[*s], &model.pods[*d]);
            let want = if model.allowed(src, dst, *port) {
                "allowed"
            } else {
                "blocked"
            };
            format!(
                "{} ({}, host {}) -> {} ({}, host {}) {port}: expected {want}, observed {seen:?}",
                src.id(),
                src.ip,
                src.host,
                dst.id(),
                dst.ip,
                dst.host
            )
        })
        .collect()
}

/// One round of probes in flight.
struct Round {
    started: Instant,
    probes: Vec<((usize, usize, Port), JoinHandle<Outcome>)>,
}

impl Round {
    fn done(&self) -> bool {
        self.probes.iter().all(|(_, h)| h.is_finished())
    }

    fn finish(self) -> Observed {
        self.probes
            .into_iter()
            .map(|(k, h)| {
                let o = h
                    .join()
                    .unwrap_or_else(|_| Outcome::Failed("probe thread panicked".into()));
                (k, o)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The world

/// A pod of the world: its index in the cluster's pods and its namespace file.
#[derive(Debug)]
struct WorldPod {
    index: usize,
    netns: Arc<File>,
}

/// The policy world (see the module documentation).
#[derive(Debug)]
pub struct PolicyWorld {
    // Field order is drop order: servers, namespace files, the cluster, the directory.
    servers: BTreeMap<String, ChildGuard>,
    pods: BTreeMap<String, WorldPod>,
    pub rc: RoutedCluster,
    pub model: Model,
    script: PathBuf,
    dir: TempDir,
    /// How long a probe waits before it calls a destination dropped.
    pub probe_timeout: Duration,
}

impl PolicyWorld {
    /// The world with reef-routed pods.
    pub fn routed() -> PolicyWorld {
        PolicyWorld::from_cluster(RoutedCluster::new(2))
    }

    /// The world with pods of `plugin` (e.g. `Plugin::Bridge("rbr-pol".into())`).
    pub fn with_plugin(plugin: Plugin) -> PolicyWorld {
        PolicyWorld::from_cluster(RoutedCluster::new(2).with_plugin(plugin))
    }

    /// The world on `rc` (two or more hosts, no agent started yet).
    pub fn from_cluster(rc: RoutedCluster) -> PolicyWorld {
        PolicyWorld::build(rc, true)
    }

    /// The world on `rc` without the Namespace manifests (the model then knows only the
    /// namespaces' name labels): for checking the harness itself on a cluster whose reefctl
    /// does not take them.
    pub fn unmanaged(rc: RoutedCluster) -> PolicyWorld {
        PolicyWorld::build(rc, false)
    }

    fn build(mut rc: RoutedCluster, manifests: bool) -> PolicyWorld {
        let hosts: Vec<usize> = (0..rc.cluster.hosts.len()).collect();
        rc.start_agents(&hosts, &[]);
        let dir = tempdir();
        let script = write_server_script(dir.path());
        let mut w = PolicyWorld {
            servers: BTreeMap::new(),
            pods: BTreeMap::new(),
            rc,
            model: Model::default(),
            script,
            dir,
            probe_timeout: PROBE_TIMEOUT,
        };
        let namespaces: Vec<Value> = NAMESPACES
            .iter()
            .map(|n| namespace_manifest(n, &[("ns", n)]))
            .collect();
        if manifests {
            w.apply(&namespaces);
        }
        let mut i = 0;
        for ns in NAMESPACES {
            for pod in POD_NAMES {
                w.add_pod(hosts[i % hosts.len()], ns, pod, json!({ "pod": pod }));
                i += 1;
            }
        }
        let since = Instant::now();
        if let Err(e) = w.converge(
            "setup: no policy, everything reachable",
            since,
            SETUP_CONVERGE,
        ) {
            panic!("{e}");
        }
        w
    }

    /// The scratch directory (for extra scripts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster pod behind `id`.
    pub fn pod(&self, id: &str) -> &crate::routed::Pod {
        let p = self
            .pods
            .get(id)
            .unwrap_or_else(|| panic!("no pod {id} in the world"));
        &self.rc.pods[p.index]
    }

    /// Adds pod `ns/name` with `labels` on `host` through libcni, starts its server and adds
    /// it to the model; returns its id.
    pub fn add_pod(&mut self, host: usize, ns: &str, name: &str, labels: Value) -> String {
        let id = format!("{ns}/{name}");
        let index = self.rc.add_labelled_pod(host, &id, &labels);
        self.register(host, &id, index, &labels);
        let server = start_server(&self.rc.pods[index].ns, &id, &self.script);
        self.servers.insert(id.clone(), server);
        id
    }

    fn register(&mut self, host: usize, id: &str, index: usize, labels: &Value) {
        let (ns, name) = id.split_once('/').expect("ns/name");
        let netns = Arc::new(self.rc.pods[index].ns.open().expect("open the pod netns"));
        self.pods.insert(id.to_owned(), WorldPod { index, netns });
        self.model.pods.retain(|p| p.id() != id);
        self.model.pods.push(PodModel {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            labels: str_map(Some(labels), "pod labels"),
            ip: self.rc.pods[index].ip,
            host,
        });
    }

    /// Deletes pod `id` through libcni (its server first) and drops it from the model.
    pub fn remove_pod(&mut self, id: &str) {
        drop(self.servers.remove(id));
        let p = self
            .pods
            .remove(id)
            .unwrap_or_else(|| panic!("no pod {id} in the world"));
        self.rc.del_pod(p.index);
        self.model.pods.retain(|m| m.id() != id);
    }

    /// Relabels pod `id` the only way a CNI pod can be: DEL, then ADD again on the same host
    /// with `labels` (it may get another address). Returns when the new server listens.
    pub fn relabel_pod(&mut self, id: &str, labels: Value) -> Instant {
        let host = self.model.pod(id).host;
        let (ns, name) = id.split_once('/').expect("ns/name");
        let (ns, name) = (ns.to_owned(), name.to_owned());
        self.remove_pod(id);
        self.add_pod(host, &ns, &name, labels);
        Instant::now()
    }

    /// `reefctl ARGS` (from host 0) with `input` on stdin; panics unless it succeeds.
    fn reefctl_stdin(&self, args: &[&str], input: &str) {
        let out = reefctl_with_stdin(self.rc.host(0), self.rc.cluster.etcd(), args, input);
        assert!(
            out.status.success(),
            "reefctl {args:?} failed ({})\nstdout: {}\nstderr: {}\ninput:\n{input}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `reefctl apply -f -` of `docs` (one YAML stream); the model records them. Returns the
    /// instant the command returned.
    pub fn apply(&mut self, docs: &[Value]) -> Instant {
        self.reefctl_stdin(&["apply", "-f", "-"], &to_yaml(docs));
        for d in docs {
            self.model.record(d);
        }
        Instant::now()
    }

    /// `reefctl delete -f -` of `docs`; the model forgets them.
    pub fn delete(&mut self, docs: &[Value]) -> Instant {
        self.reefctl_stdin(&["delete", "-f", "-"], &to_yaml(docs));
        for d in docs {
            self.model.forget(d);
        }
        Instant::now()
    }

    /// Deletes every policy the model holds (nothing if none).
    pub fn delete_all_policies(&mut self) -> Instant {
        let docs: Vec<Value> = self.model.policies.values().cloned().collect();
        if docs.is_empty() {
            return Instant::now();
        }
        self.delete(&docs)
    }

    /// `reefctl namespace label NS CHANGE...` (`k=v` sets, `k-` removes); the model follows.
    pub fn label_namespace(&mut self, ns: &str, changes: &[&str]) -> Instant {
        let mut args = vec!["namespace", "label", ns];
        args.extend_from_slice(changes);
        self.rc.reefctl_ok(0, &args);
        let labels = self.model.namespaces.entry(ns.to_owned()).or_default();
        for c in changes {
            if let Some((k, v)) = c.split_once('=') {
                labels.insert(k.to_owned(), v.to_owned());
            } else if let Some(k) = c.strip_suffix('-') {
                labels.remove(k);
            } else {
                panic!("label change {c:?} is neither k=v nor k-");
            }
        }
        Instant::now()
    }

    fn start_round(&self) -> Round {
        let n = self.model.pods.len();
        let files: Vec<Arc<File>> = self
            .model
            .pods
            .iter()
            .map(|p| Arc::clone(&self.pods[&p.id()].netns))
            .collect();
        let started = Instant::now();
        let mut probes = Vec::with_capacity(n * n * PORTS.len());
        for (s, file) in files.iter().enumerate() {
            for d in (0..n).filter(|&d| d != s) {
                for port in PORTS {
                    let h = spawn_probe(
                        Arc::clone(file),
                        self.model.pods[d].ip,
                        port,
                        self.probe_timeout,
                    );
                    probes.push(((s, d, port), h));
                }
            }
        }
        Round { started, probes }
    }

    /// One full matrix: every ordered pair of distinct pods on every port, all at once.
    pub fn observe(&self) -> Observed {
        self.start_round().finish()
    }

    /// Polls until the observed matrix equals the oracle's: a round of probes starts every
    /// 200 ms (rounds overlap) until one that started no later than `since + within`
    /// agrees. Returns the time from `since` to the start of the first agreeing round; on
    /// failure, the last round's matrices and the agents' log tails.
    pub fn converge(
        &self,
        what: &str,
        since: Instant,
        within: Duration,
    ) -> Result<Duration, String> {
        let deadline = since + within;
        let mut rounds: VecDeque<Round> = VecDeque::new();
        let mut last: Option<Observed> = None;
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next && now <= deadline && rounds.len() < MAX_ROUNDS {
                rounds.push_back(self.start_round());
                next = now + ROUND_EVERY;
            }
            if rounds.front().is_some_and(Round::done) {
                let round = rounds.pop_front().expect("a round");
                let started = round.started;
                let seen = round.finish();
                if mismatches(&self.model, &seen).is_empty() {
                    // Later rounds are left to finish on their own.
                    return Ok(started.saturating_duration_since(since));
                }
                last = Some(seen);
            }
            if rounds.is_empty() && Instant::now() > deadline {
                let seen = last.unwrap_or_else(|| self.observe());
                return Err(format!(
                    "{what}: the matrix did not match the oracle within {within:?}\n{}\n\
                     policies:\n{}\nnamespaces: {:?}\n{}",
                    render_matrix(&self.model, &seen, what),
                    to_yaml(&self.model.policies.values().cloned().collect::<Vec<_>>()),
                    self.model.namespaces,
                    self.log_tails(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// [`PolicyWorld::converge`] that panics on failure.
    pub fn assert_converges(&self, what: &str, since: Instant, within: Duration) -> Duration {
        self.converge(what, since, within)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A probe of pod `id` from its own host's namespace (never judged by policy).
    pub fn from_own_host(&self, id: &str, port: Port) -> Outcome {
        let pod = self.pod(id);
        probe(
            self.rc.host(pod.host).ns(),
            pod.ip,
            port,
            self.probe_timeout,
        )
    }

    /// The last `n` lines of every agent's log.
    pub fn log_tails(&self, n: usize) -> String {
        self.rc
            .agents
            .iter()
            .flatten()
            .map(|a| {
                let log = a.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(n)..].join("\n");
                format!("--- reef-agent {} (last {n} lines) ---\n{tail}", a.node)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Adds pod `ns/name` with `labels` on `host` while every pod of `watchers` probes it
    /// (TCP 80, TCP 81, UDP 80; two staggered probers each) from the moment the ADD returns
    /// until `watch` has passed; its server starts right after the ADD. Returns the pod's id
    /// and, per watcher, every probe outcome that reached the new pod (answered or refused),
    /// with its time after the ADD, and the number of probes made.
    pub fn add_pod_watched(
        &mut self,
        host: usize,
        ns: &str,
        name: &str,
        labels: Value,
        watchers: &[&str],
        watch: Duration,
    ) -> Watched {
        // Probers wait, inside their source namespaces, for the address and the instant.
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        let timeout = Duration::from_millis(150);
        for w in watchers {
            for port in PORTS {
                for k in 0..2u32 {
                    let (tx, rx) = mpsc::channel::<(Ipv4Addr, Instant)>();
                    senders.push(tx);
                    let netns = Arc::clone(&self.pods[*w].netns);
                    let who = (*w).to_owned();
                    let h = std::thread::spawn(move || {
                        let mut hits = Vec::new();
                        let mut tries = 0usize;
                        if let Err(e) = enter(&netns) {
                            let outcome = Outcome::Failed(format!("setns: {e}"));
                            let hit = Hit {
                                from: who,
                                port,
                                at: Duration::ZERO,
                                outcome,
                            };
                            return (vec![hit], 0);
                        }
                        let Ok((ip, t0)) = rx.recv() else {
                            return (hits, 0);
                        };
                        std::thread::sleep(timeout / 2 * k);
                        while t0.elapsed() < watch {
                            let at = t0.elapsed();
                            let seen = probe_here(ip, port, timeout);
                            tries += 1;
                            if seen.reached() {
                                hits.push(Hit {
                                    from: who.clone(),
                                    port,
                                    at,
                                    outcome: seen,
                                });
                            }
                            if t0.elapsed() < at + Duration::from_millis(5) {
                                // A quick answer or failure: do not spin.
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                        (hits, tries)
                    });
                    handles.push(h);
                }
            }
        }
        let id = format!("{ns}/{name}");
        let index = self.rc.add_labelled_pod(host, &id, &labels);
        let t0 = Instant::now();
        let ip = self.rc.pods[index].ip;
        for tx in &senders {
            let _ = tx.send((ip, t0));
        }
        let server = start_server(&self.rc.pods[index].ns, &id, &self.script);
        self.servers.insert(id.clone(), server);
        self.register(host, &id, index, &labels);
        let mut hits = Vec::new();
        let mut probes = 0;
        for h in handles {
            let (hh, t) = h.join().expect("prober thread");
            hits.extend(hh);
            probes += t;
        }
        hits.sort_by_key(|h| h.at);
        Watched { id, hits, probes }
    }

    /// Sends UDP datagrams from pod `src` to every pod of `dsts` (port 9999, receivers run
    /// by the test), from its real address and from each of `spoofed` (added to its
    /// interface first, removed after). Returns, per destination, the source addresses that
    /// arrived.
    pub fn spoof_check(
        &self,
        src: &str,
        dsts: &[&str],
        spoofed: &[Ipv4Addr],
    ) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
        let src_pod = self.pod(src);
        for a in spoofed {
            src_pod
                .ns
                .sh_ok(&format!("ip addr add {a}/32 dev {IFNAME}"));
        }
        let receivers: Vec<(String, UdpSocket)> = dsts
            .iter()
            .map(|d| {
                let sock = in_netns(&self.pod(d).ns, || {
                    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, SPOOF_PORT))?;
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(s)
                })
                .unwrap_or_else(|e| panic!("bind UDP {SPOOF_PORT} in {d}: {e}"));
                ((*d).to_owned(), sock)
            })
            .collect();
        let stop = Arc::new(Mutex::new(None::<Instant>));
        let listeners: Vec<_> = receivers
            .into_iter()
            .map(|(d, sock)| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut seen = BTreeSet::new();
                    let mut buf = [0u8; 256];
                    loop {
                        if let Ok((_, SocketAddr::V4(from))) = sock.recv_from(&mut buf) {
                            seen.insert(*from.ip());
                        }
                        let until = *stop.lock().unwrap_or_else(|e| e.into_inner());
                        if until.is_some_and(|u| Instant::now() > u) {
                            return (d, seen);
                        }
                    }
                })
            })
            .collect();
        let targets: Vec<Ipv4Addr> = dsts.iter().map(|d| self.pod(d).ip).collect();
        let mut sources = vec![src_pod.ip];
        sources.extend_from_slice(spoofed);
        let sent = in_netns(&src_pod.ns, move || {
            let socks: Vec<UdpSocket> = sources
                .iter()
                .map(|a| UdpSocket::bind((*a, 0)))
                .collect::<io::Result<_>>()?;
            for _ in 0..5 {
                for s in &socks {
                    for t in &targets {
                        let _ = s.send_to(b"spoof-check", (*t, SPOOF_PORT));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        *stop.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + Duration::from_millis(300));
        let got = listeners
            .into_iter()
            .map(|h| h.join().expect("receiver thread"))
            .collect();
        for a in spoofed {
            src_pod
                .ns
                .sh_ok(&format!("ip addr del {a}/32 dev {IFNAME}"));
        }
        sent.unwrap_or_else(|e| panic!("send from {src}: {e}"));
        got
    }

    /// `reefctl trace SRC DST PORT/PROTO --output json` for every ordered pair of distinct
    /// pods and every port (`parallel` at a time, from host 0), against the oracle: exit
    /// status 0 and `"allowed": true` when allowed, 1 and `false` when not. On failure, the
    /// matrices (observed = what trace said) and the first failures in full.
    pub fn trace_all(&self, parallel: usize) -> Result<(), String> {
        let ids: Vec<String> = self.model.pods.iter().map(PodModel::id).collect();
        let n = ids.len();
        let mut work = Vec::new();
        for s in 0..n {
            for d in (0..n).filter(|&d| d != s) {
                for port in PORTS {
                    work.push((s, d, port));
                }
            }
        }
        let results = self.traces(
            &work
                .iter()
                .map(|&(s, d, port)| (ids[s].clone(), ids[d].clone(), port))
                .collect::<Vec<_>>(),
            parallel,
        );
        let mut cells: BTreeMap<(usize, usize, Port), (char, bool)> = BTreeMap::new();
        let mut failures = Vec::new();
        for (&(s, d, port), r) in work.iter().zip(&results) {
            let want = self
                .model
                .allowed(&self.model.pods[s], &self.model.pods[d], port);
            let (sym, ok) = match r {
                TraceResult::Verdict {
                    code: 0,
                    allowed: true,
                } => ('.', want),
                TraceResult::Verdict {
                    code: 1,
                    allowed: false,
                } => ('X', !want),
                _ => ('?', false),
            };
            if !ok {
                failures.push(format!(
                    "trace {} {} {}: expected {}, got {r:?}",
                    ids[s],
                    ids[d],
                    port.trace_arg(),
                    if want {
                        "allowed (exit 0)"
                    } else {
                        "dropped (exit 1)"
                    }
                ));
            }
            cells.insert((s, d, port), (sym, ok));
        }
        if failures.is_empty() {
            return Ok(());
        }
        let grid = render_grid(
            &ids,
            "reefctl trace vs the oracle",
            "legend: . exit 0 and allowed  X exit 1 and not allowed  ? anything else; `!` differs",
            |s, d, port| {
                let (sym, ok) = cells[&(s, d, port)];
                let want = self
                    .model
                    .allowed(&self.model.pods[s], &self.model.pods[d], port);
                (want, sym, ok)
            },
        );
        let shown: Vec<&String> = failures.iter().take(12).collect();
        Err(format!(
            "{grid}{} traces disagree; the first:\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }

    /// Runs `reefctl trace SRC DST PORT --output json` for each of `cases`, `parallel` at a
    /// time, from host 0; results in order.
    pub fn traces(&self, cases: &[(String, String, Port)], parallel: usize) -> Vec<TraceResult> {
        // Commands are built here (the world itself is not shared with the workers).
        let work: Mutex<VecDeque<(usize, std::process::Command)>> = Mutex::new(
            cases
                .iter()
                .enumerate()
                .map(|(i, (src, dst, port))| (i, self.trace_command(src, dst, &port.trace_arg())))
                .collect(),
        );
        let results: Mutex<Vec<Option<TraceResult>>> = Mutex::new(vec![None; cases.len()]);
        std::thread::scope(|scope| {
            for _ in 0..parallel.max(1) {
                scope.spawn(|| loop {
                    let next = work.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some((i, mut cmd)) = next else {
                        return;
                    };
                    let r = run_trace(&mut cmd);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .map(|r| r.unwrap_or(TraceResult::Broken("not run".into())))
            .collect()
    }

    /// `reefctl trace SRC DST PORT --output json` inside host 0, not started.
    fn trace_command(&self, src: &str, dst: &str, port: &str) -> std::process::Command {
        let args = ["trace", src, dst, port, "--output", "json"];
        crate::agent::reefctl_command(self.rc.host(0), self.rc.cluster.etcd(), &args)
    }

    /// One `reefctl trace SRC DST PORT --output json` (from host 0).
    pub fn trace(&self, src: &str, dst: &str, port: &str) -> TraceResult {
        run_trace(&mut self.trace_command(src, dst, port))
    }
}

fn run_trace(cmd: &mut std::process::Command) -> TraceResult {
    let out = match output_with_timeout(cmd, None, CALL_TIMEOUT) {
        Ok(o) => o,
        Err(e) => return TraceResult::Broken(format!("run: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    let v: Value = match serde_json::from_str(stdout.trim()) {
        Ok(v) => v,
        Err(e) => {
            return TraceResult::Broken(format!(
                "exit {code}, stdout is not JSON ({e}): {stdout:?}, stderr: {stderr:?}"
            ))
        }
    };
    match v.get("allowed").and_then(Value::as_bool) {
        Some(allowed) => TraceResult::Verdict { code, allowed },
        None => TraceResult::Broken(format!(
            "exit {code}, no boolean \"allowed\" in {v}, stderr: {stderr:?}"
        )),
    }
}

/// What [`PolicyWorld::add_pod_watched`] saw.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The new pod.
    pub id: String,
    /// Every probe that reached it (answered or refused), by time after its ADD returned; a
    /// prober that could not enter its namespace is reported here too (as `Failed`).
    pub hits: Vec<Hit>,
    /// How many probes ran.
    pub probes: usize,
}

/// One probe that reached a watched pod.
#[derive(Debug, Clone)]
pub struct Hit {
    pub from: String,
    pub port: Port,
    /// After the ADD returned.
    pub at: Duration,
    pub outcome: Outcome,
}

/// What one `reefctl trace --output json` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceResult {
    /// Its exit status and JSON `allowed`.
    Verdict { code: i32, allowed: bool },
    /// No usable answer.
    Broken(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> Model {
        Model::sample()
    }

    fn allowed(m: &Model, s: &str, d: &str, port: Port) -> bool {
        m.allowed(m.pod(s), m.pod(d), port)
    }

    #[test]
    fn no_policy_allows_everything() {
        let m = world();
        for s in &m.pods {
            for d in &m.pods {
                for port in PORTS {
                    assert!(m.allowed(s, d, port));
                }
            }
        }
    }

    #[test]
    fn deny_all_ingress_isolates_only_the_namespace() {
        let mut m = world();
        m.record(&policy("x", "deny", json!({"podSelector": {}})));
        assert!(!allowed(&m, "x/b", "x/a", TCP80));
        assert!(!allowed(&m, "y/a", "x/a", UDP80));
        assert!(allowed(&m, "x/a", "y/a", TCP80), "egress untouched");
        assert!(allowed(&m, "y/a", "z/a", TCP81));
    }

    #[test]
    fn peers_and_versus_or() {
        let mut m = world();
        m.record(&policy(
            "x",
            "and",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}
            ]}]}),
        ));
        m.record(&policy(
            "x",
            "or",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "c"}}}
            ]}]}),
        ));
        assert!(allowed(&m, "y/b", "x/a", TCP80));
        assert!(!allowed(&m, "y/a", "x/a", TCP80));
        assert!(!allowed(&m, "z/b", "x/a", TCP80));
        assert!(!allowed(&m, "x/b", "x/a", TCP80));
        assert!(allowed(&m, "y/a", "x/b", TCP80));
        assert!(allowed(&m, "x/c", "x/b", TCP80));
        assert!(
            !allowed(&m, "z/c", "x/b", TCP80),
            "podSelector alone: own namespace"
        );
        assert!(allowed(&m, "z/c", "x/c", TCP80), "x/c unselected");
    }

    #[test]
    fn ports_end_ports_protocols_and_ip_blocks() {
        let mut m = world();
        let xa = m.pod("x/a").ip;
        m.record(&policy(
            "y",
            "p",
            json!({"podSelector": {}, "ingress": [
                {"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]},
                {"from": [{"ipBlock": {"cidr": "10.66.0.0/24", "except": [format!("{xa}/32")]}}],
                 "ports": [{"protocol": "UDP"}]},
                {"ports": [{"protocol": "SCTP", "port": 80}]}
            ]}),
        ));
        assert!(allowed(&m, "x/a", "y/a", TCP80));
        assert!(allowed(&m, "x/a", "y/a", TCP81));
        assert!(!allowed(&m, "x/a", "y/a", UDP80), "excepted");
        assert!(allowed(&m, "x/b", "y/a", UDP80));
        assert!(cidr_contains("10.66.0.0/16", Ipv4Addr::new(10, 66, 3, 4)));
        assert!(!cidr_contains("10.66.0.0/24", Ipv4Addr::new(10, 66, 3, 4)));
        assert_eq!(
            network_of(Ipv4Addr::new(10, 66, 0, 77), 26),
            "10.66.0.64/26"
        );
    }

    #[test]
    fn egress_defaulting_and_expressions() {
        let mut m = world();
        // No policyTypes, egress rules present: Ingress and Egress.
        m.record(&policy(
            "z",
            "e",
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]},
                   "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [
                        {"key": "ns", "operator": "In", "values": ["x"]},
                        {"key": "missing", "operator": "DoesNotExist"}]}}]}]}),
        ));
        assert!(allowed(&m, "z/a", "x/b", TCP80));
        assert!(!allowed(&m, "z/a", "y/b", TCP80));
        assert!(
            !allowed(&m, "x/a", "z/a", TCP80),
            "ingress isolated, no rules"
        );
        assert!(allowed(&m, "x/a", "z/c", TCP80), "z/c unselected");
        assert!(allowed(&m, "z/c", "y/a", TCP80));
        // A namespace label matches once it is set.
        m.record(&policy(
            "x",
            "team",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}]}]}),
        ));
        assert!(!allowed(&m, "y/a", "x/a", TCP80));
        m.namespaces
            .get_mut("y")
            .expect("y")
            .insert("team".into(), "blue".into());
        assert!(allowed(&m, "y/a", "x/a", TCP80));
    }

    #[test]
    fn yaml_renders_nested_documents() {
        let doc = policy(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"port": 80}]}]}),
        );
        let y = to_yaml(&[namespace_manifest("x", &[("ns", "x")]), doc]);
        assert!(y.contains("---\n"), "{y}");
        assert!(y.contains("  podSelector: {}\n"), "{y}");
        assert!(
            y.contains("  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n              pod: \"a\"\n      ports:\n        - port: 80\n"),
            "{y}"
        );
    }

    #[test]
    fn the_grid_marks_mismatches() {
        let m = world();
        let mut seen = Observed::new();
        for s in 0..m.pods.len() {
            for d in (0..m.pods.len()).filter(|&d| d != s) {
                for port in PORTS {
                    let ans = answer_of(&m.pods[d].id(), port, m.pods[s].ip);
                    seen.insert((s, d, port), Outcome::Answer(ans));
                }
            }
        }
        assert!(mismatches(&m, &seen).is_empty());
        seen.insert((0, 1, TCP81), Outcome::Timeout);
        let text = render_matrix(&m, &seen, "t");
        assert_eq!(mismatches(&m, &seen).len(), 1, "{text}");
        assert!(text.contains("X!"), "{text}");
        assert!(
            text.contains("x/a (10.66.0.2, host 0) -> x/b (10.66.0.66, host 1)"),
            "{text}"
        );
    }
}
