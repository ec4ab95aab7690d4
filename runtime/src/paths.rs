//! Where things live, with the environment overrides (the tests point all of them into a
//! temporary directory).

use std::path::{Path, PathBuf};

use crate::cni::Cache;
use crate::state::{StateDir, DEFAULT_STATE_DIR};

/// libcni's default `CacheDir`.
pub const DEFAULT_CNI_CACHE_DIR: &str = "/var/lib/cni";
/// reef-ipam's default `dataDir`.
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/reef/networks";
/// Where CNI plugins are conventionally installed.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";

#[derive(Debug, Clone)]
pub struct Paths {
    pub state: StateDir,
    pub cache: Cache,
    /// `dataDir` of the default network's reef-ipam.
    pub ipam_data_dir: PathBuf,
    /// Plugin search path, also passed to plugins as `CNI_PATH`.
    pub cni_search: Vec<PathBuf>,
}

impl Paths {
    /// `REEF_STATE_DIR`, `REEF_CNI_CACHE_DIR`, `REEF_IPAM_DATA_DIR`; plugins are searched in
    /// `$CNI_PATH` (an explicit choice wins), then next to the reef-run binary, then in
    /// /opt/cni/bin.
    pub fn from_env() -> Paths {
        let var = |k: &str, default: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Paths {
            state: StateDir::new(var("REEF_STATE_DIR", DEFAULT_STATE_DIR)),
            cache: Cache::new(var("REEF_CNI_CACHE_DIR", DEFAULT_CNI_CACHE_DIR)),
            ipam_data_dir: var("REEF_IPAM_DATA_DIR", DEFAULT_IPAM_DATA_DIR),
            cni_search: search_path(std::env::var_os("CNI_PATH").as_deref(), exe_dir),
        }
    }
}

fn search_path(cni_path: Option<&std::ffi::OsStr>, exe_dir: Option<PathBuf>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cni_path
        .map(|p| {
            std::env::split_paths(p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(exe_dir);
    dirs.push(PathBuf::from(CNI_BIN_DIR));
    let mut unique = Vec::new();
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order() {
        let p = search_path(
            Some("/a::/b:/opt/cni/bin".as_ref()),
            Some(PathBuf::from("/exe")),
        );
        assert_eq!(p, ["/a", "/b", "/opt/cni/bin", "/exe"].map(PathBuf::from));
        let p = search_path(None, Some(PathBuf::from("/exe")));
        assert_eq!(p, ["/exe", "/opt/cni/bin"].map(PathBuf::from));
    }
}
