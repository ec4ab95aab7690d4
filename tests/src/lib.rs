//! Harness for Reef's integration tests and benches: drives the built plugin binaries the way
//! container runtimes do, either by the raw CNI exec protocol ([`CniCall`]) or through libcni
//! ([`Cnitool`]), always *inside* a simulated host that is itself a network namespace
//! ([`Netns`], from `netns-fixtures`).
//!
//!
//! The helpers of the tests and benches, one concern a module:
//! - [`netconf`]: `reef-bridge` network configs and calls; [`expect`]: a plugin's outcome and
//!   the fields of its result; [`inspect`]: a namespace's links, addresses and nftables sets;
//!   [`store`]: IPAM state on disk and in etcd, read without the plugins;
//! - [`cluster`]: the cluster IPAM fixture (hosts, etcd, `reef-ipam` runs); [`routed`]: the
//!   routed-mode fixture (hosts, etcd, agents, pods); [`agent`]: `reef-agent` processes and
//!   `reefctl`; [`overlay`]: the VXLAN modes' forwarding state; [`policy`]: the network
//!   policy world (namespaces × pods with servers, the probe matrix and its own oracle);
//! - [`traffic`]: pings, checked TCP streams, iperf3; [`monitor`]: route and neighbour
//!   notifications, route samples, interface counters;
//! - [`run`]: the reef-run harness; [`bench`](mod@bench): what only the benches share.
//!
//! ```no_run
//! use reef_tests::*;
//! use serde_json::json;
//!
//! let env = HostWithPods::new(1);
//! let conf = conflist("reefnet", vec![json!({"type": "reef-bridge", "bridge": "reef0"})]);
//! let file = env.write_conflist(&conf);
//! let out = env.cnitool().add(&file, env.pods[0].path(), "c1", "eth0");
//! assert_success(&out, "cnitool add");
//! ```

pub mod agent;
pub mod bench;
pub mod benchkit;
pub mod cluster;
mod cni;
mod cnitool;
mod conflist;
mod exec;
pub mod expect;
mod host;
pub mod inspect;
pub mod monitor;
pub mod netconf;
pub mod overlay;
pub mod policy;
pub mod routed;
pub mod run;
#[cfg(test)]
mod selftest;
pub mod store;
pub mod traffic;

use std::path::{Path, PathBuf};

pub use cni::{CniCall, CniOutput, ConfigInput};
pub use cnitool::{cnitool_bin, Cnitool};
pub use conflist::{conflist, write_conflist, CNI_VERSION};
pub use exec::{assert_success, output_with_timeout, DEFAULT_TIMEOUT};
pub use host::HostWithPods;
pub use netns_fixtures::{self as fixtures, ping, tempdir, wait_until, ChildGuard, Netns, TempDir};

/// Where Debian's containernetworking-plugins (reference `bridge`, `host-local`, ...) live.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The binary whose presence marks a directory as holding Reef's built plugins.
const MARKER_BINARY: &str = "reef-bridge";

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The directory holding the built plugin binaries (`reef-bridge`, `reef-ipam`, ...).
///
/// `$REEF_BIN_DIR` if set. Otherwise the `release` directory of the target directory this test
/// binary was built into (so `CARGO_TARGET_DIR` is honoured), falling back to
/// `<workspace>/target/release`: the first of these that contains `reef-bridge`.
///
/// Panics with "build first: cargo build --release" if `reef-bridge` is not there.
pub fn plugin_dir() -> PathBuf {
    let env_dir = std::env::var_os("REEF_BIN_DIR").map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    resolve_plugin_dir(env_dir, exe.as_deref(), &workspace_dir()).unwrap_or_else(|e| panic!("{e}"))
}

/// `CNI_PATH` for Reef's plugins plus the reference plugins: `plugin_dir():/usr/lib/cni`.
pub fn cni_path() -> String {
    format!("{}:{REFERENCE_PLUGIN_DIR}", plugin_dir().display())
}

/// Path of one of Reef's built plugins, e.g. `plugin("reef-bridge")`.
pub fn plugin(name: &str) -> PathBuf {
    plugin_dir().join(name)
}

/// Path of a reference plugin, e.g. `reference_plugin("host-local")`.
pub fn reference_plugin(name: &str) -> PathBuf {
    Path::new(REFERENCE_PLUGIN_DIR).join(name)
}

fn resolve_plugin_dir(
    env_dir: Option<PathBuf>,
    exe: Option<&Path>,
    workspace: &Path,
) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match env_dir {
        Some(dir) => vec![dir],
        None => {
            let mut c = Vec::new();
            if let Some(dir) = exe.and_then(release_dir_of_test_exe) {
                c.push(dir);
            }
            let ws = workspace.join("target").join("release");
            if !c.contains(&ws) {
                c.push(ws);
            }
            c
        }
    };
    if let Some(found) = candidates.iter().find(|d| d.join(MARKER_BINARY).is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "{MARKER_BINARY} not found in {}: build first: cargo build --release \
         (or point REEF_BIN_DIR at the directory with the plugin binaries)",
        looked.join(", ")
    ))
}

/// `<target>/<profile>/deps/<test-exe>` → `<target>/release`.
fn release_dir_of_test_exe(exe: &Path) -> Option<PathBuf> {
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    Some(deps.parent()?.parent()?.join("release"))
}
