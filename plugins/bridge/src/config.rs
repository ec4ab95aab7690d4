//! reef-bridge configuration (a superset-compatible subset of the reference bridge plugin).

use reef_cni::{skel::validate_ifname, CniError, NetConf};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Put the gateway address on the bridge and enable forwarding.
    #[serde(default)]
    pub is_gateway: bool,
    /// Like isGateway, and the pod's default route goes via the gateway.
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
}

fn default_bridge() -> String {
    "reef0".to_string()
}

impl BridgeConf {
    pub fn from_netconf(conf: &NetConf) -> Result<BridgeConf, CniError> {
        let c: BridgeConf = conf.plugin_config()?;
        validate_ifname(&c.bridge).map_err(|_| {
            CniError::invalid_config(format!("invalid bridge name \"{}\"", c.bridge))
        })?;
        if let Some(m) = c.mtu {
            if !(68..=65535).contains(&m) {
                return Err(CniError::invalid_config(format!(
                    "mtu {m} out of range (68-65535)"
                )));
            }
        }
        if conf.ipam.is_none() {
            return Err(CniError::invalid_config(
                "reef-bridge needs an ipam section",
            ));
        }
        Ok(c)
    }

    pub fn gateway_mode(&self) -> bool {
        self.is_gateway || self.is_default_gateway
    }
}

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

    #[test]
    fn config_defaults_and_validation() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"reef-bridge","ipam":{"type":"reef-ipam"}}"#).unwrap();
        let b = BridgeConf::from_netconf(&c).unwrap();
        assert_eq!(b.bridge, "reef0");
        assert!(!b.ip_masq);
        for bad in [
            r#"{"cniVersion":"1.0.0","name":"n","type":"reef-bridge","bridge":"waytoolongbridgename","ipam":{"type":"x"}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"reef-bridge","mtu":10,"ipam":{"type":"x"}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"reef-bridge"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"reef-bridge","ipMasq":"yes","ipam":{"type":"x"}}"#,
        ] {
            let c = NetConf::parse(bad.as_bytes()).unwrap();
            assert_eq!(BridgeConf::from_netconf(&c).unwrap_err().code, 7, "{bad}");
        }
    }
}
