//! The agent's Prometheus metrics (every name prefixed `reef_`), kept in one registry and
//! encoded in the OpenMetrics text format that Prometheus scrapes. The reconcile loop, the
//! heartbeat and the etcd session update them; [`crate::serve`] exposes them on `/metrics`.

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ManagerLabel {
    pub manager: &'static str,
}

/// Every figure the agent exports. Cheap to update (atomics); shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// One reconcile, by kind: `full` (kernel re-read) or `incremental` (watch events).
    pub reconcile_seconds: Family<KindLabel, Histogram>,
    /// One manager's part of a reconcile.
    pub manager_sync_seconds: Family<ManagerLabel, Histogram>,
    /// etcd sessions that ended (watch broken, compacted, etcd gone) and were listed again.
    pub watch_restarts: Counter,
    /// Events the watch delivered.
    pub watch_events: Counter,
    /// Failed etcd requests, by error class (unavailable, unreachable, rejected, config, decode).
    pub etcd_request_errors: Family<KindLabel, Counter>,
    pub routes: Gauge,
    pub fdb_entries: Gauge,
    pub neighbours: Gauge,
    pub service_ports: Gauge,
    pub service_endpoints: Gauge,
    pub policies: Gauge,
    /// Problems now, by kind (the text is in the agent record and `reefctl status`).
    pub problems: Family<KindLabel, Gauge>,
    /// 1 while the lease is held (the cluster sees this node alive).
    pub lease_alive: Gauge,
    /// 1 while the etcd session (list + watch) is up.
    pub etcd_connected: Gauge,
    synced: AtomicBool,
}

