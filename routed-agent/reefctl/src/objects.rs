//! `apply -f` and `delete -f` over every kind a manifest may hold: each kind goes to its own
//! module (services, policies and namespaces), and the output lists the objects in the
//! manifest's order.

use crate::policies::{self, PolicyError};
use crate::services::{self, ServiceError};
use crate::{policy_show, service_show, CtlError};
use reef_etcd::Etcd;
use reef_manifest::{Object, ObjectRef, KIND_NAMESPACE, KIND_NETWORK_POLICY, KIND_SERVICE};
use serde_json::Value;

fn push(text: &mut String, rows: &mut Vec<Value>, (t, v): (String, Value)) {
    text.push_str(&t);
    match v {
        Value::Array(items) => rows.extend(items),
        other => rows.push(other),
    }
}

/// Services are applied first, all together: their checks (cluster ranges, claims held by
/// others) run before anything at all is written, so a refused service leaves the policies
/// and namespaces of the same file unwritten too.
pub async fn apply(etcd: &mut Etcd, objects: &[Object]) -> Result<(String, Value), CtlError> {
    let svcs: Vec<reef_schema::Service> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let mut svc_results = if svcs.is_empty() {
        Vec::new()
    } else {
        services::apply(etcd, &svcs).await?
    }
    .into_iter();
    let mut text = String::new();
    let mut rows = Vec::new();
    for o in objects {
        let out = match o {
            Object::Service(_) => match svc_results.next() {
                Some(done) => service_show::applied(&[done]),
                None => continue,
            },
            Object::NetworkPolicy(p) => {
                let change = policies::apply_policy(etcd, p).await?;
                policy_show::policy_applied(p, change)
            }
            Object::Namespace(ns) => {
                let change = policies::apply_namespace(etcd, ns).await?;
                policy_show::namespace_applied(ns, change)
            }
        };
        push(&mut text, &mut rows, out);
    }
    Ok((text, Value::Array(rows)))
}

/// Deletes one object: the outer error is a failure, the inner one says it does not exist.
async fn delete_one(
    etcd: &mut Etcd,
    r: &ObjectRef,
) -> Result<Result<(String, Value), CtlError>, CtlError> {
    let done = match r.kind.as_str() {
        KIND_SERVICE => {
            match services::delete(etcd, &[(r.namespace.clone(), r.name.clone())]).await {
                Ok(ids) => service_show::deleted(&ids),
                Err(e @ ServiceError::NotFound(_)) => return Ok(Err(e.into())),
                Err(e) => return Err(e.into()),
            }
        }
        KIND_NETWORK_POLICY => match policies::delete_policy(etcd, &r.namespace, &r.name).await {
            Ok(()) => policy_show::policy_deleted(&r.namespace, &r.name),
            Err(e @ PolicyError::NotFound(_)) => return Ok(Err(e.into())),
            Err(e) => return Err(e.into()),
        },
        KIND_NAMESPACE => match policies::delete_namespace(etcd, &r.name).await {
            Ok(()) => policy_show::namespace_deleted(&r.name),
            Err(e @ PolicyError::NamespaceNotFound(_)) => return Ok(Err(e.into())),
            Err(e) => return Err(e.into()),
        },
        other => return Err(CtlError::Usage(format!("cannot delete kind {other}"))),
    };
    Ok(Ok(done))
}

/// Deletes every object named. Objects that do not exist are reported on stderr; the
/// command fails only when none of the objects named existed (as `service rm` of a missing
/// service does).
pub async fn delete(etcd: &mut Etcd, refs: &[ObjectRef]) -> Result<(String, Value), CtlError> {
    let mut text = String::new();
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for r in refs {
        match delete_one(etcd, r).await? {
            Ok(out) => push(&mut text, &mut rows, out),
            Err(e) => missing.push(e),
        }
    }
    if rows.is_empty() {
        if let Some(e) = missing.into_iter().next() {
            return Err(e);
        }
    } else {
        for e in &missing {
            eprintln!("reefctl: {e}");
        }
    }
    Ok((text, Value::Array(rows)))
}
