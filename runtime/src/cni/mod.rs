//! Running a CNI network configuration list the way libcni 1.1 does (containerd, CRI-O and
//! cnitool use libcni, so plugins see exactly what they see there): VERSION check, ADD in order
//! with `prevResult` chaining, capability arguments as `runtimeConfig`, the result cached in
//! libcni's `cniCacheV1` format, DEL in reverse order with the cached result.

pub mod cache;
pub mod chain;
pub mod conflist;
pub mod default;
mod exec;
mod versions;

pub use cache::{Cache, CachedInfo};
pub use chain::{Attachment, Chain};
pub use conflist::NetworkList;

/// The interface name every container gets.
pub const IFNAME: &str = "eth0";

/// `"1.0.0"` → `(1, 0, 0)`; missing parts count as 0, garbage as `None`.
pub fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let a = it.next()??;
    let b = it.next().unwrap_or(Some(0))?;
    let c = it.next().unwrap_or(Some(0))?;
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c))
}

/// libcni passes the cached result to DEL only from spec 0.4.0 on.
pub fn del_gets_prev_result(cni_version: &str) -> bool {
    version_tuple(cni_version).is_some_and(|v| v >= (0, 4, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_tuple("1.1.0"), Some((1, 1, 0)));
        assert_eq!(version_tuple("0.4"), Some((0, 4, 0)));
        assert_eq!(version_tuple("x"), None);
        assert!(del_gets_prev_result("0.4.0"));
        assert!(del_gets_prev_result("1.1.0"));
        assert!(!del_gets_prev_result("0.3.1"));
    }
}
