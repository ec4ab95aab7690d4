//! Kubernetes manifests into Reef's records: what `reefctl apply -f FILE` and
//! `reefctl delete -f FILE` read.
//!
//! The input is YAML or JSON text: several documents separated by `---` lines (or JSON values
//! one after the other), where a `kind: List` document stands for its `items`, and empty
//! documents are skipped. Each object must be one of:
//!
//! - a Kubernetes `v1 Service` of type `ClusterIP` or `NodePort`, which becomes a
//!   [`reef_schema::Service`] (its VIP and node ports may still be unallocated: reefctl fills
//!   them in and checks them against the cluster's ranges);
//! - a `networking.k8s.io/v1 NetworkPolicy`, which becomes a
//!   [`reef_schema::policy::NetworkPolicy`] with `policyTypes` defaulted as Kubernetes does
//!   (Ingress, plus Egress when there are egress rules);
//! - a `v1 Namespace`, which becomes a [`reef_schema::policy::Namespace`]: its labels, with
//!   `kubernetes.io/metadata.name` set to its name.
//!
//! - [`parse_objects`] (apply) validates everything, all or nothing: one bad document fails the
//!   whole call, so nothing is written.
//! - [`parse_refs`] (delete) reads only `apiVersion`, `kind` and `metadata.name`/`namespace`.
//!
//! YAML is read as YAML 1.2 (yaml-rust2): `yes`/`on` are strings, not booleans. Aliases
//! (`*name`) and duplicate keys are refused.
//!
//! Anything Reef does not implement is refused rather than ignored, and every error names the
//! document (1-based), the object when known, and the field as a Kubernetes-style path such
//! as `spec.ports[0].targetPort`. The crate is pure: no I/O, no panics on any input.

mod documents;
mod policy;
mod service;

use reef_schema::policy::{Namespace, NetworkPolicy};
use reef_schema::Service;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// One object of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Service(Service),
    NetworkPolicy(NetworkPolicy),
    Namespace(Namespace),
}

impl Object {
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            Object::Service(s) => ObjectRef {
                kind: KIND_SERVICE.to_string(),
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            Object::NetworkPolicy(p) => ObjectRef {
                kind: KIND_NETWORK_POLICY.to_string(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
            Object::Namespace(n) => ObjectRef {
                kind: KIND_NAMESPACE.to_string(),
                namespace: String::new(),
                name: n.name.clone(),
            },
        }
    }
}

/// Which object a manifest names (what `delete -f` needs). `kind` is one of
/// [`KIND_SERVICE`], [`KIND_NETWORK_POLICY`], [`KIND_NAMESPACE`]; a Namespace (not itself
/// namespaced) has an empty `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Where in the input a problem is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// 1-based, counting empty documents too.
    pub document: usize,
    /// The index in a `kind: List` document's `items`.
    pub item: Option<usize>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n})"),
            (Some(k), None) => write!(f, " ({k})"),
            (None, Some(n)) => write!(f, " ({n})"),
            (None, None) => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML or JSON, or a document cannot be taken as a manifest (not a
    /// mapping, YAML aliases, non-scalar or duplicate keys, nested too deep, unprintable
    /// characters, non-finite numbers). `line` and `column` are 1-based, in the whole text.
    #[error("document {document}{}: {message}", position(*.line, *.column))]
    Parse {
        document: usize,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A field is missing, malformed, or asks for something Reef does not implement.
    /// `field` is a path such as `spec.ports[0].targetPort`.
    #[error("{origin}: {field}: {message}")]
    Field {
        origin: Origin,
        field: String,
        message: String,
    },
    #[error(
        "{origin}: unsupported object apiVersion {api_version:?}, kind {kind:?} \
         (Reef reads v1 Service, networking.k8s.io/v1 NetworkPolicy and v1 Namespace)"
    )]
    UnsupportedKind {
        origin: Origin,
        api_version: String,
        kind: String,
    },
    /// The same object twice in one input.
    #[error("{origin}: {object} is defined twice (first in {first})")]
    Duplicate {
        origin: Origin,
        first: Box<Origin>,
        object: Box<ObjectRef>,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(", line {l}, column {c}"),
        (Some(l), None) => format!(", line {l}"),
        _ => String::new(),
    }
}

pub const KIND_SERVICE: &str = "Service";
pub const KIND_NETWORK_POLICY: &str = "NetworkPolicy";
pub const KIND_NAMESPACE: &str = "Namespace";

