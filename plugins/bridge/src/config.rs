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
    /// MTU of the bridge and both veth ends; None follows the node's reef.vxlan device in a
    /// VXLAN mode (the kernel default otherwise).
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    /// Pods of this network cannot reach pods of the host's other bridge networks, nor they
    /// these (Docker's separate networks); `false` opens it.
    #[serde(default = "default_isolation")]
    pub isolation: bool,
}

fn default_isolation() -> bool {
    true
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
        reef_attach::validate_common(conf, c.mtu, "reef-bridge")?;
        Ok(c)
    }

    pub fn gateway_mode(&self) -> bool {
        self.is_gateway || self.is_default_gateway
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
