//! natOutgoing: the pools from [`desired::nat`], programmed through a [`NatProgrammer`] only
//! when they change (once per config change, not per pod or per resync).

use super::{Manager, Outcome, SyncFuture};
use crate::desired;
use crate::problem::Problem;
use crate::view::ClusterView;
use reef_firewall::NatPool;

/// The kernel side of natOutgoing, narrow so the manager's logic is testable without a kernel.
pub trait NatProgrammer {
    fn program(&mut self, pools: &[NatPool]) -> Result<(), reef_firewall::Error>;
}

/// natOutgoing through the host's firewall driver (`--firewall`): replaced atomically (one
/// nftables table, or the iptables driver's pool sets).
pub struct Firewall(pub reef_firewall::DriverKind);

impl NatProgrammer for Firewall {
    fn program(&mut self, pools: &[NatPool]) -> Result<(), reef_firewall::Error> {
        reef_firewall::driver(self.0).sync_nat_outgoing(pools)
    }
}

pub struct NatManager<P> {
    me: String,
    programmer: P,
    /// The pools last programmed; None until the first success (so a failure is retried).
    applied: Option<Vec<NatPool>>,
}

impl<P: NatProgrammer> NatManager<P> {
    pub fn new(me: &str, programmer: P) -> NatManager<P> {
        NatManager {
            me: me.to_string(),
            programmer,
            applied: None,
        }
    }

    fn apply(&mut self, view: &ClusterView) -> Outcome {
        let mut outcome = Outcome::default();
        let pools = desired::nat::pools(view);
        // The table is replaced as a whole, so an unchanged pool list needs no kernel call,
        // not even on a full resync.
        if self.applied.as_ref() == Some(&pools) {
            return outcome;
        }
        match self.programmer.program(&pools) {
            Ok(()) => {
                tracing::info!(pools = pools.len(), "natOutgoing programmed");
                self.applied = Some(pools);
            }
            Err(e) => {
                tracing::warn!(error = %e, "natOutgoing failed");
                outcome
                    .problems
                    .insert(self.me.clone(), Problem::Nat(e.to_string()));
            }
        }
        outcome
    }
}

impl<P: NatProgrammer> Manager for NatManager<P> {
    fn name(&self) -> &'static str {
        "natOutgoing"
    }

    fn sync<'a>(&'a mut self, view: &'a ClusterView, _full: bool) -> SyncFuture<'a> {
        let outcome = self.apply(view);
        Box::pin(async move { Ok(outcome) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every program call; fails while `fail` is set.
    #[derive(Default)]
    struct Fake {
        calls: Vec<usize>,
        fail: bool,
    }

    impl NatProgrammer for Fake {
        fn program(&mut self, pools: &[NatPool]) -> Result<(), reef_firewall::Error> {
            self.calls.push(pools.len());
            if self.fail {
                return Err(reef_firewall::Error::Nft {
                    context: "program natOutgoing".into(),
                    stderr: "nft is missing".into(),
                });
            }
            Ok(())
        }
    }

    fn view(pools: &str) -> ClusterView {
        let cfg = format!(r#"{{"pools":[{pools}],"mode":"routed"}}"#);
        ClusterView::from_kvs([("/reef/config", cfg.as_bytes())])
    }

    const P1: &str = r#"{"cidr":"10.1.0.0/16","blockPrefix":26}"#;
    const P2: &str = r#"{"cidr":"10.2.0.0/16","blockPrefix":26}"#;

    #[test]
    fn programs_only_when_the_pools_change() {
        let mut m = NatManager::new("a", Fake::default());
        let v = view(P1);
        assert!(m.apply(&v).problems.is_empty());
        assert!(m.apply(&v).problems.is_empty());
        m.apply(&view(&format!("{P1},{P2}")));
        assert_eq!(m.programmer.calls, vec![1, 2]);
    }

    #[test]
    fn a_failure_is_reported_and_retried() {
        let mut m = NatManager::new(
            "a",
            Fake {
                fail: true,
                ..Fake::default()
            },
        );
        let v = view(P1);
        let p = &m.apply(&v).problems["a"];
        assert!(p.retry());
        assert!(p.to_string().starts_with("natOutgoing: "), "{p}");
        m.programmer.fail = false;
        assert!(m.apply(&v).problems.is_empty());
        assert_eq!(m.programmer.calls, vec![1, 1]);
    }
}
