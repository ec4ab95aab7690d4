//! Reusable fixtures for tests that simulate hosts with Linux network namespaces.
//!
//! The building block is [`Netns`]: a uniquely named namespace (`ip netns add`) that is
//! deleted again when the value is dropped, also when the test panics. Everything a test
//! does to the network happens *inside* namespaces it created; the root namespace's links,
//! routes and firewall are never touched. Programs are run inside a namespace with
//! [`Netns::cmd`], which moves only the spawned child into the namespace (via `setns(2)` in
//! `pre_exec`), so tests can run in parallel threads of one process.
//!
//! Larger topologies (an underlay switch, routers, an etcd host, ...) are meant to be
//! composed from these pieces: a struct that owns its [`Netns`]es and [`ChildGuard`]s and
//! configures them with [`Netns::sh_ok`]; dropping it tears everything down.

mod netns;
mod process;

pub use netns::{Netns, NETNS_RUN_DIR};
pub use process::{ping, wait_until, ChildGuard};

/// Temporary directories removed on drop (re-exported so dependants need no own dependency).
pub use tempfile;
pub use tempfile::TempDir;

/// A fresh temporary directory, removed (recursively) when the guard is dropped.
///
/// Panics if the directory cannot be created (test convenience).
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("reef-test-")
        .tempdir()
        .expect("create a temporary directory")
}
