//! `networking.k8s.io/v1 NetworkPolicy` objects into [`NetworkPolicy`] and `v1 Namespace`
//! objects into [`Namespace`], with Kubernetes' defaults and checks, refusing what Reef does
//! not implement by naming the field.
//!
//! Defaults, as Kubernetes applies them: an absent `podSelector` selects every pod of the
//! namespace; absent (or empty) `policyTypes` is `[Ingress]`, plus `Egress` when `egress` has
//! at least one rule (`egress: []` adds nothing, as in Kubernetes); a port's `protocol` is
//! TCP; an absent or empty `from`/`to`/`ports` means all.

use crate::service::{integer, label_key, label_map, label_value, not_a, port_number, string};
use crate::{field, present, type_name, Header, ManifestError, Origin};
use ipnetwork::IpNetwork;
use reef_schema::policy::{
    IpBlock, L4Protocol, LabelSelector, Namespace, NetworkPolicy, Operator, Peer, PolicyPort,
    PolicyRule, PolicyType, Requirement, NAME_LABEL,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The top-level fields of an object; `status` is read by no one (exported manifests have it).
const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const SPEC_FIELDS: &[&str] = &["podSelector", "policyTypes", "ingress", "egress"];
const PEER_FIELDS: &[&str] = &["podSelector", "namespaceSelector", "ipBlock"];
const IP_BLOCK_FIELDS: &[&str] = &["cidr", "except"];
const PORT_FIELDS: &[&str] = &["protocol", "port", "endPort"];
const SELECTOR_FIELDS: &[&str] = &["matchLabels", "matchExpressions"];
const REQUIREMENT_FIELDS: &[&str] = &["key", "operator", "values"];
/// A Namespace's `spec` fields: `finalizers` (what `kubectl get -o yaml` prints) is ignored.
const NAMESPACE_SPEC_FIELDS: &[&str] = &["finalizers"];

pub(crate) fn network_policy(
    header: &Header,
    object: &Map<String, Value>,
) -> Result<NetworkPolicy, ManifestError> {
    let o = &header.origin;
    unknown(o, object, TOP_LEVEL, "")?;
    let spec = mapping(o, object, "spec", "spec")?.ok_or_else(|| {
        field(
            o,
            "spec",
            "required (spec: {podSelector: {}} selects every pod of the namespace)",
        )
    })?;
    unknown(o, spec, SPEC_FIELDS, "spec.")?;
    let pod_selector = match present(spec, "podSelector") {
        None => LabelSelector::default(),
        Some(v) => selector(o, v, "spec.podSelector")?,
    };
    let ingress = rules(o, spec, "ingress", "from")?;
    let egress = rules(o, spec, "egress", "to")?;
    let policy_types = policy_types(o, spec, !egress.is_empty())?;
    Ok(NetworkPolicy {
        namespace: header.namespace.clone(),
        name: header.name.clone(),
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

pub(crate) fn namespace(
    header: &Header,
    object: &Map<String, Value>,
) -> Result<Namespace, ManifestError> {
    let o = &header.origin;
    unknown(o, object, TOP_LEVEL, "")?;
    if let Some(spec) = mapping(o, object, "spec", "spec")? {
        unknown(o, spec, NAMESPACE_SPEC_FIELDS, "spec.")?;
    }
    let metadata = mapping(o, object, "metadata", "metadata")?;
    let labels = match metadata.and_then(|m| present(m, "labels")) {
        None => BTreeMap::new(),
        Some(v) => label_map(o, v, "metadata.labels")?,
    };
    if let Some(v) = labels.get(NAME_LABEL) {
        if *v != header.name {
            return Err(field(
                o,
                format!("metadata.labels[{NAME_LABEL}]"),
                format!(
                    "must be {:?}, the namespace's name (Kubernetes sets it), not {v:?}",
                    header.name
                ),
            ));
        }
    }
    Ok(Namespace::new(&header.name, labels))
}

/// Refuses the first key of `object` not in `known`, at `prefix` + key.
fn unknown(
    o: &Origin,
    object: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), ManifestError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(field(
            o,
            format!("{prefix}{key}"),
            "unknown field (Reef refuses the fields it does not implement)",
        )),
        None => Ok(()),
    }
}

/// An optional mapping field.
fn mapping<'a>(
    o: &Origin,
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, ManifestError> {
    match present(object, key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(not_a(o, path, "a mapping", other)),
    }
}

/// An optional list field (null and absent are the empty list).
fn list<'a>(
    o: &Origin,
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a [Value], ManifestError> {
    match present(object, key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(not_a(o, path, "a list", other)),
    }
}

fn policy_types(
    o: &Origin,
    spec: &Map<String, Value>,
    has_egress: bool,
) -> Result<Vec<PolicyType>, ManifestError> {
    const PATH: &str = "spec.policyTypes";
    let given = list(o, spec, "policyTypes", PATH)?;
    if given.is_empty() {
        let mut types = vec![PolicyType::Ingress];
        if has_egress {
            types.push(PolicyType::Egress);
        }
        return Ok(types);
    }
    let mut types = Vec::with_capacity(given.len());
    for (i, v) in given.iter().enumerate() {
        let path = format!("{PATH}[{i}]");
        let t = match v {
            Value::String(s) if s == "Ingress" => PolicyType::Ingress,
            Value::String(s) if s == "Egress" => PolicyType::Egress,
            Value::String(s) => {
                return Err(field(
                    o,
                    path,
                    format!("unknown policy type {s:?} (Ingress or Egress)"),
                ))
            }
            other => return Err(not_a(o, path, "a string", other)),
        };
        if types.contains(&t) {
            return Err(field(o, path, format!("{} is listed twice", t.as_str())));
        }
        types.push(t);
    }
    types.sort();
    Ok(types)
}

/// `spec.ingress` (peers under `from`) or `spec.egress` (peers under `to`).
fn rules(
    o: &Origin,
    spec: &Map<String, Value>,
    key: &str,
    peers_key: &str,
) -> Result<Vec<PolicyRule>, ManifestError> {
    let path = format!("spec.{key}");
    let entries = list(o, spec, key, &path)?;
    let mut rules = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Value::Object(rule) = entry else {
            return Err(not_a(o, at, "a mapping ({} allows everything)", entry));
        };
        let known: &[&str] = &[peers_key, "ports"];
        unknown(o, rule, known, &format!("{at}."))?;
        let peers_path = format!("{at}.{peers_key}");
        let peers = list(o, rule, peers_key, &peers_path)?
            .iter()
            .enumerate()
            .map(|(j, p)| peer(o, p, &format!("{peers_path}[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let ports_path = format!("{at}.ports");
        let ports = list(o, rule, "ports", &ports_path)?
            .iter()
            .enumerate()
            .map(|(j, p)| port(o, p, &format!("{ports_path}[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(PolicyRule { peers, ports });
    }
    Ok(rules)
}

fn peer(o: &Origin, value: &Value, at: &str) -> Result<Peer, ManifestError> {
    let Value::Object(p) = value else {
        return Err(not_a(o, at, "a mapping", value));
    };
    unknown(o, p, PEER_FIELDS, &format!("{at}."))?;
    let pod_selector = present(p, "podSelector")
        .map(|v| selector(o, v, &format!("{at}.podSelector")))
        .transpose()?;
    let namespace_selector = present(p, "namespaceSelector")
        .map(|v| selector(o, v, &format!("{at}.namespaceSelector")))
        .transpose()?;
    let ip_block = present(p, "ipBlock")
        .map(|v| ip_block(o, v, &format!("{at}.ipBlock")))
        .transpose()?;
    if ip_block.is_some() && (pod_selector.is_some() || namespace_selector.is_some()) {
        return Err(field(
            o,
            format!("{at}.ipBlock"),
            "cannot be combined with podSelector or namespaceSelector in one peer \
             (make it a peer of its own)",
        ));
    }
    if ip_block.is_none() && pod_selector.is_none() && namespace_selector.is_none() {
        return Err(field(
            o,
            at,
            "a peer needs podSelector, namespaceSelector or ipBlock \
             (an empty from/to list admits everyone)",
        ));
    }
    Ok(Peer {
        pod_selector,
        namespace_selector,
        ip_block,
    })
}

fn selector(o: &Origin, value: &Value, path: &str) -> Result<LabelSelector, ManifestError> {
    let Value::Object(sel) = value else {
        return Err(not_a(o, path, "a mapping ({} selects everything)", value));
    };
    unknown(o, sel, SELECTOR_FIELDS, &format!("{path}."))?;
    let match_labels = match present(sel, "matchLabels") {
        None => BTreeMap::new(),
        Some(v) => label_map(o, v, &format!("{path}.matchLabels"))?,
    };
    let exprs_path = format!("{path}.matchExpressions");
    let match_expressions = list(o, sel, "matchExpressions", &exprs_path)?
        .iter()
        .enumerate()
        .map(|(i, r)| requirement(o, r, &format!("{exprs_path}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

fn requirement(o: &Origin, value: &Value, at: &str) -> Result<Requirement, ManifestError> {
    let Value::Object(r) = value else {
        return Err(not_a(o, at, "a mapping", value));
    };
    unknown(o, r, REQUIREMENT_FIELDS, &format!("{at}."))?;
    let key_path = format!("{at}.key");
    let key = match string(o, r, "key", &key_path)? {
        None | Some("") => return Err(field(o, key_path, "required")),
        Some(k) => k,
    };
    label_key(o, key, &key_path)?;
    let op_path = format!("{at}.operator");
    let operator = match string(o, r, "operator", &op_path)? {
        None | Some("") => return Err(field(o, op_path, "required")),
        Some(s) => Operator::parse(s).ok_or_else(|| {
            field(
                o,
                &op_path,
                format!("unknown operator {s:?} (In, NotIn, Exists or DoesNotExist)"),
            )
        })?,
    };
    let values_path = format!("{at}.values");
    let mut values = Vec::new();
    for (i, v) in list(o, r, "values", &values_path)?.iter().enumerate() {
        let path = format!("{values_path}[{i}]");
        match v {
            Value::String(s) => {
                label_value(o, s, &path)?;
                values.push(s.clone());
            }
            other => {
                return Err(field(
                    o,
                    path,
                    format!(
                        "a label value must be a string, not {} (quote it)",
                        type_name(other)
                    ),
                ))
            }
        }
    }
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => Err(field(
            o,
            values_path,
            format!(
                "required: operator {} needs at least one value",
                operator.as_str()
            ),
        )),
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => Err(field(
            o,
            values_path,
            format!("must be empty with operator {}", operator.as_str()),
        )),
        _ => Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        }),
    }
}

fn ip_block(o: &Origin, value: &Value, at: &str) -> Result<IpBlock, ManifestError> {
    let Value::Object(b) = value else {
        return Err(not_a(o, at, "a mapping", value));
    };
    unknown(o, b, IP_BLOCK_FIELDS, &format!("{at}."))?;
    let cidr_path = format!("{at}.cidr");
    let cidr = match string(o, b, "cidr", &cidr_path)? {
        None | Some("") => return Err(field(o, cidr_path, "required")),
        Some(s) => cidr(o, s, &cidr_path)?,
    };
    let except_path = format!("{at}.except");
    let mut except = Vec::new();
    for (i, v) in list(o, b, "except", &except_path)?.iter().enumerate() {
        let path = format!("{except_path}[{i}]");
        let e = match v {
            Value::String(s) => self::cidr(o, s, &path)?,
            other => return Err(not_a(o, path, "a string", other)),
        };
        let inside = e.is_ipv4() == cidr.is_ipv4()
            && cidr.contains(e.network())
            && e.prefix() > cidr.prefix();
        if !inside {
            return Err(field(
                o,
                path,
                format!("{e} is not strictly inside cidr {cidr}"),
            ));
        }
        except.push(e);
    }
    Ok(IpBlock { cidr, except })
}

/// A CIDR in `address/prefix` form; host bits are cleared (`10.0.0.1/24` is 10.0.0.0/24, as
/// Kubernetes reads it).
fn cidr(o: &Origin, s: &str, path: &str) -> Result<IpNetwork, ManifestError> {
    let bad = || {
        field(
            o,
            path,
            format!("{s:?} is not a CIDR (address/prefix, e.g. 10.0.0.0/16)"),
        )
    };
    if !s.contains('/') {
        return Err(bad());
    }
    let net: IpNetwork = s.trim().parse().map_err(|_| bad())?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|_| bad())
}

fn port(o: &Origin, value: &Value, at: &str) -> Result<PolicyPort, ManifestError> {
    let Value::Object(p) = value else {
        return Err(not_a(o, at, "a mapping", value));
    };
    unknown(o, p, PORT_FIELDS, &format!("{at}."))?;
    let protocol_path = format!("{at}.protocol");
    let protocol = match string(o, p, "protocol", &protocol_path)? {
        None => L4Protocol::Tcp,
        Some(s) => L4Protocol::parse(s).ok_or_else(|| {
            field(
                o,
                &protocol_path,
                format!("unknown protocol {s:?} (TCP, UDP or SCTP)"),
            )
        })?,
    };
    let port_path = format!("{at}.port");
    let port = match present(p, "port") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(field(
                o,
                port_path,
                format!(
                    "{s:?} is a string, which Kubernetes reads as a port name: write the number \
                     without quotes"
                ),
            ))
        }
        Some(Value::String(_)) => {
            return Err(field(
                o,
                port_path,
                "named ports are not supported (pods carry no container ports here)",
            ))
        }
        Some(v) => Some(port_number(o, integer(o, v, &port_path)?, &port_path)?),
    };
    let end_path = format!("{at}.endPort");
    let end_port = match present(p, "endPort") {
        None => None,
        Some(v) => {
            let end = port_number(o, integer(o, v, &end_path)?, &end_path)?;
            match port {
                None => {
                    return Err(field(
                        o,
                        end_path,
                        "only allowed together with port (the start of the range)",
                    ))
                }
                Some(start) if end < start => {
                    return Err(field(
                        o,
                        end_path,
                        format!("{end} is below port {start}: the range is port..endPort"),
                    ))
                }
                Some(_) => Some(end),
            }
        }
    };
    Ok(PolicyPort {
        protocol,
        port,
        end_port,
    })
}
