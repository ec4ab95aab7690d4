//! One veth-pair attachment, as every Reef main plugin (reef-bridge, reef-routed) makes it:
//! [`VethPlugin`] runs the CNI verbs (the pod's namespace, IPAM in-process or exec'd, the
//! pair, the pod end's addresses and routes, undo on a failed ADD, CHECK of the pod, DEL, GC
//! of stale host veths by alias, STATUS through IPAM) around a plugin's [`HostSide`], which is
//! all that differs between plugins.

mod host;
mod plugin;
mod pod;

pub use host::{Add, Check, End, HostSide, HostVeth, Released};
pub use plugin::{attachment, firewall_kind, VethPlugin};
pub use pod::{default_dst, route_spec};

use reef_cni::{codes, CmdArgs, CniError};
use reef_netlink::{LinkInfo, NetNs, Netlink};
use std::future::Future;

pub fn nl_err(e: reef_netlink::Error) -> CniError {
    CniError::new(codes::NETLINK, e.to_string())
}

pub fn check_err(msg: impl Into<String>) -> CniError {
    CniError::new(codes::CHECK_FAILED, msg)
}

/// Plugins are short-lived: one single-threaded runtime per invocation.
pub fn block_on<F: Future>(f: F) -> Result<F::Output, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::io("failed to start runtime", &e))?;
    Ok(rt.block_on(f))
}

/// The pod's namespace (ADD, CHECK). The plugin's own namespace is refused: the "pod" end
/// would land among the host's interfaces, and DEL of such an attachment would act on them.
pub fn open_netns(args: &CmdArgs) -> Result<NetNs, CniError> {
    let path = args.netns.as_deref().unwrap_or_default();
    let ns = NetNs::open(path).map_err(|e| {
        CniError::new(codes::IO, format!("failed to open netns \"{path}\""))
            .with_details(e.to_string())
    })?;
    if ns.is_current().map_err(nl_err)? {
        return Err(CniError::invalid_env(format!(
            "CNI_NETNS \"{path}\" is the plugin's own network namespace, not a container's"
        )));
    }
    Ok(ns)
}

/// The pod's namespace for DEL's teardown, if it can be acted on: None when it is gone,
/// unusable, or the plugin's own namespace (never a pod's: see [`open_netns`]).
pub fn pod_netns_for_del(args: &CmdArgs) -> Option<NetNs> {
    let ns = NetNs::open(args.netns.as_deref()?).ok()?;
    match ns.is_current() {
        Ok(false) => Some(ns),
        _ => None,
    }
}

/// CHECK's lookup of the host end of the pair.
pub async fn existing_host_veth(host: &Netlink, host_name: &str) -> Result<LinkInfo, CniError> {
    host.link_by_name(host_name)
        .await
        .map_err(nl_err)?
        .ok_or_else(|| check_err(format!("host veth {host_name} is missing")))
}

/// The checks every main plugin's config shares: an `ipam` section, and an MTU in range.
pub fn validate_common(
    conf: &reef_cni::NetConf,
    mtu: Option<u32>,
    plugin: &str,
) -> Result<(), CniError> {
    if let Some(m) = mtu {
        if !(68..=65535).contains(&m) {
            return Err(CniError::invalid_config(format!(
                "mtu {m} out of range (68-65535)"
            )));
        }
    }
    if conf.ipam.is_none() {
        return Err(CniError::invalid_config(format!(
            "{plugin} needs an ipam section"
        )));
    }
    Ok(())
}
