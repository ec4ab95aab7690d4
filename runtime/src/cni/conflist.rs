//! A network configuration list (`.conflist`), checked as libcni's `ConfListFromBytes` and
//! `ValidateNetworkName` check it, so a file reef-run accepts is one libcni accepts.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<PluginConf>,
    /// The list exactly as read: what libcni caches as `config`.
    pub bytes: Vec<u8>,
    /// Where it came from, for messages (a path, or "the default network").
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct PluginConf {
    pub plugin_type: String,
    /// The plugin's object as written; name, cniVersion, prevResult and runtimeConfig are
    /// injected per call.
    pub raw: Map<String, Value>,
    /// Capabilities declared `true`.
    pub capabilities: Vec<String>,
}

impl NetworkList {
    pub fn load(path: &Path) -> Result<NetworkList> {
        let bytes = std::fs::read(path).map_err(|e| Error::Config {
            source_name: path.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        NetworkList::parse(bytes, &path.display().to_string())
    }

    pub fn parse(bytes: Vec<u8>, source: &str) -> Result<NetworkList> {
        let bad = |msg: String| Error::Config {
            source_name: source.to_owned(),
            msg,
        };
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Value::Object(top) = v else {
            return Err(bad("not a JSON object".into()));
        };
        let name = match top.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad("\"name\" must be a string".into())),
            None => return Err(bad("missing \"name\"".into())),
        };
        validate_network_name(&name).map_err(bad)?;
        let cni_version = match top.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => return Err(bad("missing \"cniVersion\"".into())),
            Some(_) => return Err(bad("\"cniVersion\" must be a string".into())),
        };
        if super::version_tuple(&cni_version).is_none() {
            return Err(bad(format!("invalid cniVersion {cni_version:?}")));
        }
        let plugins = match top.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            Some(Value::Array(_)) => return Err(bad("no plugins in list".into())),
            Some(_) => return Err(bad("\"plugins\" must be a list".into())),
            None => return Err(bad("no \"plugins\" key (is this a single .conf?)".into())),
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| PluginConf::parse(p).map_err(|m| bad(format!("plugins[{i}]: {m}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
            bytes,
            source: source.to_owned(),
        })
    }

    /// Plugins of the list that declare `capability`.
    pub fn declares(&self, capability: &str) -> bool {
        self.plugins
            .iter()
            .any(|p| p.capabilities.iter().any(|c| c == capability))
    }
}

impl PluginConf {
    fn parse(v: &Value) -> std::result::Result<PluginConf, String> {
        let Value::Object(raw) = v else {
            return Err("not a JSON object".into());
        };
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err("missing \"type\"".into()),
        };
        if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
            return Err(format!("invalid plugin type {plugin_type:?}"));
        }
        let capabilities = match raw.get("capabilities") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(caps)) => caps
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect(),
            Some(_) => return Err("\"capabilities\" must be an object".into()),
        };
        Ok(PluginConf {
            plugin_type,
            raw: raw.clone(),
            capabilities,
        })
    }
}

/// libcni's `ValidateNetworkName`: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn validate_network_name(name: &str) -> std::result::Result<(), String> {
    let ok = name
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid network name {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetworkList> {
        NetworkList::parse(s.as_bytes().to_vec(), "test")
    }

    #[test]
    fn accepts_a_list_and_reads_capabilities() {
        let l = parse(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},
               {"type":"b","capabilities":{"portMappings":true,"labels":false}}]}"#,
        )
        .unwrap();
        assert_eq!(l.name, "n");
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugins[1].capabilities, ["portMappings"]);
        assert!(l.declares("portMappings"));
        assert!(!l.declares("labels"));
    }

    #[test]
    fn rejects_broken_lists_clearly() {
        let cases = [
            ("{", "invalid JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"a"}]}"#,
                "missing \"name\"",
            ),
            (r#"{"name":"n","plugins":[{"type":"a"}]}"#, "cniVersion"),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "no \"plugins\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "no plugins",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "plugins[0]: missing \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a b","plugins":[{"type":"a"}]}"#,
                "network name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "plugin type",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
