//! `reefctl trace SRC DST [PORT/PROTO]`: the path one flow takes through the cluster as it
//! is now, and the verdict at each policy point.
//!
//! Pure: everything is computed from a [`ClusterState`] (one etcd read). The policy verdicts
//! are reef-policy's, the functions the agent renders into the data plane; the path follows
//! what the agent programs:
//!
//! - service VIPs (and node ports) are translated on the host the flow enters, to one of the
//!   service's endpoints on nodes whose agent is alive, at random: trace judges every
//!   endpoint, and the flow counts as allowed only if every endpoint allows it;
//! - between two nodes: `routed` goes via the destination node's underlay address, `vxlan`
//!   through `reef.vxlan` to its VTEP, `vxlan-crosssubnet` is routed within the underlay
//!   subnet and tunnelled across (the agent's `desired::vxlan`);
//! - egress is judged at the source pod, ingress at the destination pod (after translation:
//!   on the endpoint, as Kubernetes does); traffic between a pod and its own node is never
//!   judged, nor is a pod's traffic to itself.
//!
//! Policy is judged in the forward hook of the pod's own host, after DNAT (prerouting) and
//! before masquerade (postrouting): a masquerade (host processes' flows to a VIP, node ports
//! of Cluster policy, natOutgoing towards another node's address) changes the source only
//! for the host the flow goes on to, where ingress is judged with the rewritten address; an
//! egress to another node's node port is judged before that node translates it.

use crate::policies::{ClusterState, PodRef};
use reef_policy::{Pod, Remote, Verdict};
use reef_schema::policy::{L4Protocol, PolicyType};
use reef_schema::{Mode, Protocol, Service, ServiceType, TrafficPolicy};
use reefctl::cli::EndArg;
use serde::Serialize;
use serde_json::Value;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    /// Arguments that name nothing traceable: exit status 2.
    #[error("{0}")]
    Usage(String),
}

/// One end as traced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndView {
    /// `pod`, `node`, `service`, `outside`, or `unused` (a pool address no pod holds).
    pub kind: &'static str,
    pub address: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowView {
    pub protocol: L4Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub ip: IpAddr,
    pub port: u16,
    pub pod: Option<String>,
    pub node: String,
}

/// A service translation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Translation {
    pub service: String,
    /// `clusterIP` or `nodePort`.
    pub via: &'static str,
    pub port: u16,
    pub protocol: L4Protocol,
    pub target_port: u16,
    /// The node that translates (None: the node an outside client's network sends it to).
    pub on: Option<String>,
    pub endpoints: Vec<EndpointView>,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub text: String,
}

/// The verdict at one policy point.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Judgement {
    /// The pod judged (None: that end is not a pod, so there is no policy point).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `allowed`, `dropped`, `notIsolated`, `notJudged` (own node, own pod) or `noPod`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    pub text: String,
}

impl Judgement {
    pub fn allows(&self) -> bool {
        self.verdict != "dropped"
    }

    fn none(text: impl Into<String>) -> Judgement {
        Judgement {
            pod: None,
            verdict: "noPod",
            policy: None,
            rule: None,
            isolated_by: Vec::new(),
            text: text.into(),
        }
    }

    fn not_judged(pod: &PodRef<'_>, text: impl Into<String>) -> Judgement {
        Judgement {
            pod: Some(pod.id()),
            verdict: "notJudged",
            policy: None,
            rule: None,
            isolated_by: Vec::new(),
            text: text.into(),
        }
    }

    fn of(pod: &PodRef<'_>, dir: PolicyType, v: Verdict) -> Judgement {
        let id = pod.id();
        let word = match dir {
            PolicyType::Ingress => "ingress",
            PolicyType::Egress => "egress",
        };
        match v {
            Verdict::NotIsolated => Judgement {
                text: format!("not isolated (no policy selects {id} for {word})"),
                pod: Some(id),
                verdict: "notIsolated",
                policy: None,
                rule: None,
                isolated_by: Vec::new(),
            },
            Verdict::Allowed { policy, rule } => Judgement {
                text: format!("allowed by {policy} rule {rule}"),
                pod: Some(id),
                verdict: "allowed",
                policy: Some(policy),
                rule: Some(rule),
                isolated_by: Vec::new(),
            },
            Verdict::Denied { isolated_by } => Judgement {
                text: format!(
                    "dropped: {id} is isolated for {word} by {} and no rule admits it",
                    isolated_by.join(", ")
                ),
                pod: Some(id),
                verdict: "dropped",
                policy: None,
                rule: None,
                isolated_by,
            },
        }
    }
}

