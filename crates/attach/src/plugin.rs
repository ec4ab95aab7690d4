//! The CNI verbs of a veth-pair main plugin, around its [`HostSide`].

use crate::{
    block_on, check_err, nl_err, open_netns, pod, pod_netns_for_del, Add, Check, HostSide, Released,
};
use reef_cni::attachment::{
    host_veth_alias, host_veth_name, is_host_veth_alias_of, is_host_veth_name,
};
use reef_cni::ipam::{InProcessIpam, IpamClient};
use reef_cni::{codes, CmdArgs, CniError, CniResult, Command, Interface, IpConfig, Plugin};
use reef_firewall::choice::{self, Attachment};
use reef_firewall::{DriverKind, FirewallDriver, PodGuard};
use reef_netlink::{LinkInfo, NetNs, Netlink, PendingNetlink};
use std::collections::HashSet;
use std::marker::PhantomData;
use std::net::IpAddr;

/// A main plugin: one veth pair per attachment, host side `H`, IPAM through `ipam` when
/// `ipam.type` names it (in-process), else exec'd.
pub struct VethPlugin<'a, H> {
    ipam: &'a dyn InProcessIpam,
    host_side: PhantomData<fn() -> H>,
}

impl<'a, H: HostSide> VethPlugin<'a, H> {
    pub fn new(ipam: &'a dyn InProcessIpam) -> VethPlugin<'a, H> {
        VethPlugin {
            ipam,
            host_side: PhantomData,
        }
    }

    fn ipam_for(&self, args: &'a CmdArgs) -> Result<IpamClient<'a>, CniError> {
        IpamClient::for_args(args, self.ipam)
    }

    async fn add_async(
        &self,
        host_side: &H,
        args: &'a CmdArgs,
        pod_ns: &NetNs,
        pod_socket: PendingNetlink,
    ) -> Result<CniResult, CniError> {
        let host = Netlink::current().map_err(nl_err)?;
        refuse_live_duplicate(&host, args).await?;
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        let kind = firewall_kind(args)?;
        let att = attachment::<H>(args);
        let (_, mut fw) = choice::for_add(&att, kind).map_err(fw_err)?;
        // Before IPAM writes the workload record the agent acts on: the agent releases the
        // hold once the pod's policy is in place, so it must not see the pod before the hold.
        let namespace = args.arg("K8S_POD_NAMESPACE").unwrap_or("default");
        let held = fw.hold_new_pod(&host_name, namespace).map_err(fw_err)?;
        let ipam = match self.ipam_for(args) {
            Ok(i) => i,
            Err(e) => {
                release_hold(&mut *fw, &host_name, held);
                return Err(e);
            }
        };
        let ipam_result = match ipam_add(&ipam, &host_name) {
            Ok(r) => r,
            Err(e) => {
                release_hold(&mut *fw, &host_name, held);
                return Err(e);
            }
        };
        let mut veth_created = false;
        let res = add_links(
            host_side,
            args,
            &ipam_result,
            pod_ns,
            pod_socket,
            &host,
            &mut veth_created,
        )
        .await;
        // The pod's firewall needs, before the runtime starts anything in it: anti-spoofing
        // (and the network's masquerade, for a bridge), in one commit.
        let ips: Vec<IpAddr> = ipam_result.ips.iter().map(|i| i.address.ip()).collect();
        let guard = PodGuard {
            iface: host_name.clone(),
            ips: ips.clone(),
            bridge: host_side.isolation(),
        };
        let masquerade = host_side.masquerade(args, &ipam_result);
        let res = res.and_then(|r| {
            fw.add_pod_guard(&guard, masquerade.as_ref().map(|m| (m, &ips[..])))
                .map_err(fw_err)?;
            Ok(r)
        });
        if res.is_err() {
            // Undo in reverse: the guard, the veth pair (its host routes and neighbours go
            // with it, the pod end with its peer), then the IPAM reservation.
            let network = masquerade.as_ref().map(|m| m.network.as_str());
            let _ = fw.del_pod_guard(&host_name, &ips, network);
            if veth_created {
                let _ = host.delete_link(&host_name).await;
            }
            let _ = ipam.run(Command::Del);
        }
        // A commit's socket closed at once waits for the kernel's destroy work (an RCU grace
        // period, 8-15 ms here): a detached child closes it (see `close_in_background`).
        fw.close_in_background();
        res
    }
}

/// ADD once IPAM has answered: the host side, the pair, the pod end, the result.
async fn add_links<H: HostSide>(
    host_side: &H,
    args: &CmdArgs,
    ipam: &CniResult,
    pod_ns: &NetNs,
    pod_socket: PendingNetlink,
    host: &Netlink,
    veth_created: &mut bool,
) -> Result<CniResult, CniError> {
    let plan = host_side.prepare_host(host, ipam).await?;
    let host_name = host_veth_name(&args.container_id, &args.ifname);
    let alias = host_veth_alias(&args.conf.name, &args.container_id, &args.ifname);
    host.create_veth_with_mac(
        &host_name,
        &args.ifname,
        pod_ns,
        plan.mtu,
        plan.controller,
        Some(&alias),
        plan.mac.as_ref().map(|m| &m[..]),
    )
    .await
    .map_err(|e| {
        if e.is_exists() {
            CniError::new(
                codes::NETLINK,
                format!(
                    "interface {} already exists in the pod or {host_name} on the host",
                    args.ifname
                ),
            )
        } else {
            nl_err(e)
        }
    })?;
    *veth_created = true;
    let host_link = host
        .link_by_name(&host_name)
        .await
        .map_err(nl_err)?
        .ok_or_else(|| CniError::new(codes::NETLINK, format!("{host_name} vanished")))?;
    let add = Add {
        args,
        host,
        veth: &host_link,
        ipam,
    };
    host_side.host_veth_created(&add).await?;

    let pod = pod_socket.connect().map_err(nl_err)?;

    let mut ips = host_side.pod_ips(ipam);
    let routes = host_side.pod_routes(ipam);
    let pod_link = pod::configure(host_side, &add, &pod, &ips, &routes).await?;
    host_side.finish_add(&add, &pod_link).await?;

    let mut result = ipam.clone();
    result.interfaces = plan.interfaces;
    result.interfaces.push(Interface {
        name: host_name,
        mac: host_link.mac.clone(),
        mtu: host_link.mtu,
        sandbox: None,
    });
    let pod_index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: args.ifname.clone(),
        mac: pod_link.mac.clone(),
        mtu: pod_link.mtu,
        sandbox: args.netns.clone(),
    });
    for ip in &mut ips {
        ip.interface = Some(pod_index);
    }
    result.ips = ips;
    result.routes = routes;
    if result.dns.is_empty() {
        if let Some(dns) = &args.conf.dns {
            result.dns = dns.clone();
        }
    }
    Ok(result)
}

