//! libcni's result cache: `<cacheDir>/results/<network>-<containerID>-<ifname>`, a
//! `cniCacheV1` JSON document. Written in exactly libcni's shape, so `cnitool`, containerd's
//! tooling or anything on libcni can read (and DEL) what reef-run attached.

use base64::{engine::general_purpose::STANDARD, Engine};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Context, Error, Result};

pub const KIND: &str = "cniCacheV1";

/// libcni's `cachedInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedInfo {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The whole network list as read (Go `[]byte`: base64 in JSON).
    #[serde(serialize_with = "ser_b64", deserialize_with = "de_b64")]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

fn ser_b64<S: Serializer>(bytes: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    STANDARD
        .decode(&s)
        .map_err(|e| serde::de::Error::custom(format!("config is not valid base64: {e}")))
}

/// A cache directory (libcni's `CacheDir`, default `/var/lib/cni`).
#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// libcni's `getCacheFilePath`.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes the entry (directory 0700, file 0600, as libcni does). Written to a temporary
    /// name and renamed, so a reader never sees half a file.
    pub fn write(&self, info: &CachedInfo) -> Result<()> {
        let path = self.path(&info.network_name, &info.container_id, &info.if_name);
        let dir = path.parent().unwrap_or(Path::new("/"));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("create CNI cache directory {}", dir.display()))?;
        let data = serde_json::to_vec(info)
            .map_err(|e| Error::state(&path, format!("cannot encode the cache entry: {e}")))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&data))
            .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.ctx(|| format!("write CNI cache {}", path.display()))
    }

    /// The entry, if there is a readable `cniCacheV1` one.
    pub fn read(&self, network: &str, container_id: &str, ifname: &str) -> Option<CachedInfo> {
        let data = fs::read(self.path(network, container_id, ifname)).ok()?;
        let info: CachedInfo = serde_json::from_slice(&data).ok()?;
        (info.kind == KIND).then_some(info)
    }

    /// Removes the entry; a missing one is fine.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove CNI cache {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> CachedInfo {
        CachedInfo {
            kind: KIND.into(),
            container_id: "abc".into(),
            config: br#"{"name":"n"}"#.to_vec(),
            if_name: "eth0".into(),
            network_name: "n".into(),
            cni_args: vec![["IgnoreUnknown".into(), "1".into()]],
            capability_args: json!({"portMappings": []}).as_object().cloned().unwrap(),
            result: Some(json!({"cniVersion": "1.0.0"})),
        }
    }

    #[test]
    fn json_shape_is_libcnis() {
        let v = serde_json::to_value(info()).unwrap();
        assert_eq!(
            v,
            json!({
                "kind": "cniCacheV1",
                "containerId": "abc",
                "config": "eyJuYW1lIjoibiJ9",
                "ifName": "eth0",
                "networkName": "n",
                "cniArgs": [["IgnoreUnknown", "1"]],
                "capabilityArgs": {"portMappings": []},
                "result": {"cniVersion": "1.0.0"},
            })
        );
        let mut bare = info();
        bare.cni_args.clear();
        bare.capability_args.clear();
        bare.result = None;
        let v = serde_json::to_value(bare).unwrap();
        for k in ["cniArgs", "capabilityArgs", "result"] {
            assert!(v.get(k).is_none(), "{k} is omitempty in libcni");
        }
    }

    #[test]
    fn write_read_remove() {
        let dir = std::env::temp_dir().join(format!("reef-run-cache-{}", std::process::id()));
        let cache = Cache::new(&dir);
        cache.write(&info()).unwrap();
        let p = cache.path("n", "abc", "eth0");
        assert!(p.ends_with("results/n-abc-eth0"));
        assert_eq!(cache.read("n", "abc", "eth0").unwrap(), info());
        cache.remove("n", "abc", "eth0").unwrap();
        cache.remove("n", "abc", "eth0").unwrap();
        assert!(cache.read("n", "abc", "eth0").is_none());
        let _ = fs::remove_dir_all(dir);
    }
}
