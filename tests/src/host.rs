use std::path::PathBuf;

use netns_fixtures::{tempdir, Netns, TempDir};
use serde_json::Value;

use crate::{write_conflist, Cnitool};

/// A simulated host (its own network namespace) with pod namespaces and a scratch directory.
///
/// Drop order: pods, then the host, then the directory (with the CNI cache and IPAM data).
#[derive(Debug)]
pub struct HostWithPods {
    pub pods: Vec<Netns>,
    pub host: Netns,
    pub dir: TempDir,
}

impl HostWithPods {
    /// A host namespace, `pods` pod namespaces, and a temporary directory holding `cni-cache/`
    /// and `data/`. Panics if any of it cannot be created.
    pub fn new(pods: usize) -> Self {
        let dir = tempdir();
        for sub in ["cni-cache", "data"] {
            std::fs::create_dir_all(dir.path().join(sub))
                .unwrap_or_else(|e| panic!("create {sub}: {e}"));
        }
        let host = Netns::new("host").expect("create host netns");
        let mut env = HostWithPods {
            pods: Vec::new(),
            host,
            dir,
        };
        for _ in 0..pods {
            env.add_pod();
        }
        env
    }

    /// Adds another pod namespace and returns it.
    pub fn add_pod(&mut self) -> &Netns {
        self.pods.push(Netns::new("pod").expect("create pod netns"));
        &self.pods[self.pods.len() - 1]
    }

    /// `CNI_CACHE` directory for cnitool.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cni-cache")
    }

    /// Scratch directory for plugin state, e.g. host-local's `dataDir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes `conf` into the scratch directory; see [`crate::write_conflist`].
    pub fn write_conflist(&self, conf: &Value) -> PathBuf {
        write_conflist(self.dir.path(), conf)
    }

    /// cnitool running in the host namespace with this environment's cache directory.
    pub fn cnitool(&self) -> Cnitool<'_> {
        Cnitool::new(&self.host, self.cache_dir())
    }
}
