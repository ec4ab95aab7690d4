//! Services in etcd: `apply` (create or update, allocating the VIP and node ports), `delete`,
//! and the views behind `service ls/show`.
//!
//! A service and its claims (`/reef/service-ips/<ip>`, `/reef/node-ports/<port>`) change in
//! one transaction guarded by the service's mod revision and by every new claim being absent,
//! so concurrent applies never share a VIP or node port: the loser re-reads and tries again,
//! or, when it asked for that address or port explicitly, fails naming the holder.

use reef_etcd::{Compare, CompareOp, Etcd, Txn, TxnOp};
use reef_schema::services::{
    node_port_key, service_id, service_ip_key, service_key, vip_candidates, Claim, NODE_PORTS,
    SERVICES, SERVICE_IPS,
};
use reef_schema::{
    decode, encode, ClusterConfig, DecodeError, Endpoint, Service, ServiceType, WorkloadRecord,
    AGENTS, CONFIG_KEY, WORKLOADS,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Etcd(#[from] reef_etcd::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the cluster is not initialised (run reefctl init)")]
    NotInitialised,
    /// A value the cluster cannot take; names the service and the field.
    #[error("service {service}: {field}: {why}")]
    Invalid {
        service: String,
        field: String,
        why: String,
    },
    #[error("service {service}: {what} is already allocated to service {holder}")]
    Taken {
        service: String,
        what: String,
        holder: String,
    },
    #[error("service {0}: no free address left in the service CIDR {1}")]
    NoFreeAddress(String, String),
    #[error("service {0}: no free node port left in {1}")]
    NoFreeNodePort(String, String),
    #[error("service {0}: kept changing under this apply; try again")]
    Contended(String),
    #[error("service {0} not found")]
    NotFound(String),
    #[error("cannot read /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, ServiceError>;

/// What `apply` did to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Configured,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        }
    }
}

async fn config(etcd: &mut Etcd) -> Result<ClusterConfig> {
    let kv = etcd
        .get(CONFIG_KEY)
        .await?
        .ok_or(ServiceError::NotInitialised)?;
    Ok(decode(kv.key(), kv.value())?)
}

