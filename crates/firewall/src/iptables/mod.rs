//! The iptables driver: the same features as the nftables driver, for hosts whose firewall
//! is iptables (`iptables-nft` or `iptables-legacy`, see `backend`). kube-proxy's way:
//!
//! - everything that grows with pods is an ipset member (`ipset`), so a pod's ADD/DEL is
//!   one `ipset restore` and no rule changes;
//! - rules change in whole-table steps, one `iptables-restore --noflush` per change and
//!   table family, never one process per rule (the `iptables` crate runs one process per
//!   call, with no batching and no atomicity, so it is not used);
//! - Reef's rules live in Reef's chains (`REEF-...`, per-object chains named by a stable
//!   hash), each reached from a built-in chain by ONE jump rule inserted first, so the rules
//!   of Docker, firewalld or an operator are never rewritten or reordered.
//!
//! Read-decide-write sequences (is the jump there? is this host port free?) hold Reef's
//! lock (`lock`), so two plugin processes never both insert a jump or claim one port.

pub mod backend;
mod guard;
pub mod ipset;
mod lock;
mod masquerade;
mod nat;
mod policy;
mod portmap;
mod services;

pub use backend::{Backend, Family, BACKEND_ENV};
pub use masquerade::set_name as masquerade_set;

use crate::driver::FirewallDriver;
use crate::rules::{Masquerade, NatPool, Owner, PodGuard, PolicyRuleset, PortMapping, ServiceLb};
use crate::Result;
use crate::{ServiceKey, ServicesApplied};
use backend::Section;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Reef's chain prefix: every chain the driver owns starts with it.
pub const CHAIN_PREFIX: &str = "REEF-";
/// Reef's ipset prefix.
pub const SET_PREFIX: &str = "reef-";

/// nat POSTROUTING's one jump target (masquerade, natOutgoing, hairpin).
pub(crate) const POSTROUTING: &str = "REEF-POSTROUTING";

/// The iptables driver. The backend is detected on first use (pod ADD/DEL that only change
/// set members never need it).
#[derive(Default)]
pub struct Iptables {
    backend: Option<Backend>,
    /// The bridge layer of pod guards (nftables' `bridge reef-guard`, see `guard`).
    bridge: crate::nftables::Nftables,
    services: services::ServicesState,
    policy: policy::PolicyState,
}

impl Iptables {
    pub fn new() -> Iptables {
        Iptables::default()
    }

    /// A driver on a given backend (no detection).
    pub fn with_backend(backend: Backend) -> Iptables {
        Iptables {
            backend: Some(backend),
            ..Iptables::default()
        }
    }

    /// The netlink socket of the bridge layer (opened on first use).
    pub(crate) fn bridge_socket(&mut self) -> Result<&mut crate::nfnetlink::NfNetlink> {
        self.bridge.socket()
    }

    pub fn backend(&mut self) -> Result<Backend> {
        if let Some(b) = self.backend {
            return Ok(b);
        }
        let b = Backend::detect()?;
        self.backend = Some(b);
        Ok(b)
    }

    /// Reef's chains in `table` (and the built-in chains' jumps to them): chain -> rules.
    pub(crate) fn chains(
        &mut self,
        family: Family,
        table: &str,
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let dump = self.backend()?.save(family, table)?;
        Ok(backend::chains_of(&dump, CHAIN_PREFIX))
    }

    /// One `iptables-restore --noflush` of `sections` (nothing when they are all empty).
    pub(crate) fn restore(
        &mut self,
        family: Family,
        sections: &[Section],
        context: &str,
    ) -> Result<()> {
        let payload = backend::payload(sections);
        if payload.is_empty() {
            return Ok(());
        }
        self.backend()?.restore(family, &payload, context)
    }
}

/// Adds to `section` what makes `chain` exist and be jumped to from the start of `builtin`,
/// given the table's current `existing` chains (never re-declaring an existing chain, which
/// would flush it).
pub(crate) fn ensure_base_chain(
    existing: &BTreeMap<String, Vec<String>>,
    section: &mut Section,
    builtin: &str,
    chain: &str,
) {
    ensure_base_chain_matching(existing, section, builtin, "", chain)
}

/// Like [`ensure_base_chain`], with a match before the jump (`-m addrtype --dst-type LOCAL`).
pub(crate) fn ensure_base_chain_matching(
    existing: &BTreeMap<String, Vec<String>>,
    section: &mut Section,
    builtin: &str,
    matches: &str,
    chain: &str,
) {
    if !existing.contains_key(chain) && !section_declares(section, chain) {
        section.chain(chain);
    }
    let jump = format!("-j {chain}");
    let present = existing
        .get(builtin)
        .is_some_and(|rules| rules.iter().any(|r| r.ends_with(&jump)));
    if !present {
        let m = if matches.is_empty() {
            String::new()
        } else {
            format!("{matches} ")
        };
        section.line(format!("-I {builtin} 1 {m}{jump}"));
    }
}

fn section_declares(section: &Section, chain: &str) -> bool {
    section.declares(chain)
}

