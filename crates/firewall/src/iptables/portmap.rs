//! Port mappings in iptables (in progress).

use super::Iptables;
use crate::rules::{Owner, PortMapping};
use crate::{Error, Result};

pub(crate) fn add(_fw: &mut Iptables, _owner: &Owner, _maps: &[PortMapping]) -> Result<()> {
    Err(Error::Check("iptables portmap: in progress".into()))
}
pub(crate) fn del(_fw: &mut Iptables, _owner: &Owner, _known: Option<&[PortMapping]>) -> Result<Vec<PortMapping>> {
    Ok(vec![])
}
pub(crate) fn check(_fw: &mut Iptables, _owner: &Owner, _maps: &[PortMapping]) -> Result<()> {
    Ok(())
}
pub(crate) fn flush_conntrack(_removed: &[PortMapping]) -> Result<()> {
    Ok(())
}
pub(crate) fn gc(_fw: &mut Iptables, _network: &str, _valid: &[(String, String)]) -> Result<Vec<PortMapping>> {
    Ok(vec![])
}
pub(crate) fn status(_fw: &mut Iptables) -> Result<()> {
    Ok(())
}
pub(crate) fn list(_fw: &mut Iptables) -> Result<Vec<PortMapping>> {
    Ok(vec![])
}
pub(crate) fn flush_in_background(_removed: &[PortMapping], _added: &[PortMapping]) {}