/// Checks every service against the cluster's ranges before anything is written, so a bad
/// document in a file changes nothing.
pub fn check_ranges(services: &[Service], cfg: &ClusterConfig) -> Result<()> {
    let cidr = cfg.service_cidr();
    let range = cfg.node_port_range();
    for s in services {
        let bad = |field: String, why: String| ServiceError::Invalid {
            service: s.id(),
            field,
            why,
        };
        if let Some(ip) = s.cluster_ip {
            if !cidr.contains(ip) {
                return Err(bad(
                    "spec.clusterIP".into(),
                    format!("{ip} is not in the service CIDR {cidr}"),
                ));
            }
            let broadcast = match cidr {
                ipnetwork::IpNetwork::V4(n) => Some(IpAddr::V4(n.broadcast())),
                ipnetwork::IpNetwork::V6(_) => None,
            };
            if ip == cidr.network() || Some(ip) == cidr.iter().nth(1) || Some(ip) == broadcast {
                return Err(bad(
                    "spec.clusterIP".into(),
                    format!(
                        "{ip} is reserved in the service CIDR {cidr} (network, broadcast, \
                         or the first address, kept for the cluster's own service)"
                    ),
                ));
            }
        }
        for (i, p) in s.ports.iter().enumerate() {
            if let Some(np) = p.node_port {
                if !range.contains(np) {
                    return Err(bad(
                        format!("spec.ports[{i}].nodePort"),
                        format!("{np} is outside the node port range {range}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A small PRNG for picking candidate VIPs and node ports (xorshift64*, seeded from the
/// kernel): random picks make concurrent applies rarely collide.
struct Picker(u64);

impl Picker {
    fn new() -> Result<Picker> {
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(ServiceError::Random)?;
        Ok(Picker(u64::from_ne_bytes(seed) | 1))
    }

    fn below(&mut self, n: u128) -> u128 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        u128::from(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)) % n.max(1)
    }
}

/// The service holding a claim (an unreadable claim is held by nobody we can name).
fn holder(value: &[u8]) -> String {
    serde_json::from_slice::<Claim>(value)
        .map(|c| c.service)
        .unwrap_or_else(|_| format!("(unreadable claim {})", String::from_utf8_lossy(value)))
}

fn claim(id: &str) -> Vec<u8> {
    encode(&Claim {
        service: id.to_string(),
    })
}

/// The claims currently held, by key suffix (the address or port) -> holder.
async fn claims(etcd: &mut Etcd, prefix: &str) -> Result<BTreeMap<String, String>> {
    Ok(etcd
        .get_prefix(prefix)
        .await?
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key())
                    .trim_start_matches(prefix)
                    .to_string(),
                holder(kv.value()),
            )
        })
        .collect())
}

/// Creates or updates each service. A service keeps its VIP (a different explicit
/// `clusterIP` is refused: it is immutable, as in Kubernetes) and the node port of each port
/// entry that does not ask for another.
pub async fn apply(etcd: &mut Etcd, services: &[Service]) -> Result<Vec<(Service, Change)>> {
    let cfg = config(etcd).await?;
    check_ranges(services, &cfg)?;
    check_explicit_claims(etcd, services).await?;
    let mut picker = Picker::new()?;
    let mut out = Vec::new();
    for s in services {
        out.push(apply_one(etcd, &cfg, s, &mut picker).await?);
    }
    Ok(out)
}

/// An explicit `clusterIP` or `nodePort` that another service holds fails the whole apply
/// before anything is written (a race after this check still fails that one service).
async fn check_explicit_claims(etcd: &mut Etcd, services: &[Service]) -> Result<()> {
    for s in services {
        let id = s.id();
        let mut wanted: Vec<(String, String)> = s
            .cluster_ip
            .iter()
            .map(|ip| (service_ip_key(ip), format!("spec.clusterIP {ip}")))
            .collect();
        wanted.extend(
            s.node_ports()
                .map(|np| (node_port_key(np), format!("nodePort {np}"))),
        );
        for (key, what) in wanted {
            if let Some(kv) = etcd.get(&key).await? {
                let holder = holder(kv.value());
                if holder != id {
                    return Err(ServiceError::Taken {
                        service: id,
                        what,
                        holder,
                    });
                }
            }
        }
    }
    Ok(())
}

async fn apply_one(
    etcd: &mut Etcd,
    cfg: &ClusterConfig,
    spec: &Service,
    picker: &mut Picker,
) -> Result<(Service, Change)> {
    let id = spec.id();
    let key = spec.key();
    let cidr = cfg.service_cidr();
    let range = cfg.node_port_range();
    // After this many lost races on random picks, pick from the listed free ones instead.
    const RANDOM_TRIES: usize = 8;
    for attempt in 0..64 {
        let current = etcd.get(&key).await?;
        let (old, rev): (Option<Service>, i64) = match &current {
            Some(kv) => (Some(decode(kv.key(), kv.value())?), kv.mod_revision()),
            None => (None, 0),
        };
        let mut want = spec.clone();
        // The VIP.
        match (old.as_ref().and_then(|o| o.cluster_ip), spec.cluster_ip) {
            (Some(had), Some(asked)) if had != asked => {
                return Err(ServiceError::Invalid {
                    service: id,
                    field: "spec.clusterIP".into(),
                    why: format!("field is immutable (the service has {had}); delete it first"),
                })
            }
            (Some(had), _) => want.cluster_ip = Some(had),
            (None, Some(_)) => {}
            (None, None) => {
                want.cluster_ip = Some(if attempt < RANDOM_TRIES {
                    random_vip(&cidr, picker)
                        .ok_or_else(|| ServiceError::NoFreeAddress(id.clone(), cidr.to_string()))?
                } else {
                    let used = claims(etcd, SERVICE_IPS).await?;
                    let free: Vec<IpAddr> = vip_candidates(&cidr)
                        .filter(|ip| !used.contains_key(&ip.to_string()))
                        .take(64)
                        .collect();
                    *free
                        .get(picker.below(free.len() as u128) as usize)
                        .ok_or_else(|| ServiceError::NoFreeAddress(id.clone(), cidr.to_string()))?
                });
            }
        }
        // Node ports: keep the old one of the same (protocol, port), or the same name.
        if want.kind == ServiceType::NodePort {
            let mut taken_here: BTreeSet<u16> = want.node_ports().collect();
            let mut listed: Option<BTreeMap<String, String>> = None;
            for i in 0..want.ports.len() {
                if want.ports[i].node_port.is_some() {
                    continue;
                }
                let p = want.ports[i].clone();
                let reuse = old.as_ref().and_then(|o| {
                    o.ports
                        .iter()
                        .find(|q| q.protocol == p.protocol && q.port == p.port)
                        .or_else(|| {
                            o.ports
                                .iter()
                                .find(|q| q.name.is_some() && q.name == p.name)
                        })
                        .and_then(|q| q.node_port)
                });
                // One node port per port number: a TCP and a UDP entry on the same port
                // share it, as Kubernetes allocates them.
                let sibling = want
                    .ports
                    .iter()
                    .find(|q| q.port == p.port && q.protocol != p.protocol)
                    .and_then(|q| q.node_port);
                let port = match reuse.or(sibling) {
                    Some(np) => np,
                    None if attempt < RANDOM_TRIES => loop {
                        let np = range.first + picker.below(u128::from(range.len())) as u16;
                        if !taken_here.contains(&np) {
                            break np;
                        }
                    },
                    None => {
                        let used = match &listed {
                            Some(l) => l,
                            None => listed.insert(claims(etcd, NODE_PORTS).await?),
                        };
                        let free: Vec<u16> = (range.first..=range.last)
                            .filter(|np| {
                                !taken_here.contains(np) && !used.contains_key(&np.to_string())
                            })
                            .take(64)
                            .collect();
                        *free
                            .get(picker.below(free.len() as u128) as usize)
                            .ok_or_else(|| {
                                ServiceError::NoFreeNodePort(id.clone(), range.to_string())
                            })?
                    }
                };
                taken_here.insert(port);
                want.ports[i].node_port = Some(port);
            }
        } else {
            for p in &mut want.ports {
                p.node_port = None;
            }
        }
        if old.as_ref() == Some(&want) {
            return Ok((want, Change::Unchanged));
        }
        // Claims to add (absent now) and to drop (the old record's that are no longer used).
        let vip = want
            .cluster_ip
            .ok_or_else(|| ServiceError::Contended(id.clone()))?;
        let mut want_claims: Vec<String> = vec![service_ip_key(&vip)];
        want_claims.extend(want.node_ports().map(node_port_key));
        want_claims.sort();
        want_claims.dedup();
        let mut had_claims: Vec<String> = Vec::new();
        if let Some(o) = &old {
            had_claims.extend(o.cluster_ip.iter().map(service_ip_key));
            had_claims.extend(o.node_ports().map(node_port_key));
        }
        let mut when = vec![if old.is_some() {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
        } else {
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        }];
        let mut ops = vec![TxnOp::put(key.as_str(), encode(&want), None)];
        for c in want_claims.iter().filter(|c| !had_claims.contains(c)) {
            when.push(Compare::create_revision(c.as_str(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(c.as_str(), claim(&id), None));
        }
        for c in had_claims.iter().filter(|c| !want_claims.contains(c)) {
            ops.push(TxnOp::delete(c.as_str(), None));
        }
        let resp = etcd.txn(Txn::new().when(when).and_then(ops)).await?;
        if resp.succeeded() {
            let change = if old.is_some() {
                Change::Configured
            } else {
                Change::Created
            };
            return Ok((want, change));
        }
        // Lost: an explicit address or port someone else holds is the user's to fix.
        for c in want_claims.iter().filter(|c| !had_claims.contains(c)) {
            let explicit = (c.starts_with(SERVICE_IPS) && spec.cluster_ip.is_some())
                || (c.starts_with(NODE_PORTS)
                    && spec.node_ports().any(|np| node_port_key(np) == *c));
            if !explicit {
                continue;
            }
            if let Some(kv) = etcd.get(c).await? {
                let holder = holder(kv.value());
                if holder != id {
                    let what = match c.strip_prefix(SERVICE_IPS) {
                        Some(ip) => format!("spec.clusterIP {ip}"),
                        None => format!(
                            "nodePort {}",
                            c.strip_prefix(NODE_PORTS).unwrap_or(c.as_str())
                        ),
                    };
                    return Err(ServiceError::Taken {
                        service: id,
                        what,
                        holder,
                    });
                }
            }
        }
    }
    Err(ServiceError::Contended(id))
}

fn random_vip(cidr: &ipnetwork::IpNetwork, picker: &mut Picker) -> Option<IpAddr> {
    let size = match cidr {
        ipnetwork::IpNetwork::V4(n) => u128::from(n.size()),
        ipnetwork::IpNetwork::V6(n) => n.size(),
    };
    if size < 4 {
        return vip_candidates(cidr).next();
    }
    // Skip the network address, the first (reserved) one and the IPv4 broadcast address.
    let offset = 2 + picker.below(size - 3);
    let base = match cidr.network() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    Some(match cidr {
        ipnetwork::IpNetwork::V4(_) => IpAddr::V4(u32::try_from(base + offset).ok()?.into()),
        ipnetwork::IpNetwork::V6(_) => IpAddr::V6((base + offset).into()),
    })
}

/// Deletes services and their claims. Returns the ids deleted; missing ones are errors
/// listed after the rest are done.
pub async fn delete(etcd: &mut Etcd, ids: &[(String, String)]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let mut missing = None;
    for (ns, name) in ids {
        let id = service_id(ns, name);
        match delete_one(etcd, ns, name).await {
            Ok(()) => done.push(id),
            Err(ServiceError::NotFound(_)) => {
                missing.get_or_insert(id);
            }
            Err(e) => return Err(e),
        }
    }
    match missing {
        Some(id) if done.is_empty() || ids.len() == 1 => Err(ServiceError::NotFound(id)),
        _ => Ok(done),
    }
}

async fn delete_one(etcd: &mut Etcd, ns: &str, name: &str) -> Result<()> {
    let key = service_key(ns, name);
    let id = service_id(ns, name);
    for _ in 0..16 {
        let Some(kv) = etcd.get(&key).await? else {
            return Err(ServiceError::NotFound(id));
        };
        let rev = kv.mod_revision();
        let svc: Option<Service> = decode(kv.key(), kv.value()).ok();
        let mut ops = vec![TxnOp::delete(key.as_str(), None)];
        if let Some(s) = &svc {
            let mut claims: Vec<String> = s.cluster_ip.iter().map(service_ip_key).collect();
            claims.extend(s.node_ports().map(node_port_key));
            claims.sort();
            claims.dedup();
            ops.extend(claims.iter().map(|c| TxnOp::delete(c.as_str(), None)));
        }
        let when = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)];
        if etcd
            .txn(Txn::new().when(when).and_then(ops))
            .await?
            .succeeded()
        {
            return Ok(());
        }
    }
    Err(ServiceError::Contended(id))
}

/// Every service, the workloads and the live agents: what `ls` and `show` print.
pub struct ServiceView {
    pub services: Vec<Service>,
    pub workloads: Vec<WorkloadRecord>,
    pub alive: BTreeSet<String>,
    /// Service records that do not decode.
    pub unreadable: Vec<DecodeError>,
}

impl ServiceView {
    pub async fn load(etcd: &mut Etcd, namespace: Option<&str>) -> Result<ServiceView> {
        let prefix = match namespace {
            Some(ns) => format!("{SERVICES}{ns}/"),
            None => SERVICES.to_string(),
        };
        let mut view = ServiceView {
            services: Vec::new(),
            workloads: Vec::new(),
            alive: BTreeSet::new(),
            unreadable: Vec::new(),
        };
        for kv in etcd.get_prefix(&prefix).await? {
            match decode::<Service>(kv.key(), kv.value()) {
                Ok(s) => view.services.push(s),
                Err(e) => view.unreadable.push(e),
            }
        }
        for kv in etcd.get_prefix(WORKLOADS).await? {
            if let Ok(w) = decode::<WorkloadRecord>(kv.key(), kv.value()) {
                view.workloads.push(w);
            }
        }
        for kv in etcd.get_prefix(AGENTS).await? {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(node) = key.strip_prefix(AGENTS) {
                view.alive.insert(node.to_string());
            }
        }
        Ok(view)
    }

    pub fn endpoints(&self, s: &Service) -> Vec<Endpoint> {
        reef_schema::services::endpoints(s, &self.workloads, |n| self.alive.contains(n))
    }
}

/// `80:30080/TCP,53/UDP`, as kubectl prints PORT(S).
pub fn ports_text(s: &Service) -> String {
    s.ports
        .iter()
        .map(|p| match p.node_port {
            Some(np) => format!("{}:{np}/{}", p.port, p.protocol),
            None => format!("{}/{}", p.port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(",")
}
