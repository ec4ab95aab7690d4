//! `v1 Service` objects into [`reef_schema::Service`], with Kubernetes' defaults and checks,
//! refusing what Reef does not implement by naming the field.

use crate::{field, present, type_name, Header, ManifestError, Origin};
use reef_schema::services::{DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT};
use reef_schema::{Protocol, Service, ServicePort, ServiceType, TrafficPolicy};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// The top-level fields of an object; `status` is read by no one (exported manifests have it).
const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// `spec` fields Reef reads (some accept only the value that means "nothing special").
const SPEC_FIELDS: &[&str] = &[
    "type",
    "selector",
    "ports",
    "clusterIP",
    "clusterIPs",
    "ipFamilies",
    "ipFamilyPolicy",
    "sessionAffinity",
    "sessionAffinityConfig",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "publishNotReadyAddresses",
];

/// `spec` fields refused whenever they are set, and why.
const SPEC_REFUSED: &[(&str, &str)] = &[
    ("externalIPs", "external IPs are not supported"),
    ("loadBalancerIP", "load balancers are not supported"),
    (
        "loadBalancerSourceRanges",
        "load balancers are not supported",
    ),
    ("loadBalancerClass", "load balancers are not supported"),
    (
        "allocateLoadBalancerNodePorts",
        "load balancers are not supported",
    ),
    ("healthCheckNodePort", "load balancers are not supported"),
    ("externalName", "ExternalName services are not supported"),
    (
        "trafficDistribution",
        "traffic distribution preferences are not supported",
    ),
];

/// `spec.ports[]` fields; `appProtocol` is accepted and ignored.
const PORT_FIELDS: &[&str] = &[
    "name",
    "protocol",
    "port",
    "targetPort",
    "nodePort",
    "appProtocol",
];

/// Label keys: a DNS subdomain prefix (253), '/', a name (63).
const MAX_LABEL_KEY: usize = 317;
const MAX_LABEL_VALUE: usize = 63;

pub(crate) fn service(
    header: &Header,
    object: &Map<String, Value>,
) -> Result<Service, ManifestError> {
    let o = &header.origin;
    if let Some(key) = object.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(field(o, key.as_str(), "unknown field"));
    }
    let spec = match present(object, "spec") {
        None => return Err(field(o, "spec", "required")),
        Some(Value::Object(spec)) => spec,
        Some(other) => return Err(not_a(o, "spec", "a mapping", other)),
    };
    // The type first: `type: ExternalName` explains `externalName` better than the field does.
    let kind = service_type(o, spec)?;
    for (key, value) in spec {
        if value.is_null() {
            continue;
        }
        if let Some((_, why)) = SPEC_REFUSED.iter().find(|(k, _)| k == key) {
            return Err(field(
                o,
                format!("spec.{key}"),
                format!("not supported: {why}"),
            ));
        }
        if !SPEC_FIELDS.contains(&key.as_str()) {
            return Err(field(
                o,
                format!("spec.{key}"),
                "unknown field (Reef refuses the fields it does not implement)",
            ));
        }
    }
    let cluster_ip = cluster_ip(o, spec)?;
    let selector = selector(o, spec)?;
    let ports = ports(o, spec, kind)?;
    let affinity_timeout = affinity(o, spec)?;
    let external_traffic_policy = traffic_policies(o, spec, kind)?;
    Ok(Service {
        namespace: header.namespace.clone(),
        name: header.name.clone(),
        kind,
        cluster_ip,
        selector,
        ports,
        affinity_timeout,
        external_traffic_policy,
    })
}

pub(crate) fn not_a(
    o: &Origin,
    path: impl Into<String>,
    wanted: &str,
    got: &Value,
) -> ManifestError {
    field(o, path, format!("must be {wanted}, not {}", type_name(got)))
}

/// An optional string field.
pub(crate) fn string<'a>(
    o: &Origin,
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, ManifestError> {
    match present(object, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(not_a(o, path, "a string", other)),
    }
}

