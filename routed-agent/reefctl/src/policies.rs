//! Network policies and namespaces in etcd: apply and delete (from manifests), `policy rm`,
//! `namespace label`, and [`ClusterState`], the one consistent reading of the cluster that
//! `policy ls/show`, `namespace ls` and `trace` explain.
//!
//! Policy semantics (who is selected, what a rule admits) are reef-policy's, the same code
//! the agent renders into the data plane; nothing here re-derives them.

use crate::services::Change;
use reef_etcd::{Compare, CompareOp, Etcd, Txn, TxnOp};
use reef_policy::Pod;
use reef_schema::policy::{
    namespace_key, policy_key, Namespace, NetworkPolicy, NAMESPACES, NAME_LABEL, POLICIES,
};
use reef_schema::services::SERVICES;
use reef_schema::{
    decode, encode, AgentStatus, Block, ClusterConfig, DecodeError, NodeRecord, PolicyCounters,
    Service, WorkloadRecord, AGENTS, BLOCKS, CONFIG_KEY, NODES, WORKLOADS,
};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Etcd(#[from] reef_etcd::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("networkpolicy {0} not found")]
    NotFound(String),
    #[error("namespace {0} has no record (it has only its implicit {NAME_LABEL} label)")]
    NamespaceNotFound(String),
    /// A command-line argument that cannot be applied.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} kept changing under this command; try again")]
    Contended(String),
}

type Result<T> = std::result::Result<T, PolicyError>;

/// How many times a guarded write is retried when the record changes under it.
const TRIES: usize = 16;

/// Writes `value` at `key` unless it already holds exactly that record: created,
/// configured or unchanged, guarded by the revision read (a concurrent writer makes this one
/// read again).
async fn put_record<T>(etcd: &mut Etcd, key: &str, value: &T, what: &str) -> Result<Change>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq,
{
    for _ in 0..TRIES {
        let current = etcd.get(key).await?;
        let (when, change) = match &current {
            Some(kv) => {
                // An unreadable record is simply replaced.
                if decode::<T>(kv.key(), kv.value()).ok().as_ref() == Some(value) {
                    return Ok(Change::Unchanged);
                }
                (
                    Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision()),
                    Change::Configured,
                )
            }
            None => (
                Compare::create_revision(key, CompareOp::Equal, 0),
                Change::Created,
            ),
        };
        let txn = Txn::new()
            .when(vec![when])
            .and_then(vec![TxnOp::put(key, encode(value), None)]);
        if etcd.txn(txn).await?.succeeded() {
            return Ok(change);
        }
    }
    Err(PolicyError::Contended(what.to_string()))
}

/// Deletes `key`; false if it was not there.
async fn delete_key(etcd: &mut Etcd, key: &str) -> Result<bool> {
    let Some(kv) = etcd.get(key).await? else {
        return Ok(false);
    };
    let when = vec![Compare::mod_revision(
        key,
        CompareOp::Equal,
        kv.mod_revision(),
    )];
    let txn = Txn::new()
        .when(when)
        .and_then(vec![TxnOp::delete(key, None)]);
    if etcd.txn(txn).await?.succeeded() {
        return Ok(true);
    }
    // Changed in between: it is deleted anyway (the object is named, not its version).
    etcd.delete(key).await?;
    Ok(true)
}

pub async fn apply_policy(etcd: &mut Etcd, p: &NetworkPolicy) -> Result<Change> {
    put_record(etcd, &p.key(), p, &format!("networkpolicy {}", p.id())).await
}

/// Replaces a namespace's labels (the name label always among them).
pub async fn apply_namespace(etcd: &mut Etcd, ns: &Namespace) -> Result<Change> {
    let ns = Namespace::new(&ns.name, ns.labels.clone());
    put_record(etcd, &ns.key(), &ns, &format!("namespace {}", ns.name)).await
}

/// Deletes one policy; [`PolicyError::NotFound`] if there is none.
pub async fn delete_policy(etcd: &mut Etcd, namespace: &str, name: &str) -> Result<()> {
    if delete_key(etcd, &policy_key(namespace, name)).await? {
        Ok(())
    } else {
        Err(PolicyError::NotFound(format!("{namespace}/{name}")))
    }
}

