//! What one main plugin does differently from another: the host side of the veth pair, the
//! pod's addresses and routes, and host state tied to the pod's addresses.

use reef_cni::{CmdArgs, CniError, CniResult, Interface, IpConfig, NetConf, Route};
use reef_netlink::{LinkInfo, Netlink};
use std::net::IpAddr;

/// How ADD makes the host end of the veth pair.
#[derive(Debug, Default)]
pub struct HostVeth {
    /// MTU of both ends; None is the kernel default.
    pub mtu: Option<u32>,
    /// The link the host end is enslaved to (reef-bridge: its bridge).
    pub controller: Option<u32>,
    /// The host end's MAC, when fixed (reef-routed: the gateway MAC).
    pub mac: Option<[u8; 6]>,
    /// Host interfaces the result lists before the host veth (reef-bridge: the bridge).
    pub interfaces: Vec<Interface>,
}

/// An ADD under way, once the host end of the pair exists.
pub struct Add<'a> {
    pub args: &'a CmdArgs,
    /// Netlink in the host's namespace.
    pub host: &'a Netlink,
    /// The host end of the pair.
    pub veth: &'a LinkInfo,
    /// IPAM's answer.
    pub ipam: &'a CniResult,
}

/// A link and the netlink socket of its namespace.
#[derive(Clone, Copy)]
pub struct End<'a> {
    pub netlink: &'a Netlink,
    pub link: &'a LinkInfo,
}

/// A CHECK under way.
pub struct Check<'a> {
    pub args: &'a CmdArgs,
    pub prev: &'a CniResult,
    /// prevResult's addresses on the pod's interface.
    pub ips: &'a [&'a IpConfig],
    /// The host end's name.
    pub veth_name: &'a str,
}

/// DEL or GC, once IPAM has released what the attachment(s) held.
pub struct Released<'a> {
    pub args: &'a CmdArgs,
    /// What in-process IPAM released; None when an exec'd IPAM cannot say, or IPAM failed.
    pub ips: Option<Vec<IpAddr>>,
    /// Failures so far; the host side adds its own (DEL and GC carry on past them).
    pub errors: Vec<CniError>,
}

/// A main plugin's host side; [`crate::VethPlugin`] does the rest of every verb: the pod's
/// namespace, IPAM, the veth pair, the pod end, undo on failure, DEL and GC of the veth.
///
/// ADD calls `prepare_host`, makes the pair, then `host_veth_created`, puts `pod_ips` on the
/// pod end, `configure_pod`, adds `pod_routes`, and last `finish_add`. A failure anywhere
/// deletes the veth pair and releases IPAM.
// The futures run on the plugin's own single-threaded runtime: they need not be Send.
#[allow(async_fn_in_trait)]
pub trait HostSide: Sized {
    /// The plugin's binary name, for messages.
    const PLUGIN: &'static str;

    /// What DEL and GC keep until the veths are gone (reef-bridge: its nf_tables socket, so
    /// the socket's close-time wait overlaps the veth deletion's instead of following it).
    type Teardown: Default;

    /// Parses and validates the plugin's config: the first step of every verb.
    fn from_netconf(conf: &NetConf) -> Result<Self, CniError>;

    /// Host work before the pair exists, and how to make its host end.
    async fn prepare_host(&self, host: &Netlink, ipam: &CniResult) -> Result<HostVeth, CniError>;

    /// The host end exists and is up.
    async fn host_veth_created(&self, add: &Add<'_>) -> Result<(), CniError>;

    /// The pod's addresses as they go on its interface and into the result (the interface
    /// index is filled in by the caller).
    fn pod_ips(&self, ipam: &CniResult) -> Vec<IpConfig> {
        ipam.ips.clone()
    }

    /// Pod-side work between the addresses (link up) and the routes.
    async fn configure_pod(&self, _add: &Add<'_>, _pod: End<'_>) -> Result<(), CniError> {
        Ok(())
    }

    /// The routes to install in the pod and report in the result.
    fn pod_routes(&self, ipam: &CniResult) -> Vec<Route>;

    /// A bridge plugin's bridge and whether its network is isolated from the host's other
    /// bridge networks (None: not a bridge).
    fn isolation(&self) -> Option<reef_firewall::BridgeIsolation> {
        None
    }

    /// The network whose masquerade sets DEL removes the pod's addresses from (reef-bridge's
    /// `ipMasq`), with the pod's guard in one commit.
    fn masquerade_network(&self, _args: &CmdArgs) -> Option<String> {
        None
    }

    /// The masquerade the pod's addresses join (reef-bridge's `ipMasq`), programmed with the
    /// pod's guard in one commit.
    fn masquerade(&self, _args: &CmdArgs, _ipam: &CniResult) -> Option<reef_firewall::Masquerade> {
        None
    }

    /// ADD's last step, both ends configured. On failure it leaves nothing of its own behind:
    /// the caller only deletes the pair (and what goes with it) and releases IPAM.
    async fn finish_add(&self, add: &Add<'_>, pod_link: &LinkInfo) -> Result<(), CniError>;

    /// CHECK of the host side, first.
    async fn check_host(&self, check: &Check<'_>, host: &Netlink) -> Result<(), CniError>;

    /// CHECK of the pod side beyond interface, MAC and addresses (before its routes).
    async fn check_pod(&self, _check: &Check<'_>, _pod: End<'_>) -> Result<(), CniError> {
        Ok(())
    }

    /// CHECK's last step, after host and pod.
    fn check_rest(&self, _check: &Check<'_>) -> Result<(), CniError> {
        Ok(())
    }

    /// DEL after IPAM's release, before the veth (present or not) goes.
    async fn del_host(&self, _del: &mut Released<'_>, _veth_present: bool) -> Self::Teardown {
        Self::Teardown::default()
    }

    /// GC after IPAM's, before the stale veths go.
    fn gc_host(&self, _gc: &mut Released<'_>) -> Self::Teardown {
        Self::Teardown::default()
    }
}
