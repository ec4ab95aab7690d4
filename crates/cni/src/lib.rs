//! The CNI library shared by every Reef plugin: spec types for CNI 0.3.x–1.1.0, spec error
//! codes, the verb dispatcher (`skel`), delegation to another plugin (IPAM) over the exec
//! protocol, and the IPAM seam of main plugins (`ipam`: in-process or exec'd).
//!
//! Nothing here talks to the kernel; the netlink side lives in `reef-netlink`.

pub mod attachment;
pub mod delegate;
pub mod error;
pub mod file;
pub mod ipam;
pub mod skel;
pub mod types;
pub mod version;

pub use error::{codes, CniError};
pub use skel::{CmdArgs, Command, GcArgs, Plugin};
pub use types::{CniResult, Dns, Interface, IpConfig, NetConf, Route};
pub use version::Version;
