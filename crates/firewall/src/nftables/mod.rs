//! The nftables driver: every rule over nf_tables netlink, typed by
//! `netlink-packet-netfilter`. Per-network masquerade (`masquerade`), host port mappings
//! (`portmap`) and the agent's natOutgoing (`nat`) each own one table.
//!
//! The masquerade and port-mapping tables are created once by `nft -f` (their rules hold
//! expressions the crate has no types for: fib, ct, nat, bitwise marks); after that a pod's
//! ADD/DEL is one netlink batch of element changes, no `nft` process on the hot path.

pub mod guard;
mod masquerade;
pub(crate) mod nat;
mod objects;
pub mod policy;
pub mod portmap;
pub mod services;

pub use masquerade::{table_name, table_script};
pub use objects::NFPROTO_INET;

use crate::conntrack;
use crate::driver::FirewallDriver;
use crate::nfnetlink::NfNetlink;
use crate::rules::{Masquerade, NatPool, Owner, PodGuard, PolicyRuleset, PortMapping, ServiceLb};
use crate::{Error, Result};
use portmap::Ops;
use services::{ServiceKey, ServicesApplied};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The nftables driver; holds its nfnetlink socket until dropped (see `FirewallDriver`).
#[derive(Default)]
pub struct Nftables {
    nl: Option<NfNetlink>,
    /// The services table's picture (the agent's driver lives as long as the agent).
    services: services::ServicesState,
    /// The policy table's picture (the agent's).
    policy: policy::PolicyState,
}

pub(crate) fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