/// Checks a namespace name as Kubernetes does (a DNS-1123 label), for commands that take one
/// on the command line.
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    service::dns1123_label(name).map_err(|why| format!("{name:?} is not a DNS-1123 label: {why}"))
}

/// Checks a label as the labels of manifests are checked (key not empty, key and value not
/// too long), for commands that take one on the command line.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let o = Origin::default();
    service::label_key(&o, key, "label")
        .and_then(|()| service::label_value(&o, value, "label"))
        .map_err(|e| match e {
            ManifestError::Field { message, .. } => format!("label {key:?}: {message}"),
            other => other.to_string(),
        })
}

/// The objects of a manifest, for apply: every object fully validated, all or nothing. An
/// input with no object (empty, or comments only) gives an empty list.
pub fn parse_objects(text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    let mut seen = Seen::default();
    for item in items(text)? {
        let header = header(&item)?;
        let object = match header.kind {
            Kind::Service => Object::Service(service::service(&header, &item.object)?),
            Kind::NetworkPolicy => {
                Object::NetworkPolicy(policy::network_policy(&header, &item.object)?)
            }
            Kind::Namespace => Object::Namespace(policy::namespace(&header, &item.object)?),
        };
        seen.check(object.object_ref(), header.origin)?;
        objects.push(object);
    }
    Ok(objects)
}

/// The objects a manifest names, for delete: only `apiVersion`, `kind`, `metadata.name` and
/// `metadata.namespace` are read (and checked).
pub fn parse_refs(text: &str) -> Result<Vec<ObjectRef>, ManifestError> {
    let mut refs = Vec::new();
    let mut seen = Seen::default();
    for item in items(text)? {
        let header = header(&item)?;
        let object = ObjectRef {
            kind: header.kind.as_str().to_string(),
            namespace: header.namespace,
            name: header.name,
        };
        seen.check(object.clone(), header.origin)?;
        refs.push(object);
    }
    Ok(refs)
}

#[derive(Default)]
struct Seen(BTreeMap<ObjectRef, Origin>);

impl Seen {
    fn check(&mut self, object: ObjectRef, origin: Origin) -> Result<(), ManifestError> {
        if let Some(first) = self.0.get(&object) {
            return Err(ManifestError::Duplicate {
                origin,
                first: Box::new(first.clone()),
                object: Box::new(object),
            });
        }
        self.0.insert(object, origin);
        Ok(())
    }
}

/// One object of the input: a document, or an item of a `kind: List` document.
struct Item {
    origin: Origin,
    object: Map<String, Value>,
}

/// The documents' objects, Lists flattened.
fn items(text: &str) -> Result<Vec<Item>, ManifestError> {
    let mut items = Vec::new();
    for doc in documents::documents(text)? {
        let origin = Origin {
            document: doc.index,
            ..Origin::default()
        };
        let object = match doc.value {
            Value::Object(object) => object,
            other => {
                return Err(ManifestError::Parse {
                    document: doc.index,
                    line: doc.line,
                    column: None,
                    message: format!(
                        "a document must be a mapping with apiVersion and kind, not {}",
                        type_name(&other)
                    ),
                })
            }
        };
        if !is_list(&object) {
            items.push(Item { origin, object });
            continue;
        }
        let origin = Origin {
            kind: Some("List".to_string()),
            ..origin
        };
        let mut list = object;
        let entries = match list.remove("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                return Err(field(
                    &origin,
                    "items",
                    format!("must be a list, not {}", type_name(&other)),
                ))
            }
        };
        for (i, entry) in entries.into_iter().enumerate() {
            match entry {
                Value::Object(object) if is_list(&object) => {
                    return Err(field(
                        &origin,
                        format!("items[{i}]"),
                        "a List inside a List is not supported",
                    ))
                }
                Value::Object(object) => items.push(Item {
                    origin: Origin {
                        document: doc.index,
                        item: Some(i),
                        kind: None,
                        name: None,
                    },
                    object,
                }),
                other => {
                    return Err(field(
                        &origin,
                        format!("items[{i}]"),
                        format!("must be a mapping, not {}", type_name(&other)),
                    ))
                }
            }
        }
    }
    Ok(items)
}

fn is_list(object: &Map<String, Value>) -> bool {
    object.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && object.get("kind").and_then(Value::as_str) == Some("List")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    NetworkPolicy,
    Namespace,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Service => KIND_SERVICE,
            Kind::NetworkPolicy => KIND_NETWORK_POLICY,
            Kind::Namespace => KIND_NAMESPACE,
        }
    }
}

