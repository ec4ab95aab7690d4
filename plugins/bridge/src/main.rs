//! reef-bridge: CNI main plugin. A Linux bridge on the host, one veth pair per attachment
//! (host end on the bridge, pod end renamed to CNI_IFNAME inside CNI_NETNS), addresses from
//! IPAM, optional gateway-on-bridge, masquerade, hairpin and MTU.

use reef_bridge::config;
mod plugin;

fn main() {
    // reef-ipam is linked in: `"ipam": {"type": "reef-ipam"}` runs in-process.
    reef_cni::skel::run(
        &reef_attach::VethPlugin::<plugin::Bridge>::new(&reef_ipam::plugin::ReefIpam),
        "reef-bridge: Reef's bridge plugin (veth pairs on a Linux bridge)",
    )
}
