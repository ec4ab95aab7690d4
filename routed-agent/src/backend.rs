//! One interface per data-plane mode (flannel's backend idea): given the cluster view, make the
//! kernel match it. Routed mode is plain routes; overlay modes add devices and neighbours.

use crate::desired::{self, Desired};
use crate::kernel::{Report, RouteProgrammer};
use crate::view::ClusterView;
use reef_netlink::Netlink;
use std::future::Future;

pub trait Backend {
    fn name(&self) -> &'static str;

    /// Makes the kernel match `view`: `full` re-reads the kernel's state first (start,
    /// re-list, periodic resync); otherwise only the difference from the last call is applied.
    fn sync(
        &mut self,
        view: &ClusterView,
        full: bool,
    ) -> impl Future<Output = reef_netlink::Result<Report>>;
}

/// Routed mode: remote blocks via the remote node's underlay address.
pub struct Routed {
    me: String,
    routes: RouteProgrammer,
}

impl Routed {
    pub fn new(me: &str, nl: Netlink) -> Routed {
        Routed {
            me: me.to_string(),
            routes: RouteProgrammer::new(nl),
        }
    }

    pub fn desired(&self, view: &ClusterView) -> Desired {
        desired::compute(view, &self.me, &desired::routed_next_hop(view))
    }
}

impl Backend for Routed {
    fn name(&self) -> &'static str {
        "routed"
    }

    async fn sync(&mut self, view: &ClusterView, full: bool) -> reef_netlink::Result<Report> {
        let d = self.desired(view);
        if full {
            self.routes.full_sync(&d).await
        } else {
            Ok(self.routes.apply(&d).await)
        }
    }
}
