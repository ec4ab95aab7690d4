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
    type Teardown;

    /// Parses and validates the plugin's config: the first step of every verb.
    fn from_netconf(conf: &NetConf) -> Result<Self, CniError>;

    /// Host work before the veth pair exists, and how to make its host end.
    async fn prepare_host(&self, host: &Netlink, ipam: &CniResult) -> Result<HostVeth, CniError>;

    /// The host end exists and is up.
    async fn host_veth_created(
        &self,
        host: &Netlink,
        veth: &LinkInfo,
        ipam: &CniResult,
    ) -> Result<(), CniError>;

    /// The pod's addresses as they go on its interface and into the result (the interface
    /// index is filled in by the caller).
    fn pod_ips(&self, ipam: &CniResult) -> Vec<IpConfig> {
        ipam.ips.clone()
    }

    /// Pod-side work between the addresses (link up) and the routes.
    async fn configure_pod(
        &self,
        _pod: &Netlink,
        _link: &LinkInfo,
        _ipam: &CniResult,
    ) -> Result<(), CniError> {
        Ok(())
    }

    /// The routes to install in the pod and report in the result.
    fn pod_routes(&self, ipam: &CniResult) -> Vec<Route>;

    /// ADD's last step, both ends configured. On failure it leaves nothing of its own behind:
    /// the caller only deletes the veth pair (and what goes with it) and releases IPAM.
    async fn finish_add(
        &self,
        args: &CmdArgs,
        host: &Netlink,
        veth: &LinkInfo,
        pod_link: &LinkInfo,
        ipam: &CniResult,
    ) -> Result<(), CniError>;

    /// CHECK of the host side; `ips` are prevResult's addresses on the pod's interface.
    async fn check_host(
        &self,
        host: &Netlink,
        veth_name: &str,
        ips: &[&IpConfig],
    ) -> Result<(), CniError>;

    /// CHECK of the pod side beyond interface, MAC, addresses and routes.
    async fn check_pod(
        &self,
        _pod: &Netlink,
        _link: &LinkInfo,
        _ips: &[&IpConfig],
    ) -> Result<(), CniError> {
        Ok(())
    }

    /// CHECK's last step, after host and pod.
    fn check_rest(&self, _args: &CmdArgs, _prev: &CniResult) -> Result<(), CniError> {
        Ok(())
    }

    /// DEL after IPAM's release, before the veth goes. `released` is what in-process IPAM
    /// says the attachment held (None: an exec'd IPAM cannot say, or it failed). Errors are
    /// pushed to `errors`: DEL carries on.
    async fn del_host(
        &self,
        args: &CmdArgs,
        veth_present: bool,
        released: Option<Vec<IpAddr>>,
        errors: &mut Vec<CniError>,
    ) -> Self::Teardown;

    /// GC after IPAM's, before the stale veths go; `released` as for `del_host`.
    fn gc_host(
        &self,
        args: &CmdArgs,
        released: Option<&[IpAddr]>,
        errors: &mut Vec<CniError>,
    ) -> Self::Teardown;
}