/// What every object has: its kind and identity (a Namespace's `namespace` is empty).
pub(crate) struct Header {
    kind: Kind,
    pub(crate) origin: Origin,
    pub(crate) name: String,
    pub(crate) namespace: String,
}

pub(crate) const DEFAULT_NAMESPACE: &str = "default";

fn header(item: &Item) -> Result<Header, ManifestError> {
    let object = &item.object;
    let mut origin = item.origin.clone();
    let api_version = required_str(&origin, object, "apiVersion")?;
    let kind = required_str(&origin, object, "kind")?;
    origin.kind = Some(kind.to_string());
    let metadata = present(object, "metadata");
    if let Some(name) = metadata.and_then(|m| m.get("name")).and_then(Value::as_str) {
        origin.name = Some(name.to_string());
    }
    let kind = match (api_version, kind) {
        ("v1", KIND_SERVICE) => Kind::Service,
        ("networking.k8s.io/v1", KIND_NETWORK_POLICY) => Kind::NetworkPolicy,
        ("v1", KIND_NAMESPACE) => Kind::Namespace,
        _ => {
            return Err(ManifestError::UnsupportedKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                origin,
            })
        }
    };
    let metadata = match metadata {
        None => return Err(field(&origin, "metadata", "required")),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(field(
                &origin,
                "metadata",
                format!("must be a mapping, not {}", type_name(other)),
            ))
        }
    };
    if present(metadata, "generateName").is_some() {
        return Err(field(
            &origin,
            "metadata.generateName",
            "not supported: give the object a metadata.name",
        ));
    }
    let name =
        required_str(&origin, metadata, "name").map_err(|e| rename_field(e, "metadata.name"))?;
    // What Kubernetes checks names of each kind against.
    let checked = match kind {
        Kind::Service => service::dns1035_label(name).map_err(|why| ("a DNS-1035 label", why)),
        Kind::NetworkPolicy => {
            service::dns1123_subdomain(name).map_err(|why| ("a DNS-1123 subdomain", why))
        }
        Kind::Namespace => service::dns1123_label(name).map_err(|why| ("a DNS-1123 label", why)),
    };
    if let Err((what, why)) = checked {
        return Err(field(
            &origin,
            "metadata.name",
            format!("{name:?} is not {what}: {why}"),
        ));
    }
    // A Namespace is not in a namespace (Kubernetes ignores metadata.namespace on it).
    if kind == Kind::Namespace {
        return Ok(Header {
            kind,
            origin,
            name: name.to_string(),
            namespace: String::new(),
        });
    }
    let namespace = match present(metadata, "namespace") {
        None => DEFAULT_NAMESPACE,
        Some(Value::String(ns)) if ns.is_empty() => DEFAULT_NAMESPACE,
        Some(Value::String(ns)) => {
            if let Err(why) = service::dns1123_label(ns) {
                return Err(field(
                    &origin,
                    "metadata.namespace",
                    format!("{ns:?} is not a DNS-1123 label: {why}"),
                ));
            }
            ns
        }
        Some(other) => {
            return Err(field(
                &origin,
                "metadata.namespace",
                format!("must be a string, not {}", type_name(other)),
            ))
        }
    };
    Ok(Header {
        kind,
        origin,
        name: name.to_string(),
        namespace: namespace.to_string(),
    })
}

fn rename_field(e: ManifestError, path: &str) -> ManifestError {
    match e {
        ManifestError::Field {
            origin, message, ..
        } => ManifestError::Field {
            origin,
            field: path.to_string(),
            message,
        },
        other => other,
    }
}

pub(crate) fn field(
    origin: &Origin,
    path: impl Into<String>,
    message: impl Into<String>,
) -> ManifestError {
    ManifestError::Field {
        origin: origin.clone(),
        field: path.into(),
        message: message.into(),
    }
}

/// The value of `key`, an explicit `null` counting as absent (as in Kubernetes).
pub(crate) fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn required_str<'a>(
    origin: &Origin,
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, ManifestError> {
    match present(object, key) {
        None => Err(field(origin, key, "required")),
        Some(Value::String(s)) if s.is_empty() => Err(field(origin, key, "required")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(field(
            origin,
            key,
            format!("must be a string, not {}", type_name(other)),
        )),
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests;
