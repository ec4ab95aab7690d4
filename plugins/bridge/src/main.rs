//! reef-bridge: CNI main plugin. A Linux bridge on the host, one veth pair per attachment
//! (host end on the bridge, pod end renamed to CNI_IFNAME inside CNI_NETNS), addresses from
//! IPAM, optional gateway-on-bridge, masquerade, hairpin and MTU.

mod config;
mod plugin;

fn main() {
    reef_cni::skel::run(
        &plugin::Bridge,
        "reef-bridge: Reef's bridge plugin (veth pairs on a Linux bridge)",
    )
}