/// One way the flow may go (one per endpoint of a service).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointView>,
    pub hops: Vec<Hop>,
    pub egress: Judgement,
    pub ingress: Judgement,
    /// Why the network itself drops it (no route, no pod at the address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    pub allowed: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    pub allowed: bool,
    pub source: EndView,
    pub destination: EndView,
    /// None: ICMP (no port).
    pub flow: Option<FlowView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translation: Option<Translation>,
    pub paths: Vec<PathView>,
    /// Why there is no path at all (a service port without endpoints, ICMP to a VIP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    pub summary: String,
}

/// A resolved end.
#[derive(Debug, Clone, Copy)]
enum End<'a> {
    Pod(PodRef<'a>),
    Node(&'a str),
    Service(&'a Service),
    Outside,
    /// A pool address no pod holds, with the node whose block it is in.
    Unused(Option<&'a str>),
}

fn usage(msg: impl Into<String>) -> TraceError {
    TraceError::Usage(msg.into())
}

/// The pods holding `ip`, those on nodes with a live agent first.
fn pods_at<'a>(state: &'a ClusterState, ip: IpAddr) -> Vec<PodRef<'a>> {
    let mut pods: Vec<PodRef<'a>> = state
        .workloads
        .iter()
        .filter(|w| w.ips.contains(&ip))
        .map(PodRef)
        .collect();
    pods.sort_by_key(|p| !state.agents.contains_key(&p.0.node));
    pods
}

fn node_at(state: &ClusterState, ip: IpAddr) -> Option<&str> {
    state
        .nodes
        .iter()
        .find(|(_, n)| n.address.is_some_and(|a| a.ip() == ip) || n.vtep_ip == Some(ip))
        .map(|(name, _)| name.as_str())
}

fn in_pool(state: &ClusterState, ip: IpAddr) -> bool {
    state
        .config
        .as_ref()
        .is_some_and(|c| c.pools.iter().any(|p| p.cidr.contains(ip)))
}

/// What an address is.
fn resolve_addr(state: &ClusterState, ip: IpAddr) -> End<'_> {
    if let Some(pod) = pods_at(state, ip).into_iter().next() {
        return End::Pod(pod);
    }
    if let Some(node) = node_at(state, ip) {
        return End::Node(node);
    }
    if let Some(s) = state.services.iter().find(|s| s.cluster_ip == Some(ip)) {
        return End::Service(s);
    }
    if in_pool(state, ip) {
        let owner = state
            .blocks
            .iter()
            .find(|b| b.cidr.contains(ip))
            .map(|b| b.node.as_str());
        return End::Unused(owner);
    }
    End::Outside
}

