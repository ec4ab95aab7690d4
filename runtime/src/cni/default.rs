//! The embedded default network, so `reef-run -- CMD` works on a host with nothing configured:
//! reef-bridge `reef0` as gateway with masquerade, reef-ipam's local store on 10.88.0.0/16, and
//! reef-portmap for `-p`.

use std::path::Path;

use serde_json::json;

use super::NetworkList;
use crate::error::Result;

pub const NETWORK_NAME: &str = "reef";
pub const BRIDGE: &str = "reef0";
pub const SUBNET: &str = "10.88.0.0/16";

/// The default network with reef-ipam's store under `ipam_data_dir`.
pub fn network(ipam_data_dir: &Path) -> Result<NetworkList> {
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "reef-bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                // A container reaching its own published port through the host's address
                // leaves and re-enters its bridge port (br_netfilter DNATs at the bridge).
                "hairpinMode": true,
                "ipam": {
                    "type": "reef-ipam",
                    "ranges": [[{"subnet": SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_data_dir,
                },
            },
            {
                "type": "reef-portmap",
                "capabilities": {"portMappings": true},
            },
        ],
    });
    // Pretty-printed: it is also what lands (base64) in the libcni cache, where a person may
    // decode it.
    let bytes = serde_json::to_vec_pretty(&conf).unwrap_or_default();
    NetworkList::parse(bytes, "the default network")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_network_is_valid() {
        let l = network(Path::new("/tmp/x")).unwrap();
        assert_eq!(l.name, "reef");
        let types: Vec<_> = l.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["reef-bridge", "reef-portmap"]);
        assert!(l.declares("portMappings"));
        assert_eq!(l.plugins[0].raw["ipam"]["dataDir"], "/tmp/x");
    }
}