/// An integer (not a float, not a string).
pub(crate) fn integer(o: &Origin, value: &Value, path: &str) -> Result<i64, ManifestError> {
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(i),
            None if n.is_u64() => Err(field(o, path, format!("{n} is out of range"))),
            None => Err(field(o, path, format!("must be an integer, not {n}"))),
        },
        other => Err(not_a(o, path, "an integer", other)),
    }
}

pub(crate) fn port_number(o: &Origin, n: i64, path: &str) -> Result<u16, ManifestError> {
    match u16::try_from(n) {
        Ok(port) if port >= 1 => Ok(port),
        _ => Err(field(
            o,
            path,
            format!("{n} is not a port number (1-65535)"),
        )),
    }
}

fn service_type(o: &Origin, spec: &Map<String, Value>) -> Result<ServiceType, ManifestError> {
    const PATH: &str = "spec.type";
    match string(o, spec, "type", PATH)? {
        None | Some("ClusterIP") => Ok(ServiceType::ClusterIP),
        Some("NodePort") => Ok(ServiceType::NodePort),
        Some(t @ ("LoadBalancer" | "ExternalName")) => Err(field(
            o,
            PATH,
            format!("{t} services are not supported (ClusterIP or NodePort)"),
        )),
        Some(t) => Err(field(
            o,
            PATH,
            format!("unknown service type {t:?} (ClusterIP or NodePort)"),
        )),
    }
}

fn parse_ip(o: &Origin, s: &str, path: &str) -> Result<IpAddr, ManifestError> {
    s.parse()
        .map_err(|_| field(o, path, format!("{s:?} is not an IP address")))
}

fn cluster_ip(o: &Origin, spec: &Map<String, Value>) -> Result<Option<IpAddr>, ManifestError> {
    let ip = match string(o, spec, "clusterIP", "spec.clusterIP")? {
        None | Some("") => None,
        Some("None") => {
            return Err(field(
                o,
                "spec.clusterIP",
                "headless services (clusterIP: None) are not supported",
            ))
        }
        Some(s) => Some(parse_ip(o, s, "spec.clusterIP")?),
    };
    if let Some(ips) = present(spec, "clusterIPs") {
        const PATH: &str = "spec.clusterIPs";
        let Value::Array(ips) = ips else {
            return Err(not_a(o, PATH, "a list", ips));
        };
        let mut parsed = Vec::with_capacity(ips.len());
        for (i, v) in ips.iter().enumerate() {
            let path = format!("{PATH}[{i}]");
            match v {
                Value::String(s) => parsed.push(parse_ip(o, s, &path)?),
                other => return Err(not_a(o, path, "a string", other)),
            }
        }
        if parsed != Vec::from_iter(ip) {
            let message = match ip {
                Some(ip) => {
                    format!("must be [{ip}], as spec.clusterIP (dual-stack is not supported)")
                }
                None => {
                    "must be empty when spec.clusterIP is not set: set spec.clusterIP".to_string()
                }
            };
            return Err(field(o, PATH, message));
        }
    }
    if let Some(families) = present(spec, "ipFamilies") {
        if *families != Value::Array(vec![Value::from("IPv4")]) {
            return Err(field(
                o,
                "spec.ipFamilies",
                "only [IPv4] is supported (dual-stack and IPv6 services are not)",
            ));
        }
        if let Some(IpAddr::V6(v6)) = ip {
            return Err(field(
                o,
                "spec.clusterIP",
                format!("{v6} is IPv6, but spec.ipFamilies is [IPv4]"),
            ));
        }
    }
    match string(o, spec, "ipFamilyPolicy", "spec.ipFamilyPolicy")? {
        None | Some("SingleStack") => {}
        Some(p) => {
            return Err(field(
                o,
                "spec.ipFamilyPolicy",
                format!("{p:?} is not supported (only SingleStack)"),
            ))
        }
    }
    Ok(ip)
}

fn selector(
    o: &Origin,
    spec: &Map<String, Value>,
) -> Result<BTreeMap<String, String>, ManifestError> {
    match present(spec, "selector") {
        None => Ok(BTreeMap::new()),
        Some(v) => label_map(o, v, "spec.selector"),
    }
}

