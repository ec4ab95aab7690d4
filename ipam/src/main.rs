//! reef-ipam: CNI IPAM plugin. `ranges` in host-local syntax with `dataDir` selects the
//! embedded local store (one host, nothing to install).

fn main() {
    reef_cni::skel::run(
        &reef_ipam::plugin::ReefIpam,
        "reef-ipam: Reef's IPAM plugin (embedded local store, host-local compatible ranges)",
    )
}
