//! The plugin chain of one network list, with libcni's semantics (`AddNetworkList`,
//! `DelNetworkList`, `ValidateNetworkList`, `injectRuntimeConfig`), except where noted.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::exec::{self, CallEnv, CallError};
use super::versions::{self, VersionCache};
use super::NetworkList;
use crate::error::{Error, Result};

/// A network list whose plugins have all been found on the search path.
#[derive(Debug)]
pub struct Chain {
    pub list: NetworkList,
    bins: Vec<PathBuf>,
    /// `CNI_PATH` handed to the plugins (they look up delegates such as IPAM there).
    cni_path: String,
}

/// A failed ADD: the error, and whether the DEL that followed it succeeded (if not, some
/// plugin may still hold state, and the container's record must stay for `reef-run rm`).
#[derive(Debug)]
pub struct AddFailure {
    pub error: Error,
    pub cleaned_up: bool,
}

/// Who is being attached: everything of libcni's `RuntimeConf` but the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`; empty when the namespace is gone (DEL only).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order.
    pub cni_args: Vec<[String; 2]>,
    /// Capability arguments; each is passed only to plugins declaring that capability.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    /// `K=V;K2=V2`, as libcni stringifies `RuntimeConf.Args`.
    fn cni_args_string(&self) -> String {
        self.cni_args
            .iter()
            .map(|[k, v]| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

impl Chain {
    /// Finds every plugin of `list` in `search` (first match wins). All missing plugins are
    /// reported at once, before anything has been created.
    pub fn resolve(list: NetworkList, search: &[PathBuf]) -> Result<Chain> {
        let mut bins = Vec::new();
        let mut missing = Vec::new();
        for p in &list.plugins {
            match find_in(&p.plugin_type, search) {
                Some(bin) => bins.push(bin),
                None => missing.push(p.plugin_type.clone()),
            }
        }
        if !missing.is_empty() {
            let dirs: Vec<String> = search.iter().map(|d| d.display().to_string()).collect();
            return Err(Error::plugin(
                &list.name,
                format!(
                    "{} {} not found in {} (install {} there, or set CNI_PATH)",
                    if missing.len() == 1 {
                        "plugin"
                    } else {
                        "plugins"
                    },
                    missing.join(", "),
                    dirs.join(":"),
                    if missing.len() == 1 { "it" } else { "them" },
                ),
            ));
        }
        let cni_path = std::env::join_paths(search)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Chain {
            list,
            bins,
            cni_path,
        })
    }

    pub fn name(&self) -> &str {
        &self.list.name
    }

    /// libcni's `ValidateNetworkList`: every plugin must list the conflist's cniVersion in
    /// its VERSION answer. Answers are remembered per binary in `cache_file` (see
    /// [`super::versions`]); the plugins still to be asked run concurrently (one process
    /// each), so the check costs at most about one plugin start.
    pub fn check_versions(&self, cache_file: Option<&Path>) -> Result<()> {
        let stdin =
            serde_json::to_vec(&json!({"cniVersion": self.list.cni_version})).unwrap_or_default();
        // libcni's GetVersionInfo sets these dummies for plugins built on an old skel.
        let env = CallEnv {
            command: "VERSION",
            container_id: "",
            netns: "dummy",
            ifname: "dummy",
            args: "",
            path: "dummy",
        };
        let mut unique: Vec<(&str, &Path)> = Vec::new();
        for (p, bin) in self.list.plugins.iter().zip(&self.bins) {
            if !unique.iter().any(|(_, b)| *b == bin.as_path()) {
                unique.push((&p.plugin_type, bin));
            }
        }
        let mut cache = cache_file.map(VersionCache::load).unwrap_or_default();
        let ids: Vec<Option<String>> = unique
            .iter()
            .map(|(_, bin)| versions::identity(bin))
            .collect();
        let known: Vec<Option<Vec<String>>> = unique
            .iter()
            .zip(&ids)
            .map(|((_, bin), id)| {
                id.as_deref()
                    .and_then(|id| cache.get(bin, id))
                    .map(<[String]>::to_vec)
            })
            .collect();
        // Start every VERSION still needed before waiting for any.
        let started: Vec<_> = unique
            .iter()
            .zip(&known)
            .map(|((_, bin), k)| k.is_none().then(|| exec::start(bin, &env, &stdin)))
            .collect();
        let mut errs = Vec::new();
        for ((((ty, bin), id), known), child) in unique.iter().zip(ids).zip(known).zip(started) {
            let supported = match (known, child) {
                (Some(s), _) => s,
                (None, Some(child)) => {
                    match parse_version_answer(child.and_then(|c| exec::finish(bin, c))) {
                        Ok(s) => {
                            if let Some(id) = id {
                                cache.put(bin, id, s.clone());
                            }
                            s
                        }
                        Err(e) => {
                            errs.push(Error::plugin(
                                self.name(),
                                format!("plugin {ty} ({}) failed (VERSION): {e}", bin.display()),
                            ));
                            continue;
                        }
                    }
                }
                (None, None) => Vec::new(),
            };
            if let Err(e) = self.check_supported(ty, bin, &supported) {
                errs.push(e);
            }
        }
        if let Some(f) = cache_file {
            cache.save(f);
        }
        Error::collect(errs)
    }

    fn check_supported(&self, ty: &str, bin: &Path, supported: &[String]) -> Result<()> {
        let want = &self.list.cni_version;
        if supported.iter().any(|v| v == want) {
            return Ok(());
        }
        Err(Error::plugin(
            self.name(),
            format!(
                "plugin {ty} ({}) does not support cniVersion {want:?} (it supports {})",
                bin.display(),
                if supported.is_empty() {
                    "nothing it would name".to_owned()
                } else {
                    supported.join(", ")
                }
            ),
        ))
    }

    /// libcni's `buildOneConfig`: the plugin's object with the list's name and cniVersion,
    /// `prevResult`, and a `runtimeConfig` holding the capability arguments this plugin
    /// declares (replacing any `runtimeConfig` in the file, as libcni's InjectConf does).
    fn config_for(&self, i: usize, prev: Option<&Value>, att: &Attachment) -> Vec<u8> {
        let plugin = &self.list.plugins[i];
        let mut conf = plugin.raw.clone();
        conf.insert("name".into(), json!(self.list.name));
        conf.insert("cniVersion".into(), json!(self.list.cni_version));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let rc: Map<String, Value> = plugin
            .capabilities
            .iter()
            .filter_map(|c| att.capability_args.get(c).map(|v| (c.clone(), v.clone())))
            .collect();
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
    }

    fn call(
        &self,
        i: usize,
        command: &str,
        prev: Option<&Value>,
        att: &Attachment,
    ) -> std::result::Result<Option<Value>, CallError> {
        let args = att.cni_args_string();
        let env = CallEnv {
            command,
            container_id: &att.container_id,
            netns: &att.netns,
            ifname: &att.ifname,
            args: &args,
            path: &self.cni_path,
        };
        let res = exec::call(&self.bins[i], &env, &self.config_for(i, prev, att));
        crate::log::step(|| {
            format!(
                "{command} {}: {}",
                self.list.plugins[i].plugin_type,
                if res.is_ok() { "ok" } else { "failed" }
            )
        });
        res
    }

    /// ADD through the chain; returns the last plugin's result.
    ///
    /// libcni's AddNetworkList leaves cleanup of a half-done ADD to its caller; reef-run is
    /// that caller, so here a failure at plugin `i` is followed by DEL of plugins `i..=0` (the
    /// failed one too: it may have done part of its work, and DEL is idempotent), with the
    /// last result obtained as `prevResult`. The error names the failed plugin and any DEL
    /// that failed too.
    pub fn add(&self, att: &Attachment) -> std::result::Result<Value, AddFailure> {
        let mut result: Option<Value> = None;
        for i in 0..self.list.plugins.len() {
            let ty = &self.list.plugins[i].plugin_type;
            let failure = match self.call(i, "ADD", result.as_ref(), att) {
                Ok(Some(mut r)) => {
                    fix_result_version(&mut r, &self.list.cni_version);
                    result = Some(r);
                    continue;
                }
                Ok(None) => "it returned no result".to_owned(),
                Err(e) => e.to_string(),
            };
            let mut msg = format!("plugin {ty} failed (ADD): {failure}");
            let cleanup = self.del_upto(i, att, result.as_ref());
            if let Err(e) = &cleanup {
                msg.push_str(&format!("; cleaning up after it also failed: {e}"));
            }
            return Err(AddFailure {
                error: Error::plugin(self.name(), msg),
                cleaned_up: cleanup.is_ok(),
            });
        }
        // Unreachable with a non-empty list (NetworkList guarantees one), but not a panic.
        result.ok_or_else(|| AddFailure {
            error: Error::plugin(self.name(), "the chain returned no result"),
            cleaned_up: true,
        })
    }

    /// DEL through the whole chain in reverse order with `prev` (the cached result) as
    /// `prevResult` when the list's version has it (0.4.0+).
    ///
    /// Unlike libcni, which stops at the first failing plugin, every plugin gets its DEL and
    /// every failure is reported: reef-run is the last chance to release what the plugins
    /// hold, and one plugin's failure says nothing about the others' state.
    pub fn del(&self, att: &Attachment, prev: Option<&Value>) -> Result<()> {
        self.del_upto(self.list.plugins.len() - 1, att, prev)
    }

    fn del_upto(&self, last: usize, att: &Attachment, prev: Option<&Value>) -> Result<()> {
        let prev = prev.filter(|_| super::del_gets_prev_result(&self.list.cni_version));
        let mut errs = Vec::new();
        for i in (0..=last).rev() {
            if let Err(e) = self.call(i, "DEL", prev, att) {
                let ty = &self.list.plugins[i].plugin_type;
                errs.push(Error::plugin(
                    self.name(),
                    format!("plugin {ty} failed (DEL): {e}"),
                ));
            }
        }
        Error::collect(errs)
    }
}

/// The versions a VERSION answer lists.
fn parse_version_answer(
    answer: std::result::Result<Option<Value>, CallError>,
) -> std::result::Result<Vec<String>, CallError> {
    match answer {
        Ok(Some(v)) => Ok(v["supportedVersions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()),
        Ok(None) => Ok(Vec::new()),
        // libcni: a plugin that does not know VERSION speaks 0.1.0 only.
        Err(CallError::Cni(e)) if e.msg == "unknown CNI_COMMAND: VERSION" => {
            Ok(vec!["0.1.0".to_owned()])
        }
        Err(e) => Err(e),
    }
}

fn find_in(plugin: &str, search: &[PathBuf]) -> Option<PathBuf> {
    search.iter().map(|d| d.join(plugin)).find(|p| p.is_file())
}

/// libcni's `fixupResultVersion`: a result without cniVersion is in the config's version.
fn fix_result_version(result: &mut Value, cni_version: &str) {
    if let Some(obj) = result.as_object_mut() {
        let has = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty());
        if !has {
            obj.insert("cniVersion".into(), json!(cni_version));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(text: &str) -> Chain {
        let list = NetworkList::parse(text.as_bytes().to_vec(), "t").unwrap();
        let n = list.plugins.len();
        Chain {
            list,
            bins: vec![PathBuf::from("/bin/false"); n],
            cni_path: String::new(),
        }
    }

    fn att(caps: Value) -> Attachment {
        Attachment {
            container_id: "c".into(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            cni_args: vec![
                ["IgnoreUnknown".into(), "1".into()],
                ["A".into(), "b".into()],
            ],
            capability_args: caps.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn config_injection_follows_libcni() {
        let c = chain(
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"a","cniVersion":"0.3.1","runtimeConfig":{"old":1}},
                {"type":"b","capabilities":{"portMappings":true,"labels":false}}]}"#,
        );
        let a = att(json!({"portMappings":[{"hostPort":1}],"labels":{"labels":{"x":"y"}}}));
        let first: Value = serde_json::from_slice(&c.config_for(0, None, &a)).unwrap();
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        // No declared capability: the file's own runtimeConfig stays as it is.
        assert_eq!(first["runtimeConfig"], json!({"old": 1}));
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let second: Value = serde_json::from_slice(&c.config_for(1, Some(&prev), &a)).unwrap();
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings":[{"hostPort":1}]}),
            "only declared capabilities are passed"
        );
        assert_eq!(a.cni_args_string(), "IgnoreUnknown=1;A=b");
    }

    #[test]
    fn result_version_fixup() {
        let mut r = json!({"ips": []});
        fix_result_version(&mut r, "1.0.0");
        assert_eq!(r["cniVersion"], "1.0.0");
        let mut r = json!({"cniVersion": "0.4.0"});
        fix_result_version(&mut r, "1.0.0");
        assert_eq!(r["cniVersion"], "0.4.0");
    }
}