/// A mapping of label keys to string values (a selector's, or an object's labels); a key's
/// problems are reported at `PATH[key]`.
pub(crate) fn label_map(
    o: &Origin,
    value: &Value,
    path: &str,
) -> Result<BTreeMap<String, String>, ManifestError> {
    let Value::Object(map) = value else {
        return Err(not_a(o, path, "a mapping of label keys to values", value));
    };
    let mut labels = BTreeMap::new();
    for (key, value) in map {
        label_key(o, key, path)?;
        let at = format!("{path}[{key}]");
        let value = match value {
            Value::String(v) => v,
            other => {
                return Err(field(
                    o,
                    at,
                    format!(
                        "a label value must be a string, not {} (quote it)",
                        type_name(other)
                    ),
                ))
            }
        };
        label_value(o, value, &at)?;
        labels.insert(key.clone(), value.clone());
    }
    Ok(labels)
}

/// A label key: not empty, at most [`MAX_LABEL_KEY`] characters (`path` is its container).
pub(crate) fn label_key(o: &Origin, key: &str, path: &str) -> Result<(), ManifestError> {
    if key.is_empty() {
        return Err(field(o, path, "a label key must not be empty"));
    }
    if key.chars().count() > MAX_LABEL_KEY {
        return Err(field(
            o,
            format!("{path}[{key}]"),
            format!("a label key is at most {MAX_LABEL_KEY} characters"),
        ));
    }
    Ok(())
}

/// A label value: at most [`MAX_LABEL_VALUE`] characters.
pub(crate) fn label_value(o: &Origin, value: &str, path: &str) -> Result<(), ManifestError> {
    if value.chars().count() > MAX_LABEL_VALUE {
        return Err(field(
            o,
            path,
            format!("a label value is at most {MAX_LABEL_VALUE} characters"),
        ));
    }
    Ok(())
}

fn ports(
    o: &Origin,
    spec: &Map<String, Value>,
    kind: ServiceType,
) -> Result<Vec<ServicePort>, ManifestError> {
    const PATH: &str = "spec.ports";
    let entries = match present(spec, "ports") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        None | Some(Value::Array(_)) => {
            return Err(field(o, PATH, "required: a service needs a port"))
        }
        Some(other) => return Err(not_a(o, PATH, "a list", other)),
    };
    let several = entries.len() > 1;
    let mut ports: Vec<ServicePort> = Vec::with_capacity(entries.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut ports_seen: HashMap<(Protocol, u16), usize> = HashMap::new();
    let mut node_ports_seen: HashMap<(Protocol, u16), usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{PATH}[{i}]");
        let p = port(o, entry, &at, several, kind)?;
        if let Some(name) = &p.name {
            if let Some(first) = names.insert(name.clone(), i) {
                return Err(field(
                    o,
                    format!("{at}.name"),
                    format!("duplicate port name {name:?} (also {PATH}[{first}])"),
                ));
            }
        }
        if let Some(first) = ports_seen.insert((p.protocol, p.port), i) {
            return Err(field(
                o,
                at,
                format!(
                    "duplicate port {}/{} (also {PATH}[{first}])",
                    p.port, p.protocol
                ),
            ));
        }
        if let Some(node_port) = p.node_port {
            // One node port may serve TCP and UDP, as in Kubernetes.
            if let Some(first) = node_ports_seen.insert((p.protocol, node_port), i) {
                return Err(field(
                    o,
                    format!("{at}.nodePort"),
                    format!(
                        "node port {node_port}/{} is already used by {PATH}[{first}]",
                        p.protocol
                    ),
                ));
            }
        }
        ports.push(p);
    }
    Ok(ports)
}

