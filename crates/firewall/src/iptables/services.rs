//! Services in iptables (in progress).

use super::Iptables;
use crate::rules::ServiceLb;
use crate::{Error, Result, ServiceKey, ServicesApplied};

#[derive(Default)]
pub(crate) struct ServicesState {}

impl ServicesState {
    pub(crate) fn sync(&mut self, _fw: &mut Iptables, _all: &[ServiceLb]) -> Result<ServicesApplied> {
        Err(Error::Check("iptables services: in progress".into()))
    }

    pub(crate) fn update(
        &mut self,
        _fw: &mut Iptables,
        _changed: &[(ServiceKey, Option<ServiceLb>)],
    ) -> Result<ServicesApplied> {
        Err(Error::Check("iptables services: in progress".into()))
    }

    pub(crate) fn remove(&mut self, _fw: &mut Iptables) -> Result<()> {
        Ok(())
    }
}
