//! Reef's own writer lock for the iptables driver. `iptables-restore -w` serializes single
//! writes against every xtables user, but Reef also reads, decides and writes (is this host
//! port free? is the jump from POSTROUTING there?); two plugin processes doing that at once
//! would both insert, or both claim a port. Those sequences run under this lock.

use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

/// Default lock file; `REEF_IPTABLES_LOCK` overrides it.
pub const DEFAULT_LOCK: &str = "/run/reef-iptables.lock";

/// Held until dropped (closing the file releases the flock).
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn take() -> Result<Lock> {
        let path = std::env::var("REEF_IPTABLES_LOCK").unwrap_or_else(|_| DEFAULT_LOCK.into());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                context: format!("open the iptables lock {path}"),
                source,
            })?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Io {
                context: format!("lock {path}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Lock { _file: file })
    }
}
