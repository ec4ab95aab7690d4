//! One reconciliation: every manager brings its concern in line with the cluster view, then
//! the outcome is published (the agent's status: routes, problems, mode) and a changed VTEP is
//! recorded in the node's record.

use crate::agent::{now, State};
use crate::error::SessionError;
use crate::managers::Outcome;
use crate::registry;
use crate::view::ClusterView;
use reef_etcd::Etcd;
use std::collections::BTreeMap;

pub(crate) async fn reconcile(
    st: &mut State,
    etcd: &mut Etcd,
    view: &mut ClusterView,
    full: bool,
) -> Result<(), SessionError> {
    let started = std::time::Instant::now();
    let mut outcome = Outcome::default();
    for m in &mut st.managers {
        let began = std::time::Instant::now();
        let o = m
            .sync(&*view, full)
            .await
            .map_err(|source| SessionError::Manager {
                manager: m.name(),
                source,
            })?;
        st.metrics.observe_manager(m.name(), began.elapsed());
        outcome.merge(o);
    }
    record_vtep(st, etcd, outcome.vtep.clone()).await?;
    st.retry = outcome.problems.values().any(|p| p.retry());
    publish(st, view, outcome);
    st.metrics.observe_reconcile(full, started.elapsed());
    // Every manager has seen these changes.
    view.changed = Default::default();
    Ok(())
}

/// Puts this node's VTEP (or its absence) into its record once the data plane reported it.
async fn record_vtep(
    st: &mut State,
    etcd: &mut Etcd,
    vtep: Option<(String, std::net::IpAddr)>,
) -> Result<(), SessionError> {
    let (vtep_mac, vtep_ip) = vtep.unzip();
    if st.vtep_known && st.record.vtep_mac == vtep_mac && st.record.vtep_ip == vtep_ip {
        return Ok(());
    }
    st.vtep_known = true;
    st.record.vtep_mac = vtep_mac;
    st.record.vtep_ip = vtep_ip;
    if registry::register_node(etcd, &st.record, false).await? {
        let vtep = st.record.vtep_ip.map(|i| i.to_string());
        tracing::info!(vtep = %vtep.unwrap_or_else(|| "none".into()), "node record updated");
    }
    Ok(())
}

/// The agent's status key (sent by the heartbeat) when anything in it changed.
fn publish(st: &State, view: &ClusterView, outcome: Outcome) {
    let mode = view
        .config
        .as_ref()
        .map(|c| c.mode.as_str())
        .unwrap_or("uninitialised")
        .to_string();
    let problems: BTreeMap<String, String> = outcome
        .problems
        .iter()
        .map(|(node, p)| (node.clone(), p.to_string()))
        .collect();
    let routes = outcome.routes;
    let m = &st.metrics;
    m.routes.set(gauge(routes));
    m.fdb_entries.set(gauge(outcome.fdb_entries));
    m.neighbours.set(gauge(outcome.neighbours));
    m.service_ports.set(gauge(outcome.services));
    m.service_endpoints.set(gauge(outcome.endpoints));
    m.policies.set(gauge(outcome.policies));
    m.set_problems(outcome.problems.values().map(|p| p.kind()));
    // Each problem is logged when it appears or changes, not on every retry or resync.
    for (about, why) in &problems {
        if st.status.borrow().problems.get(about) != Some(why) {
            tracing::warn!(about = %about, problem = %why, "problem");
        }
    }
    let (services, endpoints, policies) = (outcome.services, outcome.endpoints, outcome.policies);
    st.status.send_if_modified(|s| {
        if s.routes == routes
            && s.problems == problems
            && s.mode == mode
            && (s.services, s.endpoints, s.policies) == (services, endpoints, policies)
        {
            return false;
        }
        s.policies = policies;
        s.routes = routes;
        s.services = services;
        s.endpoints = endpoints;
        s.problems = problems;
        s.mode = mode;
        s.updated = now();
        true
    });
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
