//! The one driver trait and the factory that picks its implementation.

use crate::iptables::Iptables;
use crate::nftables::services::{ServiceKey, ServicesApplied};
use crate::nftables::Nftables;
use crate::rules::{Masquerade, NatPool, Owner, PodGuard, PolicyRuleset, PortMapping, ServiceLb};
use crate::{Error, Result};
use std::net::IpAddr;

/// Everything Reef asks of a host firewall, as plain rule types. One implementation per
/// backend (`nftables`, `iptables`),
/// chosen by `driver`.
///
/// A driver keeps its kernel connection for its own lifetime: callers decide when it closes,
/// because closing an nf_tables socket right after a commit waits for an RCU grace period
/// (the kernel flushes the transaction-destroy work), which a caller can overlap with other
/// slow work such as a veth deletion, or leave to a detached child (`close_in_background`).
pub trait FirewallDriver {
    /// Makes sure the network's rules exist, then adds the pod's addresses to them.
    fn add_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()>;
    /// Removes the pod's addresses (idempotent; the network's rules stay, like the bridge).
    fn del_masquerade(&mut self, network: &str, pod_ips: &[IpAddr]) -> Result<()>;
    /// Verifies the network's rules exist and hold the pod's addresses.
    fn check_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()>;

    /// Installs `maps` for `owner`, atomically: all of them or none. A mapping whose host
    /// side another attachment already maps fails the whole call with `Error::Conflict`
    /// and changes nothing. Repeating the call for the same owner and mappings succeeds.
    fn add_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()>;
    /// Removes `owner`'s mappings; returns what was removed (for `flush_conntrack`). With
    /// `known`, only those, and only where the element still holds exactly that target;
    /// without, every element tagged with `owner`. Idempotent.
    fn del_port_mappings(
        &mut self,
        owner: &Owner,
        known: Option<&[PortMapping]>,
    ) -> Result<Vec<PortMapping>>;
    /// Verifies every mapping is installed with this target and owner.
    fn check_port_mappings(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()>;
    /// Deletes the conntrack entries of removed UDP mappings, which would otherwise keep
    /// steering an ongoing flow to the old pod. (A dump walks the kernel's whole conntrack
    /// hash table: ~10-30 ms here, whatever the number of entries.)
    fn flush_conntrack(&mut self, removed: &[PortMapping]) -> Result<()>;
    /// Removes `network`'s mappings whose owner is not among `valid` (containerID, ifname),
    /// and flushes the conntrack entries of the UDP ones.
    fn gc_port_mappings(
        &mut self,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<PortMapping>>;
    /// Whether port mappings can be installed here.
    fn port_mapping_status(&mut self) -> Result<()>;
    /// Every installed mapping, whoever owns it (none when the table is absent).
    fn port_mappings(&mut self) -> Result<Vec<PortMapping>>;

    /// natOutgoing (reef-agent): makes the node's rules exactly what `pools` ask for, in
    /// one atomic step: pod traffic from a pool with `nat_outgoing` to anywhere outside
    /// every pool is masqueraded. Idempotent.
    fn sync_nat_outgoing(&mut self, pools: &[NatPool]) -> Result<()>;
    /// Removes the natOutgoing rules (idempotent).
    fn remove_nat_outgoing(&mut self) -> Result<()>;

    /// Services (reef-agent): makes the node's load balancing exactly `all`, reading the
    /// kernel first; changes nothing when it already matches. The driver keeps the picture
    /// for [`FirewallDriver::update_services`].
    fn sync_services(&mut self, all: &[ServiceLb]) -> Result<ServicesApplied>;
    /// Applies changed service ports only (`None`: gone), one transaction. UDP conntrack
    /// entries and affinity entries of endpoints that left are deleted afterwards.
    fn update_services(
        &mut self,
        changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied>;
    /// Removes the services table (idempotent).
    fn remove_services(&mut self) -> Result<()>;

    /// Plugins, before IPAM: holds the new pod's host interface `iface` (nothing passes it)
    /// when this host's agent says `namespace` has a policy, so the pod is never reachable
    /// before its policy is programmed; whether it did. The agent releases it.
    fn hold_new_pod(&mut self, iface: &str, namespace: &str) -> Result<bool>;
    /// Plugins: the pod's anti-spoofing (only its addresses may leave its interface), its
    /// bridge's isolation from the host's other bridge networks and, with `masquerade`, what
    /// `add_masquerade` does, all in one step (one commit per ADD).
    fn add_pod_guard(
        &mut self,
        g: &PodGuard,
        masquerade: Option<(&Masquerade, &[IpAddr])>,
    ) -> Result<()>;
    /// Removes what `add_pod_guard` and `hold_new_pod` added (idempotent); without `ips`,
    /// every address the guard holds for `iface`. With `masquerade` (a network), what
    /// `del_masquerade` does, in the same step.
    fn del_pod_guard(
        &mut self,
        iface: &str,
        ips: &[IpAddr],
        masquerade: Option<&str>,
    ) -> Result<()>;
    /// GC: removes every guard element of these host interfaces (stale attachments').
    fn gc_pod_guards(&mut self, ifaces: &[String]) -> Result<()>;

    /// Network policy (reef-agent): makes the node's policy table `desired` in one
    /// transaction (`full`: replace it whole, at start), and the namespaces whose new pods are
    /// held. Whether the table changed.
    fn sync_policy(&mut self, desired: &PolicyRuleset, full: bool) -> Result<bool>;
    /// Releases held pods whose policy is now programmed.
    fn release_pods(&mut self, ifaces: &[String]) -> Result<()>;
    /// The policy table's named counters: name -> packets.
    fn policy_counters(&mut self) -> Result<std::collections::BTreeMap<String, u64>>;
    /// Removes the policy table (idempotent).
    fn remove_policy(&mut self) -> Result<()>;

    /// Closes the kernel connection without making the caller wait for it.
    fn close_in_background(self: Box<Self>);
    /// Closes the kernel connection, first (in the background) deleting the conntrack
    /// entries that would defeat the `removed` and `added` UDP mappings.
    fn close_flushing_conntrack(self: Box<Self>, removed: &[PortMapping], added: &[PortMapping]);
}

/// The firewall backends Reef can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverKind {
    /// nf_tables over netlink (the default).
    #[default]
    Nftables,
    /// iptables-restore and ipsets (`iptables-nft` or `iptables-legacy`, as the host uses).
    Iptables,
    /// nftables when the kernel has nf_tables, else iptables (legacy).
    Auto,
}

/// Environment variable that picks the driver (`nftables`, `iptables`, `auto`); unset
/// means the default.
pub const DRIVER_ENV: &str = "REEF_FIREWALL_DRIVER";

impl std::str::FromStr for DriverKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<DriverKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "nftables" => Ok(DriverKind::Nftables),
            "iptables" => Ok(DriverKind::Iptables),
            "auto" => Ok(DriverKind::Auto),
            other => Err(Error::UnknownDriver(other.to_string())),
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriverKind::Nftables => "nftables",
            DriverKind::Iptables => "iptables",
            DriverKind::Auto => "auto",
        })
    }
}

