//! Services (reef-agent) in nftables: virtual IPs and node ports load-balanced to endpoints,
//! in one table, `ip reef-services`, whose per-service state is nothing but set and map
//! elements. Chains exist per endpoint COUNT (`lb-N`) and per affinity timeout, never per
//! service, so loading stays linear in the number of services (one anonymous `numgen` vmap
//! per service, as kube-proxy's nftables mode has, makes the kernel's load quadratic):
//!
//! ```text
//! table ip reef-services {
//!   set vips            { ipv4_addr }                       every VIP
//!   map services        { vip . proto . port : verdict }     jump lb-<endpoints>
//!   map endpoints       { vip . proto . port . slot : pod . port }
//!   map aff-services    { vip . proto . port : verdict }     jump aff-<timeout> (ClientIP)
//!   map aff             { client . vip . proto . port : pod . port }  dynamic, filled by
//!                                                            the data path with a timeout
//!   map nodeports       { proto . port : verdict }           jump np-lb-<endpoints>
//!   map np-endpoints    { proto . port . slot : pod . port } (Local policy: local pods only)
//!   set np-all          { proto . port }                     every node port
//!   set np-masq         { proto . port }                     node ports of Cluster policy
//!   set hairpin         { pod . pod }                        every local endpoint
//!   chain lb-N    { dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map @endpoints }
//!   chain np-lb-N { dnat ip to meta l4proto . th dport . numgen random mod N map @np-endpoints }
//!   chain aff-T   { update @aff { ip saddr . ct original ip daddr . ... timeout Ts : ip daddr . th dport } }
//!   chain svc-dnat (from nat prerouting and output) {
//!     dnat ip to ip saddr . ip daddr . meta l4proto . th dport map @aff     remembered choice
//!     ip daddr . meta l4proto . th dport vmap @services
//!     fib daddr type local meta l4proto . th dport vmap @nodeports }
//!   chain nat-postrouting { masquerade hairpin flows, Cluster-policy node-port flows and
//!                           host processes' flows (their source is the VIP) }
//!   chain svc-filter (from filter input, forward, output; ct state new) {
//!     still addressed to a VIP, or an un-DNATed local node port: reject (TCP reset, ICMP
//!     port unreachable); record the choice of affinity services: vmap @aff-services }
//! }
//! ```
//!
//! Per packet: one lookup in `services` (or `nodeports`), one `numgen`, one lookup in
//! `endpoints`, whatever the number of services. The agent keeps the table's picture in
//! memory ([`ServicesState`]) and changes only the elements a service's change touches, in
//! one transaction (a changed value is a delete and an add of the same key in that
//! transaction: nobody sees a half-applied service). Elements several services need (a VIP
//! with several ports, a pod behind several services) are counted by owner.

mod ruleset;
pub(crate) mod wire;

pub use ruleset::table_script;

use super::objects::{elem_requests, Elem, ElemChange, ElemRef};
use super::{io, run_nft};
use crate::conntrack::{self, Flow};
use crate::nfnetlink::{NfNetlink, Request};
use crate::rules::{LbEndpoint, Proto, ServiceLb};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use wire::FAMILY;

pub const TABLE: &str = "reef-services";

/// The sets and maps, in the order changes are sent (verdict maps last on add, so a jump
/// never points at a slot that does not exist yet within the batch's effect).
const MAPS: [&str; 9] = [
    "vips",
    "endpoints",
    "np-endpoints",
    "np-all",
    "np-masq",
    "hairpin",
    "services",
    "aff-services",
    "nodeports",
];

/// A service port's identity.
pub type ServiceKey = (IpAddr, Proto, u16);

/// An element's value, inline: every data value of the table is 8 bytes (pod . port).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Set,
    Data([u8; 8]),
    Jump(String),
}

impl Value {
    fn data(d: &[u8]) -> Value {
        let mut v = [0u8; 8];
        let n = d.len().min(8);
        v[..n].copy_from_slice(&d[..n]);
        Value::Data(v)
    }

