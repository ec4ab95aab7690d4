//! Reusable fixtures for tests that simulate hosts with Linux network namespaces.
//!
//! The building block is [`Netns`]: a uniquely named namespace (`ip netns add`) that is
//! deleted again when the value is dropped, also when the test panics. Everything a test
//! does to the network happens *inside* namespaces it created; the root namespace's links,
//! routes and firewall are never touched. Programs are run inside a namespace with
//! [`Netns::cmd`], which moves only the spawned child into the namespace (via `setns(2)` in
//! `pre_exec`), so tests can run in parallel threads of one process.
//!
//! Larger topologies are built from these pieces, each owning its namespaces and processes
//! and tearing them down on drop:
//!
//! - [`Underlay`]: an underlay switch (a namespace with a bridge) for one subnet inside
//!   198.18.0.0/15;
//! - [`SimHost`]: a simulated host on an underlay (`eth0`, .1, .2, ..., forwarding on);
//! - [`Router`]: joins two underlays (.254 on each); hosts get routes through it
//!   automatically;
//! - [`EtcdHost`]: the real etcd server on its own host, optionally with [`TlsMaterial`];
//! - [`Cluster`]: N hosts (+ etcd) on one underlay, or two routed underlays.
//!
//! Addresses: underlays use subnets of 198.18.0.0/15 only ([`Underlay::new`] rejects
//! anything else). Subnets are *not* made unique per fixture instance: a fixture's namespaces
//! are connected only to each other, never to the root namespace or to another fixture, so
//! two tests (threads or processes) can both use 198.18.1.0/24 at once without any clash,
//! and fixed addresses keep failures readable. Only namespace *names* must be unique, and
//! [`Netns::new`] makes them so (prefix, PID, counter).
//!
//! `netns-fixtures/cluster.sh` builds the same kind of cluster by hand for exploration.

mod addr;
mod cluster;
mod etcd;
pub mod firewall;
mod netns;
mod process;
mod tls;
mod topology;

pub use cluster::{Cluster, SUBNET_A, SUBNET_B};
pub use etcd::{EtcdHost, EtcdTls, ETCD_READY_TIMEOUT};
pub use netns::{Netns, NETNS_RUN_DIR};
pub use process::{ping, wait_until, ChildGuard};
pub use tls::TlsMaterial;
pub use topology::{Router, SimHost, Underlay, HOST_IFACE, UNDERLAY_BRIDGE};

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