fn port(
    o: &Origin,
    entry: &Value,
    at: &str,
    several: bool,
    kind: ServiceType,
) -> Result<ServicePort, ManifestError> {
    let Value::Object(entry) = entry else {
        return Err(not_a(o, at, "a mapping", entry));
    };
    if let Some(key) = entry.keys().find(|k| !PORT_FIELDS.contains(&k.as_str())) {
        return Err(field(o, format!("{at}.{key}"), "unknown field"));
    }

    let name_path = format!("{at}.name");
    let name = match string(o, entry, "name", &name_path)? {
        None | Some("") => None,
        Some(name) => {
            if let Err(why) = dns1123_label(name) {
                return Err(field(
                    o,
                    name_path,
                    format!("{name:?} is not a DNS-1123 label: {why}"),
                ));
            }
            Some(name.to_string())
        }
    };
    if several && name.is_none() {
        return Err(field(
            o,
            name_path,
            "required when a service has more than one port",
        ));
    }

    let protocol_path = format!("{at}.protocol");
    let protocol = match string(o, entry, "protocol", &protocol_path)? {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => {
            return Err(field(
                o,
                protocol_path,
                "SCTP is not supported (TCP or UDP)",
            ))
        }
        Some(p) => {
            return Err(field(
                o,
                protocol_path,
                format!("unknown protocol {p:?} (TCP or UDP)"),
            ))
        }
    };

    let port_path = format!("{at}.port");
    let port = match present(entry, "port") {
        None => return Err(field(o, port_path, "required")),
        Some(v) => port_number(o, integer(o, v, &port_path)?, &port_path)?,
    };

    // An IntOrString. Kubernetes defaults its zero values (0 and "") to `port`.
    let target_path = format!("{at}.targetPort");
    let target_port = match present(entry, "targetPort") {
        None => port,
        Some(Value::String(s)) if s.is_empty() => port,
        Some(Value::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => match s.parse::<i64>() {
            Ok(n) => port_number(o, n, &target_path)?,
            Err(_) => {
                return Err(field(
                    o,
                    target_path,
                    format!("{s} is not a port number (1-65535)"),
                ))
            }
        },
        Some(Value::String(s)) => {
            return Err(field(
                o,
                target_path,
                format!("named target ports ({s:?}) are not supported: give the pods' port number"),
            ))
        }
        Some(v) => match integer(o, v, &target_path)? {
            0 => port,
            n => port_number(o, n, &target_path)?,
        },
    };

    let node_path = format!("{at}.nodePort");
    let node_port = match present(entry, "nodePort") {
        None => None,
        Some(v) => match integer(o, v, &node_path)? {
            // Kubernetes: 0 is "allocate one".
            0 => None,
            n => Some(port_number(o, n, &node_path)?),
        },
    };
    if node_port.is_some() && kind != ServiceType::NodePort {
        return Err(field(
            o,
            node_path,
            "only allowed when spec.type is NodePort",
        ));
    }

    Ok(ServicePort {
        name,
        protocol,
        port,
        target_port,
        node_port,
    })
}

/// `affinity_timeout`: `None` for `sessionAffinity: None`.
fn affinity(o: &Origin, spec: &Map<String, Value>) -> Result<Option<u32>, ManifestError> {
    const CONFIG: &str = "spec.sessionAffinityConfig";
    let client_ip = match string(o, spec, "sessionAffinity", "spec.sessionAffinity")? {
        None | Some("None") => false,
        Some("ClientIP") => true,
        Some(a) => {
            return Err(field(
                o,
                "spec.sessionAffinity",
                format!("unknown session affinity {a:?} (None or ClientIP)"),
            ))
        }
    };
    let config = present(spec, "sessionAffinityConfig");
    if !client_ip {
        return match config {
            None => Ok(None),
            Some(_) => Err(field(
                o,
                CONFIG,
                "only allowed when spec.sessionAffinity is ClientIP",
            )),
        };
    }
    let Some(config) = config else {
        return Ok(Some(DEFAULT_AFFINITY_TIMEOUT));
    };
    let Value::Object(config) = config else {
        return Err(not_a(o, CONFIG, "a mapping", config));
    };
    if let Some(key) = config.keys().find(|k| *k != "clientIP") {
        return Err(field(o, format!("{CONFIG}.{key}"), "unknown field"));
    }
    let client = match present(config, "clientIP") {
        None => return Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
        Some(Value::Object(client)) => client,
        Some(other) => return Err(not_a(o, format!("{CONFIG}.clientIP"), "a mapping", other)),
    };
    if let Some(key) = client.keys().find(|k| *k != "timeoutSeconds") {
        return Err(field(
            o,
            format!("{CONFIG}.clientIP.{key}"),
            "unknown field",
        ));
    }
    let path = format!("{CONFIG}.clientIP.timeoutSeconds");
    match present(client, "timeoutSeconds") {
        None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
        Some(v) => {
            let n = integer(o, v, &path)?;
            match u32::try_from(n) {
                Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Ok(Some(t)),
                _ => Err(field(
                    o,
                    path,
                    format!("{n} is out of range (1-{MAX_AFFINITY_TIMEOUT})"),
                )),
            }
        }
    }
}

/// `externalTrafficPolicy` (what Reef keeps), `internalTrafficPolicy` and
/// `publishNotReadyAddresses` (accepted only with their default meaning).
fn traffic_policies(
    o: &Origin,
    spec: &Map<String, Value>,
    kind: ServiceType,
) -> Result<TrafficPolicy, ManifestError> {
    const EXTERNAL: &str = "spec.externalTrafficPolicy";
    const INTERNAL: &str = "spec.internalTrafficPolicy";
    const PUBLISH: &str = "spec.publishNotReadyAddresses";
    let external = match string(o, spec, "externalTrafficPolicy", EXTERNAL)? {
        // "Global" is the legacy name of Cluster.
        None | Some("Cluster") | Some("Global") => TrafficPolicy::Cluster,
        Some("Local") if kind == ServiceType::NodePort => TrafficPolicy::Local,
        Some("Local") => {
            return Err(field(
                o,
                EXTERNAL,
                "Local is only meaningful when spec.type is NodePort",
            ))
        }
        Some(p) => {
            return Err(field(
                o,
                EXTERNAL,
                format!("unknown policy {p:?} (Cluster or Local)"),
            ))
        }
    };
    match string(o, spec, "internalTrafficPolicy", INTERNAL)? {
        None | Some("Cluster") => {}
        Some(p) => {
            return Err(field(
                o,
                INTERNAL,
                format!("{p:?} is not supported (only Cluster)"),
            ))
        }
    }
    match present(spec, "publishNotReadyAddresses") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(field(
                o,
                PUBLISH,
                "not supported: only ready pods are endpoints",
            ))
        }
        Some(other) => return Err(not_a(o, PUBLISH, "a boolean", other)),
    }
    Ok(external)
}

