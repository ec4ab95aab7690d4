//! Routes between nodes: one backend per data-plane mode (flannel's backend idea), switched
//! when the cluster's mode changes. `routed` is plain routes; `vxlan` and `vxlan-crosssubnet`
//! add a VXLAN device, FDB and neighbour entries, and route through it where they must.

pub mod kernel;
pub mod routed;
pub mod vxlan;

use super::{Manager, ManagerError, Outcome, SyncFuture};
use crate::underlay::Underlay;
use crate::view::ClusterView;
use reef_netlink::Netlink;
use reef_schema::Mode;

/// The backend of the cluster's current mode.
pub enum Backend {
    Routed(routed::Routed),
    Vxlan(vxlan::Vxlan),
}

impl Backend {
    pub fn for_mode(mode: Mode, me: &str, nl: Netlink, underlay: Underlay) -> Backend {
        match mode {
            Mode::Routed => Backend::Routed(routed::Routed::new(me, nl)),
            Mode::Vxlan => Backend::Vxlan(vxlan::Vxlan::new(me, nl, underlay, false)),
            Mode::VxlanCrosssubnet => Backend::Vxlan(vxlan::Vxlan::new(me, nl, underlay, true)),
        }
    }

    pub fn mode(&self) -> Mode {
        match self {
            Backend::Routed(_) => Mode::Routed,
            Backend::Vxlan(b) => b.mode(),
        }
    }

    async fn sync(&mut self, view: &ClusterView, full: bool) -> reef_netlink::Result<Outcome> {
        match self {
            Backend::Routed(b) => b.sync(view, full).await,
            Backend::Vxlan(b) => b.sync(view, full).await,
        }
    }
}

pub struct RoutesManager {
    me: String,
    nl: Netlink,
    underlay: Underlay,
    backend: Backend,
}

impl RoutesManager {
    /// Starts in routed mode until the cluster config says otherwise.
    pub fn new(me: &str, nl: Netlink, underlay: Underlay) -> RoutesManager {
        RoutesManager {
            backend: Backend::for_mode(Mode::Routed, me, nl.clone(), underlay.clone()),
            me: me.to_string(),
            nl,
            underlay,
        }
    }

    async fn run(&mut self, view: &ClusterView, mut full: bool) -> Result<Outcome, ManagerError> {
        if let Some(m) = view.config.as_ref().map(|c| c.mode) {
            if m != self.backend.mode() {
                tracing::info!(from = %self.backend.mode().as_str(), to = %m.as_str(), "data-plane mode");
                self.backend =
                    Backend::for_mode(m, &self.me, self.nl.clone(), self.underlay.clone());
                // The new backend knows nothing yet: learn the kernel's state first.
                full = true;
            }
        }
        Ok(self.backend.sync(view, full).await?)
    }
}

impl Manager for RoutesManager {
    fn name(&self) -> &'static str {
        "routes"
    }

    fn sync<'a>(&'a mut self, view: &'a ClusterView, full: bool) -> SyncFuture<'a> {
        Box::pin(self.run(view, full))
    }
}