    fn elem<'a>(&'a self, key: &'a [u8]) -> ElemRef<'a> {
        let mut e = ElemRef {
            key,
            ..ElemRef::default()
        };
        match self {
            Value::Set => {}
            Value::Data(d) => e.data = Some(d),
            Value::Jump(c) => e.jump = Some(c),
        }
        e
    }

    fn of(e: &Elem) -> Value {
        match (&e.data, &e.jump) {
            (_, Some(c)) => Value::Jump(c.clone()),
            (Some(d), None) if d.len() == 8 => Value::data(d),
            // Not a value this table holds: never equal to a wanted one, so it is replaced.
            (Some(_), None) => Value::Jump(String::new()),
            (None, None) => Value::Set,
        }
    }
}

/// One element: its map (index into [`MAPS`]) and key, inline (keys are at most 16 bytes),
/// so the picture of 100,000 elements holds no per-key allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Slot {
    map: u8,
    len: u8,
    key: [u8; 16],
}

impl Slot {
    fn new(map: &'static str, key: &[u8]) -> Slot {
        let mut k = [0u8; 16];
        let n = key.len().min(16);
        k[..n].copy_from_slice(&key[..n]);
        Slot {
            map: MAPS.iter().position(|m| *m == map).unwrap_or(0) as u8,
            len: n as u8,
            key: k,
        }
    }

    #[cfg(test)]
    fn map(&self) -> &'static str {
        MAPS[usize::from(self.map)]
    }

    fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.len)]
    }
}

/// One element to change: its slot, whether the kernel holds one there, the wanted value.
type Change = (Slot, bool, Option<Value>);

/// Who needs an element: nearly always one service port.
#[derive(Debug, Clone)]
enum Owners {
    One(ServiceKey, Value),
    Many(BTreeMap<ServiceKey, Value>),
}

impl Owners {
    /// The value installed: the first owner's.
    fn value(&self) -> &Value {
        match self {
            Owners::One(_, v) => v,
            Owners::Many(m) => m.values().next().unwrap_or(&Value::Set),
        }
    }

    fn insert(&mut self, key: ServiceKey, v: Value) {
        match self {
            Owners::One(k, old) if *k == key => *old = v,
            Owners::One(k, old) => {
                let mut m = BTreeMap::new();
                m.insert(*k, old.clone());
                m.insert(key, v);
                *self = Owners::Many(m);
            }
            Owners::Many(m) => {
                m.insert(key, v);
            }
        }
    }

