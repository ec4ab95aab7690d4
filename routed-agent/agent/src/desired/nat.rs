//! natOutgoing's desired state: every pool with its natOutgoing flag (pod-to-pod traffic across
//! pools is never masqueraded, so the non-NAT pools matter too), as the firewall's rule type.

use crate::view::ClusterView;
use reef_firewall::NatPool;

/// The pools natOutgoing is built from; none before the cluster is initialised.
pub fn pools(view: &ClusterView) -> Vec<NatPool> {
    view.config
        .iter()
        .flat_map(|c| &c.pools)
        .map(|p| NatPool {
            cidr: p.cidr,
            nat_outgoing: p.nat_outgoing,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_follow_the_config() {
        assert!(pools(&ClusterView::default()).is_empty());
        let v = ClusterView::from_kvs([(
            "/reef/config",
            &br#"{"pools":[{"cidr":"10.1.0.0/16","blockPrefix":26,"natOutgoing":false}],"mode":"routed"}"#[..],
        )]);
        let p = pools(&v);
        assert_eq!(p.len(), 1);
        assert!(!p[0].nat_outgoing);
    }
}
