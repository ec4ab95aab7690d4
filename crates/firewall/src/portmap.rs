//! Port mappings (reef-portmap): the rule types, and the names of the nftables table that
//! holds them (see `nftables::portmap` for its layout). Operations are `FirewallDriver`'s.

pub use crate::driver::FirewallDriver as PortMapper;
pub use crate::nftables::portmap::{table_script, LOCALNET_REPLY_MARK, MASQ_MARK, TABLE};
pub use crate::rules::{Owner, PortMapping, Proto};
