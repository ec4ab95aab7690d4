//! Network policy: this node's policy table ([`desired::policy`]) through the firewall
//! driver, one transaction per change; then the release of new pods the plugins held
//! (`FirewallDriver::hold_new_pod`), which must come after their rules are in place.
//! The driver keeps the table's picture, so a change sends only its difference; the first
//! sync of the agent's life replaces the table whole, in one transaction (the old table
//! enforces until the new one is committed).

use super::{Firewall, Manager, Outcome, SyncFuture};
use crate::desired::policy as desired;
use crate::problem::Problem;
use crate::view::ClusterView;
use reef_firewall::PolicyRuleset;
use reef_schema::PolicyCounters;
use std::collections::{BTreeMap, BTreeSet};

/// The kernel side, narrow so the manager is testable without a kernel.
pub trait PolicyProgrammer {
    fn sync(&mut self, r: &PolicyRuleset, full: bool) -> Result<bool, reef_firewall::Error>;
    fn release(&mut self, ifaces: &[String]) -> Result<(), reef_firewall::Error>;
    fn counters(&mut self) -> Result<BTreeMap<String, u64>, reef_firewall::Error>;
}

/// Policy through the host's firewall driver.
impl PolicyProgrammer for Firewall {
    fn sync(&mut self, r: &PolicyRuleset, full: bool) -> Result<bool, reef_firewall::Error> {
        self.driver()?.sync_policy(r, full)
    }

    fn release(&mut self, ifaces: &[String]) -> Result<(), reef_firewall::Error> {
        self.driver()?.release_pods(ifaces)
    }

    fn counters(&mut self) -> Result<BTreeMap<String, u64>, reef_firewall::Error> {
        self.driver()?.policy_counters()
    }
}

pub struct PolicyManager<P> {
    me: String,
    programmer: P,
    /// Interfaces released since they appeared (released again on every full sync).
    released: BTreeSet<String>,
    /// What the last successful sync programmed, for the counters' attribution.
    last: desired::Desired,
    synced: bool,
}

impl<P: PolicyProgrammer> PolicyManager<P> {
    pub fn new(me: &str, programmer: P) -> PolicyManager<P> {
        PolicyManager {
            me: me.to_string(),
            programmer,
            released: BTreeSet::new(),
            last: desired::Desired::default(),
            synced: false,
        }
    }

    fn run(&mut self, view: &ClusterView, full: bool) -> Outcome {
        let want = desired::compute(view, &self.me);
        let full = full || !self.synced;
        let mut outcome = Outcome::default();
        if let Err(e) = self.programmer.sync(&want.ruleset, full) {
            tracing::warn!(error = %e, "network policy not programmed");
            self.synced = false;
            outcome
                .problems
                .insert(self.me.clone(), Problem::Policy(e.to_string()));
            return outcome;
        }
        self.synced = true;
        let release: Vec<String> = if full {
            want.local_ifaces.iter().cloned().collect()
        } else {
            want.local_ifaces
                .difference(&self.released)
                .cloned()
                .collect()
        };
        match self.programmer.release(&release) {
            Ok(()) => self.released = want.local_ifaces.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "held pods not released");
                outcome
                    .problems
                    .insert(self.me.clone(), Problem::Policy(e.to_string()));
            }
        }
        outcome.policies = view.policies.len();
        self.last = want;
        outcome
    }

    /// Per policy: packets allowed by its rules and dropped at the pods it isolates here.
    pub fn counters(&mut self) -> BTreeMap<String, PolicyCounters> {
        // No policy selects a pod here: nothing to read (and no nft process to run).
        if self.last.counters.is_empty() {
            return BTreeMap::new();
        }
        let raw = match self.programmer.counters() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "policy counters not read");
                return BTreeMap::new();
            }
        };
        self.last
            .counters
            .iter()
            .map(|(id, (allow, drops))| {
                let get = |name: &str| raw.get(name).copied().unwrap_or(0);
                (
                    id.clone(),
                    PolicyCounters {
                        allowed: get(allow),
                        dropped: drops.iter().map(|d| get(d)).sum(),
                    },
                )
            })
            .collect()
    }
}

impl<P: PolicyProgrammer> Manager for PolicyManager<P> {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn sync<'a>(&'a mut self, view: &'a ClusterView, full: bool) -> SyncFuture<'a> {
        Box::pin(async move { Ok(self.run(view, full)) })
    }

    fn policy_counters(&mut self) -> Option<BTreeMap<String, PolicyCounters>> {
        Some(self.counters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        syncs: Vec<(usize, bool)>,
        released: Vec<Vec<String>>,
        fail: bool,
    }

    impl PolicyProgrammer for &mut Recorder {
        fn sync(&mut self, r: &PolicyRuleset, full: bool) -> Result<bool, reef_firewall::Error> {
            if self.fail {
                return Err(reef_firewall::Error::Check("refused".into()));
            }
            self.syncs.push((r.chains.len(), full));
            Ok(true)
        }
        fn release(&mut self, ifaces: &[String]) -> Result<(), reef_firewall::Error> {
            self.released.push(ifaces.to_vec());
            Ok(())
        }
        fn counters(&mut self) -> Result<BTreeMap<String, u64>, reef_firewall::Error> {
            Ok(BTreeMap::new())
        }
    }

    fn view(pods: &[&str]) -> ClusterView {
        let kvs: Vec<(String, String)> = pods
            .iter()
            .map(|p| {
                (
                    format!("/reef/workloads/a/{p}/eth0"),
                    format!(r#"{{"node":"a","network":"n","containerId":"{p}","ifname":"eth0","ips":[],"hostInterface":"{p}"}}"#),
                )
            })
            .collect();
        ClusterView::from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
    }

    #[test]
    fn pods_are_released_after_their_rules_and_once() {
        let mut rec = Recorder::default();
        let mut m = PolicyManager::new("a", &mut rec);
        m.run(&view(&["p1"]), false);
        m.run(&view(&["p1", "p2"]), false);
        m.run(&view(&["p2"]), false);
        m.run(&view(&["p2"]), true);
        drop(m);
        assert_eq!(
            rec.syncs.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![true, false, false, true]
        );
        assert_eq!(
            rec.released,
            vec![
                vec!["p1".to_string()],
                vec!["p2".to_string()],
                vec![],
                vec!["p2".to_string()],
            ]
        );
    }

    #[test]
    fn a_refused_table_releases_nobody_and_is_reported() {
        let mut rec = Recorder {
            fail: true,
            ..Recorder::default()
        };
        let mut m = PolicyManager::new("a", &mut rec);
        let o = m.run(&view(&["p1"]), false);
        drop(m);
        assert!(o.problems.contains_key("a"));
        assert!(rec.released.is_empty());
    }
}
