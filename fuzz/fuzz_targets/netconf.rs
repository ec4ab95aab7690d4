//! A plugin's stdin (the network configuration with prevResult and runtimeConfig) through
//! reef-cni's NetConf and every plugin's own parser: reef-bridge, reef-routed,
//! reef-portmap, reef-ipam (local and cluster store).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    reef_fuzz::plugin_conf(data);
});
