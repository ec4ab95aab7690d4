//! Naming of an attachment's host-side objects, shared by Reef's main plugins.

/// Host-side veth name: deterministic from (container id, ifname) so DEL can find it even
/// when the pod's namespace is gone. "reef" + 11 hex digits of FNV-1a 64 fits IFNAMSIZ.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("reef{:011x}", h >> 20)
}

/// Alias put on the host veth: which network and attachment it serves, so GC can find the
/// veths of attachments the runtime no longer knows (several networks may share a bridge).
pub fn host_veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("reef:{network}:{container_id}:{ifname}")
}

/// The (container id, ifname) of a host veth alias of `network`, if it is one.
pub fn parse_host_veth_alias<'a>(alias: &'a str, network: &str) -> Option<(&'a str, &'a str)> {
    let rest = alias
        .strip_prefix("reef:")?
        .strip_prefix(network)?
        .strip_prefix(':')?;
    // Container ids and ifnames contain no ':' (validated by the dispatcher).
    rest.split_once(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_name_is_stable_unique_and_short() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("reef"));
    }

    #[test]
    fn alias_roundtrip_is_scoped_to_the_network() {
        let a = host_veth_alias("net.a", "cid-1", "eth0");
        assert_eq!(parse_host_veth_alias(&a, "net.a"), Some(("cid-1", "eth0")));
        assert_eq!(parse_host_veth_alias(&a, "net"), None);
        assert_eq!(parse_host_veth_alias("something else", "net.a"), None);
    }
}
