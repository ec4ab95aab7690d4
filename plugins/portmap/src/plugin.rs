//! The verbs.

use crate::config::{self, Spec};
use crate::localnet;
use reef_cni::{codes, CmdArgs, CniError, CniResult, Plugin};
use reef_firewall::choice::{self, Attachment};
use reef_firewall::portmap::{Owner, PortMapping, TABLE};
use reef_firewall::DriverKind;

/// Reef: the host port is already mapped by another attachment.
pub const PORT_CONFLICT: u32 = reef_cni::codes::PORT_CONFLICT;

pub struct PortMap;

fn fw_err(e: reef_firewall::Error) -> CniError {
    match e {
        reef_firewall::Error::Conflict(msg) => CniError::new(PORT_CONFLICT, msg),
        e => CniError::new(codes::FIREWALL, e.to_string()),
    }
}

/// The netconf's `"firewall"` driver (else `REEF_FIREWALL_DRIVER`, else nftables).
fn firewall_kind(args: &CmdArgs) -> Result<DriverKind, CniError> {
    choice::configured(args.conf.raw.get("firewall"))
        .map_err(|e| CniError::invalid_config(e.to_string()))
}

fn attachment(args: &CmdArgs) -> Attachment<'_> {
    Attachment::new(
        "reef-portmap",
        &args.conf.name,
        &args.container_id,
        &args.ifname,
    )
}

fn owner(args: &CmdArgs) -> Owner {
    Owner {
        network: args.conf.name.clone(),
        container_id: args.container_id.clone(),
        ifname: args.ifname.clone(),
    }
}

fn prev_result(args: &CmdArgs) -> Result<&CniResult, CniError> {
    args.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "reef-portmap is a chained plugin and needs prevResult: put it after a main plugin \
             (such as reef-bridge) in a conflist",
        )
    })
}

/// After mappings went away (or never came, after a flush): route_localnet back where no
/// remaining mapping needs it. Free when no interface has it on.
fn give_back_route_localnet(fw: &mut dyn reef_firewall::FirewallDriver) -> Result<(), CniError> {
    if localnet::enabled_interfaces().is_empty() {
        return Ok(());
    }
    // Read again under the lock: another call may have changed them meanwhile.
    let _lock = localnet::Lock::take()?;
    localnet::release(fw, &localnet::enabled_interfaces())?;
    Ok(())
}

impl PortMap {
    /// The mappings ADD installs (and CHECK expects) for this attachment.
    fn wanted(args: &CmdArgs, prev: &CniResult) -> Result<(Vec<Spec>, Vec<PortMapping>), CniError> {
        let specs = config::specs(&args.conf)?;
        let maps = config::mappings(&specs, &config::pod_ips(prev))?;
        Ok((specs, maps))
    }
}

impl Plugin for PortMap {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let prev = prev_result(args)?;
        let (_, maps) = Self::wanted(args, prev)?;
        if maps.is_empty() {
            return Ok(prev.clone());
        }
        let (_, mut fw) =
            choice::for_add(&attachment(args), firewall_kind(args)?).map_err(fw_err)?;
        // IPv4 mappings include 127.0.0.1 (no hostIP means every host address).
        let localnet_lock = if maps.iter().any(|m| m.pod_ip.is_ipv4()) {
            let lock = localnet::Lock::take()?;
            if let Err(e) = localnet::enable(prev) {
                let _ = localnet::release(&mut *fw, &localnet::enabled_interfaces());
                return Err(e.into());
            }
            Some(lock)
        } else {
            None
        };
        if let Err(e) = fw.add_port_mappings(&owner(args), &maps) {
            if localnet_lock.is_some() {
                let _ = localnet::release(&mut *fw, &localnet::enabled_interfaces());
            }
            return Err(fw_err(e));
        }
        drop(localnet_lock);
        fw.close_flushing_conntrack(&[], &maps);
        Ok(prev.clone())
    }

    /// Removes this attachment's mappings. With prevResult and the port mappings known, only
    /// those elements that still point at this pod; otherwise every element tagged with this
    /// attachment (so DEL works without prevResult, netns or capability arguments).
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let known: Option<Vec<PortMapping>> =
            match (&args.conf.prev_result, config::specs(&args.conf)) {
                (Some(prev), Ok(specs)) if !specs.is_empty() => {
                    config::mappings(&specs, &config::pod_ips(prev)).ok()
                }
                _ => None,
            };
        // The driver ADD used (recorded), whatever the configuration says now.
        let att = attachment(args);
        let mut fw = choice::for_del(&att, firewall_kind(args).unwrap_or_default());
        let removed = fw
            .del_port_mappings(&owner(args), known.as_deref())
            .map_err(fw_err)?;
        give_back_route_localnet(&mut *fw)?;
        // Even a socket that changed nothing waits for the RCU grace period of the last
        // commit (anyone's) when it closes: always leave that to the detached child.
        fw.close_flushing_conntrack(&removed, &[]);
        choice::forget(&att);
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let prev = prev_result(args)?;
        let (_, maps) = Self::wanted(args, prev)?;
        if maps.is_empty() {
            return Ok(());
        }
        let mut fw = choice::for_del(&attachment(args), firewall_kind(args)?);
        let res = fw
            .check_port_mappings(&owner(args), &maps)
            .map_err(|e| CniError::new(codes::CHECK_FAILED, e.to_string()));
        fw.close_in_background();
        res
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let valid = args.conf.valid_attachments()?;
        let kind = firewall_kind(args)?;
        choice::gc("reef-portmap", &args.conf.name, &valid);
        // With every driver: the host may have switched since their ADD.
        let network = args.conf.name.clone();
        let removed = choice::with_every_driver(kind, |fw| {
            let removed = fw.gc_port_mappings(&network, &valid)?;
            for m in &removed {
                eprintln!("reef-portmap: GC removed {m}");
            }
            Ok(removed)
        })
        .map_err(fw_err)?;
        let _ = removed;
        let mut fw = reef_firewall::driver(kind);
        give_back_route_localnet(&mut *fw)?;
        fw.close_in_background();
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let mut fw = reef_firewall::driver(firewall_kind(args)?);
        let res = fw.port_mapping_status();
        fw.close_in_background();
        res.map_err(|e| {
            CniError::new(
                codes::NOT_AVAILABLE,
                format!("port mappings (nftables table inet {TABLE}, or iptables) unavailable"),
            )
            .with_details(e.to_string())
        })
    }
}