fn resolve_pod<'a>(
    state: &'a ClusterState,
    namespace: &str,
    name: &str,
) -> Result<PodRef<'a>, TraceError> {
    let found: Vec<PodRef<'a>> = state
        .pods()
        .into_iter()
        .filter(|p| p.namespace() == namespace && p.0.name.as_deref() == Some(name))
        .collect();
    match found.as_slice() {
        [] => Err(usage(format!("unknown pod {namespace}/{name}"))),
        [one] => Ok(*one),
        several => Err(usage(format!(
            "pod {namespace}/{name} has {} attachments ({}): give one of their addresses instead",
            several.len(),
            several
                .iter()
                .map(|p| format!("{}/{}/{}", p.0.node, p.0.container_id, p.0.ifname))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The address of `pod` to use: the family of `like` when given, else its first IPv4 one.
fn pod_ip(pod: &PodRef<'_>, like: Option<IpAddr>) -> Result<IpAddr, TraceError> {
    let ips = pod.ips();
    let pick = match like {
        Some(l) => ips.iter().find(|ip| ip.is_ipv4() == l.is_ipv4()),
        None => ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()),
    };
    pick.copied().ok_or_else(|| {
        usage(match like {
            Some(l) if l.is_ipv4() => format!("pod {} has no IPv4 address", pod.id()),
            Some(_) => format!("pod {} has no IPv6 address", pod.id()),
            None => format!("pod {} has no address", pod.id()),
        })
    })
}

fn node_ip(state: &ClusterState, node: &str) -> Option<IpAddr> {
    state
        .nodes
        .get(node)
        .and_then(|n| n.address)
        .map(|a| a.ip())
}

fn end_view(state: &ClusterState, end: End<'_>, ip: IpAddr) -> EndView {
    let base = EndView {
        kind: "outside",
        address: ip,
        pod: None,
        node: None,
        service: None,
        text: String::new(),
    };
    match end {
        End::Pod(p) => EndView {
            kind: "pod",
            pod: Some(p.id()),
            node: Some(p.0.node.clone()),
            text: format!(
                "pod {} on node {} ({ip}){}",
                p.id(),
                p.0.node,
                if state.agents.contains_key(&p.0.node) {
                    ""
                } else {
                    "; its node's agent is not running"
                }
            ),
            ..base
        },
        End::Node(n) => EndView {
            kind: "node",
            node: Some(n.to_string()),
            text: format!("node {n} ({ip}, a host, not a pod)"),
            ..base
        },
        End::Service(s) => EndView {
            kind: "service",
            service: Some(s.id()),
            text: format!("service {} ({ip})", s.id()),
            ..base
        },
        End::Outside => EndView {
            text: format!("{ip}, outside the cluster"),
            ..base
        },
        End::Unused(owner) => EndView {
            kind: "unused",
            node: owner.map(str::to_string),
            text: match owner {
                Some(n) => format!("{ip}: no pod holds it (an address of node {n}'s block)"),
                None => format!("{ip}: no pod holds it (a pool address in no block)"),
            },
            ..base
        },
    }
}

/// How node `from` reaches node `to`: (the hop's text, whether it is the VXLAN tunnel), or
/// why it cannot.
fn route(
    state: &ClusterState,
    from: &str,
    to: &str,
    dst: IpAddr,
) -> Result<(String, bool), String> {
    let Some(cfg) = &state.config else {
        return Err("the cluster is not initialised (no /reef/config)".into());
    };
    let to_addr =
        state.nodes.get(to).and_then(|n| n.address).ok_or_else(|| {
            format!("node {to} has no underlay address: {from} has no route to it")
        })?;
    let routed = |why: &str| {
        if to_addr.is_ipv4() != dst.is_ipv4() {
            return Err(format!(
                "node {to}'s underlay address {} is not of {dst}'s family: no route",
                to_addr.ip()
            ));
        }
        Ok((
            format!(
                "{from} -> {to}: routed{why} via {to}'s underlay address {} (no encapsulation)",
                to_addr.ip()
            ),
            false,
        ))
    };
    let tunnel = || {
        let n = &state.nodes[to];
        match (&n.vtep_mac, n.vtep_ip) {
            (Some(mac), Some(vtep)) if dst.is_ipv4() => Ok((
                format!(
                    "{from} -> {to}: VXLAN tunnel (VNI {}): {} to {to}'s VTEP {vtep} ({mac}), \
                     over the underlay to {}",
                    cfg.vni,
                    reef_vxlan_device(),
                    to_addr.ip()
                ),
                true,
            )),
            (Some(_), Some(_)) => Err(format!(
                "{dst} is IPv6 and the overlay carries IPv4 only: {from} has no route to it"
            )),
            _ => Err(format!(
                "node {to} has no VTEP registered (its agent has not set up {}): no tunnel to it",
                reef_vxlan_device()
            )),
        }
    };
    match cfg.mode {
        Mode::Routed => routed(""),
        Mode::Vxlan => tunnel(),
        Mode::VxlanCrosssubnet => {
            let from_net = state
                .nodes
                .get(from)
                .and_then(|n| n.address)
                .ok_or_else(|| format!("node {from} has no underlay address registered"))?;
            if from_net.contains(to_addr.ip()) {
                routed(&format!(
                    " (same underlay subnet {}/{})",
                    from_net.network(),
                    from_net.prefix()
                ))
            } else {
                tunnel()
            }
        }
    }
}

fn reef_vxlan_device() -> &'static str {
    "reef.vxlan"
}

/// The address node `node` sends from towards `dst` on node `to` (masquerade and host
/// processes): its VTEP address through the tunnel, its underlay address otherwise.
fn node_source(state: &ClusterState, node: &str, tunnel: bool) -> Option<IpAddr> {
    let n = state.nodes.get(node)?;
    if tunnel {
        n.vtep_ip.or(n.address.map(|a| a.ip()))
    } else {
        n.address.map(|a| a.ip())
    }
}

/// Where a flow starts: a pod (on its node), a node, or outside.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    end: End<'a>,
    ip: IpAddr,
}

impl Source<'_> {
    fn host(&self) -> Option<&str> {
        match self.end {
            End::Pod(p) => Some(p.0.node.as_str()),
            End::Node(n) => Some(n),
            _ => None,
        }
    }

    fn pod(&self) -> Option<PodRef<'_>> {
        match self.end {
            End::Pod(p) => Some(p),
            _ => None,
        }
    }
}