/// Deletes a namespace's record only: the namespace goes back to its implicit name label,
/// and its policies stay (Kubernetes would delete them with the namespace; Reef has no
/// namespace lifecycle, only labels).
pub async fn delete_namespace(etcd: &mut Etcd, name: &str) -> Result<()> {
    if delete_key(etcd, &namespace_key(name)).await? {
        Ok(())
    } else {
        Err(PolicyError::NamespaceNotFound(name.to_string()))
    }
}

/// One `namespace label` argument: `k=v` sets, `k-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

/// Parses `k=v` / `k-` (kubectl's syntax), checking the label as manifests' labels are.
pub fn parse_label_change(arg: &str) -> Result<LabelChange> {
    let bad = |why: String| PolicyError::Invalid(format!("label {arg:?}: {why}"));
    let change = match arg.split_once('=') {
        Some((k, v)) => LabelChange::Set(k.to_string(), v.to_string()),
        None => match arg.strip_suffix('-') {
            Some(k) => LabelChange::Remove(k.to_string()),
            None => return Err(bad("expected KEY=VALUE or KEY-".into())),
        },
    };
    let (key, value) = match &change {
        LabelChange::Set(k, v) => (k.as_str(), v.as_str()),
        LabelChange::Remove(k) => (k.as_str(), ""),
    };
    reef_manifest::check_label(key, value).map_err(bad)?;
    Ok(change)
}

/// `labels` with `changes` applied; changing or removing the name label is refused.
pub fn relabel(
    namespace: &str,
    mut labels: BTreeMap<String, String>,
    changes: &[LabelChange],
) -> Result<BTreeMap<String, String>> {
    for c in changes {
        match c {
            LabelChange::Set(k, v) if k == NAME_LABEL && v != namespace => {
                return Err(PolicyError::Invalid(format!(
                    "{NAME_LABEL} is always the namespace's name ({namespace}); it cannot be changed"
                )))
            }
            LabelChange::Remove(k) if k == NAME_LABEL => {
                return Err(PolicyError::Invalid(format!(
                    "{NAME_LABEL} is always set on a namespace; it cannot be removed"
                )))
            }
            LabelChange::Set(k, v) => {
                labels.insert(k.clone(), v.clone());
            }
            LabelChange::Remove(k) => {
                labels.remove(k);
            }
        }
    }
    labels.insert(NAME_LABEL.to_string(), namespace.to_string());
    Ok(labels)
}

/// `namespace label NS k=v k-...`: creates the record if absent. Returns the namespace as
/// written and whether anything changed.
pub async fn label_namespace(
    etcd: &mut Etcd,
    namespace: &str,
    changes: &[LabelChange],
) -> Result<(Namespace, bool)> {
    reef_manifest::check_namespace_name(namespace).map_err(PolicyError::Invalid)?;
    let key = namespace_key(namespace);
    for _ in 0..TRIES {
        let current = etcd.get(&key).await?;
        let (old, when) = match &current {
            Some(kv) => (
                decode::<Namespace>(kv.key(), kv.value())?,
                Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
            ),
            None => (
                Namespace::implicit(namespace),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ),
        };
        let want = Namespace::new(namespace, relabel(namespace, old.labels.clone(), changes)?);
        if current.is_some() && want == old {
            return Ok((want, false));
        }
        let txn = Txn::new().when(vec![when]).and_then(vec![TxnOp::put(
            key.as_str(),
            encode(&want),
            None,
        )]);
        if etcd.txn(txn).await?.succeeded() {
            return Ok((want, true));
        }
    }
    Err(PolicyError::Contended(format!("namespace {namespace}")))
}

/// A workload record as reef-policy sees a pod (a record without a namespace is in
/// `default`, as services read it too).
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a>(pub &'a WorkloadRecord);

impl Pod for PodRef<'_> {
    fn namespace(&self) -> &str {
        self.0.namespace.as_deref().unwrap_or("default")
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.0.labels.get(key).map(String::as_str)
    }
    fn ips(&self) -> &[IpAddr] {
        &self.0.ips
    }
}

