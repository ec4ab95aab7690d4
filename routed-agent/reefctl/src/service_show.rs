//! Text and JSON for `apply`, `delete` and `service ls/show` (kubectl's shapes: one line per
//! object changed, `NAME TYPE CLUSTER-IP PORT(S)` tables).

use crate::services::{ports_text, Change, ServiceView};
use reef_schema::{Service, TrafficPolicy};
use serde_json::{json, Value};

pub fn applied(results: &[(Service, Change)]) -> (String, Value) {
    let mut text = String::new();
    let mut rows = Vec::new();
    for (s, change) in results {
        text.push_str(&format!(
            "service/{} {} ({}: {})\n",
            s.name,
            change.as_str(),
            s.namespace,
            s.cluster_ip.map(|i| i.to_string()).unwrap_or_default()
        ));
        rows.push(json!({
            "kind": "Service", "namespace": s.namespace, "name": s.name,
            "result": change.as_str(), "service": s,
        }));
    }
    (text, Value::Array(rows))
}

pub fn deleted(ids: &[String]) -> (String, Value) {
    let mut text = String::new();
    let mut rows = Vec::new();
    for id in ids {
        let (namespace, name) = id.split_once('/').unwrap_or(("", id));
        text.push_str(&format!("service/{name} deleted ({id})\n"));
        rows.push(
            json!({"kind": "Service", "namespace": namespace, "name": name, "result": "deleted"}),
        );
    }
    (text, Value::Array(rows))
}

pub fn list(view: &ServiceView, all_namespaces: bool) -> (String, Value) {
    let mut text = String::new();
    if all_namespaces {
        text.push_str(&format!("{:<16} ", "NAMESPACE"));
    }
    text.push_str(&format!(
        "{:<24} {:<10} {:<16} {:<28} {}\n",
        "NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "ENDPOINTS"
    ));
    let mut rows = Vec::new();
    for s in &view.services {
        let eps = view.endpoints(s);
        let alive = eps.iter().filter(|e| e.alive).count();
        if all_namespaces {
            text.push_str(&format!("{:<16} ", s.namespace));
        }
        text.push_str(&format!(
            "{:<24} {:<10} {:<16} {:<28} {}\n",
            s.name,
            format!("{:?}", s.kind),
            s.cluster_ip.map(|i| i.to_string()).unwrap_or_default(),
            ports_text(s),
            if alive == eps.len() {
                alive.to_string()
            } else {
                format!("{alive} ({} on dead nodes)", eps.len() - alive)
            }
        ));
        rows.push(json!({
            "service": s,
            "endpoints": eps.len(),
            "aliveEndpoints": alive,
        }));
    }
    (text, Value::Array(rows))
}

pub fn show(view: &ServiceView, s: &Service) -> (String, Value) {
    let eps = view.endpoints(s);
    let mut text = format!(
        "Name:              {}\nNamespace:         {}\nType:              {:?}\nIP:                {}\n",
        s.name,
        s.namespace,
        s.kind,
        s.cluster_ip.map(|i| i.to_string()).unwrap_or_default()
    );
    let selector: Vec<String> = s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    text.push_str(&format!(
        "Selector:          {}\n",
        if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector.join(",")
        }
    ));
    text.push_str(&format!(
        "Session Affinity:  {}\n",
        match s.affinity_timeout {
            Some(t) => format!("ClientIP ({t} s)"),
            None => "None".into(),
        }
    ));
    if s.kind == reef_schema::ServiceType::NodePort {
        text.push_str(&format!(
            "External Traffic Policy: {}\n",
            match s.external_traffic_policy {
                TrafficPolicy::Cluster => "Cluster",
                TrafficPolicy::Local => "Local",
            }
        ));
    }
    for p in &s.ports {
        text.push_str(&format!(
            "Port:              {} {}/{} -> {}{}\n",
            p.name.as_deref().unwrap_or("<unset>"),
            p.port,
            p.protocol,
            p.target_port,
            p.node_port
                .map(|np| format!("  NodePort {np}/{}", p.protocol))
                .unwrap_or_default()
        ));
    }
    text.push_str(&format!(
        "Endpoints:         {}\n",
        if eps.is_empty() { "<none>" } else { "" }
    ));
    if !eps.is_empty() {
        text.push_str(&format!(
            "  {:<16} {:<24} {:<16} {}\n",
            "ADDRESS", "POD", "NODE", "NODE ALIVE"
        ));
        for e in &eps {
            text.push_str(&format!(
                "  {:<16} {:<24} {:<16} {}\n",
                e.ip.to_string(),
                e.pod.as_deref().unwrap_or("-"),
                e.node,
                if e.alive { "yes" } else { "no" }
            ));
        }
    }
    (text, json!({"service": s, "endpoints": eps}))
}
