//! Pod guards in iptables (in progress): anti-spoofing, bridge isolation, holds.

use super::Iptables;
use crate::rules::{Masquerade, PodGuard};
use crate::Result;
use std::collections::BTreeSet;
use std::net::IpAddr;

pub(crate) fn hold(_fw: &mut Iptables, _iface: &str, _namespace: &str) -> Result<bool> {
    Ok(false)
}

pub(crate) fn add_pod(
    fw: &mut Iptables,
    _g: &PodGuard,
    masquerade: Option<(&Masquerade, &[IpAddr])>,
) -> Result<()> {
    if let Some((m, ips)) = masquerade {
        super::masquerade::add(fw, m, ips)?;
    }
    Ok(())
}

pub(crate) fn del_pod(
    _fw: &mut Iptables,
    _iface: &str,
    ips: &[IpAddr],
    masquerade: Option<&str>,
) -> Result<()> {
    if let Some(network) = masquerade {
        super::masquerade::del(network, ips)?;
    }
    Ok(())
}

pub(crate) fn forget_ifaces(_fw: &mut Iptables, _ifaces: &[String]) -> Result<()> {
    Ok(())
}

pub(crate) fn set_namespaces(_fw: &mut Iptables, _namespaces: &BTreeSet<String>) -> Result<()> {
    Ok(())
}

pub(crate) fn release(_fw: &mut Iptables, _ifaces: &[String]) -> Result<()> {
    Ok(())
}