    /// Removes `key`; true when nobody is left.
    fn remove(&mut self, key: &ServiceKey) -> bool {
        match self {
            Owners::One(k, _) => k == key,
            Owners::Many(m) => {
                m.remove(key);
                if m.len() == 1 {
                    if let Some((k, v)) = m.pop_first() {
                        *self = Owners::One(k, v);
                    }
                    return false;
                }
                m.is_empty()
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Owners::One(..) => 1,
            Owners::Many(m) => m.len(),
        }
    }
}

/// The elements one service port needs. IPv6 VIPs are not programmed yet (the table is `ip`).
fn render(lb: &ServiceLb) -> Vec<(Slot, Value)> {
    let IpAddr::V4(vip) = lb.vip else {
        return Vec::new();
    };
    let v4 = |e: &LbEndpoint| match e.ip {
        IpAddr::V4(a) => Some((a, e.port)),
        IpAddr::V6(_) => None,
    };
    let eps: Vec<(Ipv4Addr, u16, bool)> = lb
        .endpoints
        .iter()
        .filter_map(|e| v4(e).map(|(ip, port)| (ip, port, e.local)))
        .collect();
    let mut out: Vec<(Slot, Value)> = vec![(Slot::new("vips", &wire::vip_key(vip)), Value::Set)];
    if !eps.is_empty() {
        out.push((
            Slot::new("services", &wire::service_key(vip, lb.proto, lb.port)),
            Value::Jump(wire::lb_chain(eps.len())),
        ));
        for (slot, (ip, port, local)) in eps.iter().enumerate() {
            out.push((
                Slot::new(
                    "endpoints",
                    &wire::endpoint_key(vip, lb.proto, lb.port, slot as u32),
                ),
                Value::data(&wire::endpoint_data(*ip, *port)),
            ));
            // Only a pod of this host can reach itself through this host's table: a remote
            // pod's own traffic is translated by its own host.
            if *local {
                out.push((Slot::new("hairpin", &wire::hairpin_key(*ip)), Value::Set));
            }
        }
        if let Some(t) = lb.affinity_timeout {
            out.push((
                Slot::new("aff-services", &wire::service_key(vip, lb.proto, lb.port)),
                Value::Jump(wire::aff_chain(t)),
            ));
        }
    }
    if let Some(np) = lb.node_port {
        out.push((
            Slot::new("np-all", &wire::node_port_key(lb.proto, np)),
            Value::Set,
        ));
        if !lb.node_port_local {
            out.push((
                Slot::new("np-masq", &wire::node_port_key(lb.proto, np)),
                Value::Set,
            ));
        }
        let np_eps: Vec<(Ipv4Addr, u16)> = lb
            .endpoints
            .iter()
            .filter(|e| e.local || !lb.node_port_local)
            .filter_map(v4)
            .collect();
        if !np_eps.is_empty() {
            out.push((
                Slot::new("nodeports", &wire::node_port_key(lb.proto, np)),
                Value::Jump(wire::np_lb_chain(np_eps.len())),
            ));
            for (slot, (ip, port)) in np_eps.iter().enumerate() {
                out.push((
                    Slot::new(
                        "np-endpoints",
                        &wire::node_port_endpoint_key(lb.proto, np, slot as u32),
                    ),
                    Value::data(&wire::endpoint_data(*ip, *port)),
                ));
            }
        }
    }
    out
}

/// The table's picture: what each service port rendered, who needs each element, and what
/// the kernel holds.
#[derive(Debug, Default)]
pub struct ServicesState {
    /// Per service port, as programmed (endpoints in slot order); re-rendered to undo it.
    programmed: HashMap<ServiceKey, ServiceLb>,
    owners: HashMap<Slot, Owners>,
    installed: HashMap<Slot, Value>,
    chains: BTreeSet<String>,
    /// The kernel was read and matches `installed`; false forces a full sync.
    in_sync: bool,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicesApplied {
    /// Element changes sent (0 when the kernel already matched).
    pub changes: usize,
    /// Service ports programmed now.
    pub services: usize,
}

impl ServicesState {
    fn effective(&self, slot: &Slot) -> Option<&Value> {
        self.owners.get(slot).map(Owners::value)
    }

    fn own(&mut self, key: ServiceKey, lb: Option<&ServiceLb>) -> Vec<Slot> {
        let mut touched = Vec::new();
        let lb: Option<ServiceLb> = lb.map(|new| keep_slots(self.programmed.get(&key), new));
        let lb = lb.as_ref();
        if let Some(old) = self.programmed.remove(&key) {
            for (slot, _) in render(&old) {
                if let Some(o) = self.owners.get_mut(&slot) {
                    if o.remove(&key) {
                        self.owners.remove(&slot);
                    }
                }
                touched.push(slot);
            }
        }
        if let Some(lb) = lb {
            for (slot, v) in render(lb) {
                match self.owners.get_mut(&slot) {
                    Some(o) => o.insert(key, v),
                    None => {
                        self.owners.insert(slot, Owners::One(key, v));
                    }
                }
                touched.push(slot);
            }
            self.programmed.insert(key, lb.clone());
        }
        touched
    }