/// Adds set members (`ipset restore` lines); when that fails (a set does not exist yet),
/// runs `ensure` and tries once more. The hot path of a pod's ADD: one process.
pub(crate) fn add_members(
    fw: &mut Iptables,
    lines: &str,
    ensure: impl FnOnce(&mut Iptables) -> Result<()>,
) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    if ipset::restore(lines, "add the pod's addresses").is_ok() {
        return Ok(());
    }
    ensure(fw)?;
    ipset::restore(lines, "add the pod's addresses")
}

/// Deletes set members, ignoring sets that do not exist (DEL is idempotent).
pub(crate) fn del_members(lines: &str) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    if ipset::restore(lines, "remove the pod's addresses").is_ok() {
        return Ok(());
    }
    // Some set is missing: delete line by line from the sets that exist.
    let existing: std::collections::BTreeSet<String> = ipset::names()?.into_iter().collect();
    let kept: String = lines
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|s| existing.contains(s))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    ipset::restore(&kept, "remove the pod's addresses")
}

impl FirewallDriver for Iptables {
    fn add_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
        masquerade::add(self, m, pod_ips)
    }

    fn del_masquerade(&mut self, network: &str, pod_ips: &[IpAddr]) -> Result<()> {
        masquerade::del(network, pod_ips)
    }

    fn check_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
        masquerade::check(self, m, pod_ips)
    }

    fn add_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        portmap::add(self, owner, maps)
    }

    fn del_port_mappings(
        &mut self,
        owner: &Owner,
        known: Option<&[PortMapping]>,
    ) -> Result<Vec<PortMapping>> {
        portmap::del(self, owner, known)
    }

    fn check_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        portmap::check(self, owner, maps)
    }

    fn flush_conntrack(&mut self, removed: &[PortMapping]) -> Result<()> {
        portmap::flush_conntrack(removed)
    }

    fn gc_port_mappings(
        &mut self,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<PortMapping>> {
        portmap::gc(self, network, valid)
    }

    fn port_mapping_status(&mut self) -> Result<()> {
        portmap::status(self)
    }

    fn port_mappings(&mut self) -> Result<Vec<PortMapping>> {
        portmap::list(self)
    }

    fn sync_nat_outgoing(&mut self, pools: &[NatPool]) -> Result<()> {
        nat::sync(self, pools)
    }

    fn remove_nat_outgoing(&mut self) -> Result<()> {
        nat::remove(self)
    }

    fn sync_services(&mut self, all: &[ServiceLb]) -> Result<ServicesApplied> {
        let mut st = std::mem::take(&mut self.services);
        let res = st.sync(self, all);
        self.services = st;
        res
    }

    fn update_services(
        &mut self,
        changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied> {
        let mut st = std::mem::take(&mut self.services);
        let res = st.update(self, changed);
        self.services = st;
        res
    }

    fn remove_services(&mut self) -> Result<()> {
        let mut st = std::mem::take(&mut self.services);
        let res = st.remove(self);
        self.services = st;
        res
    }

    fn hold_new_pod(&mut self, iface: &str, namespace: &str) -> Result<bool> {
        guard::hold(self, iface, namespace)
    }

    fn add_pod_guard(
        &mut self,
        g: &PodGuard,
        masquerade: Option<(&Masquerade, &[IpAddr])>,
    ) -> Result<()> {
        guard::add_pod(self, g, masquerade)
    }

    fn del_pod_guard(
        &mut self,
        iface: &str,
        ips: &[IpAddr],
        masquerade: Option<&str>,
    ) -> Result<()> {
        guard::del_pod(self, iface, ips, masquerade)
    }

    fn gc_pod_guards(&mut self, ifaces: &[String]) -> Result<()> {
        guard::forget_ifaces(self, ifaces)
    }

    fn sync_policy(&mut self, desired: &PolicyRuleset, full: bool) -> Result<bool> {
        let mut st = std::mem::take(&mut self.policy);
        let res = st.sync(self, desired, full);
        self.policy = st;
        let changed = res?;
        guard::set_namespaces(self, &desired.namespaces)?;
        Ok(changed)
    }

    fn release_pods(&mut self, ifaces: &[String]) -> Result<()> {
        guard::release(self, ifaces)
    }

    fn policy_counters(&mut self) -> Result<BTreeMap<String, u64>> {
        policy::counters(self)
    }

    fn remove_policy(&mut self) -> Result<()> {
        let mut st = std::mem::take(&mut self.policy);
        let res = st.remove(self);
        self.policy = st;
        res
    }

    /// Every iptables step is a finished process; only the bridge layer's socket is left.
    fn close_in_background(self: Box<Self>) {
        self.bridge.close_in_background()
    }

    fn close_flushing_conntrack(self: Box<Self>, removed: &[PortMapping], added: &[PortMapping]) {
        portmap::flush_in_background(removed, added);
        self.bridge.close_in_background()
    }
}

/// Whether the family's iptables is usable here (IPv6 may be disabled on a host).
pub(crate) fn has_tables(fw: &mut Iptables, family: Family) -> Result<bool> {
    match family {
        Family::V4 => Ok(true),
        Family::V6 => {
            Ok(std::path::Path::new("/proc/net/if_inet6").exists() && fw.backend().is_ok())
        }
    }
}
