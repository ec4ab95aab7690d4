//! Plugins' VERSION answers, remembered per plugin binary.
//!
//! libcni's ValidateNetworkList asks every plugin for VERSION; done on each run that is one
//! process start per plugin. The answer is a property of the binary, so it is kept in the
//! state directory keyed by the binary's identity (device, inode, size, mtime and ctime in
//! nanoseconds): replacing or rebuilding a plugin changes the key and it is asked again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VersionCache {
    plugins: BTreeMap<PathBuf, Known>,
    #[serde(skip)]
    changed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Known {
    binary: String,
    supported: Vec<String>,
}

/// The identity of a binary's current content, as far as metadata tells.
pub fn identity(bin: &Path) -> Option<String> {
    let m = std::fs::metadata(bin).ok()?;
    Some(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

impl VersionCache {
    /// The cache in `file`; empty if it is missing or unreadable (it is only a cache).
    pub fn load(file: &Path) -> VersionCache {
        std::fs::read(file)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default()
    }

    pub fn get(&self, bin: &Path, id: &str) -> Option<&[String]> {
        self.plugins
            .get(bin)
            .filter(|k| k.binary == id)
            .map(|k| k.supported.as_slice())
    }

    pub fn put(&mut self, bin: &Path, id: String, supported: Vec<String>) {
        self.plugins.insert(
            bin.to_path_buf(),
            Known {
                binary: id,
                supported,
            },
        );
        self.changed = true;
    }

    /// Writes the cache if it changed; failures are ignored (next run asks again).
    pub fn save(&self, file: &Path) {
        if !self.changed {
            return;
        }
        let Ok(data) = serde_json::to_vec_pretty(self) else {
            return;
        };
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Unique temporary name: concurrent reef-runs may save at once; last rename wins.
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        if std::fs::write(&tmp, data).is_err() || std::fs::rename(&tmp, file).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_per_binary_identity() {
        let dir = std::env::temp_dir().join(format!("reef-run-versions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("plugin");
        std::fs::write(&bin, "v1").unwrap();
        let file = dir.join("versions.json");
        let id = identity(&bin).unwrap();
        let mut c = VersionCache::load(&file);
        assert!(c.get(&bin, &id).is_none());
        c.put(&bin, id.clone(), vec!["1.0.0".into()]);
        c.save(&file);
        let c = VersionCache::load(&file);
        assert_eq!(c.get(&bin, &id).unwrap(), ["1.0.0"]);
        // A rebuilt binary is a different binary.
        std::fs::write(&bin, "v2 longer").unwrap();
        let id2 = identity(&bin).unwrap();
        assert_ne!(id, id2);
        assert!(c.get(&bin, &id2).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