    /// `lb` with its endpoints in the slot order the kernel's `endpoints` map holds them
    /// (None when it holds none of them).
    fn kernel_order(&self, lb: &ServiceLb) -> Option<ServiceLb> {
        let IpAddr::V4(vip) = lb.vip else {
            return None;
        };
        let mut order = Vec::new();
        for slot in 0..lb.endpoints.len().max(1) * 2 {
            let key = Slot::new(
                "endpoints",
                &wire::endpoint_key(vip, lb.proto, lb.port, slot as u32),
            );
            let Some(Value::Data(d)) = self.installed.get(&key) else {
                break;
            };
            if let Some(e) = lb.endpoints.iter().find(|e| match e.ip {
                IpAddr::V4(ip) => wire::endpoint_data(ip, e.port) == d[..],
                IpAddr::V6(_) => false,
            }) {
                order.push(*e);
            }
        }
        (!order.is_empty()).then(|| ServiceLb {
            endpoints: order,
            ..lb.clone()
        })
    }

    /// Reads every element of the table into `installed` (creating the table if absent).
    fn read_kernel(&mut self, nl: &mut NfNetlink) -> Result<()> {
        if !nl
            .table_exists(FAMILY, TABLE)
            .map_err(io("query nftables"))?
        {
            run_nft(&table_script(), &format!("create table ip {TABLE}"))?;
        }
        self.installed.clear();
        for m in MAPS {
            for e in nl
                .dump_elements(FAMILY, TABLE, m)
                .map_err(io("list service elements"))?
            {
                let v = Value::of(&e);
                self.installed.insert(Slot::new(m, &e.key), v);
            }
        }
        self.chains.clear();
        self.in_sync = true;
        Ok(())
    }

    /// The requests creating the chains `changes` jump to that do not exist yet.
    fn chain_requests(&mut self, nl: &mut NfNetlink, wanted: &[String]) -> Result<Vec<Request>> {
        let mut reqs = Vec::new();
        for c in wanted {
            if self.chains.contains(c) {
                continue;
            }
            let present = !nl
                .dump_rules(FAMILY, TABLE, c)
                .map_err(io("list service chains"))?
                .is_empty();
            if !present {
                if let Some(n) = c.strip_prefix("np-lb-").and_then(|n| n.parse().ok()) {
                    reqs.extend(wire::np_lb_chain_requests(n));
                } else if let Some(n) = c.strip_prefix("lb-").and_then(|n| n.parse().ok()) {
                    reqs.extend(wire::lb_chain_requests(n));
                } else if let Some(t) = c.strip_prefix("aff-").and_then(|t| t.parse().ok()) {
                    run_nft(&wire::aff_chain_script(t), &format!("add chain {c}"))?;
                }
            }
            self.chains.insert(c.clone());
        }
        Ok(reqs)
    }

    /// The difference between `installed` and the owners' values for `slots`: per slot that
    /// differs, whether the kernel has an element there (to delete) and the wanted value
    /// (None: nothing). Pure, so the diff is tested without a kernel.
    fn changes(&self, slots: Vec<Slot>) -> Vec<Change> {
        let mut after: Vec<Change> = Vec::new();
        let mut seen: HashSet<Slot> = HashSet::with_capacity(slots.len());
        for slot in slots {
            if !seen.insert(slot) {
                continue;
            }
            let want = self.effective(&slot);
            let have = self.installed.get(&slot);
            if want == have {
                continue;
            }
            after.push((slot, have.is_some(), want.cloned()));
        }
        after
    }

    /// `installed` once the kernel took `after`.
    fn record(&mut self, after: Vec<Change>) {
        for (slot, _, v) in after {
            match v {
                Some(v) => self.installed.insert(slot, v),
                None => self.installed.remove(&slot),
            };
        }
    }