impl PodRef<'_> {
    /// `<namespace>/<name>`, or the attachment's key when the runtime gave no name.
    pub fn id(&self) -> String {
        match &self.0.name {
            Some(name) => format!("{}/{name}", self.namespace()),
            None => format!("{}/{}/{}", self.0.node, self.0.container_id, self.0.ifname),
        }
    }
}

/// Everything policy and trace read, from one etcd read (one revision: a consistent picture).
#[derive(Debug, Default)]
pub struct ClusterState {
    pub config: Option<ClusterConfig>,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Live agents (their status records are bound to their leases).
    pub agents: BTreeMap<String, AgentStatus>,
    pub blocks: Vec<Block>,
    pub workloads: Vec<WorkloadRecord>,
    pub services: Vec<Service>,
    /// Sorted by namespace and name.
    pub policies: Vec<NetworkPolicy>,
    /// The namespaces that have a record.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Records that do not decode (left out of the above).
    pub unreadable: Vec<DecodeError>,
}

impl ClusterState {
    pub async fn load(etcd: &mut Etcd) -> Result<ClusterState> {
        let kvs = etcd.get_prefix(reef_schema::PREFIX).await?;
        Ok(Self::from_kvs(kvs.iter().map(|kv| {
            (String::from_utf8_lossy(kv.key()).into_owned(), kv.value())
        })))
    }