impl<H: HostSide> Plugin for VethPlugin<'_, H> {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let host_side = H::from_netconf(&args.conf)?;
        let pod_ns = open_netns(args)?;
        // Entering the pod's namespace costs a thread and a setns: overlap it with IPAM.
        let pod_socket = Netlink::open_in_background(&pod_ns).map_err(nl_err)?;
        block_on(self.add_async(&host_side, args, &pod_ns, pod_socket))?
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let host_side = H::from_netconf(&args.conf)?;
        let mut del = Released {
            args,
            ips: None,
            errors: Vec::new(),
        };
        // Dropped at the end of DEL, after the veth deletion: see `HostSide::Teardown`.
        let mut teardown: Option<H::Teardown> = None;
        let mut guard_fw: Option<Box<dyn FirewallDriver>> = None;
        let res = block_on(async {
            let host = Netlink::current().map_err(nl_err)?;
            let host_name = host_veth_name(&args.container_id, &args.ifname);
            // Only a veth this attachment owns counts: one of that name labelled for another
            // attachment (another network with the same container id and ifname) is left.
            let host_link = host.link_by_name(&host_name).await.map_err(nl_err)?;
            let veth_present = host_link.as_ref().is_some_and(|l| owned_host_veth(l, args));
            let foreign_present = host_link.is_some() && !veth_present;
            // IPAM first, like the reference plugins: the address is released even if link
            // teardown fails, and in-process IPAM tells exactly what this attachment held.
            match self.ipam_for(args).and_then(|i| i.release()) {
                Ok(ips) => del.ips = ips,
                Err(e) => del.errors.push(e),
            }
            // The pod's guard and masquerade elements, in one commit: only addresses this
            // attachment still held, or a retried DEL with a stale prevResult would strip
            // the address's next owner. In-process IPAM says exactly which; with an exec'd
            // one, prevResult's, else the pod's own (read before the veth, and they, go).
            // Before the veth, so the kernel's RCU wait after this commit overlaps the one
            // inside the veth deletion; the socket closes after it (`HostSide::Teardown`).
            let held: Vec<IpAddr> = match (&del.ips, &args.conf.prev_result) {
                (Some(ips), _) => ips.clone(),
                (None, _) if !veth_present => Vec::new(),
                (None, Some(r)) => r.ips.iter().map(|i| i.address.ip()).collect(),
                // Never the plugin's own namespace: its addresses are the host's.
                (None, None) => match pod_netns_for_del(args) {
                    Some(ns) => pod_addresses(&ns, &args.ifname).await,
                    None => Vec::new(),
                },
            };
            let masquerade = host_side.masquerade_network(args);
            // The driver ADD used (recorded), whatever the configuration says now.
            let kind = firewall_kind(args).unwrap_or_default();
            let mut fw = choice::for_del(&attachment::<H>(args), kind);
            if let Err(e) = fw.del_pod_guard(&host_name, &held, masquerade.as_deref()) {
                del.errors.push(fw_err(e));
            }
            guard_fw = Some(fw);
            teardown = Some(host_side.del_host(&mut del, veth_present).await);
            // Returns once the pair has left both namespaces (taking the host routes and
            // neighbours with it); the kernel's ~20 ms of reclamation after that is sat out by
            // a detached child (reef_netlink::detached).
            if foreign_present
                || (veth_present && host.delete_link_fast(&host_name).await.map_err(nl_err)?)
            {
                return Ok(());
            }
            // The host end is gone; if the pod end survived (a foreign host name), remove it.
            delete_pod_end(&host, args).await
        });
        if let Err(e) = res.and_then(|r| r) {
            del.errors.push(e);
        }
        drop(teardown);
        drop(guard_fw);
        if del.errors.is_empty() {
            choice::forget(&attachment::<H>(args));
        }
        CniError::all(del.errors)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let host_side = H::from_netconf(&args.conf)?;
        let prev = args.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::invalid_config("CHECK needs prevResult (the result of ADD)")
        })?;
        self.ipam_for(args)?.run(Command::Check)?;
        let pod_ns = open_netns(args)?;
        let pod_if_index = pod_interface_index(prev, &args.ifname)?;
        let want_if = &prev.interfaces[pod_if_index];
        let ips: Vec<&IpConfig> = prev
            .ips
            .iter()
            .filter(|i| i.interface.is_none_or(|x| x == pod_if_index))
            .collect();
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        let check = Check {
            args,
            prev,
            ips: &ips,
            veth_name: &host_name,
        };
        block_on(async {
            let host = Netlink::current().map_err(nl_err)?;
            host_side.check_host(&check, &host).await?;
            let pod = Netlink::open_in(&pod_ns, || Ok(())).map_err(nl_err)?;
            pod::check(&host_side, &check, &pod, want_if).await
        })??;
        host_side.check_rest(&check)
    }

    /// GC: everything this network holds for attachments the runtime no longer lists: IPAM
    /// records, the host side's state of the released addresses, and host veths (by alias).
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let host_side = H::from_netconf(&args.conf)?;
        // Refuse a malformed attachment list before touching anything.
        let valid = args.conf.valid_attachments()?;
        let kind = firewall_kind(args)?;
        choice::gc(H::PLUGIN, &args.conf.name, &valid);
        let mut gc = Released {
            args,
            ips: None,
            errors: Vec::new(),
        };
        match self.ipam_for(args).and_then(|i| i.gc()) {
            Ok(ips) => gc.ips = ips,
            Err(e) => gc.errors.push(e),
        }
        // Kept until the stale veths are gone: see `HostSide::Teardown`.
        let _teardown = host_side.gc_host(&mut gc);
        match gc_stale_veths(args) {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("{}: GC removed stale host veths {removed:?}", H::PLUGIN);
                // Their anti-spoofing elements and holds go with them.
                // With every driver: the host may have switched since their ADD.
                if let Err(e) = choice::with_every_driver(kind, |fw| fw.gc_pod_guards(&removed)) {
                    gc.errors.push(fw_err(e));
                }
            }
            Ok(_) => {}
            Err(e) => gc.errors.push(e),
        }
        CniError::all(gc.errors)
    }

    /// STATUS: anything that would make ADD fail is "not available" (50).
    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        H::from_netconf(&args.conf)?;
        self.ipam_for(args)?
            .run(Command::Status)
            .map_err(|e| match e.code {
                codes::NOT_AVAILABLE | codes::LIMITED_CONNECTIVITY => e,
                _ => CniError::new(codes::NOT_AVAILABLE, format!("IPAM unavailable: {}", e.msg))
                    .with_details(e.details),
            })
    }
}

