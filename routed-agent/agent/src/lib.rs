//! reef-agent: the per-host daemon of a Reef cluster. It registers the node, keeps a lease as
//! its heartbeat, watches the cluster state in etcd and programs the kernel to match it.

pub mod log;

pub mod agent;
pub mod backend;
pub mod desired;
pub mod kernel;
pub mod nat;
pub mod registry;
pub mod view;
