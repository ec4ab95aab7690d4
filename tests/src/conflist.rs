use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The CNI spec version the harness's configurations use (the newest libcni 1.1 supports).
pub const CNI_VERSION: &str = "1.0.0";

/// A network configuration list: `{"cniVersion": CNI_VERSION, "name": name, "plugins": [...]}`.
pub fn conflist(name: &str, plugins: Vec<Value>) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": plugins,
    })
}

/// Writes `conf` as `<dir>/<name>.conflist` (name from its `"name"` field, else `net`) and
/// returns the path. Panics on I/O errors (test convenience).
pub fn write_conflist(dir: &Path, conf: &Value) -> PathBuf {
    let name = conf
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .unwrap_or("net");
    let path = dir.join(format!("{name}.conflist"));
    let text = serde_json::to_string_pretty(conf).expect("serialise conflist");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