/// A second ADD of a live attachment must fail before IPAM: IPAM would hand back the same
/// address and the rollback would then release the live pod's reservation.
async fn refuse_live_duplicate(host: &Netlink, args: &CmdArgs) -> Result<(), CniError> {
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
fn fw_err(e: reef_firewall::Error) -> CniError {
    match e {
        reef_firewall::Error::Config(msg) => CniError::invalid_config(msg),
        e => CniError::new(codes::FIREWALL, e.to_string()),
    }
}

/// The netconf's `"firewall"` driver (else `REEF_FIREWALL_DRIVER`, else nftables).
pub fn firewall_kind(args: &CmdArgs) -> Result<DriverKind, CniError> {
    choice::configured(args.conf.raw.get("firewall")).map_err(fw_err)
}

/// This attachment, for the driver record of plugin `H`.
pub fn attachment<H: HostSide>(args: &CmdArgs) -> Attachment<'_> {
    Attachment::new(H::PLUGIN, &args.conf.name, &args.container_id, &args.ifname)
}

/// Addresses on `ifname` inside `ns`; empty when anything is missing (DEL must not fail on it).
async fn pod_addresses(ns: &NetNs, ifname: &str) -> Vec<IpAddr> {
    let Ok(pod) = Netlink::open_in(ns, || Ok(())) else {
        return Vec::new();
    };
    match pod.link_by_name(ifname).await {
        Ok(Some(l)) => pod
            .addresses(l.index)
            .await
            .map(|a| {
                a.iter()
                    .map(|a| a.address.ip())
                    .filter(|ip| !is_link_local(ip))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Undoes a hold of an ADD that failed before the pod existed.
fn release_hold(fw: &mut dyn FirewallDriver, host_name: &str, held: bool) {
    if held {
        let _ = fw.del_pod_guard(host_name, &[], None);
    }
}

fn ipam_add(ipam: &IpamClient, host_name: &str) -> Result<CniResult, CniError> {
    let result = ipam.add(host_name)?;
    if result.ips.is_empty() {
        let _ = ipam.run(Command::Del);
        return Err(CniError::new(codes::DELEGATE, "IPAM returned no addresses"));
    }
    Ok(result)
}

/// DEL's last step when the host end was not found under its name: the pair survives only
/// if its host end has another name, and then it is removed through that host end, found by
/// this attachment's alias. A pod-side interface is never deleted on its own: nothing on it
/// says whose it is (CNI_IFNAME in someone else's namespace, or in the host's, names a
/// stranger's interface).
async fn delete_pod_end(host: &Netlink, args: &CmdArgs) -> Result<(), CniError> {
    let Some(ns) = pod_netns_for_del(args) else {
        return Ok(());
    };
    let pod = Netlink::open_in(&ns, || Ok(())).map_err(nl_err)?;
    let Some(pod_end) = pod.link_by_name(&args.ifname).await.map_err(nl_err)? else {
        return Ok(());
    };
    if pod_end.kind.as_deref() != Some("veth") {
        return Ok(());
    }
    for l in host.links().await.map_err(nl_err)? {
        if l.alias.as_deref() == Some(own_alias(args).as_str()) {
            host.delete_link(&l.name).await.map_err(nl_err)?;
        }
    }
    Ok(())
}

/// The alias ADD gives this attachment's host veth.
fn own_alias(args: &CmdArgs) -> String {
    host_veth_alias(&args.conf.name, &args.container_id, &args.ifname)
}

/// Whether `link`, found under this attachment's host veth name, is this attachment's: a veth
/// carrying its alias, or carrying none (an ADD that died between creating the pair and
/// labelling it; the name is a hash of this container id and ifname).
fn owned_host_veth(link: &LinkInfo, args: &CmdArgs) -> bool {
    link.kind.as_deref() == Some("veth")
        && link
            .alias
            .as_deref()
            .is_none_or(|a| a == own_alias(args).as_str())
}

/// GC of host veths. Deleted (taking their routes and neighbours with them), names returned:
/// - a veth whose alias is one of this network's (`is_host_veth_alias_of`) and is not the
///   alias of an attachment the runtime lists;
/// - a veth with no alias, named like a host veth (`is_host_veth_name`), whose name is not
///   that of a listed attachment. `Netlink::create_veth` labels a host veth right after
///   creating it and deletes it if labelling fails, so an unaliased one is the leftover of
///   an ADD killed between the two requests: that ADD failed, no runtime holds it as a live
///   attachment of any network, and any network's GC may collect it. Veths with another
///   network's alias, or other names, are left alone.
fn gc_stale_veths(args: &CmdArgs) -> Result<Vec<String>, CniError> {
    let listed = args.conf.valid_attachments()?;
    let network = &args.conf.name;
    let aliases: HashSet<String> = listed
        .iter()
        .map(|(cid, ifname)| host_veth_alias(network, cid, ifname))
        .collect();
    let names: HashSet<String> = listed
        .iter()
        .map(|(cid, ifname)| host_veth_name(cid, ifname))
        .collect();
    block_on(async {
        let host = Netlink::current().map_err(nl_err)?;
        let mut removed = Vec::new();
        for l in host.links().await.map_err(nl_err)? {
            let stale = match l.alias.as_deref().filter(|a| !a.is_empty()) {
                Some(alias) => is_host_veth_alias_of(alias, network) && !aliases.contains(alias),
                None => {
                    l.kind.as_deref() == Some("veth")
                        && is_host_veth_name(&l.name)
                        && !names.contains(&l.name)
                }
            };
            if stale {
                host.delete_link(&l.name).await.map_err(nl_err)?;
                removed.push(l.name);
            }
        }
        Ok(removed)
    })?
}

/// The index of the pod's interface in prevResult (CHECK).
fn pod_interface_index(prev: &CniResult, ifname: &str) -> Result<usize, CniError> {
    prev.interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| check_err(format!("prevResult has no interface {ifname} in a sandbox")))
}
