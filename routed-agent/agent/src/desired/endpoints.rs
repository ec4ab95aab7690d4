//! The workloads as services see them, and the index that finds a service's endpoints.
//!
//! A workload record carries what the plugins and IPAM need (network, container, interface,
//! host interface, pod name). Services need four things of it: its node, namespace, labels
//! and addresses. The view keeps only those ([`Workload`]), with the strings shared through an
//! [`Interner`]: 50,000 pods share a few nodes, namespaces and label keys, and a label value
//! is shared by the pods of one app. That took the agent's view of 10,000 services over
//! 50,000 pods from about 110 MB to about 48 MB, and decoding no longer keeps what services
//! do not read.
//!
//! Finding endpoints must not scan every workload for every service, so [`EndpointIndex`]
//! keeps, per namespace and `key=value` label, the workloads carrying it, and per node its
//! workloads; the view maintains it as records come and go.

use reef_schema::Service;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// A shared string: a node, namespace, label key or value, or a workload id.
pub type Name = Arc<str>;

/// One copy of every string the view holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interner {
    names: HashSet<Name>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Name {
        if let Some(n) = self.names.get(s) {
            return Arc::clone(n);
        }
        let n: Name = Arc::from(s);
        self.names.insert(Arc::clone(&n));
        n
    }

    /// The shared copy of `s`, if anything holds one.
    pub fn get(&self, s: &str) -> Option<&Name> {
        self.names.get(s)
    }

    /// Drops strings nothing else holds any more (label values of deleted pods), so churn
    /// does not grow the interner forever.
    pub fn prune(&mut self) {
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What services need of a workload record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub node: Name,
    pub namespace: Name,
    /// Sorted by key (a record's labels are a map: keys are unique).
    pub labels: Box<[(Name, Name)]>,
    pub ips: Box<[IpAddr]>,
    /// The pod's host-side interface (network policy holds and releases it); one per pod,
    /// so not interned.
    pub iface: Option<Box<str>>,
}

/// The fields of a workload record services read (`node` borrowed from the record's bytes
/// when JSON allows, the others decoded owned and then interned); every other field is
/// skipped without being kept.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    node: Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    labels: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(default)]
    ips: Vec<IpAddr>,
    #[serde(default, borrow, rename = "hostInterface")]
    host_interface: Option<Cow<'a, str>>,
}

impl reef_policy::Pod for Workload {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn label(&self, key: &str) -> Option<&str> {
        Workload::label(self, key)
    }

    fn ips(&self) -> &[IpAddr] {
        &self.ips
    }
}

impl Workload {
    /// Decodes a workload record (`/reef/workloads/...`), sharing its strings.
    pub fn decode(bytes: &[u8], names: &mut Interner) -> Result<Workload, serde_json::Error> {
        let f: Fields = serde_json::from_slice(bytes)?;
        Ok(Workload {
            node: names.intern(&f.node),
            namespace: names.intern(f.namespace.as_deref().unwrap_or("default")),
            labels: f
                .labels
                .iter()
                .map(|(k, v)| (names.intern(k), names.intern(v)))
                .collect(),
            ips: f.ips.into_boxed_slice(),
            iface: f.host_interface.as_deref().map(Box::from),
        })
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.labels[i].1)
    }

    /// Whether `s` selects this workload: same namespace, every selector label matches. An
    /// empty selector selects nothing (such services have manually managed endpoints in
    /// Kubernetes, which Reef does not support).
    pub fn selected_by(&self, s: &Service) -> bool {
        *self.namespace == *s.namespace
            && !s.selector.is_empty()
            && s.selector
                .iter()
                .all(|(k, v)| self.label(k) == Some(v.as_str()))
    }
}

/// `(namespace, label key, label value)`.
type Term = (Name, Name, Name);

/// Workloads by label and by node, and services by selector term.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointIndex {
    by_label: HashMap<Term, HashSet<Name>>,
    by_node: HashMap<Name, HashSet<Name>>,
    by_term: HashMap<Term, BTreeSet<String>>,
}

fn terms_of(w: &Workload) -> impl Iterator<Item = Term> + '_ {
    w.labels
        .iter()
        .map(|(k, v)| (Arc::clone(&w.namespace), Arc::clone(k), Arc::clone(v)))
}

