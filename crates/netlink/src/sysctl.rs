//! `/proc/sys` access, keys in slash form (`net/ipv4/ip_forward`) because interface names may
//! contain dots. Paths under `net/` resolve against the calling thread's namespace, so call
//! these from `NetNs::run` for another namespace.

use crate::{Error, Result};

pub fn get(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("read {path}"), e))
}

/// Writes only when the value differs: a read is cheaper than a write that notifies.
pub fn set(key: &str, value: &str) -> Result<()> {
    if get(key).ok().as_deref() == Some(value) {
        return Ok(());
    }
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|e| Error::io(format!("write {value} to {path}"), e))
}
