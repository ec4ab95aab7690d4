//! reef-routed: CNI main plugin, Calico style. No bridge: one veth pair per attachment, the
//! host end (fixed MAC ee:ee:ee:ee:ee:ee, proxy ARP, no address) carries a /32 (/128) route
//! to each pod address; the pod holds its addresses as host addresses and routes everything
//! via the link-local gateway 169.254.1.1 (fe80::ecee:eeff:feee:eeee), which is the host veth.

use reef_routed::config;
mod plugin;

fn main() {
    // reef-ipam is linked in: `"ipam": {"type": "reef-ipam"}` runs in-process.
    reef_cni::skel::run(
        &reef_attach::VethPlugin::<plugin::Routed>::new(&reef_ipam::plugin::ReefIpam),
        "reef-routed: Reef's routed plugin (veth pairs, /32 host routes, no bridge)",
    )
}