/// Runs `nft -f -` on `script` (one transaction); its stdout.
pub fn run_nft(script: &str, context: &str) -> Result<String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run nft (is the nftables package installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(io("write nft script"))?;
    }
    let out = child.wait_with_output().map_err(io("wait for nft"))?;
    if !out.status.success() {
        return Err(Error::Nft {
            context: context.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How long the lingering child keeps the socket after this process exited. Releasing it
/// takes nf_tables' commit mutex and, while the commit's destroy work is pending, holds it
/// for a grace period, stalling every other commit on the host (the next pod's ADD).
/// Pending work finishes by itself within a grace period or two: release after that.
const LINGER: Duration = Duration::from_millis(40);

impl Nftables {
    pub fn new() -> Nftables {
        Nftables::default()
    }

    pub(crate) fn socket(&mut self) -> Result<&mut NfNetlink> {
        if self.nl.is_none() {
            self.nl = Some(NfNetlink::open().map_err(io("open nfnetlink socket"))?);
        }
        self.nl
            .as_mut()
            .ok_or_else(|| Error::Check("nfnetlink socket unavailable".into()))
    }

    /// Closes the kernel connection without waiting for it. Closing an nf_tables socket
    /// right after a commit blocks for an RCU grace period (~10 ms, see `FirewallDriver`);
    /// a process with nothing else to overlap it with hands its socket to a forked child
    /// that outlives it (`reef_netlink::linger`), so the wait (if any) happens there. Falls
    /// back to a plain close when the process has other threads or fork fails.
    pub fn close_in_background(self) {
        self.finish_in_background(|_| {})
    }

    /// Closes the kernel connection in a detached child (see `close_in_background`) that
    /// first deletes the conntrack entries that would defeat UDP mappings: those DNATed
    /// through `removed` ones (an ongoing flow would keep reaching the old pod) and the
    /// untranslated ones to `added` ones (a flow that began before the mapping would keep
    /// bypassing it). That is a walk of the whole conntrack table, 10-30 ms here, so ADD and
    /// DEL return without waiting for it; it completes a few milliseconds later.
    pub fn close_flushing_conntrack(self, removed: &[PortMapping], added: &[PortMapping]) {
        let flows = portmap::udp_flows(removed, added);
        self.finish_in_background(move |nl| {
            if !flows.is_empty() {
                let _ = conntrack::flush_flows(nl, &flows);
            }
        })
    }

    /// Like `close_in_background`, and the child first runs `work` on the socket (work that
    /// the caller does not need to wait for). Without a child, `work` runs here first.
    fn finish_in_background(mut self, work: impl FnOnce(&mut NfNetlink)) {
        let Some(mut nl) = self.nl.take() else { return };
        let run = || work(&mut nl);
        if let Err(run) = reef_netlink::linger::outlive_parent(run, LINGER) {
            run();
        }
    }
}

/// The one driver trait, nftables flavour: every method opens the socket on first use.
impl FirewallDriver for Nftables {
    fn add_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
        masquerade::add(self.socket()?, m, pod_ips)
    }

    fn del_masquerade(&mut self, network: &str, pod_ips: &[IpAddr]) -> Result<()> {
        masquerade::del(self.socket()?, network, pod_ips)
    }

    fn check_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
        masquerade::check(self.socket()?, m, pod_ips)
    }

    fn add_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        Ops::add_port_mappings(self.socket()?, owner, maps)
    }

    fn del_port_mappings(
        &mut self,
        owner: &Owner,
        known: Option<&[PortMapping]>,
    ) -> Result<Vec<PortMapping>> {
        Ops::del_port_mappings(self.socket()?, owner, known)
    }

    fn check_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        Ops::check_port_mappings(self.socket()?, owner, maps)
    }

    fn flush_conntrack(&mut self, removed: &[PortMapping]) -> Result<()> {
        Ops::flush_conntrack(self.socket()?, removed)
    }

    fn gc_port_mappings(
        &mut self,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<PortMapping>> {
        Ops::gc_port_mappings(self.socket()?, network, valid)
    }

    fn port_mapping_status(&mut self) -> Result<()> {
        Ops::port_mapping_status(self.socket()?)
    }

    fn port_mappings(&mut self) -> Result<Vec<PortMapping>> {
        Ops::port_mappings(self.socket()?)
    }

    fn sync_nat_outgoing(&mut self, pools: &[NatPool]) -> Result<()> {
        nat::sync(self.socket()?, pools)
    }

    fn remove_nat_outgoing(&mut self) -> Result<()> {
        nat::remove(self.socket()?)
    }

    fn sync_services(&mut self, all: &[ServiceLb]) -> Result<ServicesApplied> {
        let mut st = std::mem::take(&mut self.services);
        let res = st.sync(self.socket()?, all);
        self.services = st;
        res
    }

    fn update_services(
        &mut self,
        changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied> {
        let mut st = std::mem::take(&mut self.services);
        let res = st.update(self.socket()?, changed);
        self.services = st;
        res
    }

    fn remove_services(&mut self) -> Result<()> {
        self.services.remove()
    }

    fn hold_new_pod(&mut self, iface: &str, namespace: &str) -> Result<bool> {
        guard::hold(self.socket()?, iface, namespace)
    }

    fn add_pod_guard(
        &mut self,
        g: &PodGuard,
        masquerade: Option<(&Masquerade, &[IpAddr])>,
    ) -> Result<()> {
        guard::add_pod(self.socket()?, g, masquerade)
    }

    fn del_pod_guard(
        &mut self,
        iface: &str,
        ips: &[IpAddr],
        masquerade: Option<&str>,
    ) -> Result<()> {
        guard::del_pod(self.socket()?, iface, ips, masquerade)
    }

    fn gc_pod_guards(&mut self, ifaces: &[String]) -> Result<()> {
        guard::forget_ifaces(self.socket()?, ifaces)
    }

    fn sync_policy(&mut self, desired: &PolicyRuleset, full: bool) -> Result<bool> {
        if full {
            guard::ensure(self.socket()?)?;
        }
        let changed = self.policy.sync(desired, full)?;
        guard::set_namespaces(self.socket()?, &desired.namespaces)?;
        Ok(changed)
    }

    fn release_pods(&mut self, ifaces: &[String]) -> Result<()> {
        guard::release(self.socket()?, ifaces)
    }

    fn policy_counters(&mut self) -> Result<std::collections::BTreeMap<String, u64>> {
        policy::counters()
    }

    fn remove_policy(&mut self) -> Result<()> {
        self.policy.forget();
        policy::remove()
    }

    fn close_in_background(self: Box<Self>) {
        (*self).close_in_background()
    }

    fn close_flushing_conntrack(self: Box<Self>, removed: &[PortMapping], added: &[PortMapping]) {
        (*self).close_flushing_conntrack(removed, added)
    }
}
