//! Routed mode: remote blocks via the remote node's underlay address.

use super::kernel::RouteProgrammer;
use crate::desired;
use crate::managers::Outcome;
use crate::view::ClusterView;
use reef_netlink::Netlink;

pub struct Routed {
    me: String,
    nl: Netlink,
    routes: RouteProgrammer,
}

impl Routed {
    pub fn new(me: &str, nl: Netlink) -> Routed {
        Routed {
            me: me.to_string(),
            routes: RouteProgrammer::new(nl.clone()),
            nl,
        }
    }

    pub async fn sync(&mut self, view: &ClusterView, full: bool) -> reef_netlink::Result<Outcome> {
        if full {
            // Left over from a VXLAN mode before a forced mode switch.
            if reef_vxlan::delete_device(&self.nl).await? {
                tracing::info!(dev = %reef_vxlan::DEVICE, "removed VXLAN device after mode switch");
            }
        }
        let d = desired::compute(view, &self.me, &desired::routed_next_hop(view));
        if full {
            self.routes.full_sync(&d).await
        } else {
            Ok(self.routes.apply(&d).await)
        }
    }
}
