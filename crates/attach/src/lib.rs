//! The chores every Reef main plugin (reef-bridge, reef-routed) shares around one attachment:
//! a runtime per invocation, entering the pod's namespace, refusing a live duplicate, removing
//! a surviving pod end, GC of stale host veths by alias, and STATUS through IPAM. What differs
//! between plugins (the host side) stays in each plugin.

use reef_cni::attachment::{host_veth_name, parse_host_veth_alias};
use reef_cni::{codes, CmdArgs, CniError, CniResult, Command};
use reef_ipam::client::IpamClient;
use reef_netlink::{NetNs, Netlink};
use std::collections::HashSet;
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

pub fn open_netns(args: &CmdArgs) -> Result<NetNs, CniError> {
    let path = args.netns.as_deref().unwrap_or_default();
    NetNs::open(path).map_err(|e| {
        CniError::new(codes::IO, format!("failed to open netns \"{path}\""))
            .with_details(e.to_string())
    })
}

/// A second ADD of a live attachment must fail before IPAM: IPAM would hand back the same
/// address and the rollback would then release the live pod's reservation.
pub async fn refuse_live_duplicate(host: &Netlink, args: &CmdArgs) -> Result<(), CniError> {
    let host_name = host_veth_name(&args.container_id, &args.ifname);
    if host
        .link_by_name(&host_name)
        .await
        .map_err(nl_err)?
        .is_some()
    {
        return Err(CniError::new(
            codes::NETLINK,
            format!(
                "attachment {}/{} already exists (host interface {host_name}); DEL it first",
                args.container_id, args.ifname
            ),
        ));
    }
    Ok(())
}

/// IPAM ADD for an attachment whose host interface will be `host_name`; an empty answer is
/// released and refused.
pub fn ipam_add(args: &CmdArgs, host_name: &str) -> Result<CniResult, CniError> {
    let ipam = IpamClient::for_args(args)?;
    let result = ipam.add(host_name)?;
    if result.ips.is_empty() {
        let _ = ipam.run(Command::Del);
        return Err(CniError::new(codes::DELEGATE, "IPAM returned no addresses"));
    }
    Ok(result)
}

/// DEL's last step when the host end was already gone: a pod end that survived (created under
/// a foreign host name) is removed if it is a veth.
pub async fn delete_pod_end(args: &CmdArgs) -> Result<(), CniError> {
    let Some(ns) = args.netns.as_deref().and_then(|p| NetNs::open(p).ok()) else {
        return Ok(());
    };
    let pod = Netlink::open_in(&ns, || Ok(())).map_err(nl_err)?;
    if let Some(l) = pod.link_by_name(&args.ifname).await.map_err(nl_err)? {
        if l.kind.as_deref() == Some("veth") {
            pod.delete_link(&args.ifname).await.map_err(nl_err)?;
        }
    }
    Ok(())
}

/// GC of host veths: every veth labelled for this network whose attachment the runtime no
/// longer lists is deleted (taking its routes and neighbours with it). Returns their names.
pub fn gc_stale_veths(args: &CmdArgs) -> Result<Vec<String>, CniError> {
    let valid: HashSet<(String, String)> = args.conf.valid_attachments()?.into_iter().collect();
    block_on(async {
        let host = Netlink::current().map_err(nl_err)?;
        let mut removed = Vec::new();
        for l in host.links().await.map_err(nl_err)? {
            let Some(alias) = l.alias.as_deref() else {
                continue;
            };
            let Some((cid, ifname)) = parse_host_veth_alias(alias, &args.conf.name) else {
                continue;
            };
            if !valid.contains(&(cid.to_string(), ifname.to_string())) {
                host.delete_link(&l.name).await.map_err(nl_err)?;
                removed.push(l.name);
            }
        }
        Ok(removed)
    })?
}

/// STATUS: anything that would make ADD fail is "not available" (50).
pub fn status_via_ipam(args: &CmdArgs) -> Result<(), CniError> {
    IpamClient::for_args(args)?
        .run(Command::Status)
        .map_err(|e| match e.code {
            codes::NOT_AVAILABLE | codes::LIMITED_CONNECTIVITY => e,
            _ => CniError::new(codes::NOT_AVAILABLE, format!("IPAM unavailable: {}", e.msg))
                .with_details(e.details),
        })
}

/// The index of the pod's interface in prevResult (CHECK).
pub fn pod_interface_index(prev: &CniResult, ifname: &str) -> Result<usize, CniError> {
    prev.interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| check_err(format!("prevResult has no interface {ifname} in a sandbox")))
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