/// An RFC 1035 label, as Kubernetes checks service names: `[a-z]([-a-z0-9]*[a-z0-9])?`, at
/// most 63 characters.
pub(crate) fn dns1035_label(s: &str) -> Result<(), &'static str> {
    label(s)?;
    match s.bytes().next() {
        Some(b) if b.is_ascii_lowercase() => Ok(()),
        _ => Err("must start with a lowercase letter"),
    }
}

/// An RFC 1123 label, as Kubernetes checks namespaces and port names:
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn dns1123_label(s: &str) -> Result<(), &'static str> {
    label(s)?;
    match s.bytes().next() {
        Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit() => Ok(()),
        _ => Err("must start with a lowercase letter or a digit"),
    }
}

/// An RFC 1123 subdomain, as Kubernetes checks most object names (NetworkPolicy's):
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` parts joined by '.', at most 253 characters.
pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > 253 {
        return Err("must be at most 253 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("may contain only lowercase letters, digits, '-' and '.'");
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if s.split('.')
        .all(|part| alnum(part.bytes().next()) && alnum(part.bytes().last()))
    {
        Ok(())
    } else {
        Err("must start and end with a lowercase letter or a digit, and so must each part between dots")
    }
}

fn label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > 63 {
        return Err("must be at most 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may contain only lowercase letters, digits and '-'");
    }
    match s.bytes().last() {
        Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit() => Ok(()),
        _ => Err("must end with a lowercase letter or a digit"),
    }
}