    /// Sends the difference between `installed` and the owners' values for `slots`.
    fn commit(&mut self, nl: &mut NfNetlink, slots: Vec<Slot>) -> Result<usize> {
        let after = self.changes(slots);
        if after.is_empty() {
            return Ok(0);
        }
        let jumps: Vec<String> = after
            .iter()
            .filter_map(|(_, _, want)| match want {
                Some(Value::Jump(c)) => Some(c.clone()),
                _ => None,
            })
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        let mut reqs = self.chain_requests(nl, &jumps)?;
        // Per map (index into MAPS), borrowed from `after`.
        let mut dels: [Vec<ElemRef>; MAPS.len()] = Default::default();
        let mut adds: [Vec<ElemRef>; MAPS.len()] = Default::default();
        for (slot, had, want) in &after {
            let m = usize::from(slot.map);
            if *had {
                dels[m].push(ElemRef {
                    key: slot.key(),
                    ..ElemRef::default()
                });
            }
            if let Some(w) = want {
                adds[m].push(w.elem(slot.key()));
            }
        }
        let mut changes: Vec<ElemChange<ElemRef>> = Vec::new();
        // Jumps go first on delete and last on add.
        for (m, name) in MAPS.iter().enumerate().rev() {
            if !dels[m].is_empty() {
                changes.push(ElemChange::Del {
                    set: name,
                    elems: &dels[m],
                });
            }
        }
        for (m, name) in MAPS.iter().enumerate() {
            if !adds[m].is_empty() {
                changes.push(ElemChange::Add {
                    set: name,
                    elems: &adds[m],
                    exclusive: false,
                });
            }
        }
        reqs.extend(elem_requests(FAMILY, TABLE, &changes));
        if let Err(e) = nl.transaction(reqs) {
            // The kernel is not what we think (someone changed the table): read it again.
            self.in_sync = false;
            self.chains.clear();
            return Err(Error::Io {
                context: format!("program services (table ip {TABLE})"),
                source: e,
            });
        }
        let n = after.len();
        self.record(after);
        Ok(n)
    }

    /// The owners for exactly `all` (what was programmed `before` gone), and every slot the
    /// kernel or the owners name: the full sync's part that needs no kernel.
    fn own_all(&mut self, before: &HashMap<ServiceKey, ServiceLb>, all: &[ServiceLb]) -> Vec<Slot> {
        self.owners.clear();
        for lb in all {
            // Slots as programmed before, or as the kernel holds them (a restarted agent):
            // a resync after any churn then changes nothing.
            let prev = before
                .get(&lb.key())
                .cloned()
                .or_else(|| self.kernel_order(lb));
            let ordered = keep_slots(prev.as_ref(), lb);
            self.own(lb.key(), Some(&ordered));
        }
        let mut slots: Vec<Slot> = self.installed.keys().cloned().collect();
        slots.extend(self.owners.keys().cloned());
        slots
    }

    /// Makes the table exactly `all` (reading the kernel first): changes nothing when the
    /// kernel already matches.
    pub fn sync(&mut self, nl: &mut NfNetlink, all: &[ServiceLb]) -> Result<ServicesApplied> {
        let before = std::mem::take(&mut self.programmed);
        self.read_kernel(nl)?;
        let slots = self.own_all(&before, all);
        let changes = self.commit(nl, slots)?;
        let gone: Vec<(ServiceKey, LbEndpoint)> = before
            .iter()
            .flat_map(|(k, old)| {
                let now = self.programmed.get(k);
                crate::rules::removed_endpoints(*k, old, now)
            })
            .collect();
        self.forget_endpoints(nl, &gone);
        Ok(ServicesApplied {
            changes,
            services: self.programmed.len(),
        })
    }