fn selector_terms<'a>(s: &'a Service, names: &'a mut Interner) -> impl Iterator<Item = Term> + 'a {
    let ns = names.intern(&s.namespace);
    let terms: Vec<Term> = s
        .selector
        .iter()
        .map(|(k, v)| (Arc::clone(&ns), names.intern(k), names.intern(v)))
        .collect();
    terms.into_iter()
}

fn remove_from<K: std::hash::Hash + Eq, V: std::hash::Hash + Eq + std::borrow::Borrow<str>>(
    m: &mut HashMap<K, HashSet<V>>,
    k: &K,
    id: &str,
) {
    if let Some(set) = m.get_mut(k) {
        set.remove(id);
        if set.is_empty() {
            m.remove(k);
        }
    }
}

impl EndpointIndex {
    pub fn workload_changed(&mut self, id: &Name, old: Option<&Workload>, new: Option<&Workload>) {
        if let Some(o) = old {
            for t in terms_of(o) {
                remove_from(&mut self.by_label, &t, id);
            }
            remove_from(&mut self.by_node, &o.node, id);
        }
        if let Some(n) = new {
            for t in terms_of(n) {
                self.by_label.entry(t).or_default().insert(Arc::clone(id));
            }
            self.by_node
                .entry(Arc::clone(&n.node))
                .or_default()
                .insert(Arc::clone(id));
        }
    }

    pub fn service_changed(
        &mut self,
        id: &str,
        old: Option<&Service>,
        new: Option<&Service>,
        names: &mut Interner,
    ) {
        if let Some(o) = old {
            for t in selector_terms(o, names) {
                if let Some(set) = self.by_term.get_mut(&t) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_term.remove(&t);
                    }
                }
            }
        }
        if let Some(n) = new {
            for t in selector_terms(n, names) {
                self.by_term.entry(t).or_default().insert(id.to_string());
            }
        }
    }

    /// Workload ids that may match `s` (its rarest selector term's carriers).
    pub fn candidates(&self, s: &Service, names: &Interner) -> Vec<&Name> {
        let Some(ns) = names.get(&s.namespace) else {
            return Vec::new();
        };
        let mut rarest: Option<&HashSet<Name>> = None;
        for (k, v) in &s.selector {
            // A string nobody holds is a term no workload carries.
            let (Some(k), Some(v)) = (names.get(k), names.get(v)) else {
                return Vec::new();
            };
            let t = (Arc::clone(ns), Arc::clone(k), Arc::clone(v));
            let Some(set) = self.by_label.get(&t) else {
                return Vec::new();
            };
            if rarest.is_none_or(|r| set.len() < r.len()) {
                rarest = Some(set);
            }
        }
        rarest.map(|set| set.iter().collect()).unwrap_or_default()
    }

    /// Services that may select workload `w` (sharing at least one selector term).
    pub fn services_selecting(&self, w: &Workload) -> BTreeSet<String> {
        terms_of(w)
            .filter_map(|t| self.by_term.get(&t))
            .flatten()
            .cloned()
            .collect()
    }

    /// Workload ids on `node`.
    pub fn workloads_on(&self, node: &str) -> impl Iterator<Item = &Name> {
        self.by_node.get(node).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_what_services_need_with_shared_strings() {
        let mut names = Interner::default();
        let rec = br#"{"node":"n1","network":"n","containerId":"c","ifname":"eth0",
            "ips":["10.0.0.2"],"namespace":"shop","name":"web-0",
            "labels":{"tier":"front","app":"web"},"hostInterface":"reef0123"}"#;
        let a = Workload::decode(rec, &mut names).expect("decode");
        let b = Workload::decode(rec, &mut names).expect("decode");
        assert_eq!(&*a.namespace, "shop");
        assert_eq!(a.label("app"), Some("web"));
        assert_eq!(a.label("tier"), Some("front"));
        assert_eq!(a.label("nope"), None);
        assert!(Arc::ptr_eq(&a.node, &b.node));
        assert!(Arc::ptr_eq(&a.labels[0].1, &b.labels[0].1));
        // node, namespace, two keys, two values.
        assert_eq!(names.len(), 6);
        drop((a, b));
        names.prune();
        assert!(names.is_empty());
        // The namespace defaults like Kubernetes'; a record without a node is not one.
        let d = Workload::decode(br#"{"node":"n1","ips":[]}"#, &mut names).expect("decode");
        assert_eq!(&*d.namespace, "default");
        assert!(Workload::decode(br#"{"ips":[]}"#, &mut names).is_err());
    }
}
