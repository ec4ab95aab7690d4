//! Network configurations for the single-host plugin tests and the `reef-bridge` calls that
//! carry them (raw CNI exec protocol, see [`CniCall`]).

use std::path::Path;

use serde_json::{json, Value};

use crate::{cni_path, CniCall};

/// Spec versions the core scenarios run under, by the raw exec protocol.
pub const EXEC_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// A `reef-bridge` network config whose `reef-ipam` state lives in `data_dir`.
///
/// `range_sets` is the `ipam.ranges` value, e.g. `json!([[{"subnet": "10.1.0.0/24"}]])`;
/// `extra` (an object) is merged into the top level (`isGateway`, `ipMasq`, `mtu`, ...).
pub fn bridge_conf(
    version: &str,
    name: &str,
    bridge: &str,
    range_sets: Value,
    data_dir: &Path,
    extra: Value,
) -> Value {
    let mut conf = json!({
        "cniVersion": version,
        "name": name,
        "type": "reef-bridge",
        "bridge": bridge,
        "ipam": {
            "type": "reef-ipam",
            "ranges": range_sets,
            "dataDir": data_dir,
        },
    });
    merge(&mut conf, extra);
    conf
}

/// Shallow merge of the object `extra` into the object `into`.
fn merge(into: &mut Value, extra: Value) {
    if let (Some(dst), Value::Object(src)) = (into.as_object_mut(), extra) {
        dst.extend(src);
    }
}

/// `conf` with `prevResult` set, as a runtime sends it to CHECK and DEL.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// `conf` with another `cniVersion`.
pub fn at_version(conf: &Value, version: &str) -> Value {
    let mut c = conf.clone();
    c["cniVersion"] = json!(version);
    c
}

/// A `reef-bridge` call for one attachment (CNI_NETNS, CNI_CONTAINERID, CNI_IFNAME, CNI_PATH).
pub fn bridge_call(command: &str, pod: &Path, cid: &str, ifname: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-bridge")
        .command(command)
        .runtime(pod, cid, ifname)
        .path(&cni_path())
        .config(conf)
}

/// A `reef-bridge` call without an attachment (VERSION, GC, STATUS).
pub fn bridge_net_call(command: &str, conf: &Value) -> CniCall {
    CniCall::plugin("reef-bridge")
        .command(command)
        .path(&cni_path())
        .config(conf)
}