    /// From (key, value) pairs (etcd's, or a test's).
    pub fn from_kvs<'a>(kvs: impl IntoIterator<Item = (String, &'a [u8])>) -> ClusterState {
        let mut s = ClusterState::default();
        for (key, value) in kvs {
            let k = key.as_bytes();
            let res = (|| -> std::result::Result<(), DecodeError> {
                if key == CONFIG_KEY {
                    s.config = Some(decode(k, value)?);
                } else if let Some(n) = key.strip_prefix(NODES) {
                    s.nodes.insert(n.to_string(), decode(k, value)?);
                } else if let Some(n) = key.strip_prefix(AGENTS) {
                    s.agents.insert(n.to_string(), decode(k, value)?);
                } else if key.starts_with(BLOCKS) {
                    s.blocks.push(decode(k, value)?);
                } else if key.starts_with(WORKLOADS) {
                    s.workloads.push(decode(k, value)?);
                } else if key.starts_with(SERVICES) {
                    s.services.push(decode(k, value)?);
                } else if key.starts_with(POLICIES) {
                    s.policies.push(decode(k, value)?);
                } else if let Some(n) = key.strip_prefix(NAMESPACES) {
                    s.namespaces.insert(n.to_string(), decode(k, value)?);
                }
                Ok(())
            })();
            if let Err(e) = res {
                s.unreadable.push(e);
            }
        }
        s.policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        s
    }

    pub fn pods(&self) -> Vec<PodRef<'_>> {
        self.workloads.iter().map(PodRef).collect()
    }

    pub fn policies(&self) -> reef_policy::Policies<'_> {
        reef_policy::Policies::new(&self.policies, &self.namespaces)
    }

    pub fn policy(&self, namespace: &str, name: &str) -> Option<&NetworkPolicy> {
        self.policies
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// A namespace's labels: its record's, or the implicit name label.
    pub fn namespace(&self, name: &str) -> Namespace {
        self.namespaces
            .get(name)
            .cloned()
            .unwrap_or_else(|| Namespace::implicit(name))
    }

    /// A policy's packet counters summed over every live agent, and per node.
    pub fn counters(&self, id: &str) -> (PolicyCounters, BTreeMap<String, PolicyCounters>) {
        let mut total = PolicyCounters::default();
        let mut by_node = BTreeMap::new();
        for (node, st) in &self.agents {
            if let Some(c) = st.policy_counters.get(id) {
                total.allowed += c.allowed;
                total.dropped += c.dropped;
                by_node.insert(node.clone(), *c);
            }
        }
        (total, by_node)
    }

    /// Every namespace the cluster knows of: records, and the namespaces of pods, services
    /// and policies (which exist implicitly).
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.namespaces.keys().cloned().collect();
        names.extend(self.pods().iter().map(|p| p.namespace().to_string()));
        names.extend(self.services.iter().map(|s| s.namespace.clone()));
        names.extend(self.policies.iter().map(|p| p.namespace.clone()));
        names.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_arguments_follow_kubectl() {
        assert_eq!(
            parse_label_change("ns=x").ok(),
            Some(LabelChange::Set("ns".into(), "x".into()))
        );
        assert_eq!(
            parse_label_change("empty=").ok(),
            Some(LabelChange::Set("empty".into(), String::new()))
        );
        assert_eq!(
            parse_label_change("a=b=c").ok(),
            Some(LabelChange::Set("a".into(), "b=c".into()))
        );
        assert_eq!(
            parse_label_change("team-").ok(),
            Some(LabelChange::Remove("team".into()))
        );
        for bad in ["ns", "=x", "-", &format!("k={}", "v".repeat(64))] {
            assert!(parse_label_change(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relabelling_keeps_the_name_label() {
        let old = labels(&[(NAME_LABEL, "x"), ("ns", "x"), ("team", "a")]);
        let changes = [
            LabelChange::Set("ns".into(), "q".into()),
            LabelChange::Remove("team".into()),
            LabelChange::Remove("absent".into()),
            LabelChange::Set(NAME_LABEL.into(), "x".into()),
        ];
        assert_eq!(
            relabel("x", old.clone(), &changes).ok(),
            Some(labels(&[(NAME_LABEL, "x"), ("ns", "q")]))
        );
        assert!(relabel(
            "x",
            old.clone(),
            &[LabelChange::Set(NAME_LABEL.into(), "y".into())]
        )
        .is_err());
        assert!(relabel("x", old, &[LabelChange::Remove(NAME_LABEL.into())]).is_err());
    }

    #[test]
    fn state_reads_every_record_and_names_the_bad_ones() {
        let kvs: Vec<(String, &[u8])> = vec![
            (
                "/reef/policies/x/deny".into(),
                br#"{"namespace":"x","name":"deny","podSelector":{},"policyTypes":["Ingress"]}"#,
            ),
            (
                "/reef/policies/a/deny".into(),
                br#"{"namespace":"a","name":"deny","podSelector":{},"policyTypes":["Ingress"]}"#,
            ),
            ("/reef/policies/x/bad".into(), b"{"),
            (
                "/reef/namespaces/x".into(),
                br#"{"name":"x","labels":{"ns":"x"}}"#,
            ),
            (
                "/reef/workloads/n1/c/eth0".into(),
                br#"{"node":"n1","network":"n","containerId":"c","ifname":"eth0","ips":["10.0.0.2"],"name":"a"}"#,
            ),
            (
                "/reef/agents/n1".into(),
                br#"{"node":"n1","pid":1,"mode":"routed","started":0,"updated":0,"routes":0,"policyCounters":{"x/deny":{"allowed":3,"dropped":4}}}"#,
            ),
            (
                "/reef/agents/n2".into(),
                br#"{"node":"n2","pid":1,"mode":"routed","started":0,"updated":0,"routes":0,"policyCounters":{"x/deny":{"allowed":1,"dropped":1}}}"#,
            ),
        ];
        let s = ClusterState::from_kvs(kvs);
        let ids: Vec<String> = s.policies.iter().map(|p| p.id()).collect();
        assert_eq!(ids, ["a/deny", "x/deny"]);
        assert_eq!(s.unreadable.len(), 1);
        assert_eq!(s.unreadable[0].key, "/reef/policies/x/bad");
        assert_eq!(s.pods()[0].namespace(), "default");
        assert_eq!(s.pods()[0].id(), "default/a");
        assert_eq!(s.namespace("y"), Namespace::implicit("y"));
        assert_eq!(s.namespace_names(), ["a", "default", "x"]);
        let (total, by_node) = s.counters("x/deny");
        assert_eq!((total.allowed, total.dropped, by_node.len()), (4, 5, 2));
    }
}