impl Metrics {
    pub fn new(node: &str) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("reef");
        // 0.5 ms .. ~33 s: an incremental change takes milliseconds, a full sync of 10,000
        // services seconds.
        let seconds = || Histogram::new(exponential_buckets(0.0005, 2.0, 17));
        let m = Metrics {
            reconcile_seconds: Family::new_with_constructor(seconds),
            manager_sync_seconds: Family::new_with_constructor(seconds),
            watch_restarts: Counter::default(),
            watch_events: Counter::default(),
            etcd_request_errors: Family::default(),
            routes: Gauge::default(),
            fdb_entries: Gauge::default(),
            neighbours: Gauge::default(),
            service_ports: Gauge::default(),
            service_endpoints: Gauge::default(),
            policies: Gauge::default(),
            problems: Family::default(),
            lease_alive: Gauge::default(),
            etcd_connected: Gauge::default(),
            synced: AtomicBool::new(false),
            registry: Registry::default(),
        };
        // A gauge at 1 rather than OpenMetrics' `info` type, which the Prometheus text
        // parser (promtool, Prometheus before 2.x's OpenMetrics support) does not know.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                node: node.to_string(),
            })
            .set(1);
        registry.register("build_info", "The agent's version and node", build);
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile of every manager, by kind (full: kernel re-read; incremental: watch events)",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "manager_sync_duration_seconds",
            "Time of one manager's sync within a reconcile",
            m.manager_sync_seconds.clone(),
        );
        registry.register(
            "watch_restarts",
            "etcd sessions that ended and were listed and watched again",
            m.watch_restarts.clone(),
        );
        registry.register(
            "watch_events",
            "Events delivered by the etcd watch",
            m.watch_events.clone(),
        );
        registry.register(
            "etcd_request_errors",
            "Failed etcd requests by error class",
            m.etcd_request_errors.clone(),
        );
        registry.register(
            "routes",
            "Routes to other nodes' pods programmed now",
            m.routes.clone(),
        );
        registry.register(
            "fdb_entries",
            "VXLAN FDB entries programmed now",
            m.fdb_entries.clone(),
        );
        registry.register(
            "neighbours",
            "Permanent VXLAN neighbour entries programmed now",
            m.neighbours.clone(),
        );
        registry.register(
            "service_ports",
            "Service ports programmed now",
            m.service_ports.clone(),
        );
        registry.register(
            "service_endpoints",
            "Service endpoints programmed now",
            m.service_endpoints.clone(),
        );
        registry.register(
            "policies",
            "Network policies in the cluster",
            m.policies.clone(),
        );
        registry.register(
            "problems",
            "Problems reported now, by kind",
            m.problems.clone(),
        );
        registry.register(
            "lease_alive",
            "1 while the agent holds its lease (the cluster sees the node alive)",
            m.lease_alive.clone(),
        );
        registry.register(
            "etcd_connected",
            "1 while the etcd session (list and watch) is up",
            m.etcd_connected.clone(),
        );
        // Every label value known up front is shown from the start, at zero, so a rate()
        // over the first change is right.
        for kind in ["full", "incremental"] {
            drop(m.reconcile_seconds.get_or_create(&KindLabel { kind }));
        }
        for kind in reef_etcd::Error::KINDS {
            drop(m.etcd_request_errors.get_or_create(&KindLabel { kind }));
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the Prometheus text format (0.0.4), for clients that do not ask for
    /// OpenMetrics (promtool, curl, older scrapers).
    pub fn encode_prometheus_text(&self) -> String {
        prometheus_text(&self.encode())
    }

    pub fn observe_reconcile(&self, full: bool, took: Duration) {
        let kind = if full { "full" } else { "incremental" };
        self.reconcile_seconds
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    pub fn observe_manager(&self, manager: &'static str, took: Duration) {
        self.manager_sync_seconds
            .get_or_create(&ManagerLabel { manager })
            .observe(took.as_secs_f64());
    }

    pub fn etcd_error(&self, e: &reef_etcd::Error) {
        self.etcd_request_errors
            .get_or_create(&KindLabel { kind: e.kind() })
            .inc();
    }

    /// Problems now, counted by kind; kinds that went to zero stay, at zero.
    pub fn set_problems(&self, kinds: impl Iterator<Item = &'static str>) {
        let mut counts = std::collections::BTreeMap::<&'static str, i64>::new();
        for k in kinds {
            *counts.entry(k).or_default() += 1;
        }
        for k in crate::problem::Problem::KINDS {
            let n = counts.get(k).copied().unwrap_or_default();
            let gauge = self.problems.get_or_create(&KindLabel { kind: k });
            gauge.set(n);
        }
    }

    /// The first full sync is done: `/healthz` answers ok from now on.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

/// OpenMetrics text into Prometheus text (0.0.4). The two differ, for what this registry
/// holds, in three ways: a counter family is named without `_total` in OpenMetrics and with
/// it in Prometheus (its `# HELP` and `# TYPE` lines follow the sample name), `# UNIT` lines
/// and the final `# EOF` exist only in OpenMetrics.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Held until the TYPE line says whether the family is a counter.
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = kind == "counter";
            if let Some(h) = help.take() {
                match h.strip_prefix("# HELP ").and_then(|t| t.strip_prefix(name)) {
                    Some(text) if counter => {
                        out.push_str(&format!("# HELP {name}_total{text}\n"));
                    }
                    _ => {
                        out.push_str(h);
                        out.push('\n');
                    }
                }
            }
            if counter {
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_counters_end_in_total() {
        let m = Metrics::new("n1");
        m.watch_restarts.inc();
        m.observe_reconcile(true, Duration::from_millis(3));
        m.etcd_error(&reef_etcd::Error::Config("x".into()));
        let text = m.encode();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("reef_"), "{line}");
        }
        assert!(text.contains("reef_watch_restarts_total 1"), "{text}");
        assert!(text.contains("reef_etcd_request_errors_total{kind=\"config\"} 1"));
        assert!(text.contains("reef_reconcile_duration_seconds_count{kind=\"full\"} 1"));
        assert!(text.contains("reef_build_info{version="));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_text_names_counter_families_by_their_samples() {
        let open = "# HELP reef_x Things.\n# TYPE reef_x counter\nreef_x_total 2\n\
                    # HELP reef_g A gauge.\n# TYPE reef_g gauge\nreef_g 1\n# EOF\n";
        assert_eq!(
            prometheus_text(open),
            "# HELP reef_x_total Things.\n# TYPE reef_x_total counter\nreef_x_total 2\n\
             # HELP reef_g A gauge.\n# TYPE reef_g gauge\nreef_g 1\n"
        );
    }
}
