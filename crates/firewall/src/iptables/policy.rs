//! Network policy in iptables (in progress).

use super::Iptables;
use crate::rules::PolicyRuleset;
use crate::{Error, Result};
use std::collections::BTreeMap;

#[derive(Default)]
pub(crate) struct PolicyState {}

impl PolicyState {
    pub(crate) fn sync(&mut self, _fw: &mut Iptables, _desired: &PolicyRuleset, _full: bool) -> Result<bool> {
        Err(Error::Check("iptables policy: in progress".into()))
    }

    pub(crate) fn remove(&mut self, _fw: &mut Iptables) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn counters(_fw: &mut Iptables) -> Result<BTreeMap<String, u64>> {
    Ok(BTreeMap::new())
}
