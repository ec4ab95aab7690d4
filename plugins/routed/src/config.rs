//! reef-routed configuration.

use reef_cni::{CniError, NetConf};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutedConf {
    /// MTU of both veth ends; None follows the node's reef.vxlan device in a VXLAN mode
    /// (underlay − 50), else the kernel default.
    #[serde(default)]
    pub mtu: Option<u32>,
}

impl RoutedConf {
    pub fn from_netconf(conf: &NetConf) -> Result<RoutedConf, CniError> {
        let c: RoutedConf = conf.plugin_config()?;
        reef_attach::validate_common(conf, c.mtu, "reef-routed")?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"reef-routed","ipam":{"type":"reef-ipam"}}"#,
        )
        .unwrap();
        assert_eq!(RoutedConf::from_netconf(&c).unwrap().mtu, None);
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"reef-routed","mtu":1400,"ipam":{"type":"x"}}"#,
        )
        .unwrap();
        assert_eq!(RoutedConf::from_netconf(&c).unwrap().mtu, Some(1400));
        for bad in [
            r#"{"cniVersion":"1.0.0","name":"n","type":"reef-routed","mtu":10,"ipam":{"type":"x"}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"reef-routed","mtu":"1400","ipam":{"type":"x"}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"reef-routed"}"#,
        ] {
            let c = NetConf::parse(bad.as_bytes()).unwrap();
            assert_eq!(RoutedConf::from_netconf(&c).unwrap_err().code, 7, "{bad}");
        }
    }
}
