//! Naming of an attachment's host-side objects, shared by Reef's main plugins.

/// FNV-1a 64 over `parts`, each followed by a NUL: stable across builds and platforms.
fn fnv64<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Host-side veth name: deterministic from (container id, ifname) so DEL can find it even
/// when the pod's namespace is gone. "reef" + 11 hex digits of FNV-1a 64 fits IFNAMSIZ.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // Hashes "cid\0ifname" (no trailing NUL), as it always has: names must not change.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("reef{:011x}", h >> 20)
}

/// Whether `name` has the shape of a [`host_veth_name`] ("reef" + 11 lowercase hex digits).
pub fn is_host_veth_name(name: &str) -> bool {
    name.strip_prefix("reef").is_some_and(|h| {
        h.len() == 11
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The kernel's IFALIASZ (256) less the NUL: longer aliases are refused with EINVAL.
pub const MAX_ALIAS_LEN: usize = 255;

/// Alias put on the host veth: which network and attachment it serves, so GC can find the
/// veths of attachments the runtime no longer knows (several networks may share a bridge).
///
/// `reef:NET:CID:IFNAME` when it fits [`MAX_ALIAS_LEN`]; otherwise the network, and then
/// also the container id, are replaced by `#` + 16 hex digits of their FNV-1a 64
/// (`reef#NETHASH:CID:IFNAME`, `reef#NETHASH:#CIDHASH:IFNAME`), which always fits since
/// ifnames are at most 15 bytes. Deterministic: DEL compares a link's alias with it.
/// '#' is in no valid name, so the forms never read as one another.
pub fn host_veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    let full = format!("reef:{network}:{container_id}:{ifname}");
    if full.len() <= MAX_ALIAS_LEN {
        return full;
    }
    let net = network_digest(network);
    let with_cid = format!("reef{net}:{container_id}:{ifname}");
    if with_cid.len() <= MAX_ALIAS_LEN {
        return with_cid;
    }
    format!("reef{net}:#{:016x}:{ifname}", fnv64([container_id]))
}

fn network_digest(network: &str) -> String {
    format!("#{:016x}", fnv64([network]))
}

/// Whether `alias` is a host veth alias of `network` (either form of [`host_veth_alias`]).
/// GC compares the whole alias with those of the listed attachments, so a hashed container
/// id needs no reversing.
pub fn is_host_veth_alias_of(alias: &str, network: &str) -> bool {
    let Some(rest) = alias.strip_prefix("reef") else {
        return false;
    };
    let after_net = if let Some(r) = rest.strip_prefix(':') {
        r.strip_prefix(network)
    } else {
        rest.strip_prefix(network_digest(network).as_str())
    };
    // Network names contain no ':', so "net" never matches the alias of "net.a".
    after_net.is_some_and(|r| r.starts_with(':'))
}

/// The (container id, ifname) of an unhashed host veth alias of `network`, if it is one.
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

    #[test]
    fn long_names_fit_the_kernel_alias_limit_and_stay_attributable() {
        let net = "n".repeat(200);
        let cid = "c".repeat(64);
        let a = host_veth_alias(&net, &cid, "eth0");
        assert!(a.len() <= MAX_ALIAS_LEN, "{} bytes", a.len());
        assert_eq!(a, host_veth_alias(&net, &cid, "eth0"));
        assert_ne!(a, host_veth_alias(&net, &cid, "eth1"));
        assert!(a.contains(&cid), "container id kept while it fits: {a}");
        assert!(is_host_veth_alias_of(&a, &net));
        assert!(!is_host_veth_alias_of(&a, &"n".repeat(199)));
        let huge = "c".repeat(1000);
        let b = host_veth_alias(&net, &huge, "abcdefghijklmno");
        assert!(b.len() <= MAX_ALIAS_LEN && is_host_veth_alias_of(&b, &net));
        assert_ne!(
            b,
            host_veth_alias(&net, &"c".repeat(999), "abcdefghijklmno")
        );
        let short = host_veth_alias("net", "cid", "eth0");
        assert_eq!(short, "reef:net:cid:eth0");
        assert!(is_host_veth_alias_of(&short, "net"));
        assert!(!is_host_veth_alias_of(&short, "ne"));
        assert!(!is_host_veth_alias_of("reef:net.a:c:eth0", "net"));
    }

    #[test]
    fn host_veth_name_shape() {
        assert!(is_host_veth_name(&host_veth_name("abc", "eth0")));
        assert!(!is_host_veth_name("reefabc"));
        assert!(!is_host_veth_name("eth0"));
        assert!(!is_host_veth_name("reef0123456789G"));
    }
}