    /// Applies the changed service ports only (`None`: the port is gone). Falls back to a
    /// full sync when the picture may be stale.
    pub fn update(
        &mut self,
        nl: &mut NfNetlink,
        changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied> {
        if !self.in_sync {
            self.read_kernel(nl)?;
            let mut slots: Vec<Slot> = self.installed.keys().cloned().collect();
            slots.extend(self.owners.keys().cloned());
            self.commit(nl, slots)?;
        }
        let mut slots = Vec::new();
        let mut gone = Vec::new();
        for (k, lb) in changed {
            if let Some(old) = self.programmed.get(k) {
                gone.extend(crate::rules::removed_endpoints(*k, old, lb.as_ref()));
            }
            slots.extend(self.own(*k, lb.as_ref()));
        }
        let changes = self.commit(nl, slots)?;
        self.forget_endpoints(nl, &gone);
        Ok(ServicesApplied {
            changes,
            services: self.programmed.len(),
        })
    }

    /// After endpoints left: their UDP conntrack entries (a flow would keep reaching the old
    /// pod for as long as it sends) and the affinity entries that pin clients to them.
    /// Best effort: the data plane is already right for new connections.
    fn forget_endpoints(&mut self, nl: &mut NfNetlink, gone: &[(ServiceKey, LbEndpoint)]) {
        if gone.is_empty() {
            return;
        }
        let flows: Vec<Flow> = gone
            .iter()
            .filter(|((_, proto, _), _)| *proto == Proto::Udp)
            .map(|(_, e)| Flow::ToEndpoint {
                proto: Proto::Udp.number(),
                ip: e.ip,
                port: e.port,
            })
            .collect();
        if !flows.is_empty() {
            let _ = conntrack::flush_flows(nl, &flows);
        }
        let stale: BTreeSet<(Vec<u8>, Vec<u8>)> = gone
            .iter()
            .filter_map(|((vip, proto, port), e)| match (vip, e.ip) {
                (IpAddr::V4(v), IpAddr::V4(ip)) => Some((
                    wire::service_key(*v, *proto, *port),
                    wire::endpoint_data(ip, e.port),
                )),
                _ => None,
            })
            .collect();
        let Ok(aff) = nl.dump_elements(FAMILY, TABLE, "aff") else {
            return;
        };
        let victims: Vec<Elem> = aff
            .into_iter()
            .filter(|e| {
                let svc = e.key.get(4..).map(<[u8]>::to_vec).unwrap_or_default();
                e.data
                    .as_ref()
                    .is_some_and(|d| stale.contains(&(svc, d.clone())))
            })
            .map(|e| Elem {
                key: e.key,
                ..Elem::default()
            })
            .collect();
        if !victims.is_empty() {
            let _ = nl.change_elements(
                FAMILY,
                TABLE,
                &[ElemChange::Del {
                    set: "aff",
                    elems: &victims,
                }],
            );
        }
    }

    /// Removes the whole table (agent teardown on request; idempotent).
    pub fn remove(&mut self) -> Result<()> {
        *self = ServicesState::default();
        run_nft(
            &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"),
            &format!("delete table ip {TABLE}"),
        )
        .map(|_| ())
    }
}

/// `new` with its endpoints in `prev`'s slot order: one that left is replaced by the last
/// one, new ones go at the end, so a change rewrites as few elements as possible.
fn keep_slots(prev: Option<&ServiceLb>, new: &ServiceLb) -> ServiceLb {
    let Some(prev) = prev else {
        return new.clone();
    };
    let mut order = prev.endpoints.clone();
    let mut i = order.len();
    while i > 0 {
        i -= 1;
        if !new.endpoints.contains(&order[i]) {
            order.swap_remove(i);
        }
    }
    for e in &new.endpoints {
        if !order.contains(e) {
            order.push(*e);
        }
    }
    ServiceLb {
        endpoints: order,
        ..new.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(vip: &str, port: u16, eps: &[(&str, bool)]) -> ServiceLb {
        ServiceLb {
            vip: vip.parse().expect("vip"),
            proto: Proto::Tcp,
            port,
            node_port: Some(30000 + port),
            endpoints: eps
                .iter()
                .map(|(ip, local)| LbEndpoint {
                    ip: ip.parse().expect("ip"),
                    port: 8080,
                    local: *local,
                })
                .collect(),
            affinity_timeout: None,
            node_port_local: false,
        }
    }

    fn maps(elems: &[(Slot, Value)]) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for (slot, _) in elems {
            *m.entry(slot.map()).or_default() += 1;
        }
        m
    }

    #[test]
    fn a_service_port_renders_its_elements() {
        let r = render(&lb(
            "10.96.0.10",
            80,
            &[("10.1.0.2", true), ("10.2.0.2", false)],
        ));
        assert_eq!(
            maps(&r),
            BTreeMap::from([
                ("vips", 1),
                ("services", 1),
                ("endpoints", 2),
                ("hairpin", 1),
                ("np-all", 1),
                ("np-masq", 1),
                ("nodeports", 1),
                ("np-endpoints", 2),
            ])
        );
        let jump = r
            .iter()
            .find(|(slot, _)| slot.map() == "services")
            .map(|(_, v)| v.clone());
        assert_eq!(jump, Some(Value::Jump("lb-2".into())));
        // No endpoints: only what makes it refuse (the VIP, the node port).
        let none = render(&lb("10.96.0.10", 80, &[]));
        assert_eq!(
            maps(&none),
            BTreeMap::from([("vips", 1), ("np-all", 1), ("np-masq", 1)])
        );
        // Local policy: node ports reach local endpoints only, unmasqueraded.
        let mut local = lb("10.96.0.10", 80, &[("10.1.0.2", true), ("10.2.0.2", false)]);
        local.node_port_local = true;
        let r = render(&local);
        assert_eq!(maps(&r).get("np-endpoints"), Some(&1));
        assert_eq!(maps(&r).get("np-masq"), None);
    }

    #[test]
    fn shared_elements_stay_while_any_owner_needs_them() {
        let mut s = ServicesState::default();
        let a = lb("10.96.0.10", 80, &[("10.1.0.2", true)]);
        let b = lb("10.96.0.10", 81, &[("10.1.0.2", true)]);
        s.own(a.key(), Some(&a));
        s.own(b.key(), Some(&b));
        let vip = Slot::new("vips", &wire::vip_key("10.96.0.10".parse().expect("ip")));
        assert_eq!(s.owners[&vip].len(), 2);
        s.own(a.key(), None);
        assert_eq!(s.effective(&vip), Some(&Value::Set));
        s.own(b.key(), None);
        assert_eq!(s.effective(&vip), None);
        assert!(s.owners.is_empty() && s.programmed.is_empty());
    }

    mod diff {
        //! The table's diff over any kernel state: a full sync from whatever the kernel holds
        //! (elements of Reef's services, stale or foreign values, junk) leaves exactly the
        //! elements the services render, and an update changes only the slots it touched
        //! while keeping the whole table exact.

        use super::*;
        use proptest::prelude::*;

        fn service() -> impl Strategy<Value = ServiceLb> {
            let endpoint = (1u8..6, 8080u16..8082, any::<bool>());
            (
                0u8..5,
                prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)],
                80u16..82,
                proptest::option::of(30000u16..30002),
                proptest::collection::vec(endpoint, 0..4),
                proptest::option::of(prop_oneof![Just(10u32), Just(600)]),
                any::<bool>(),
            )
                .prop_map(
                    |(v, proto, port, node_port, eps, affinity_timeout, local)| {
                        // VIP 4 is IPv6: rendered as nothing (the table is `ip`).
                        let vip = match v {
                            4 => IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 10)),
                            v => IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10 + v)),
                        };
                        let mut endpoints: Vec<LbEndpoint> = Vec::new();
                        for (h, port, local) in eps {
                            let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 0, h));
                            if !endpoints.iter().any(|e| e.ip == ip && e.port == port) {
                                endpoints.push(LbEndpoint { ip, port, local });
                            }
                        }
                        ServiceLb {
                            vip,
                            proto,
                            port,
                            node_port,
                            endpoints,
                            affinity_timeout,
                            node_port_local: local,
                        }
                    },
                )
        }

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Set),
                any::<[u8; 8]>().prop_map(Value::Data),
                (1usize..4).prop_map(|n| Value::Jump(wire::lb_chain(n))),
            ]
        }

        /// What the kernel may hold: elements of other services' renderings with any value,
        /// and junk keys in any map.
        fn kernel() -> impl Strategy<Value = HashMap<Slot, Value>> {
            let rendered =
                (service(), proptest::collection::vec(value(), 16)).prop_map(|(lb, values)| {
                    render(&lb)
                        .into_iter()
                        .zip(values)
                        .map(|((slot, v), other)| (slot, if slot.len % 2 == 1 { other } else { v }))
                        .collect::<Vec<_>>()
                });
            let junk = (
                0..MAPS.len(),
                proptest::collection::vec(any::<u8>(), 0..16),
                value(),
            )
                .prop_map(|(m, key, v)| vec![(Slot::new(MAPS[m], &key), v)]);
            proptest::collection::vec(prop_oneof![rendered, junk], 0..6)
                .prop_map(|parts| parts.into_iter().flatten().collect())
        }

        /// Applies `after` to a model of the kernel as the transaction does: delete where
        /// the kernel has an element, then add the wanted value.
        fn apply(
            k: &mut HashMap<Slot, Value>,
            after: &[Change],
        ) -> std::result::Result<(), TestCaseError> {
            for (slot, had, want) in after {
                prop_assert_eq!(*had, k.contains_key(slot), "{:?}", slot);
                k.remove(slot);
                if let Some(w) = want {
                    k.insert(*slot, w.clone());
                }
            }
            Ok(())
        }

        fn effective(s: &ServicesState) -> HashMap<Slot, Value> {
            s.owners
                .iter()
                .map(|(k, o)| (*k, o.value().clone()))
                .collect()
        }

        fn rendered(s: &ServicesState) -> HashSet<Slot> {
            s.programmed
                .values()
                .flat_map(|lb| render(lb).into_iter().map(|(slot, _)| slot))
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn sync_then_updates_leave_exactly_the_wanted_elements(
                mut k in kernel(),
                all in proptest::collection::vec(service(), 0..6),
                updates in proptest::collection::vec(
                    (0usize..8, proptest::option::of(service())), 0..8),
            ) {
                // Full sync: the kernel as read, the owners of `all`, every slot either names.
                let mut s = ServicesState { installed: k.clone(), ..ServicesState::default() };
                let slots = s.own_all(&HashMap::new(), &all);
                let after = s.changes(slots);
                apply(&mut k, &after)?;
                s.record(after);
                prop_assert_eq!(&k, &s.installed);
                prop_assert_eq!(&k, &effective(&s));
                prop_assert_eq!(k.keys().copied().collect::<HashSet<_>>(), rendered(&s));
                // A second full sync over the same services changes nothing.
                let before = std::mem::take(&mut s.programmed);
                let slots = s.own_all(&before, &all);
                prop_assert!(s.changes(slots).is_empty());

                // Updates: a service port changes, appears or goes (keys of `all` or new).
                for (i, lb) in updates {
                    let key = match (all.get(i), &lb) {
                        (Some(old), _) => old.key(),
                        (None, Some(new)) => new.key(),
                        (None, None) => continue,
                    };
                    let lb = lb.map(|l| ServiceLb { vip: key.0, proto: key.1, port: key.2, ..l });
                    let touched = s.own(key, lb.as_ref());
                    let after = s.changes(touched.clone());
                    prop_assert!(after.iter().all(|(slot, _, _)| touched.contains(slot)));
                    apply(&mut k, &after)?;
                    s.record(after);
                    prop_assert_eq!(&k, &effective(&s));
                    prop_assert_eq!(k.keys().copied().collect::<HashSet<_>>(), rendered(&s));
                }
            }
        }
    }
}