/// A destination after translation.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    end: End<'a>,
    ip: IpAddr,
    flow: Option<(L4Protocol, u16)>,
}

/// How the source address is rewritten on the way (masquerade): on which node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Masq<'a> {
    None,
    /// To the address this node sends from.
    On(&'a str),
}

/// Whether `pod`'s traffic leaving the pools is masqueraded (its pool's natOutgoing).
fn nat_outgoing(state: &ClusterState, pod: &PodRef<'_>) -> bool {
    state.config.as_ref().is_some_and(|c| {
        c.pools
            .iter()
            .any(|p| p.nat_outgoing && pod.ips().iter().any(|ip| p.cidr.contains(*ip)))
    })
}

/// One path: from `src`, entering the cluster (or translated) on `entry`, to `dst`.
/// `before`: the destination as the packet leaves the source's host when the translation
/// happens on another node (a node port of another node), which is what egress judges.
fn path(
    state: &ClusterState,
    src: Source<'_>,
    entry: Option<&str>,
    dst: Target<'_>,
    masq: Masq<'_>,
    before: Option<(IpAddr, Option<(L4Protocol, u16)>)>,
    endpoint: Option<EndpointView>,
) -> PathView {
    let policies = state.policies();
    let mut hops = Vec::new();
    let mut unreachable = None;
    // The node the packet is on when it is routed to the destination.
    let at = entry.or(src.host());
    match (src.end, entry) {
        (End::Outside, Some(e)) => hops.push(Hop {
            node: Some(e.to_string()),
            text: format!(
                "outside the cluster -> {e}: to {e}'s address {}",
                node_ip(state, e).map(|i| i.to_string()).unwrap_or_default()
            ),
        }),
        (End::Outside, None) => {}
        (_, Some(e)) if Some(e) != src.host() => hops.push(Hop {
            node: src.host().map(str::to_string),
            text: format!(
                "{} -> {e}: to {e}'s underlay address {}",
                src.host().unwrap_or("?"),
                node_ip(state, e).map(|i| i.to_string()).unwrap_or_default()
            ),
        }),
        _ => {}
    }
    // Where the destination lives, and the hop there.
    let dst_host: Option<&str> = match dst.end {
        End::Pod(p) => Some(p.0.node.as_str()),
        End::Node(n) => Some(n),
        End::Unused(owner) => owner,
        _ => None,
    };
    let mut tunnel = false;
    match (at, dst_host, dst.end) {
        (_, _, End::Outside) => {
            let text = match (src.end, at) {
                (End::Pod(_), Some(a)) => {
                    let masq = state.config.as_ref().and_then(|c| {
                        c.pools.iter().find(|p| {
                            src.pod()
                                .is_some_and(|pod| pod.ips().iter().any(|i| p.cidr.contains(*i)))
                        })
                    });
                    match masq {
                        Some(p) if p.nat_outgoing => format!(
                            "leaves the cluster from {a}, masqueraded to {a}'s address (natOutgoing of pool {})",
                            p.cidr
                        ),
                        _ => format!("leaves the cluster from {a}, not masqueraded (natOutgoing is off)"),
                    }
                }
                (_, Some(a)) => format!("leaves the cluster from {a}"),
                _ => "outside the cluster".into(),
            };
            hops.push(Hop {
                node: at.map(str::to_string),
                text,
            });
        }
        (None, Some(d), _) if endpoint.is_some() => hops.push(Hop {
            node: Some(d.to_string()),
            text: format!(
                "outside the cluster -> {d}: only if the network routes the VIP to a node, \
                 which translates it and forwards it to {d}"
            ),
        }),
        (None, Some(d), _) => hops.push(Hop {
            node: Some(d.to_string()),
            text: format!(
                "outside the cluster -> {d}: only if the network routes {} to {d} ({})",
                dst.ip,
                node_ip(state, d).map(|i| i.to_string()).unwrap_or_default()
            ),
        }),
        (Some(a), Some(d), _) if a == d => hops.push(Hop {
            node: Some(a.to_string()),
            text: format!("local delivery on {a}"),
        }),
        (Some(a), Some(d), End::Node(_)) => hops.push(Hop {
            node: Some(a.to_string()),
            text: format!(
                "{a} -> {d}: over the underlay to {}{}",
                dst.ip,
                if src.pod().is_some() {
                    " (masqueraded to the node's address when the pool has natOutgoing)"
                } else {
                    ""
                }
            ),
        }),
        (Some(a), Some(d), _) => match route(state, a, d, dst.ip) {
            Ok((text, t)) => {
                tunnel = t;
                hops.push(Hop {
                    node: Some(a.to_string()),
                    text,
                });
            }
            Err(why) => unreachable = Some(why),
        },
        (_, None, _) => {}
    }
    if let End::Unused(owner) = dst.end {
        unreachable = Some(match owner {
            Some(n) => format!(
                "no pod holds {}: {n} drops it (its block's blackhole route)",
                dst.ip
            ),
            None => format!(
                "no pod holds {} and no node owns its block: no route",
                dst.ip
            ),
        });
    }
    if let Some(d) = dst_host {
        if unreachable.is_none() && !matches!(dst.end, End::Node(_)) {
            hops.push(Hop {
                node: Some(d.to_string()),
                text: match dst.end {
                    End::Pod(p) => match &p.0.host_interface {
                        Some(dev) => format!("{d}: to pod {} ({}) through {dev}", p.id(), dst.ip),
                        None => format!("{d}: to pod {} ({})", p.id(), dst.ip),
                    },
                    _ => format!("{d}: {}", dst.ip),
                },
            });
        }
    }

    // The source address the destination sees: a pod's own, unless natOutgoing rewrote it
    // on the way to another node's address (a node port there), or a masquerade did.
    let (mut seen_ip, mut seen_pod, mut seen_node): (IpAddr, Option<PodRef<'_>>, Option<&str>) =
        match src.end {
            End::Pod(p) => (src.ip, Some(p), None),
            End::Node(n) => (
                node_source(state, n, tunnel).unwrap_or(src.ip),
                None,
                Some(n),
            ),
            _ => (src.ip, None, None),
        };
    if let (End::Pod(p), Some(e)) = (src.end, entry) {
        if e != p.0.node && nat_outgoing(state, &p) {
            let a = p.0.node.as_str();
            (seen_ip, seen_pod, seen_node) = (
                node_source(state, a, false).unwrap_or(src.ip),
                None,
                Some(a),
            );
        }
    }
    if let Masq::On(n) = masq {
        (seen_ip, seen_pod, seen_node) = (
            node_source(state, n, tunnel).unwrap_or(src.ip),
            None,
            Some(n),
        );
    }

    // A pod's traffic to its own address never leaves it; through a service it does (the
    // translation is on its host), and is judged as any other.
    let same_pod = endpoint.is_none()
        && matches!((src.end, dst.end), (End::Pod(a), End::Pod(b)) if std::ptr::eq(a.0, b.0));
    let egress = match src.end {
        End::Pod(p) if same_pod => {
            Judgement::not_judged(&p, "a pod's traffic to itself never leaves it")
        }
        End::Pod(p) if matches!(dst.end, End::Node(n) if n == p.0.node) => Judgement::not_judged(
            &p,
            "not judged: traffic between a pod and its own node is always allowed",
        ),
        End::Pod(p) => {
            let (ip, pod, flow) = match (before, &dst.end) {
                (Some((ip, flow)), _) => (ip, None, flow),
                (None, End::Pod(q)) => (dst.ip, Some(q), dst.flow),
                (None, _) => (dst.ip, None, dst.flow),
            };
            let remote = Remote { ip, pod };
            let mut j = Judgement::of(
                &p,
                PolicyType::Egress,
                policies.verdict(&p, PolicyType::Egress, &remote, flow),
            );
            if before.is_some() {
                j.text.push_str(&format!(
                    " (judged before translation: the flow leaves {} for {ip})",
                    p.0.node
                ));
            }
            j
        }
        _ => Judgement::none("no egress policy point: the source is not a pod"),
    };
    let ingress = match dst.end {
        End::Pod(q) if same_pod => {
            Judgement::not_judged(&q, "a pod's traffic to itself never leaves it")
        }
        End::Pod(q) if seen_node == Some(q.0.node.as_str()) => Judgement::not_judged(
            &q,
            format!(
                "not judged: the flow comes from {}'s own node {} ({seen_ip}); traffic between a pod and its own node is always allowed",
                q.id(),
                q.0.node
            ),
        ),
        End::Pod(q) => {
            let remote = Remote {
                ip: seen_ip,
                pod: seen_pod.as_ref(),
            };
            let mut j = Judgement::of(&q, PolicyType::Ingress, policies.verdict(&q, PolicyType::Ingress, &remote, dst.flow));
            if seen_ip != src.ip {
                j.text.push_str(&format!(" (judged with the source as it arrives: {seen_ip})"));
            }
            j
        }
        _ => Judgement::none("no ingress policy point: the destination is not a pod"),
    };
    let allowed = unreachable.is_none() && egress.allows() && ingress.allows();
    PathView {
        endpoint,
        hops,
        egress,
        ingress,
        unreachable,
        allowed,
    }
}

fn service_proto(p: L4Protocol) -> Option<Protocol> {
    match p {
        L4Protocol::Tcp => Some(Protocol::Tcp),
        L4Protocol::Udp => Some(Protocol::Udp),
        L4Protocol::Sctp => None,
    }
}

/// Traces `src` to `dst` with `flow` (None: ICMP) on the cluster as `state` has it.
pub fn trace(
    state: &ClusterState,
    src: &EndArg,
    dst: &EndArg,
    flow: Option<(L4Protocol, u16)>,
) -> Result<Trace, TraceError> {
    // The destination first: its address family picks the source's address.
    let (dst_end, dst_ip) = match dst {
        EndArg::Pod { namespace, name } => {
            let p = resolve_pod(state, namespace, name)?;
            (End::Pod(p), pod_ip(&p, None)?)
        }
        EndArg::Addr(ip) => (resolve_addr(state, *ip), *ip),
    };
    let (src_end, src_ip) = match src {
        EndArg::Pod { namespace, name } => {
            let p = resolve_pod(state, namespace, name)?;
            (End::Pod(p), pod_ip(&p, Some(dst_ip))?)
        }
        EndArg::Addr(ip) => match resolve_addr(state, *ip) {
            End::Service(s) => {
                return Err(usage(format!(
                    "{ip} is the VIP of service {}: a VIP is not a source",
                    s.id()
                )))
            }
            End::Unused(_) => {
                return Err(usage(format!(
                    "no pod holds {ip}: give a pod, or an address that sends (a pod's, a node's, or one outside the cluster)"
                )))
            }
            end => (end, *ip),
        },
    };
    if src_ip.is_ipv4() != dst_ip.is_ipv4() {
        return Err(usage(format!(
            "{src} ({src_ip}) and {dst} ({dst_ip}) are of different address families"
        )));
    }
    if matches!(src_end, End::Outside) && matches!(dst_end, End::Outside) {
        return Err(usage(format!(
            "neither {src} nor {dst} is a pod, a node or a service of this cluster"
        )));
    }
    let source = Source {
        end: src_end,
        ip: src_ip,
    };
    let source_view = end_view(state, src_end, src_ip);
    let mut destination_view = end_view(state, dst_end, dst_ip);
    let flow_view = flow.map(|(protocol, port)| FlowView { protocol, port });
    let flow_text = match flow {
        Some((p, port)) => format!("{port}/{p}"),
        None => "ICMP".to_string(),
    };

    // Service translation: a VIP, or a node port on a node's address.
    let node_port = match (dst_end, flow) {
        (End::Node(n), Some((proto, port))) => state
            .services
            .iter()
            .filter(|s| s.kind == ServiceType::NodePort)
            .find_map(|s| {
                s.ports
                    .iter()
                    .find(|p| p.node_port == Some(port) && Some(p.protocol) == service_proto(proto))
                    .map(|p| (s, p, n))
            }),
        _ => None,
    };
    let service = match dst_end {
        End::Service(s) => Some((s, None)),
        _ => node_port.map(|(s, _, n)| (s, Some(n))),
    };

    let mut paths = Vec::new();
    let mut translation = None;
    let mut rejected = None;
    match service {
        None => {
            let target = Target {
                end: dst_end,
                ip: dst_ip,
                flow,
            };
            paths.push(path(state, source, None, target, Masq::None, None, None));
        }
        Some((s, node)) => {
            let port = match (flow, node) {
                (None, _) => None,
                (Some(_), Some(_)) => node_port.map(|(_, p, _)| p),
                (Some((proto, port)), None) => s
                    .ports
                    .iter()
                    .find(|p| p.port == port && Some(p.protocol) == service_proto(proto)),
            };
            let via = if node.is_some() {
                "nodePort"
            } else {
                "clusterIP"
            };
            match (flow, port) {
                (None, _) => {
                    rejected = Some(format!(
                        "service {} translates TCP and UDP ports only: ICMP to its VIP {dst_ip} gets no answer",
                        s.id()
                    ))
                }
                (Some(_), None) => {
                    rejected = Some(format!(
                        "service {} has no port {flow_text}: the agent rejects it (TCP reset, ICMP port unreachable)",
                        s.id()
                    ))
                }
                (Some((proto, asked)), Some(sp)) => {
                    // Where the translation happens: the node addressed (node port), the
                    // source's host (VIP), or an unknown node for an outside client.
                    let on: Option<&str> = node.or(source.host());
                    let local_only = node.is_some() && s.external_traffic_policy == TrafficPolicy::Local;
                    let endpoints: Vec<_> =
                        reef_schema::services::endpoints(s, &state.workloads, |n| state.agents.contains_key(n))
                            .into_iter()
                            .filter(|e| e.alive)
                            .filter(|e| !local_only || Some(e.node.as_str()) == on)
                            .collect();
                    let eps: Vec<EndpointView> = endpoints
                        .iter()
                        .map(|e| EndpointView {
                            ip: e.ip,
                            port: sp.target_port,
                            pod: pods_at(state, e.ip).first().map(|p| p.id()),
                            node: e.node.clone(),
                        })
                        .collect();
                    let where_ = match on {
                        Some(n) => format!("on {n}"),
                        None => "on the node the client's network sends it to".into(),
                    };
                    let text = if eps.is_empty() {
                        format!(
                            "service {} port {asked}/{proto} ({via}) has no endpoints{}: the agent rejects it",
                            s.id(),
                            if local_only { " on this node (externalTrafficPolicy Local)" } else { " on nodes with a live agent" }
                        )
                    } else {
                        format!(
                            "service {} port {asked}/{proto} ({via}) -> target port {}: translated {where_} to one of {} endpoint(s) at random; trace judges each, and the flow is allowed only if every endpoint allows it",
                            s.id(),
                            sp.target_port,
                            eps.len()
                        )
                    };
                    if eps.is_empty() {
                        rejected = Some(text.clone());
                    }
                    for (e, view) in endpoints.iter().zip(&eps) {
                        let end = match pods_at(state, e.ip).into_iter().find(|p| p.0.node == e.node) {
                            Some(p) => End::Pod(p),
                            None => End::Unused(Some(e.node.as_str())),
                        };
                        // Masquerade: host processes' flows to a VIP, and node ports of Cluster
                        // policy whose endpoint is on another node.
                        // Masquerades the endpoint sees (they happen in postrouting, after the
                        // forward hook where policy judges): a node port of Cluster policy
                        // whose endpoint is on another node, and host processes' flows to a
                        // VIP or their own node's port. A hairpin (a pod its service picked)
                        // is judged before its masquerade: as the pod to itself.
                        let masq = match (source.end, node) {
                            (_, Some(r)) if !local_only && e.node != r => Masq::On(r),
                            (End::Node(n), None) => Masq::On(n),
                            (End::Node(n), Some(r)) if n == r => Masq::On(n),
                            _ => Masq::None,
                        };
                        let target = Target {
                            end,
                            ip: e.ip,
                            flow: Some((proto, sp.target_port)),
                        };
                        let entry = node.or(match source.end {
                            End::Outside => None,
                            _ => source.host(),
                        });
                        // A node port of another node is translated there: the source's egress
                        // sees the node's address and the node port.
                        let before = match (node, source.host()) {
                            (Some(n), Some(h)) if n != h => Some((dst_ip, flow)),
                            _ => None,
                        };
                        paths.push(path(state, source, entry, target, masq, before, Some(view.clone())));
                    }
                    if let Some(n) = node {
                        destination_view.text = format!("node port {asked}/{proto} of node {n} ({dst_ip}): service {}", s.id());
                        destination_view.service = Some(s.id());
                    }
                    translation = Some(Translation {
                        service: s.id(),
                        via,
                        port: sp.port,
                        protocol: proto,
                        target_port: sp.target_port,
                        on: on.map(str::to_string),
                        endpoints: eps,
                        text,
                    });
                }
            }
        }
    }
    let allowed = rejected.is_none() && !paths.is_empty() && paths.iter().all(|p| p.allowed);
    let summary = if allowed {
        match paths.len() {
            1 => "allowed".to_string(),
            n => format!("allowed (by all {n} endpoints)"),
        }
    } else if let Some(r) = &rejected {
        format!("dropped: {r}")
    } else {
        let dropped = paths.iter().filter(|p| !p.allowed).count();
        match paths.len() {
            1 => "dropped".to_string(),
            n => format!("dropped (by {dropped} of {n} endpoints)"),
        }
    };
    Ok(Trace {
        allowed,
        source: source_view,
        destination: destination_view,
        flow: flow_view,
        translation,
        paths,
        rejected,
        summary,
    })
}

/// The trace as text and as one JSON object (the single path's hops and verdicts also at
/// the top level, for scripts).
pub fn render(t: &Trace) -> (String, Value) {
    let flow = match &t.flow {
        Some(f) => format!("{}/{}", f.port, f.protocol),
        None => "ICMP".to_string(),
    };
    let mut text = format!(
        "trace {} -> {} {flow}\n  source:       {}\n  destination:  {}\n",
        t.source.address, t.destination.address, t.source.text, t.destination.text
    );
    if let Some(tr) = &t.translation {
        text.push_str(&format!("  translation:  {}\n", tr.text));
    }
    if let Some(r) = &t.rejected {
        text.push_str(&format!("  rejected:     {r}\n"));
    }
    let several = t.paths.len() > 1 || t.translation.is_some();
    for p in &t.paths {
        let indent = if several { "    " } else { "  " };
        if let Some(e) = &p.endpoint {
            text.push_str(&format!(
                "  endpoint {}:{} ({} on {}):\n",
                e.ip,
                e.port,
                e.pod.as_deref().unwrap_or("no pod"),
                e.node
            ));
        }
        let pod_label = |j: &Judgement, dir: &str| match &j.pod {
            Some(pod) => format!("{dir} at {pod}:"),
            None => format!("{dir}:"),
        };
        text.push_str(&format!(
            "{indent}{:<14} {}\n",
            pod_label(&p.egress, "egress"),
            p.egress.text
        ));
        for h in &p.hops {
            text.push_str(&format!("{indent}{:<14} {}\n", "path:", h.text));
        }
        if let Some(u) = &p.unreachable {
            text.push_str(&format!("{indent}{:<14} {u}\n", "unreachable:"));
        }
        text.push_str(&format!(
            "{indent}{:<14} {}\n",
            pod_label(&p.ingress, "ingress"),
            p.ingress.text
        ));
        if several {
            text.push_str(&format!(
                "{indent}=> {}\n",
                if p.allowed { "allowed" } else { "dropped" }
            ));
        }
    }
    text.push_str(&format!("result: {}\n", t.summary));
    let mut value = serde_json::to_value(t).unwrap_or_default();
    if let ([only], Value::Object(obj)) = (t.paths.as_slice(), &mut value) {
        for (k, v) in [
            ("hops", serde_json::to_value(&only.hops)),
            ("egress", serde_json::to_value(&only.egress)),
            ("ingress", serde_json::to_value(&only.ingress)),
        ] {
            obj.insert(k.to_string(), v.unwrap_or_default());
        }
    }
    (text, value)
}

#[cfg(test)]
mod tests;