impl DriverKind {
    /// `Auto` made concrete: nftables when this kernel answers nf_tables requests.
    pub fn resolve(self) -> DriverKind {
        match self {
            DriverKind::Auto if nftables_available() => DriverKind::Nftables,
            DriverKind::Auto => DriverKind::Iptables,
            k => k,
        }
    }

    /// The kind named by `REEF_FIREWALL_DRIVER`, or the default when unset.
    pub fn from_env() -> Result<DriverKind> {
        match std::env::var(DRIVER_ENV) {
            Ok(v) => v.parse(),
            Err(_) => Ok(DriverKind::default()),
        }
    }
}

/// The driver of `kind`. Opening it is free: the kernel connection opens on first use.
pub fn driver(kind: DriverKind) -> Box<dyn FirewallDriver> {
    match kind.resolve() {
        DriverKind::Iptables => Box::new(Iptables::new()),
        _ => Box::new(Nftables::new()),
    }
}

/// Whether nf_tables answers here (a table query succeeds, whatever its answer).
pub(crate) fn nftables_available() -> bool {
    crate::nfnetlink::NfNetlink::open()
        .and_then(|mut nl| nl.table_exists(crate::nftables::NFPROTO_INET, "reef-probe"))
        .is_ok()
}

/// The default driver (nftables).
pub fn default_driver() -> Box<dyn FirewallDriver> {
    driver(DriverKind::default())
}

/// The driver `REEF_FIREWALL_DRIVER` names (the default when unset).
pub fn driver_from_env() -> Result<Box<dyn FirewallDriver>> {
    DriverKind::from_env().map(driver)
}
