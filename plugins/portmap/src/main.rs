//! reef-portmap: chained CNI plugin for the `portMappings` capability. Host ports are
//! DNATed to the pod (from other hosts, from the host itself including 127.0.0.1, and from
//! pods, hairpin included) through one nftables table whose per-mapping state is map
//! elements, changed by one netlink batch per ADD or DEL.

use reef_portmap::config;
mod localnet;
mod plugin;

fn main() {
    reef_cni::skel::run(
        &plugin::PortMap,
        "reef-portmap: Reef's port-mapping plugin (nftables maps, capability portMappings)",
    )
}
